"""The one model-reference grammar: everything a user may name a model by, resolved to a model.

``resolve_model(ref, **overrides)`` accepts, in this order:

=====================  ==================================================================
kind                   what it is
=====================  ==================================================================
``module``             an ``nn.Module``: returned as it is
``factory``            a callable: called with the overrides
``import``             ``"package.module:factory"``: imported and called with the overrides
``vitres``             a vitres checkpoint: ``x.safetensors`` (+ ``x.json``) or a directory
                       with ``model.safetensors`` + a vitres ``config.json``
``hf``                 a Hugging Face directory: ``config.json`` with ``model_type`` +
                       ``model.safetensors`` or ``pytorch_model.bin``
``timm``               a timm file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) or directory
                       (timm's ``save_for_hf`` layout: ``config.json`` with ``architecture``)
``onnx``               an ONNX graph torch.onnx exported from a Hugging Face ViT / DINOv2
                       (read, never executed; a backbone under a head imports alone)
``big_vision``         a big_vision / Google ViT ``.npz`` (read with numpy, never unpickled;
                       ``arch=`` names its timm architecture)
``bundled``            the name of a reference model shipped with vitres
                       (``fmnist-vit-multires``)
``registry``           a registry name (``vit_small_patch16``): random weights
=====================  ==================================================================

``describe_reference(ref)`` tells which kind a reference is, without loading it. When a
string matches nothing, the error says what was tried and lists the accepted forms.
Foreign weights are never unpickled beyond tensors: ``.bin``/``.pth``/``.pt`` files are
read with ``torch.load(..., weights_only=True)`` only.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitres.models.checkpoint import (
    FORMAT_NAME,
    bundled_models,
    bundled_path,
    load_checked,
    load_model,
    read_safetensors,
    read_safetensors_metadata,
)
from vitres.models.config import ViTConfig
from vitres.models.convert import (
    adapt_state_dict,
    big_vision_heads,
    convert_big_vision_npz,
    convert_hf_state_dict,
    convert_timm_state_dict,
    hf_config_fields,
    hf_family,
    hf_vision_config,
    timm_config_fields,
)
from vitres.models.convert.beit import (
    convert_timm_beit_state_dict,
    is_timm_beit,
    timm_beit_config_fields,
)
from vitres.models.registry import create_model, model_config
from vitres.models.vit import VisionTransformer

ModelRef = str | Path | Callable[..., nn.Module] | nn.Module

FOREIGN_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")
_IMPORT_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

ACCEPTED_FORMS = (
    "an nn.Module or a callable returning one; 'package.module:factory'; "
    "a vitres checkpoint (x.safetensors + x.json, or a directory with model.safetensors + "
    "config.json); a Hugging Face directory (config.json with model_type + model.safetensors "
    "or pytorch_model.bin); a timm file (.safetensors/.pth/.pt/.bin) or directory (config.json "
    "with architecture); a bundled name "
    f"({', '.join(bundled_models())}); or a registry name such as vit_small_patch16 "
    "(random weights; see vitres.list_models())"
)


@dataclasses.dataclass(frozen=True)
class Reference:
    """What a model reference was detected as.

    Attributes:
        kind: ``module``, ``factory``, ``import``, ``vitres``, ``hf``, ``timm``,
            ``bundled`` or ``registry``.
        target: the reference as text (a path, a name, ``module:factory``).
        detail: a short human description, for messages.
    """

    kind: str
    target: str
    detail: str


# ----------------------------------------------------------------------------- foreign files
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Reads a foreign weights file: safetensors, or ``.bin``/``.pth``/``.pt`` with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable or corrupt file, or one that holds no flat state dict
            of tensors (the message names the file and says what is wrong).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    if path.suffix not in (".bin", ".pth", ".pt"):
        raise ValueError(
            f"unsupported weights file {path.name}; expected .safetensors, .bin, .pth or .pt"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if zipfile.is_zipfile(path):  # a torch.save archive holding more than tensors
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(
                f"{path} holds Python objects other than tensors, which vitres never "
                f"unpickles (torch.load weights_only=True refused it: {first_line[:200]}); "
                "re-save the state dict alone, or as safetensors"
            ) from None
        raise ValueError(
            f"{path} is not a readable PyTorch weights file (not a torch.save archive); "
            "it is truncated, corrupt, or another kind of file"
        ) from None
    except (RuntimeError, EOFError, IndexError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is not a readable PyTorch weights file ({type(err).__name__}: {err}); it "
            "is truncated, corrupt, or not a torch.save file"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return state


def find_weights(directory: Path) -> Path:
    """The weights file of a Hugging Face / timm directory."""
    for name in WEIGHT_FILE_NAMES:
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(
        f"no weights file ({' or '.join(WEIGHT_FILE_NAMES[:2])}) in {directory}"
    )


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} holds {type(document).__name__}, expected a JSON object")
    return document


def detect_format(path: str | Path) -> str:
    """``"vitres"``, ``"hf"``, ``"timm"`` or ``"big_vision"`` for a local directory or file.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a directory or file of no known format (the message says why).
    """
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        if config.exists():
            document = _read_json(config)
            if document.get("format") == FORMAT_NAME:
                return "vitres"
            if "model_type" in document:
                return "hf"
            if "architecture" in document or "pretrained_cfg" in document:
                return "timm"
        checkpoint = path / "model.json"  # a `vitres train` / `vitres flexify` output folder
        if checkpoint.is_file() and (path / "model.safetensors").is_file():
            if _read_json(checkpoint).get("format") == FORMAT_NAME:
                return "vitres"
        for name in (*WEIGHT_FILE_NAMES, "open_clip_pytorch_model.bin"):
            if (path / name).exists():
                return "timm"
        raise ValueError(
            f"cannot tell the format of {path}: expected a vitres checkpoint, a Hugging Face "
            "directory (config.json with model_type) or timm weights (model.safetensors / "
            "pytorch_model.bin)"
        )
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.suffix == ".safetensors":
        metadata = read_safetensors_metadata(path)
        if "vitres" in metadata or path.with_suffix(".json").exists():
            return "vitres"
        return "timm"
    if path.suffix == ".json":
        return "vitres"
    if path.suffix in (".bin", ".pth", ".pt"):
        return "timm"
    if path.suffix == ".npz":
        return "big_vision"
    if path.suffix == ".onnx":
        return "onnx"
    raise ValueError(
        f"unsupported file {path.name}: expected .safetensors, .json, .bin, .pth or .pt"
    )


# ----------------------------------------------------------------------------- import
def _build_foreign(
    state: dict[str, Tensor], config_fields: dict, overrides: dict, source: str
) -> nn.Module:
    """Builds the source's own geometry, then adapts to the requested one."""
    base = ViTConfig(**config_fields)
    geometry = {k: overrides[k] for k in ("img_size", "patch_size") if k in overrides}
    try:
        target = ViTConfig(**{**config_fields, **overrides})
    except TypeError as err:
        raise ValueError(f"bad override for {source}: {err}") from None
    state = adapt_state_dict(state, base, target) if geometry else state
    model = VisionTransformer(target)
    load_checked(model, state, source)
    return model.eval()


