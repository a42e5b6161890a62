"""Training checkpoints: crash-safe writes, optimiser state as tensors, and the run folder.

A checkpoint is safetensors for the weights and the flattened AdamW state, plus one
JSON document (position, RNG state, config, the epoch's running sums, the recipe's
state, the log) that is written last, atomically, and names the tensor files it belongs
to: a crash at any moment leaves the previous checkpoint whole. Every file is written
through :func:`vitres.models.durable.durable_write` (``<name>.partial``, fsync, rename,
folder fsync); the partial files a ``kill -9`` can leave behind are removed the next time
a run starts in that folder (:func:`remove_stale_files`), with the tensor files no
checkpoint points at.

Nothing here is unpickled: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vitres.models.durable import durable_write, durable_write_text, remove_partials

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "LOG_FILE",
    "MODEL_FILE",
    "atomic_write_text",
    "clear_run",
    "decode_rng",
    "encode_rng",
    "flatten_optimizer_state",
    "load_checkpoint",
    "remove_stale_files",
    "run_files",
    "save_checkpoint",
    "unflatten_optimizer_state",
]

CHECKPOINT_FILE = "checkpoint.json"
LOG_FILE = "log.jsonl"
MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model.json"
CHECKPOINT_FORMAT = "vitres-train-checkpoint"
CHECKPOINT_VERSION = 2
# what versions before the durable writes named their temporary files; still cleaned up
LEGACY_TEMP_SUFFIX = ".tmp"
# tensor files of a checkpoint: ckpt-<global step>.{model,optim}.safetensors
TENSOR_GLOB = "ckpt-*.safetensors"
# every file name a run writes, as globs; a partial file is one of these + ".partial"
_RUN_GLOBS = (CHECKPOINT_FILE, LOG_FILE, MODEL_FILE, MODEL_CONFIG_FILE, TENSOR_GLOB)


def encode_rng(state: Tensor) -> str:
    """A torch RNG state (uint8 tensor) as base64 text."""
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> Tensor:
    """Inverse of :func:`encode_rng`."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """AdamW state as ``{"state.<param index>.<key>": tensor}`` plus JSON-ready group settings."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    for index, slots in state_dict["state"].items():
        for key, value in slots.items():
            tensor = value if isinstance(value, Tensor) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = tensor.detach().contiguous().cpu()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
        for group in state_dict["param_groups"]
    ]
    return tensors, {"param_groups": groups}


def unflatten_optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` durably (partial file, fsync, rename, folder fsync)."""
    durable_write_text(path, text)


def _atomic_save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    durable_write(path, lambda tmp: save_file(tensors, str(tmp)))


def run_files(out_dir: Path) -> list[Path]:
    """The files of a training run present in ``out_dir`` (checkpoint, log, tensors, model)."""
    found: set[Path] = set()
    for pattern in _RUN_GLOBS:
        found.update(out_dir.glob(pattern))
    return sorted(found)


def _remove_temp_files(out_dir: Path) -> list[Path]:
    removed = remove_partials(out_dir, _RUN_GLOBS)
    for pattern in _RUN_GLOBS:
        for path in out_dir.glob(pattern + LEGACY_TEMP_SUFFIX):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_stale_files(out_dir: Path) -> list[Path]:
    """Removes what an interrupted write leaves in ``out_dir``; returns the removed paths.

    That is every partial file of the run's own naming (``checkpoint.json.partial``,
    ``log.jsonl.partial``, ``ckpt-*.safetensors.partial``, ``model.safetensors.partial``
    ..., and the ``.tmp`` files of earlier versions) and the
    checkpoint tensor files the current ``checkpoint.json`` does not name (written by a
    save that was killed before its JSON). Other files in the folder are left alone.
    """
    removed = _remove_temp_files(out_dir)
    keep: set[str] = set()
    document = _read_document(out_dir)
    if document is not None:
        keep = {document["model_file"], document["optimizer_file"]}
    for path in out_dir.glob(TENSOR_GLOB):
        if path.name not in keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return sorted(removed)


def clear_run(out_dir: Path) -> list[Path]:
    """Deletes the run in ``out_dir`` (its files and temporary files only); returns them."""
    removed = _remove_temp_files(out_dir)
    for path in run_files(out_dir):
        path.unlink(missing_ok=True)
        removed.append(path)
    return sorted(removed)


def save_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    position: dict,
    config: dict,
    log: list[dict],
    extra: dict | None = None,
) -> Path:
    """Writes weights and optimiser tensors, then the JSON that points at them, atomically.

    Args:
        out_dir: the run folder.
        model: the model being trained.
        optimizer: its optimiser.
        position: where training resumes: ``epoch``, ``step_in_epoch``,
            ``images_in_epoch``, ``global_step``, ``images_done``, ``train_seconds`` and
            the running sums of the epoch so far (``epoch_sums``).
        config: the run's config as a dict (with the precision resolved).
        log: the log records so far.
        extra: more JSON fields (``recipe``, ``precision``, ``recipe_state`` ...).

    Returns:
        The path of the checkpoint JSON. Older tensor files are removed after it is written.
    """
    tag = f"{position['global_step']:09d}"
    model_file, optim_file = f"ckpt-{tag}.model.safetensors", f"ckpt-{tag}.optim.safetensors"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_save_tensors(state, out_dir / model_file)
    optim_tensors, optim_meta = flatten_optimizer_state(optimizer)
    _atomic_save_tensors(optim_tensors, out_dir / optim_file)
    document = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        **position,
        **(extra or {}),
        "model_file": model_file,
        "optimizer_file": optim_file,
        "optimizer": optim_meta,
        "model_config": model.config.to_dict(),
        "rng": {"torch": encode_rng(torch.get_rng_state())},
        "train_config": config,
        "log": log,
    }
    atomic_write_text(out_dir / CHECKPOINT_FILE, json.dumps(document) + "\n")
    for old in out_dir.glob(TENSOR_GLOB):
        if old.name not in (model_file, optim_file):
            old.unlink(missing_ok=True)
    return out_dir / CHECKPOINT_FILE


def _read_document(out_dir: Path) -> dict | None:
    path = out_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); it was not written by vitres or is "
            "damaged: move it away, or start again with --overwrite"
        ) from None
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a vitres training checkpoint (no format field)")
    return document


def load_checkpoint(out_dir: Path) -> dict | None:
    """The checkpoint document of ``out_dir`` with its tensors loaded, or ``None``.

    Version-1 checkpoints (before the epoch sums and image counts were stored) get the
    missing position fields filled in from the step counts.
    """
    out_dir = Path(out_dir)
    document = _read_document(out_dir)
    if document is None:
        return None
    for name in ("model_file", "optimizer_file"):
        if not (out_dir / document[name]).exists():
            raise FileNotFoundError(
                f"{out_dir / CHECKPOINT_FILE} names {document[name]}, which is missing; "
                "the run folder is incomplete: start again with --overwrite"
            )
    document["model_state"] = load_file(str(out_dir / document["model_file"]))
    document["optimizer_state"] = unflatten_optimizer_state(
        load_file(str(out_dir / document["optimizer_file"])), document["optimizer"]
    )
    if document.get("version", 1) < 2:
        batch = int(document["train_config"].get("batch_size", 1))
        document.setdefault("images_in_epoch", document["step_in_epoch"] * batch)
        document.setdefault("images_done", document["global_step"] * batch)
    return document
