"""Where training runs, tested on a CPU-only machine: ``--device`` on train, flexify and
probe (refused before any work where it cannot run), bf16 autocast chosen for the
device's type, the device in the run's records, and the torchrun plumbing that needs no
second process (ranks from the environment, shares of a batch, per-rank streams, the
check that every rank planned the same step)."""

from __future__ import annotations

import json

import pytest
import torch

from vitres.cli import main
from vitres.train import TrainConfig, resolve_precision, train
from vitres.train.distributed import Ranks, launched_ranks, shard_of, training_device
from vitres.train.loop import _Run, autocast

CPU_ONLY = not torch.cuda.is_available()


def tiny(tmp_path, **overrides) -> TrainConfig:
    settings = dict(
        embed_dim=16, depth=1, num_heads=2, img_size=16, train_limit=64, batch_size=32,
        epochs=1, warmup_steps=1, resolutions=(12,), eval_resolutions=(12,), eval_limit=32,
        eval_batch_size=32, num_threads=1, progress=False, precision="fp32",
        out_dir=str(tmp_path / "run"),
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def fake_gpus(monkeypatch, count: int) -> None:
    """A machine with ``count`` CUDA GPUs, as far as the device checks can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# ------------------------------------------------------------------ precision and autocast
def test_auto_precision_is_bf16_on_a_gpu_and_kept_when_given():
    no_amx = "/nonexistent/cpuinfo"  # no flags readable: no AMX
    assert resolve_precision("auto", cpuinfo=no_amx, device="cuda") == "bf16"
    assert resolve_precision("auto", cpuinfo=no_amx, device=torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("auto", cpuinfo=no_amx, device="cpu") == "fp32"
    assert resolve_precision("fp32", device="cuda") == "fp32"


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_is_bf16_on_the_device_type_asked_for():
    for device_type in ("cpu", "cuda"):
        context = autocast("bf16", device_type)
        assert isinstance(context, torch.autocast)
        assert (context.device, context.fast_dtype) == (device_type, torch.bfloat16)
    assert not isinstance(autocast("fp32", "cuda"), torch.autocast)
    with autocast("bf16", "cpu"):  # the CPU's really runs the matmul in bf16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


# ------------------------------------------------------------------ --device refused early
@pytest.mark.skipif(not CPU_ONLY, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "flexify"])
def test_train_and_flexify_refuse_cuda_here_before_any_work(tmp_path, capsys, command):
    out = tmp_path / "run"
    assert main([command, "--device", "cuda", "--out-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"vitres {command}: error: --device cuda: this machine has" in err
    assert "use --device cpu" in err and "Traceback" not in err
    assert not out.exists()  # nothing written, no data or model loaded


@pytest.mark.skipif(not CPU_ONLY, reason="checks the refusal on a machine without CUDA")
def test_probe_refuses_cuda_here_and_the_library_too(tmp_path, capsys):
    out = tmp_path / "probe"
    code = main(["probe", "--model", "fmnist-vit-single", "--device", "cuda:0",
                 "--out-dir", str(out)])  # fmt: skip
    assert code == 2 and "--device cuda:0: this machine has" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="--device cuda: this machine has"):
        train(tiny(tmp_path, device="cuda"))
    assert not (tmp_path / "run").exists()


def test_a_device_that_is_no_device_is_refused_by_the_config(tmp_path, capsys):
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N, got 'gpu'"):
        tiny(tmp_path, device="gpu")
    assert main(["train", "--device", "gpu", "--out-dir", str(tmp_path / "x")]) == 2
    assert "device must be cpu, cuda or cuda:N" in capsys.readouterr().err


@pytest.mark.skipif(not CPU_ONLY, reason="checks the refusal on a machine without CUDA")
def test_device_from_a_config_file_is_checked_like_the_flag(tmp_path, capsys):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"device": "cuda", "epochs": 1}))
    assert main(["train", "--config", str(config), "--print-config"]) == 0
    assert "device: cuda" in capsys.readouterr().out.splitlines()
    assert main(["train", "--config", str(config), "--out-dir", str(tmp_path / "r")]) == 2
    assert "--device cuda: this machine has" in capsys.readouterr().err


# ------------------------------------------------------------------ the device on record
def test_the_device_is_recorded_and_a_resume_may_change_it(tmp_path):
    result = train(tiny(tmp_path))
    assert (result.device, result.world_size, result.rank) == ("cpu", 1, 0)
    metadata = json.loads((tmp_path / "run" / "model.json").read_text())["metadata"]
    assert (metadata["device"], metadata["world_size"]) == ("cpu", 1)
    assert "gpu" not in metadata  # a CPU run has no GPU facts
    # one CPU process is what a log without a device record ran on: none is written
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"kind": "device"' not in log
    # the device is not part of what a resume must keep (a run may move to a GPU)
    assert "device" in TrainConfig.RESUME_FREE


# ------------------------------------------------------------------ torchrun's environment
def test_ranks_come_from_torchrun_environment_or_default_to_one_process():
    assert launched_ranks({}) == (0, 1, 0)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert launched_ranks(env) == (3, 4, 1)
    with pytest.raises(ValueError, match="must be integers"):
        launched_ranks({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="need 0 <= RANK < WORLD_SIZE"):
        launched_ranks({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    assert training_device("cpu", local_rank=1, world_size=2) == torch.device("cpu")
    fake_gpus(monkeypatch, 2)
    assert training_device("cuda", local_rank=1, world_size=2) == torch.device("cuda", 1)
    assert training_device("cuda:1") == torch.device("cuda", 1)  # one process: as given
    with pytest.raises(ValueError, match="uses the GPU of its LOCAL_RANK; pass --device cuda"):
        training_device("cuda:0", local_rank=1, world_size=2)
    with pytest.raises(ValueError, match="LOCAL_RANK 2 has no GPU: this machine has 2"):
        training_device("cuda", local_rank=2, world_size=3)


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="batch_size 32 does not split over the 3 processes"):
        train(tiny(tmp_path))
    assert not (tmp_path / "run").exists()  # refused before joining or writing anything


def test_shares_of_a_batch_are_contiguous_equal_and_cover_it():
    indices = torch.arange(100, 112)
    shares = [shard_of(indices, rank, 3) for rank in range(3)]
    assert torch.equal(torch.cat(shares), indices)
    assert [len(s) for s in shares] == [4, 4, 4]
    with pytest.raises(ValueError, match="does not split evenly over 5 processes"):
        shard_of(indices, 0, 5)
    assert torch.equal(Ranks().shard(indices), indices)


def test_one_process_ranks_change_nothing():
    ranks = Ranks()
    assert (ranks.is_main, ranks.distributed) == (True, False)
    assert ranks.sum([1.5, 2.0]) == [1.5, 2.0] and ranks.mean([3.0]) == [3.0]
    assert ranks.bounds([4, 5]) == ([4, 5], [4, 5])
    assert ranks.fit_batch(33) == 33
    model = torch.nn.Linear(2, 2)
    assert ranks.wrap(model) is model
    assert ranks.run_on_main(lambda: 7) == 7
    generator = torch.Generator().manual_seed(1)
    assert ranks.own_streams(0, 0, 0, generator) is generator


def test_other_ranks_draw_their_own_augmentation_and_dropout():
    shared = torch.Generator().manual_seed(11)
    first = Ranks(rank=1, world_size=2).own_streams(0, 2, 5, shared)
    rank1 = (torch.rand(4, generator=first), torch.rand(4))
    again = Ranks(rank=1, world_size=2).own_streams(0, 2, 5, shared)
    assert torch.equal(torch.rand(4, generator=again), rank1[0])  # repeatable (resume)
    assert torch.equal(torch.rand(4), rank1[1])
    other = Ranks(rank=2, world_size=3).own_streams(0, 2, 5, shared)
    assert not torch.equal(torch.rand(4, generator=other), rank1[0])
    assert not torch.equal(torch.rand(4, generator=shared), rank1[0])  # rank 0's stream
    # a step's varying batch goes down to a multiple of the processes, one example each
    assert Ranks(world_size=4).fit_batch(30) == 28 and Ranks(world_size=4).fit_batch(3) == 4


class DisagreeingRanks(Ranks):
    """Two ranks whose planned steps differ in their first value (the resolution)."""

    def bounds(self, values):
        high = list(values)
        high[0] += 4
        return list(values), high


def test_ranks_that_planned_different_steps_are_stopped():
    from vitres.train.recipe import StepShape

    run = _Run.__new__(_Run)  # the check reads only the ranks and the step count
    run.ranks, run.global_step = DisagreeingRanks(world_size=2), 3
    with pytest.raises(ValueError, match="the 2 processes planned different steps at global"):
        run.ranks_agree(StepShape(12, None, 32), 16)
    run.ranks = Ranks(world_size=2)
    run.ranks.bounds = lambda values: (list(values), list(values))
    assert run.ranks_agree(StepShape(12, None, 32), 16)
    run.ranks.bounds = lambda values: ([*values[:-1], 0], list(values))  # a rank got none
    assert not run.ranks_agree(StepShape(12, None, 32), 16)
