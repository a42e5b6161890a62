"""vitres's own checkpoint format: safetensors weights plus a JSON config.

* ``save_model`` writes ``name.safetensors`` and ``name.json`` (or ``dir/model.safetensors``
  and ``dir/config.json``); the config document is also embedded in the safetensors
  metadata, so the weights file alone is self-contained.
* ``load_model`` reads them back, or a bundled reference model by name
  (``fmnist-vit-multires``). Nothing is ever unpickled.

Foreign weights (Hugging Face, timm) are imported by :func:`vitres.models.resolve.from_pretrained`
through the mappings of :mod:`vitres.models.convert`; :func:`vitres.models.resolve.resolve_model`
is the one grammar that accepts every kind of model reference.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from vitres.models.config import MixerConfig, ViTConfig
from vitres.models.durable import durable_write, durable_write_text
from vitres.models.registry import build_from_config

FORMAT_NAME = "vitres"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
CHECKPOINT_SUFFIXES = (".safetensors", ".json")
_ARCHS: dict[str, type] = {"vit": ViTConfig, "mixer": MixerConfig}


def _arch_of(config: ViTConfig | MixerConfig) -> str:
    return "vit" if isinstance(config, ViTConfig) else "mixer"


def _paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, config)`` paths: ``x.safetensors`` + ``x.json``, or ``dir/model.safetensors`` + ``dir/config.json``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / "model.safetensors", path / "config.json"


def bundled_models() -> list[str]:
    """Names of the reference models shipped with vitres (``load_model(name)`` loads one)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def bundled_path(name: str) -> Path | None:
    """The weights file of a bundled reference model, or ``None`` when ``name`` is not one."""
    if not name or "/" in name or "\\" in name:
        return None
    candidate = WEIGHTS_DIR / f"{name}.safetensors"
    return candidate if candidate.exists() else None


def save_model(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Saves ``model`` as safetensors weights plus a JSON config.

    Args:
        model: a :class:`VisionTransformer` or :class:`MlpMixer`.
        path: ``name.safetensors`` (config goes to ``name.json``) or a directory.
        metadata: extra JSON-serialisable facts to keep (training recipe, accuracy).

    Returns:
        The weights file written.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, (ViTConfig, MixerConfig)):
        raise ValueError(f"save_model needs a vitres model, got {type(model).__name__}")
    weights_path, config_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": _arch_of(config),
        "config": config.to_dict(),
        "metadata": metadata or {},
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp), metadata={"vitres": json.dumps(document)})
        _chmod_like_open(tmp)

    durable_write(weights_path, write)
    durable_write_text(config_path, json.dumps(document, indent=2) + "\n")
    return weights_path


def _chmod_like_open(path: Path) -> None:
    """safetensors creates files 0600; give them the mode ``open()`` would (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _unreadable(path: Path, err: Exception) -> ValueError:
    size = path.stat().st_size if path.exists() else 0
    return ValueError(
        f"{path} is not a readable safetensors file ({size} bytes; {err}); it is truncated "
        "or corrupt: re-download or re-save it"
    )


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Reads all tensors and the string metadata of a safetensors file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid safetensors (named, with the reason).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise _unreadable(path, err) from None
    return tensors, metadata


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``ValueError`` naming it when unreadable)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise _unreadable(path, err) from None


def _checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, config)`` paths of a checkpoint path or bundled reference name."""
    reference = bundled_path(str(path)) if not Path(path).exists() else None
    return _paths(reference or path)


def checkpoint_digest(path: str | Path) -> str | None:
    """Short SHA-256 of the weights file of a vitres checkpoint (a path or a bundled name),
    or ``None`` when ``path`` names no such file (registry names, factories, folders of
    other formats)."""
    try:
        weights_path, _ = _checkpoint_paths(path)
    except (OSError, ValueError):
        return None
    if not weights_path.is_file():
        return None
    digest = hashlib.sha256()
    with open(weights_path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _not_a_checkpoint(path: Path) -> ValueError:
    return ValueError(
        f"{path} is not a vitres checkpoint (those are name.safetensors + name.json, or a "
        "directory with model.safetensors + config.json). To import Hugging Face or timm "
        "weights use vitres.from_pretrained(path); vitres.models.resolve_model(path) "
        "accepts every kind of model reference"
    )


def load_model(path: str | Path, **overrides) -> nn.Module:
    """Loads a vitres checkpoint (a path, or a bundled reference name like ``fmnist-vit-multires``).

    Args:
        path: ``x.safetensors``, its ``x.json``, a checkpoint directory, or a bundled name.
        **overrides: run-time config fields to change, e.g. ``pos_embed_mode="fourier"``.

    Raises:
        FileNotFoundError: nothing at ``path`` (the message lists the bundled names).
        ValueError: ``path`` is another kind of file, is corrupt, or does not match its config.
    """
    given = Path(path)
    if bundled_path(str(path)) is None and given.suffix and given.suffix not in CHECKPOINT_SUFFIXES:
        if not given.exists():
            raise FileNotFoundError(f"no such file: {given}")
        if not given.is_dir():
            raise _not_a_checkpoint(given)
    weights_path, config_path = _checkpoint_paths(path)
    if not weights_path.exists():
        if given.is_dir():
            raise (
                _not_a_checkpoint(given)
                if any(given.iterdir())
                else FileNotFoundError(f"{given} is an empty directory, not a vitres checkpoint")
            )
        raise FileNotFoundError(
            f"no vitres checkpoint at {path!s} (looked for {weights_path}); bundled models: "
            f"{bundled_models()}"
        )
    state, metadata = read_safetensors(weights_path)
    if config_path.exists():
        try:
            document = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    elif "vitres" in metadata:
        document = json.loads(metadata["vitres"])
    else:
        raise ValueError(
            f"{weights_path} has no vitres config ({config_path} missing, no metadata); "
            "if it holds timm weights, use vitres.from_pretrained"
        )
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        fmt = document.get("format") if isinstance(document, dict) else None
        raise ValueError(
            f"{config_path} is not a vitres config (format={fmt!r}); for Hugging Face or timm "
            "directories use vitres.from_pretrained"
        )
    config_cls = _ARCHS.get(document.get("arch"))
    if config_cls is None:
        raise ValueError(
            f"unknown arch {document.get('arch')!r} in {config_path}; expected {list(_ARCHS)}"
        )
    config = config_cls.from_dict({**document["config"], **overrides})
    model = build_from_config(config)
    load_checked(model, state, str(weights_path))
    model.metadata = document.get("metadata", {})
    return model.eval()


def load_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict`` after checking key sets and shapes, with a readable error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights in {source} do not match the model: {len(expected)} keys expected, "
            f"{len(state)} found; missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"shape mismatch loading {source} (file vs model): {bad[:8]}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


_load_checked = load_checked  # old private name


def __getattr__(name: str):
    """Names that moved to :mod:`vitres.models.convert` / :mod:`vitres.models.resolve`."""
    moved = {
        "from_pretrained": "resolve",
        "detect_format": "resolve",
        "read_state_dict": "resolve",
        "adapt_state_dict": "convert",
        "convert_hf_vit_state_dict": "convert",
        "convert_timm_vit_state_dict": "convert",
    }
    if name in moved:
        import importlib

        return getattr(importlib.import_module(f"vitres.models.{moved[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT_NAME",
    "WEIGHTS_DIR",
    "bundled_models",
    "bundled_path",
    "checkpoint_digest",
    "load_checked",
    "load_model",
    "read_safetensors",
    "save_model",
]
