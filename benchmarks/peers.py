"""The runtimes a user would compare vitres against, each set up the way its own docs say.

Used by ``benchmarks/backends.py``; every peer is a ``run(x) -> logits`` callable with its
build time, and every peer's logits are checked against the vitres model at the shape it
is built for (``max_abs_diff``), so a fast peer that computes something else shows.

* ``peer:openvino-fp32`` / ``peer:openvino-bf16``: ``openvino.convert_model`` on the
  PyTorch model with an example input (OpenVINO's own PyTorch converter, TorchScript
  tracing), a static input shape per (resolution, batch) -- its fastest setting --, and
  the ``f32`` / ``bf16`` inference precision hint.
* ``peer:onnxruntime``: a plain ``onnxruntime.InferenceSession`` on the file
  ``vitres export`` writes, with the thread count set and ORT's default optimisations.
* ``peer:openvino-int8``: OpenVINO's own INT8 -- ``openvino.convert_model`` as above, then
  NNCF post-training quantisation (``nncf.quantize`` with ``model_type=TRANSFORMER``, the
  recipe OpenVINO's docs give for transformers) at the same static shape, calibrated on
  the images vitres's own INT8 backends see at that resolution.
* ``peer:onnxruntime-int8``: ONNX Runtime's static INT8 on the same exported file, set up
  as its docs say: ``quant_pre_process``, then ``quantize_static`` (QDQ, its default
  MinMax calibration, every op it can quantise) with a ``CalibrationDataReader`` over the
  same calibration images.
* ``peer:hf-sdpa-fp32`` / ``peer:hf-sdpa-bf16``: Hugging Face ``transformers``
  ``ViTForImageClassification`` with ``attn_implementation="sdpa"``, in fp32 and cast to
  bf16. Its random weights (the same config as the vitres model) are loaded into the
  vitres model too (:func:`vitres.models.checkpoint.convert_hf_vit_state_dict`), so both
  compute the same function. ViTs with a class token only (HF ViT has no average pooling).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PEER_NAMES = (
    "peer:openvino-fp32",
    "peer:openvino-bf16",
    "peer:openvino-int8",
    "peer:onnxruntime",
    "peer:onnxruntime-int8",
    "peer:hf-sdpa-fp32",
    "peer:hf-sdpa-bf16",
)


def hf_twin(model: nn.Module, seed: int = 0) -> tuple[nn.Module, nn.Module] | None:
    """A Hugging Face ViT of ``model``'s config with random weights, and ``model`` with
    those weights loaded; ``None`` for models HF ViT cannot express (average pooling,
    register tokens, no class token, another position embedding)."""
    from transformers import ViTConfig, ViTForImageClassification

    from vitres.models.checkpoint import convert_hf_vit_state_dict

    cfg = model.config
    if (
        cfg.global_pool != "token"
        or not cfg.class_token
        or cfg.reg_tokens
        or cfg.pos_embed != "learned"
        or not cfg.qkv_bias
    ):
        return None
    height, width = (int(v) for v in cfg.img_size)
    config = ViTConfig(
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        image_size=height if height == width else (height, width),
        patch_size=int(cfg.patch_size),
        num_channels=cfg.in_chans,
        num_labels=cfg.num_classes,
        layer_norm_eps=cfg.norm_eps,
        hidden_act="gelu",
        qkv_bias=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    hf = ViTForImageClassification(config).eval()
    state = convert_hf_vit_state_dict(hf.state_dict())
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise RuntimeError(f"HF -> vitres weights: missing {missing}, unexpected {unexpected}")
    return hf, model.eval()


def max_abs_diff(
    run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor
) -> float:
    """Largest absolute logit difference between ``run(x)`` and the vitres model."""
    with torch.inference_mode():
        expected = model(x).float()
    got = run(x).float()
    return float((got - expected).abs().max())


def openvino_direct(
    model: nn.Module, shape: tuple[int, ...], threads: int
) -> dict[str, dict[str, Any]]:
    """Both OpenVINO peers for one static ``shape``: ``{name: {"run", "build_time_s", ...}}``."""
    import openvino as ov

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=x, input=[ov.PartialShape(list(shape))])
    convert = time.perf_counter() - start
    peers = {}
    for name, hint in (("peer:openvino-fp32", "f32"), ("peer:openvino-bf16", "bf16")):
        start = time.perf_counter()
        compiled = ov.Core().compile_model(
            converted,
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": hint,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
            },
        )
        request = compiled.create_infer_request()

        def run(batch: torch.Tensor, request: Any = request) -> torch.Tensor:
            return torch.from_numpy(request.infer({0: batch.numpy()}, share_outputs=False)[0])

        peers[name] = {
            "run": run,
            "build_time_s": convert + time.perf_counter() - start,
            "max_abs_diff": max_abs_diff(run, model, x),
            "precision": "bf16" if hint == "bf16" else "fp32",
        }
    return peers


def onnxruntime_on_file(path: Path, threads: int) -> dict[str, Any]:
    """A plain ONNX Runtime session on an exported file (the peer a user sets up)."""
    import onnxruntime as ort

    start = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(batch.numpy())})[0])

    return {"run": run, "build_time_s": time.perf_counter() - start, "precision": "fp32"}


def static_batches(batches: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """``batches`` re-cut into batches of exactly ``batch`` images (a static-shape model
    takes no other); a remainder smaller than ``batch`` is dropped."""
    images = np.concatenate(batches)
    whole = len(images) // batch
    if whole == 0:
        raise ValueError(f"{len(images)} calibration images cannot fill one batch of {batch}")
    return [images[i * batch : (i + 1) * batch] for i in range(whole)]


def openvino_int8(
    model: nn.Module, shape: tuple[int, ...], threads: int, calibration: list[np.ndarray]
) -> dict[str, dict[str, Any]]:
    """OpenVINO's own INT8 for one static ``shape``: its PyTorch converter, then NNCF
    post-training quantisation on ``calibration`` (batches at ``shape``'s resolution)."""
    import nncf
    import openvino as ov

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    batches = static_batches(calibration, shape[0])
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=x, input=[ov.PartialShape(list(shape))])
        quantized = nncf.quantize(
            converted,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(batches),
        )
    compiled = ov.Core().compile_model(
        quantized,
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1},
    )
    request = compiled.create_infer_request()

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer({0: batch.numpy()}, share_outputs=False)[0])

    return {
        "peer:openvino-int8": {
            "run": run,
            "build_time_s": time.perf_counter() - start,
            "max_abs_diff": max_abs_diff(run, model, x),
            "precision": "int8",
            "calibration_images": int(sum(len(b) for b in batches)),
        }
    }


