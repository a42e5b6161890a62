"""The run folder of a training run: guarding it, and checking that a resume continues
the same run.

A fresh run refuses a folder that already holds a run unless ``overwrite=True``; every
start removes the temporary files a killed write left there. A resume must use the same
recipe and every setting that changes the result (``epochs`` may grow, or shrink not
below what is done); its precision is the one stored on the first start.
"""

from __future__ import annotations

import json
from pathlib import Path

from vitres.train.checkpoint import (
    CHECKPOINT_FILE,
    LOG_FILE,
    MODEL_FILE,
    clear_run,
    load_checkpoint,
    remove_stale_files,
    run_files,
)
from vitres.train.config import RunConfig, resolve_precision

__all__ = ["check_resume", "prepare_out_dir"]


def _describe_run(out_dir: Path) -> str:
    checkpoint = out_dir / CHECKPOINT_FILE
    if (out_dir / MODEL_FILE).exists():
        return "a finished run"
    if checkpoint.exists():
        try:
            document = json.loads(checkpoint.read_text())
            return (
                f"a partial run ({document['epoch']} of "
                f"{document['train_config']['epochs']} epochs done)"
            )
        except (ValueError, KeyError, TypeError):
            return "a partial run"
    return "files of a run"


def prepare_out_dir(config: RunConfig, out_dir: Path) -> dict | None:
    """Guards ``out_dir`` and returns the checkpoint to resume from, if any."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.overwrite:
        clear_run(out_dir)
        return None
    remove_stale_files(out_dir)
    checkpoint = load_checkpoint(out_dir) if config.resume else None
    if checkpoint is None:
        # a log alone (a run killed before its first checkpoint) holds nothing to resume
        existing = [p for p in run_files(out_dir) if p.name != LOG_FILE]
        if existing:
            names = ", ".join(sorted({p.name for p in existing})[:4])
            found = f"{_describe_run(out_dir)} ({names})"
            if config.resume:
                raise ValueError(
                    f"cannot resume {out_dir}: it has no checkpoint.json but holds {found}; "
                    "pass --overwrite (overwrite=True) to delete it and start again, or "
                    "choose another --out-dir"
                )
            raise ValueError(
                f"{out_dir} already holds {found}; pass --resume (resume=True) to continue "
                "it, --overwrite (overwrite=True) to delete it and start again, or choose "
                "another --out-dir"
            )
    return checkpoint


def _stored_precision(checkpoint: dict) -> str | None:
    if "precision" in checkpoint:
        return checkpoint["precision"]
    # version-1 checkpoints: the epoch records say what was used
    for entry in reversed(checkpoint.get("log", [])):
        if entry.get("kind") == "epoch" and entry.get("precision"):
            return entry["precision"]
    saved = checkpoint["train_config"].get("precision")
    return saved if saved in ("bf16", "fp32") else None


def check_resume(config: RunConfig, checkpoint: dict, recipe_name: str, out_dir: Path) -> str:
    """Refuses a resume that would not continue the same run; returns its precision."""
    saved_recipe = checkpoint.get("recipe", "train")
    if saved_recipe != recipe_name:
        raise ValueError(
            f"cannot resume {out_dir}: it holds a {saved_recipe!r} run, not {recipe_name!r}; "
            "use another --out-dir"
        )
    saved = type(config).from_dict(checkpoint["train_config"]).to_dict()
    current = config.to_dict()
    ignored = set(config.RESUME_FREE) | {"epochs", "precision"}
    diff = sorted(k for k in current if k not in ignored and saved.get(k) != current[k])
    if diff:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in diff)
        raise ValueError(
            f"cannot resume {out_dir}: the config differs from the checkpoint's in {diff} "
            f"({details}); a resume must use the same settings (only epochs may change), "
            "or start a new run with another --out-dir"
        )
    done = checkpoint["epoch"] + (1 if checkpoint["step_in_epoch"] else 0)
    if config.epochs < done:
        raise ValueError(
            f"cannot resume {out_dir} with epochs={config.epochs}: the checkpoint is in "
            f"or past epoch {done}; give --epochs {done} or more"
        )
    stored = _stored_precision(checkpoint)
    if stored is None:
        return resolve_precision(config.precision)
    if config.precision not in ("auto", stored):
        raise ValueError(
            f"cannot resume {out_dir} with precision={config.precision!r}: the run trains "
            f"in {stored!r}; resume with --precision {stored} or auto"
        )
    return stored