def from_pretrained(path: str | Path, **overrides) -> nn.Module:
    """Loads a local Hugging Face, timm or vitres ViT, auto-detected.

    Args:
        path: a directory or a weights file (or a bundled name). Nothing is downloaded.
        **overrides: config fields. ``img_size`` / ``patch_size`` resample the stored
            position table / PI-resize the patch kernel to make that the new native
            geometry; others (``pos_embed_mode``, ``size_policy``...) change run-time
            behaviour. ``arch``: the timm architecture name of a bare timm weights file
            (required there: vitres does not guess heads, activation or pooling).

    Returns:
        A model in eval mode that reproduces the source's outputs unless overridden.
    """
    reference = bundled_path(str(path)) if not Path(path).exists() else None
    if reference is not None:
        return load_model(reference, **overrides)
    kind = detect_format(path)
    path = Path(path)
    arch = overrides.pop("arch", None)
    if arch is not None and kind not in ("timm", "big_vision"):
        raise ValueError(
            f"arch= names a timm architecture for timm weights; {path} holds {kind} weights, "
            "whose own config says the architecture"
        )
    if kind == "vitres":
        if overrides.keys() & {"img_size", "patch_size"}:
            model = load_model(path)
            if not isinstance(model, VisionTransformer):
                raise ValueError(
                    "changing the native geometry is supported for ViT checkpoints only"
                )
            target = type(model.config).from_dict({**model.config.to_dict(), **overrides})
            state = adapt_state_dict(model.state_dict(), model.config, target)
            new = VisionTransformer(target)
            load_checked(new, state, str(path))
            return new.eval()
        return load_model(path, **overrides)
    if kind == "hf":
        hf = _read_json(path / "config.json")
        family = hf_family(hf_vision_config(hf))  # an unsupported model_type fails here
        weights = find_weights(path)
        vision = hf_vision_config(hf)
        state = convert_hf_state_dict(
            read_state_dict(weights),
            family,
            num_heads=vision.get("num_attention_heads"),
            patch_size=vision.get("patch_size"),
        )
        preprocessor = path / "preprocessor_config.json"
        fields = hf_config_fields(
            hf, state, _read_json(preprocessor) if preprocessor.exists() else None
        )
        return _build_foreign(state, fields, overrides, str(weights))
    if kind == "big_vision":
        return _from_npz(path, arch, overrides)
    if kind == "onnx":
        return from_onnx(path, **overrides)
    # timm: a bare weights file, or timm's save_for_hf directory
    document: dict = {}
    weights = path
    if path.is_dir():
        weights = find_weights(path)
        if (path / "config.json").exists():
            document = _read_json(path / "config.json")
    raw = read_state_dict(weights)
    if "patch_embed.proj.weight" not in raw or not any(k.startswith("blocks.0.") for k in raw):
        raise ValueError(
            f"{weights} is not a timm ViT state dict (no patch_embed.proj.weight / blocks.0.*); "
            f"first keys: {list(raw)[:6]}"
        )
    named = arch or str(document.get("architecture") or "")
    if is_timm_beit(raw, named):  # timm's beit.py (BEiT, BEiT v2)
        fields = timm_beit_config_fields(raw, document, named)
        state = convert_timm_beit_state_dict(raw)
    else:
        fields = timm_config_fields(raw, document, num_heads=overrides.get("num_heads"), arch=arch)
        state = convert_timm_state_dict(raw, document, arch)
    return _build_foreign(state, fields, overrides, str(weights))


