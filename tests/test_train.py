"""Multi-resolution training: learning, exact resume, reproducible resolution sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vitres
from vitres.cli import main
from vitres.train import (
    TrainConfig,
    flatten_optimizer_state,
    load_checkpoint,
    lr_at,
    param_groups,
    resolve_precision,
    sample_step_shape,
    step_generator,
    train,
    unflatten_optimizer_state,
)


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    """A run of a few seconds: 128 images, a 1-block width-16 ViT."""
    settings = dict(
        embed_dim=16,
        depth=1,
        num_heads=2,
        img_size=16,
        train_limit=128,
        batch_size=32,
        epochs=2,
        lr=3e-3,
        warmup_steps=2,
        resolutions=(8, 12, 16),
        eval_resolutions=(12,),
        eval_limit=64,
        eval_batch_size=64,
        num_threads=1,
        progress=False,
        log_every_steps=1,
        seed=7,
        precision="fp32",
        drop_path_rate=0.1,  # exercises the per-step torch RNG on resume
        out_dir=str(tmp_path / name),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


class Crash(RuntimeError):
    pass


def crash_at(global_step: int):
    def callback(info: dict) -> None:
        if info["global_step"] == global_step:
            raise Crash(f"simulated crash after step {global_step}")

    return callback


def assert_same_state(dir_a, dir_b) -> None:
    a, b = load_checkpoint(dir_a), load_checkpoint(dir_b)
    assert a["global_step"] == b["global_step"]
    assert a["model_state"].keys() == b["model_state"].keys()
    for key, value in a["model_state"].items():
        torch.testing.assert_close(value, b["model_state"][key], rtol=0, atol=1e-6)
    state_a, state_b = a["optimizer_state"]["state"], b["optimizer_state"]["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) > 0
    for index, slots in state_a.items():
        for key, value in slots.items():
            torch.testing.assert_close(value, state_b[index][key], rtol=0, atol=1e-6)
    assert a["optimizer_state"]["param_groups"] == b["optimizer_state"]["param_groups"]


def test_loss_goes_down(tmp_path):
    config = tiny(tmp_path, epochs=5, lr=1e-2, resolutions=(16,), drop_path_rate=0.0)
    result = train(config)
    losses = [epoch["loss"] for epoch in result.history]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.1, losses
    assert result.history[-1]["accuracy"]["12"] > 0.15  # chance is 0.1


def test_resume_after_epoch_matches_uninterrupted_run(tmp_path):
    full = train(tiny(tmp_path, "full"))
    config = tiny(tmp_path, "split")
    first = train(config, until_epoch=1)
    assert first.steps == 4 and not (tmp_path / "split" / "model.safetensors").exists()
    resumed = train(tiny(tmp_path, "split", resume=True))
    assert resumed.steps == full.steps == 8
    assert_same_state(tmp_path / "full", tmp_path / "split")
    assert [h["accuracy"] for h in resumed.history] == [h["accuracy"] for h in full.history]
    # log.jsonl holds each step once, the same as the uninterrupted run's
    steps = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").open()]
    full_steps = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").open()]
    key = ("kind", "global_step", "loss", "resolution", "accuracy")
    assert [[r.get(k) for k in key] for r in steps] == [[r.get(k) for k in key] for r in full_steps]
    assert len(steps) == 8 + 2


def test_crash_mid_epoch_then_resume_matches(tmp_path):
    train(tiny(tmp_path, "full"))
    config = tiny(tmp_path, "crash")
    with pytest.raises(Crash):
        train(config, callback=crash_at(6))  # epoch 1, step 2 of 4: that epoch is lost
    assert load_checkpoint(tmp_path / "crash")["epoch"] == 1
    train(tiny(tmp_path, "crash", resume=True))
    assert_same_state(tmp_path / "full", tmp_path / "crash")


def test_mid_epoch_checkpoints_resume_inside_the_epoch(tmp_path):
    train(tiny(tmp_path, "full", checkpoint_every_steps=3))
    with pytest.raises(Crash):
        train(tiny(tmp_path, "crash", checkpoint_every_steps=3), callback=crash_at(7))
    checkpoint = load_checkpoint(tmp_path / "crash")
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (1, 2)  # step 6 kept
    (tmp_path / "crash" / "checkpoint.json.partial").write_text("{half written")  # torn write
    train(tiny(tmp_path, "crash", checkpoint_every_steps=3, resume=True))
    assert_same_state(tmp_path / "full", tmp_path / "crash")
    assert len(list((tmp_path / "crash").glob("ckpt-*.safetensors"))) == 2  # old ones pruned


def test_resume_refuses_a_different_recipe(tmp_path):
    train(tiny(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="lr"):
        train(tiny(tmp_path, epochs=1, lr=1e-2, resume=True))


def test_same_seed_same_run_and_other_seed_differs(tmp_path):
    a = train(tiny(tmp_path, "a", epochs=1)).model.state_dict()
    b = train(tiny(tmp_path, "b", epochs=1)).model.state_dict()
    c = train(tiny(tmp_path, "c", epochs=1, seed=8)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resolution_sampling_is_varied_and_reproducible(tmp_path):
    sizes = tuple(range(12, 57, 4))
    draws = [sample_step_shape(sizes, (2, 4), step_generator(0, 3, s)) for s in range(60)]
    again = [sample_step_shape(sizes, (2, 4), step_generator(0, 3, s)) for s in range(60)]
    assert draws == again
    assert len({r for r, _ in draws}) >= 8 and {p for _, p in draws} == {2, 4}
    assert draws != [sample_step_shape(sizes, (2, 4), step_generator(1, 3, s)) for s in range(60)]
    # the training loop uses them: the log records several resolutions per run
    train(tiny(tmp_path, epochs=1, resolutions=(8, 12, 16, 20)))
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert len({r["resolution"] for r in logged if r["kind"] == "step"}) > 1


@pytest.mark.parametrize("pos_embed", ["learned", "sincos", "rope", "cpb", "mlp"])
def test_multires_training_works_with_every_pos_embed(tmp_path, pos_embed):
    config = tiny(
        tmp_path,
        epochs=1,
        train_limit=64,
        resolutions=(9, 16),  # 9 is not a multiple of the patch: the pad policy handles it
        patch_sizes=(2, 4),
        pos_embed=pos_embed,
        eval_resolutions=(10, 20),
    )
    result = train(config)
    assert result.steps == 2
    assert set(result.final_accuracy) == {"10", "20"}
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in result.model.parameters())


def test_lr_schedule_warms_up_then_decays_to_min():
    config = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10)
    lrs = [lr_at(step, 110, config) for step in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[60] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(1e-5, abs=1e-6)


def test_no_weight_decay_on_norms_biases_positions_tokens():
    from vitres.train import build_model

    model = build_model(TrainConfig(embed_dim=16, depth=1, num_heads=2), 10, 1)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias"} <= no_decay_names
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_optimizer_state_round_trips_through_flat_tensors():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, meta = flatten_optimizer_state(optimizer)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    json.dumps(meta)  # the rest is JSON
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(unflatten_optimizer_state(tensors, meta))
    for index, slots in optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            assert torch.equal(value, fresh.state_dict()["state"][index][key])


def test_precision_choice():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8")


def test_bf16_training_runs(tmp_path):
    result = train(tiny(tmp_path, epochs=1, precision="bf16", train_limit=64))
    assert result.precision == "bf16" and math.isfinite(result.history[-1]["loss"])


def test_cli_train_then_resume(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "train", "--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--img-size", "16",
        "--train-limit", "64", "--batch-size", "32", "--epochs", "1", "--resolutions", "12,16",
        "--eval-resolutions", "16", "--eval-limit", "32", "--no-progress", "--num-threads", "1",
        "--set", "mlp_ratio=2", "--out-dir", str(out), "--json",
    ]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and set(summary["accuracy"]) == {"16"}
    assert (out / "model.safetensors").exists()
    assert main(args + ["--resume"]) == 0  # already finished: resumes to the end at once
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def test_cpu_bf16_detection_reads_the_flags(tmp_path):
    from vitres.train import cpu_supports_bf16

    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    intel = tmp_path / "intel"
    intel.write_text("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert cpu_supports_bf16(str(amd)) and cpu_supports_bf16(str(intel))
    assert not cpu_supports_bf16(str(amd), flags=("amx_bf16",))
    assert not cpu_supports_bf16(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- run folder
def test_fresh_run_refuses_a_folder_that_holds_a_run_unless_overwrite(tmp_path):
    train(tiny(tmp_path, "done", epochs=1))
    with pytest.raises(ValueError, match="finished run.*--resume.*--overwrite"):
        train(tiny(tmp_path, "done", epochs=1))
    train(tiny(tmp_path, "partial"), until_epoch=1)
    with pytest.raises(ValueError, match=r"partial run \(1 of 2 epochs done\)"):
        train(tiny(tmp_path, "partial"))
    # --overwrite starts again from scratch: the same result as a fresh folder
    again = train(tiny(tmp_path, "partial", overwrite=True))
    fresh = train(tiny(tmp_path, "fresh"))
    assert again.steps == 8
    assert_same_state(tmp_path / "partial", tmp_path / "fresh")
    assert [h["loss"] for h in again.history] == [h["loss"] for h in fresh.history]
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        tiny(tmp_path, resume=True, overwrite=True)


def test_cli_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    args = [
        "train", "--embed-dim", "8", "--depth", "1", "--num-heads", "2", "--img-size", "8",
        "--train-limit", "32", "--batch-size", "32", "--epochs", "1", "--resolutions", "8",
        "--eval-resolutions", "8", "--eval-limit", "16", "--no-progress", "--num-threads", "1",
        "--out-dir", str(tmp_path / "cli"), "--json",
    ]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_resume_can_add_epochs_and_recomputes_the_schedule(tmp_path):
    first = train(tiny(tmp_path, "grow"))  # 2 epochs x 4 steps, finished
    assert first.steps == 8
    grown = train(tiny(tmp_path, "grow", epochs=3, resume=True))
    assert grown.steps == 12 and len(grown.history) == 3
    assert grown.history[:2] == first.history
    config = tiny(tmp_path, "grow", epochs=3)
    log = [json.loads(line) for line in (tmp_path / "grow" / "log.jsonl").open()]
    steps = {r["global_step"]: r["lr"] for r in log if r["kind"] == "step"}
    # steps already done keep the old schedule (8 steps); later ones follow the new (12)
    for step in range(1, 9):
        assert steps[step] == pytest.approx(lr_at(step - 1, 8, config), rel=1e-12)
    for step in range(9, 13):
        assert steps[step] == pytest.approx(lr_at(step - 1, 12, config), rel=1e-12)
    resume = [r for r in log if r["kind"] == "resume"]
    assert resume == [
        {
            "kind": "resume",
            "global_step": 8,
            "epochs_before": 2,
            "epochs": 3,
            "lr_next": pytest.approx(lr_at(8, 12, config)),
        }
    ]
    assert steps[9] > steps[8]  # a warm restart: the cosine resumes above min_lr
    # the grown run is itself exactly resumable: crash in the added epoch, resume
    train(tiny(tmp_path, "crash"))
    with pytest.raises(Crash):
        train(tiny(tmp_path, "crash", epochs=3, resume=True), callback=crash_at(10))
    train(tiny(tmp_path, "crash", epochs=3, resume=True))
    assert_same_state(tmp_path / "grow", tmp_path / "crash")
    # fewer epochs than are done, or another recipe, are refused with the field named
    with pytest.raises(ValueError, match="epochs=2.*give --epochs 3 or more"):
        train(tiny(tmp_path, "grow", epochs=2, resume=True))
    with pytest.raises(ValueError, match=r"\['train_limit'\].*train_limit: 128 -> 96"):
        train(tiny(tmp_path, "grow", epochs=4, train_limit=96, resume=True))


def test_mid_epoch_resume_logs_the_whole_epoch(tmp_path):
    full = train(tiny(tmp_path, "full", checkpoint_every_steps=3))
    with pytest.raises(Crash):
        train(tiny(tmp_path, "crash", checkpoint_every_steps=3), callback=crash_at(7))
    saved = load_checkpoint(tmp_path / "crash")
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)
    assert saved["epoch_sums"]["seen"] == 64  # two steps of 32 before the checkpoint
    resumed = train(tiny(tmp_path, "crash", checkpoint_every_steps=3, resume=True))
    assert_same_state(tmp_path / "full", tmp_path / "crash")
    for a, b in zip(full.history, resumed.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["train_accuracy"] == b["train_accuracy"]
        assert a["images"] == b["images"] == 128
    epoch = resumed.history[1]
    assert epoch["epoch_seconds"] >= saved["epoch_sums"]["seconds"]
    seconds = epoch["epoch_seconds"]  # rounded to 0.01 s
    assert 128 / (seconds + 0.006) <= epoch["images_per_second"] <= 128 / max(seconds - 0.006, 1e-3)


STALE = (
    "checkpoint.json.partial",
    "ckpt-000000099.model.safetensors.partial",
    "checkpoint.json.tmp",  # the temporary names of earlier versions
    "log.jsonl.tmp",
    "model.safetensors.tmp",
    "ckpt-000000099.model.safetensors.tmp",
    "ckpt-000000099.optim.safetensors.tmp",
    "ckpt-000000003.model.safetensors",  # tensors whose JSON never got written
)


def test_stale_temp_files_of_a_killed_write_are_removed_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    train(tiny(tmp_path), until_epoch=1)
    for name in STALE + ("notes.tmp", "mine.txt"):
        (run / name).write_bytes(b"\0" * 1000)
    train(tiny(tmp_path, resume=True))
    left = sorted(p.name for p in run.iterdir())
    assert not set(STALE) & set(left)
    assert {"notes.tmp", "mine.txt"} <= set(left)  # not the run's files: left alone
    assert not [name for name in left if name.endswith(".tmp") and name != "notes.tmp"]
    # a folder with only the leftovers of a killed first save is not a run: it starts
    other = tmp_path / "killed"
    other.mkdir()
    for name in STALE:
        (other / name).write_bytes(b"\0" * 1000)
    train(tiny(tmp_path, "killed", epochs=1))
    assert not [p.name for p in other.iterdir() if p.name in STALE]


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    import vitres.train.checkpoint as checkpoint_module

    def broken_save(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train(tiny(tmp_path, epochs=1))
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert not list((tmp_path / "run").glob("*.partial"))


def test_auto_precision_is_stored_resolved_and_kept_on_resume(tmp_path, monkeypatch):
    import vitres.train.config as config_module

    amd = tmp_path / "amd-cpuinfo"
    amd.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
    amx = tmp_path / "amx-cpuinfo"
    amx.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    detect = config_module.cpu_supports_bf16

    def on(cpuinfo):
        monkeypatch.setattr(
            config_module, "cpu_supports_bf16", lambda _=None, flags=(): detect(str(cpuinfo), flags)
        )

    on(amd)
    train(tiny(tmp_path, "auto", precision="auto"), until_epoch=1)
    saved = load_checkpoint(tmp_path / "auto")
    assert saved["precision"] == "fp32" and saved["train_config"]["precision"] == "fp32"
    on(amx)  # the resume runs on a CPU where "auto" would pick bf16
    assert resolve_precision("auto") == "bf16"
    with pytest.raises(ValueError, match="precision='bf16'.*trains in 'fp32'"):
        train(tiny(tmp_path, "auto", precision="bf16", resume=True))
    resumed = train(tiny(tmp_path, "auto", precision="auto", resume=True))
    assert resumed.precision == "fp32"
    assert {h["precision"] for h in resumed.history} == {"fp32"}
    train(tiny(tmp_path, "fp32", precision="fp32"))
    assert_same_state(tmp_path / "auto", tmp_path / "fp32")
    meta = json.loads((tmp_path / "auto" / "model.json").read_text())["metadata"]
    assert meta["train_config"]["precision"] == "fp32"


def test_default_threads_are_chosen_by_measurement_and_logged(tmp_path):
    """num_threads=None with the measuring chooser (what `vitres train` passes) times a
    training step at 1 thread and at all cores, uses the faster, logs the evidence, and
    leaves the run's results as with that count set."""
    import json

    from vitres.measure.threads import choose_threads

    before = torch.get_num_threads()
    try:
        result = train(tiny(tmp_path, "auto", num_threads=None), thread_chooser=choose_threads)
        log = [json.loads(line) for line in open(result.out_dir / "log.jsonl")]
        (choice,) = [r for r in log if r.get("kind") == "threads"]
        medians = {int(k): v for k, v in choice["median_ms"].items()}
        assert choice["threads"] in medians and 1 in medians
        assert medians[choice["threads"]] <= min(medians.values()) * 1.05
        # the same run with that count set explicitly gives the same weights
        fixed = train(tiny(tmp_path, "fixed", num_threads=choice["threads"]))
        a = vitres.load_model(str(result.out_dir / "model.safetensors")).state_dict()
        b = vitres.load_model(str(fixed.out_dir / "model.safetensors")).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        torch.set_num_threads(before)
