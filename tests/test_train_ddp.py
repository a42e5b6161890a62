"""Training on two processes under torchrun (gloo, one thread each) against one process
on the same global batch: DDP averages the gradients of equal shares of a mean loss, so
with nothing random in a step (no crops, flips or drop path) the two runs follow the
same updates, up to the order of float sums. Also: rank 0 alone writes the run folder,
a resume under torchrun continues it, and flexify's size sampler stays in step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import vitres
from vitres.train import FlexifyConfig, TrainConfig, flexify, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
# what 8 AdamW steps of a width-16 ViT drift by when only the order of float sums
# differs; measured 2.1e-6 (train) and 7.1e-7 (flexify) on the 2-core test machine
WEIGHT_TOLERANCE = 1e-5

TRAIN_SETTINGS = dict(
    embed_dim=16, depth=1, num_heads=2, img_size=16, train_limit=128, batch_size=32,
    lr=3e-3, warmup_steps=2, resolutions=(8, 12, 16), eval_resolutions=(12,), eval_limit=64,
    eval_batch_size=64, num_threads=1, progress=False, log_every_steps=1, seed=7,
    precision="fp32", random_crop=False, hflip=False, drop_path_rate=0.0,
)  # fmt: skip


def flags(settings: dict) -> list[str]:
    """``settings`` as the command's flags."""
    out = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, tuple):
            out += [name, ",".join(map(str, value))]
        else:
            out += [name, str(value)]
    return out


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m vitres ARGS``, one thread a process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "vitres", *args]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def max_weight_diff(path_a: Path, path_b: Path) -> float:
    a, b = load_file(str(path_a)), load_file(str(path_b))
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def step_records(out_dir: Path) -> list[dict]:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step"]


def test_two_processes_train_like_one_and_resume(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # two processes: one epoch, then a resume under torchrun to a second
    done = torchrun("train", *flags(TRAIN_SETTINGS), "--epochs", "1", "--out-dir", str(ddp),
                    "--json")  # fmt: skip
    summary = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summary) == 1 and summary[0]["processes"] == 2  # rank 0 alone prints
    torchrun("train", *flags(TRAIN_SETTINGS), "--epochs", "2", "--out-dir", str(ddp), "--resume")
    # one process, the same two segments
    train(TrainConfig(**TRAIN_SETTINGS, epochs=1, out_dir=str(single)))
    train(TrainConfig(**TRAIN_SETTINGS, epochs=2, out_dir=str(single), resume=True))

    diff = max_weight_diff(ddp / "model.safetensors", single / "model.safetensors")
    assert diff <= WEIGHT_TOLERANCE, f"max |diff| {diff:.2e} between 2-process and 1-process"
    # the same steps: sizes drawn alike on both ranks, the global batch, the global loss
    ddp_steps, single_steps = step_records(ddp), step_records(single)
    assert [r["global_step"] for r in ddp_steps] == list(range(1, 9))  # each step once
    for a, b in zip(ddp_steps, single_steps, strict=True):
        assert (a["resolution"], a["batch_size"], a["lr"]) == (b["resolution"], 32, b["lr"])
        assert abs(a["loss"] - b["loss"]) <= 1e-4
    # one run folder, written once: one checkpoint, the final model with its layout
    tensors = sorted(p.name for p in ddp.glob("ckpt-*.safetensors"))
    assert tensors == ["ckpt-000000008.model.safetensors", "ckpt-000000008.optim.safetensors"]
    assert not list(ddp.glob("*.partial"))
    assert load_checkpoint(ddp)["global_step"] == 8
    log = [json.loads(line) for line in (ddp / "log.jsonl").read_text().splitlines()]
    assert [r for r in log if r["kind"] == "device"] == [
        {"kind": "device", "global_step": 0, "device": "cpu", "world_size": 2}
    ]  # the resume in the same place added none
    metadata = json.loads((ddp / "model.json").read_text())["metadata"]
    assert (metadata["device"], metadata["world_size"]) == ("cpu", 2)
    model = vitres.load_model(ddp / "model.safetensors")
    assert model(torch.zeros(1, 1, 12, 12)).shape == (1, 10)


def test_flexify_on_two_processes_keeps_the_sampler_in_step(tmp_path):
    """Flexify's size sampler folds in each step's distillation gap: averaged over the
    ranks, every rank draws the same sizes; with two views per step (scale consistency)
    DDP reduces the gradients of both forward passes once."""
    torch.manual_seed(3)
    source = tmp_path / "source.safetensors"
    vitres.save_model(vitres.create_model("vit_tiny_patch4", img_size=16, embed_dim=16,
                      depth=1, num_heads=2, in_chans=1, num_classes=10, mean=(0.286,),
                      std=(0.353,)), source)  # fmt: skip
    settings = dict(
        model=str(source), train_limit=128, batch_size=32, min_batch_size=32,
        max_batch_size=32, epochs=1, lr=3e-3, warmup_steps=2, resolutions=(8, 12, 16),
        eval_resolutions=(12,), eval_limit=64, eval_batch_size=64, num_threads=1,
        progress=False, log_every_steps=1, seed=5, precision="fp32", hflip=False,
        scale_consistency=True,
    )  # fmt: skip
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    cli = flags({k: v for k, v in settings.items() if k != "model"})
    torchrun("flexify", "--model", str(source), *cli, "--out-dir", str(ddp))
    flexify(FlexifyConfig(**settings, out_dir=str(single)))

    diff = max_weight_diff(ddp / "model.safetensors", single / "model.safetensors")
    assert diff <= WEIGHT_TOLERANCE, f"max |diff| {diff:.2e} between 2-process and 1-process"
    ddp_steps, single_steps = step_records(ddp), step_records(single)
    assert len(ddp_steps) == 4
    for a, b in zip(ddp_steps, single_steps, strict=True):
        assert (a["resolution"], a["batch_size"]) == (b["resolution"], b["batch_size"])
        assert abs(a["kd"] - b["kd"]) <= 1e-4
    gaps = [json.loads(d.joinpath("model.json").read_text())["metadata"]["history"][-1]["gap"]
            for d in (ddp, single)]  # fmt: skip
    for size, gap in gaps[1].items():
        assert (gap is None) == (gaps[0][size] is None)
        assert gap is None or abs(gap - gaps[0][size]) <= 1e-4
    work = [json.loads(d.joinpath("model.json").read_text())["metadata"]["work"]
            for d in (ddp, single)]  # fmt: skip
    assert work[0] == work[1]  # the examples of every rank counted