def from_onnx(path: str | Path, **overrides: Any) -> nn.Module:
    """Imports the ViT inside an ONNX graph that ``torch.onnx`` exported from a Hugging
    Face ViT or DINOv2 model (alone, or as the ``backbone`` of a larger model), from its
    initializers and constants; the graph is never executed. Parameters of other modules
    (a decoder, a head) are dropped, with a warning that names them. A graph does not
    record its input normalisation: the family's usual mean and std are used, with a
    warning, unless ``mean=`` and ``std=`` are given.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable ONNX file, no ViT in it, or parameters that cannot be
            mapped (named).
    """
    import warnings

    import onnx
    from google.protobuf.message import DecodeError

    from vitres.models.convert.onnx_graph import onnx_to_hf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable ONNX file ({type(err).__name__}: {err}); it is "
            "truncated, corrupt, or another kind of file"
        ) from None
    imported = onnx_to_hf(proto)
    if imported.dropped:
        shown = ", ".join(imported.dropped[:4]) + (" ..." if len(imported.dropped) > 4 else "")
        warnings.warn(
            f"{path.name}: imported the ViT under {imported.prefix or 'the top level'!r}; "
            f"dropped {len(imported.dropped)} parameter(s) of other modules ({shown})",
            stacklevel=2,
        )
    family = hf_family(imported.config)
    state = convert_hf_state_dict(
        imported.state, family, num_heads=imported.config["num_attention_heads"]
    )
    fields = hf_config_fields(imported.config, state)
    if "mean" not in overrides or "std" not in overrides:
        warnings.warn(
            f"{path.name}: the graph does not record the normalisation its inputs had; "
            f"vitres's data pipelines (eval, sweep, probe) use the usual {family} values, "
            f"mean {fields['mean']} and std {fields['std']}; pass mean=..., std=... if the "
            "model was trained with others",
            stacklevel=2,
        )
    return _build_foreign(state, fields, overrides, str(path))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (numpy, ``allow_pickle=False``: nothing is unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is not a readable .npz of arrays ({type(err).__name__}: {err}); vitres "
            "reads numpy arrays only, never pickled objects"
        ) from None


def _from_npz(path: Path, arch: str | None, overrides: dict) -> nn.Module:
    """A big_vision / Google ViT ``.npz``: its arrays in timm's layout, the function from
    the named timm architecture, the head count from the attention kernels."""
    if not arch:
        raise ValueError(
            f"{path.name} is a big_vision / Google ViT .npz, which does not record its "
            "activation, norm eps or pooling; pass its timm architecture, e.g. "
            "vitres.from_pretrained(path, arch='vit_base_patch16_224') (ViT) or "
            "arch='vit_base_patch16_siglip_224' (SigLIP)"
        )
    arrays = read_npz(path)
    state = convert_big_vision_npz(arrays)
    heads = overrides.pop("num_heads", None) or big_vision_heads(arrays)
    fields = timm_config_fields(state, None, num_heads=heads, arch=arch)
    return _build_foreign(convert_timm_state_dict(state), fields, overrides, str(path))


# ----------------------------------------------------------------------------- the grammar
def _is_registry_name(name: str) -> bool:
    try:
        model_config(name)
    except (ValueError, TypeError):
        return False
    return True