class _Reader:
    """ONNX Runtime's calibration interface over a list of image batches."""

    def __init__(self, batches: list[np.ndarray], name: str) -> None:
        self._batches = iter(batches)
        self._name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: np.ascontiguousarray(batch)}


def onnxruntime_int8_file(path: Path, calibration: list[np.ndarray]) -> tuple[Path, float]:
    """ONNX Runtime's static INT8 of the exported ``path`` (its docs' recipe), written next
    to it; returns the file and the seconds it took."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    pre = path.with_name(path.stem + ".peer-pre.onnx")
    out = path.with_name(path.stem + ".peer-int8.onnx")
    try:
        quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
        source = pre
    except Exception:  # noqa: BLE001 - its optional optimisation step; quantise the file as is
        source = path
    name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    quantize_static(str(source), str(out), _Reader(calibration, name), quant_format=QuantFormat.QDQ)
    return out, time.perf_counter() - start


def huggingface_sdpa(hf: nn.Module, model: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """The fp32 and bf16 Hugging Face peers (the vitres ``model`` holds the same weights)."""
    import copy

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    native = tuple(int(v) for v in model.config.img_size)
    interpolate = tuple(shape[2:]) != native
    peers = {}
    for name, dtype in (
        ("peer:hf-sdpa-fp32", torch.float32),
        ("peer:hf-sdpa-bf16", torch.bfloat16),
    ):
        start = time.perf_counter()
        twin = copy.deepcopy(hf).to(dtype).eval()

        def run(batch: torch.Tensor, twin: nn.Module = twin, dtype: torch.dtype = dtype) -> Any:
            with torch.inference_mode():
                out = twin(pixel_values=batch.to(dtype), interpolate_pos_encoding=interpolate)
            return out.logits.float()

        peers[name] = {
            "run": run,
            "build_time_s": time.perf_counter() - start,
            "max_abs_diff": max_abs_diff(run, model, x),
            "precision": "bf16" if dtype == torch.bfloat16 else "fp32",
        }
    return peers
