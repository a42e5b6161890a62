"""Durable checkpoint writes: partial files, fsync of file and folder, a crash before the
rename leaves the previous checkpoint whole, stale partial files cleaned on the next start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vitres.models.checkpoint import load_model, save_model
from vitres.models.config import ViTConfig
from vitres.models.durable import durable_write_text, partial_path
from vitres.models.registry import build_from_config
from vitres.train import load_checkpoint, remove_stale_files
from vitres.train.checkpoint import save_checkpoint


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    config = ViTConfig(
        img_size=(8, 8), patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2
    )
    return build_from_config(config)


def step(model, optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()


def save(out_dir: Path, model, optimizer, global_step: int) -> Path:
    position = {"epoch": 0, "step_in_epoch": global_step, "global_step": global_step}
    return save_checkpoint(out_dir, model, optimizer, position, {"epochs": 1}, [])


def fsync_recorder(monkeypatch) -> list[str]:
    """Patches os.fsync to record what each synced descriptor is: 'dir:<name>' or the name."""
    calls: list[str] = []
    real = os.fsync

    def recording(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append(("dir:" if path.is_dir() else "") + path.name)
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name descriptors")
def test_every_checkpoint_file_is_synced_then_its_folder(tmp_path, monkeypatch):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, optimizer)
    calls = fsync_recorder(monkeypatch)
    save(tmp_path, model, optimizer, 1)
    model_file, optim_file = "ckpt-000000001.model.safetensors", "ckpt-000000001.optim.safetensors"
    folder = f"dir:{tmp_path.name}"
    # each file is synced under its partial name before the rename, the folder after it
    assert calls == [
        model_file + ".partial",
        folder,
        optim_file + ".partial",
        folder,
        "checkpoint.json.partial",
        folder,
    ]
    calls.clear()
    save_model(model, tmp_path / "final.safetensors")
    assert calls == ["final.safetensors.partial", folder, "final.json.partial", folder]


def test_a_crash_before_the_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, optimizer)
    save(tmp_path, model, optimizer, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, optimizer)  # the weights move on; their save is cut short

    def crash(src, dst):
        raise OSError("killed between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        save(tmp_path, model, optimizer, 2)
    monkeypatch.undo()
    assert not list(tmp_path.glob("*.partial"))
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["global_step"] == 1
    for key, value in before.items():
        assert torch.equal(checkpoint["model_state"][key], value)
    assert len(checkpoint["optimizer_state"]["state"]) == len(list(model.parameters()))
    # the tensors the failed save wrote under their final names are not the checkpoint's
    # own; the next start removes them
    remove_stale_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json",
        "ckpt-000000001.model.safetensors",
        "ckpt-000000001.optim.safetensors",
    ]


def test_a_crashed_save_model_keeps_the_old_weights(tmp_path, monkeypatch):
    old, new = tiny_model(0), tiny_model(1)
    path = save_model(old, tmp_path / "m.safetensors")
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("kill")))
    with pytest.raises(OSError, match="kill"):
        save_model(new, path)
    monkeypatch.undo()
    loaded = load_model(path)
    for key, value in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert not list(tmp_path.glob("*.partial"))


def test_stale_partial_files_are_removed_on_resume(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, optimizer)
    save(tmp_path, model, optimizer, 1)
    stale = [
        "checkpoint.json.partial",
        "log.jsonl.partial",
        "model.safetensors.partial",
        "ckpt-000000002.model.safetensors.partial",
        "ckpt-000000002.optim.safetensors.partial",
    ]
    for name in stale + ["notes.partial"]:
        (tmp_path / name).write_bytes(b"\0" * 100)
    removed = remove_stale_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert (tmp_path / "notes.partial").exists()  # not a run file: left alone
    assert load_checkpoint(tmp_path)["global_step"] == 1


def test_durable_write_text_goes_through_a_named_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "doc.json"
    seen = []
    real_replace = os.replace

    def watching(src, dst):
        seen.append((Path(src).name, Path(src).read_text(), target.exists()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching)
    durable_write_text(target, "{}\n")
    assert seen == [("doc.json.partial", "{}\n", False)]
    assert target.read_text() == "{}\n"
    assert not partial_path(target).exists()