def describe_reference(ref: ModelRef) -> Reference:
    """What kind of model reference ``ref`` is, without loading weights.

    Raises:
        ValueError: a string that matches no accepted form (the message lists them).
        FileNotFoundError: a path-like string (a ``/`` or a weights suffix) that does not exist.
    """
    if isinstance(ref, nn.Module):
        return Reference("module", type(ref).__name__, f"an in-memory {type(ref).__name__}")
    if callable(ref) and not isinstance(ref, (str, Path)):
        name = f"{getattr(ref, '__module__', '?')}:{getattr(ref, '__qualname__', repr(ref))}"
        return Reference("factory", name, f"the factory {name}")
    if not isinstance(ref, (str, Path)):
        raise ValueError(
            f"a model reference must be a string, a path, a module or a callable, got "
            f"{type(ref).__name__}; accepted: {ACCEPTED_FORMS}"
        )
    text = str(ref)
    path = Path(ref)
    if path.exists():
        kind = detect_format(path)
        what = {
            "vitres": "a vitres checkpoint",
            "timm": "timm weights",
            "big_vision": "a big_vision .npz",
            "onnx": "an ONNX graph",
        }.get(kind)
        if kind == "hf":
            model_type = _read_json(path / "config.json").get("model_type")
            what = f"a Hugging Face {model_type} directory"
        return Reference(kind, text, f"{what} at {path}")
    if isinstance(ref, str) and _IMPORT_REF.match(text):
        return Reference("import", text, f"the factory {text}")
    if bundled_path(text) is not None:
        return Reference("bundled", text, f"the bundled reference model {text}")
    if _is_registry_name(text):
        return Reference("registry", text, f"the registry model {text} (random weights)")
    tried = "no file or directory of that name, not 'module:factory', not a bundled name, not a registry name"
    if "/" in text or "\\" in text or path.suffix in (*FOREIGN_SUFFIXES, ".json"):
        raise FileNotFoundError(f"no such file or directory: {text} ({tried})")
    raise ValueError(f"cannot resolve model {text!r}: {tried}. Accepted: {ACCEPTED_FORMS}")


def _check_factory(factory: Any, target: str) -> None:
    """Refuses, before calling it, what cannot be a model factory: a built-in (``os:system``),
    a class that is not an ``nn.Module``, or anything not callable. A Python function is
    called, and its result checked."""
    import inspect

    if inspect.isclass(factory):
        if issubclass(factory, nn.Module):
            return
        what = f"the class {factory.__name__}, not an nn.Module"
    elif inspect.isfunction(factory) or inspect.ismethod(factory):
        return
    elif callable(factory) and not inspect.isbuiltin(factory):
        return  # e.g. functools.partial of a factory
    else:
        what = "a built-in function" if inspect.isbuiltin(factory) else type(factory).__name__
    raise ValueError(
        f"{target} is {what}, not a model factory; give package.module:function (a Python "
        "function returning an nn.Module) or an nn.Module class"
    )


def resolve_model(ref: ModelRef, **overrides: Any) -> nn.Module:
    """The model a reference stands for (see the module docstring for the grammar).

    Args:
        ref: a module, a factory, ``"package.module:factory"``, a checkpoint or weights
            path, a bundled name, or a registry name.
        **overrides: config fields (``pos_embed_mode="fourier"``, ``num_classes=10`` for a
            registry name...), or the factory's keyword arguments.

    Returns:
        The model; loaded models are in eval mode.

    Raises:
        ValueError / FileNotFoundError: the reference matches nothing, or loading it failed;
            the message says what was tried.
    """
    reference = describe_reference(ref)
    if reference.kind == "module":
        if overrides:
            raise ValueError(
                f"cannot apply overrides {sorted(overrides)} to an already built "
                f"{type(ref).__name__}; pass a name, a path or a factory instead"
            )
        return ref  # type: ignore[return-value]
    if reference.kind == "factory":
        return ref(**overrides)  # type: ignore[operator]
    if reference.kind == "import":
        module_name, _, attribute = reference.target.partition(":")
        try:
            factory: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                factory = getattr(factory, part)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import {reference.target!r}: {err}") from None
        _check_factory(factory, reference.target)
        model = factory(**overrides)
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"{reference.target} returned {type(model).__name__}, expected an nn.Module"
            )
        return model
    if reference.kind == "registry":
        return create_model(reference.target, **overrides)
    if reference.kind == "bundled":
        return load_model(reference.target, **overrides)
    return from_pretrained(reference.target, **overrides)


__all__ = [
    "ACCEPTED_FORMS",
    "ModelRef",
    "Reference",
    "describe_reference",
    "detect_format",
    "find_weights",
    "from_onnx",
    "from_pretrained",
    "read_state_dict",
    "resolve_model",
]
