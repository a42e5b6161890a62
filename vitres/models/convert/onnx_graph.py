"""A ViT inside an ONNX graph exported by ``torch.onnx`` back to a Hugging Face state
dict, read from the graph's initializers without executing it.

``torch.onnx`` keeps most parameter names as initializer names
(``backbone.encoder.layer.0.norm1.weight``). The weights of ``nn.Linear`` layers become
anonymous, transposed initializers (``onnx::MatMul_1966``) that the exporter names by
the node consuming them (``/backbone/encoder/layer.0/attention/attention/query/MatMul``);
they are mapped back by that name and transposed. A Hugging Face DINOv2 export also
splits its position table into the class position (``onnx::Concat_…``, consumed by a
``Concat`` under ``/embeddings``) and the patch positions (``onnx::Reshape_…``, consumed
by a ``Reshape`` there); they are joined again. Facts the weights do not hold are read
from the graph's constants: the head count from the attention's reshape, the LayerNorm
epsilon from its ``Add``, the MLP activation from its ``Erf`` (exact GELU) or ``Tanh``.

Everything else is refused by name: float initializers this mapping does not know, a
model prefix whose weights do not form a supported family. Parameters of another module
beside the backbone (a decoder or a head, ``decoder.*``) are dropped, and the import
says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["OnnxImport", "onnx_to_hf"]

_MATMUL_NODE = re.compile(r"^/(?P<path>.+)/MatMul(?:_\d+)?$")


@dataclass
class OnnxImport:
    """What :func:`onnx_to_hf` read.

    Attributes:
        state: The backbone's state dict under Hugging Face names (prefix removed).
        config: A Hugging Face ``config.json``-like dict (``model_type`` and sizes).
        prefix: The module path of the backbone in the graph (``backbone.`` or ``""``).
        dropped: Parameters of other modules (a head or a decoder) that were left out.
    """

    state: dict[str, Tensor]
    config: dict[str, Any]
    prefix: str
    dropped: list[str] = field(default_factory=list)


def _array(tensor: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _named_weights(graph: Any) -> tuple[dict[str, Tensor], list[str]]:
    """Initializers under their parameter names, ``nn.Linear`` weights recovered from
    their MatMul consumers (transposed), the split position table joined; and the float
    initializers that could not be named."""
    users = _consumers(graph)
    named: dict[str, Tensor] = {}
    positions: dict[str, np.ndarray] = {}
    unknown = []
    for init in graph.initializer:
        value = _array(init)
        if not init.name.startswith("onnx::") and not init.name.startswith("val_"):
            named[init.name] = torch.from_numpy(value.copy())
            continue
        if value.dtype.kind != "f":
            continue  # shapes, indices, axes: not parameters
        nodes = users.get(init.name, [])
        matmul = next((n for n in nodes if n.op_type == "MatMul"), None)
        match = _MATMUL_NODE.match(matmul.name) if matmul is not None else None
        if match and value.ndim == 2:
            key = match.group("path").replace("/", ".") + ".weight"
            named[key] = torch.from_numpy(value.T.copy())
            continue
        embeddings = [n for n in nodes if "/embeddings/" in n.name]
        if embeddings and value.ndim == 3 and value.shape[0] == 1:
            kind = "cls" if value.shape[1] == 1 else "patches"
            module = embeddings[0].name.split("/embeddings/")[0].strip("/").replace("/", ".")
            positions[f"{module}|{kind}"] = value
            continue
        unknown.append(f"{init.name} {list(value.shape)} (used by {[n.name for n in nodes][:2]})")
    for key in {k.split("|")[0] for k in positions}:
        parts = [positions.get(f"{key}|cls"), positions.get(f"{key}|patches")]
        table = np.concatenate([p for p in parts if p is not None], axis=1)
        named[f"{key}.embeddings.position_embeddings".lstrip(".")] = torch.from_numpy(table)
    return named, unknown


def _constant_values(graph: Any) -> dict[str, np.ndarray]:
    """Output name -> value of every ``Constant`` node and initializer."""
    values = {init.name: _array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            values[node.output[0]] = _array(node.attribute[0].t)
    return values


def _heads(graph: Any, scope: str, hidden: int) -> int:
    """The head count, from the shape the attention reshapes q / k / v to: ``[B, N,
    heads, head_dim]`` with both constant, or ``[B, N, -1, head_dim]``."""
    constants = _constant_values(graph)
    shapes: set[str] = set()
    for node in graph.node:
        if node.op_type == "Reshape" and node.name.startswith(scope):
            shapes.add(node.input[1])
    for node in graph.node:
        if node.output and node.output[0] in shapes and node.op_type == "Concat":
            parts = [constants.get(name) for name in node.input]
            tail = [int(p.reshape(-1)[0]) for p in parts[-2:] if p is not None and p.size == 1]
            if len(tail) == 2 and len(parts) == 4:
                heads, head_dim = tail
                if heads == -1 and head_dim > 0 and hidden % head_dim == 0:
                    return hidden // head_dim
                if heads > 0 and heads * head_dim == hidden:
                    return heads
        elif node.output and node.output[0] in shapes and node.output[0] in constants:
            shape = constants[node.output[0]].reshape(-1).tolist()
            if len(shape) == 4 and shape[2] * shape[3] == hidden:
                return int(shape[2])
    raise ValueError(
        f"cannot read the head count from the graph's attention reshapes under {scope} "
        "(no [batch, tokens, heads, head_dim] shape with heads x head_dim = the width)"
    )


def _epsilon(graph: Any, scope: str) -> float:
    for node in graph.node:
        if node.op_type == "LayerNormalization" and node.name.startswith(scope):
            return next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    for node in graph.node:  # opset < 17: LayerNorm decomposed, eps added to the variance
        if node.op_type == "Add" and node.name.startswith(scope):
            for name in node.input:
                for constant in graph.node:
                    if constant.op_type == "Constant" and name in constant.output:
                        array = _array(constant.attribute[0].t)
                        if array.size == 1 and array.dtype.kind == "f":
                            return float(array.reshape(-1)[0])
    raise ValueError(f"cannot read the LayerNorm epsilon under {scope}")


def _activation(graph: Any, scope: str) -> str:
    ops = {n.op_type for n in graph.node if n.name.startswith(scope)}
    if "Gelu" in ops:
        node = next(n for n in graph.node if n.op_type == "Gelu" and n.name.startswith(scope))
        approximate = next((a.s for a in node.attribute if a.name == "approximate"), b"none")
        return "gelu_pytorch_tanh" if approximate == b"tanh" else "gelu"
    if "Erf" in ops:
        return "gelu"
    if "Tanh" in ops:
        return "gelu_pytorch_tanh"
    raise ValueError(f"cannot tell the MLP activation under {scope} (no Erf, Tanh or Gelu)")


def _prefix(names: Iterable[str]) -> str:
    for name in names:
        match = re.match(r"^(.*?)embeddings\.patch_embeddings\.projection\.weight$", name)
        if match:
            return match.group(1)
    raise ValueError(
        "no ViT in this ONNX graph: no embeddings.patch_embeddings.projection.weight among "
        "its parameters (vitres imports graphs torch.onnx exported from Hugging Face ViT and "
        "DINOv2 models)"
    )


def onnx_to_hf(model: Any) -> OnnxImport:
    """The Hugging Face state dict and config of the ViT in ``model`` (an
    ``onnx.ModelProto``), read from initializers and constants; nothing is executed.

    Raises:
        ValueError: no ViT in the graph, parameters that cannot be named, or facts the
            graph does not show (each named).
    """
    graph = model.graph
    named, unknown = _named_weights(graph)
    prefix = _prefix(named)
    state = {k[len(prefix) :]: v for k, v in named.items() if k.startswith(prefix)}
    dropped = sorted(k for k in named if not k.startswith(prefix))
    if unknown:
        raise ValueError(
            f"the ONNX graph holds {len(unknown)} parameter(s) vitres cannot name: "
            f"{unknown[:4]}{' ...' if len(unknown) > 4 else ''} (it reads graphs that "
            "torch.onnx's TorchScript exporter wrote from Hugging Face ViT / DINOv2 models)"
        )
    layer_re = re.compile(r"^((?:encoder\.)?(?:layer|layers)\.)(\d+)\.")
    found = [m for k in state if (m := layer_re.match(k))]
    if not found:
        raise ValueError("the ONNX graph's ViT has no encoder layers (encoder.layer.N.*)")
    layers = sorted({int(m.group(2)) for m in found})
    first = found[0].group(1) + "0."  # e.g. "encoder.layer.0." or "layers.0."
    proj = state["embeddings.patch_embeddings.projection.weight"]
    hidden, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    scope = "/" + (prefix + first).replace(".", "/")  # "/backbone/encoder/layer.0/"
    scope = re.sub(r"/(layer|layers)/(\d+)/$", r"/\1.\2/", scope)
    dinov2 = f"{first}layer_scale1.lambda1" in state
    norm = "norm1" if f"{first}norm1.weight" in state else "layernorm_before"
    mlp = "mlp" if f"{first}mlp.fc1.weight" in state else "intermediate"
    fc1 = state.get(f"{first}mlp.fc1.weight", state.get(f"{first}intermediate.dense.weight"))
    table = state.get("embeddings.position_embeddings")
    grid = int(round((table.shape[1] - 1) ** 0.5)) if table is not None else 0
    config = {
        "model_type": "dinov2" if dinov2 else "vit",
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": _heads(graph, f"{scope}attention/", hidden),
        "num_channels": channels,
        "patch_size": patch,
        "image_size": grid * patch,
        "layer_norm_eps": _epsilon(graph, f"{scope}{norm}/"),
        "hidden_act": _activation(graph, f"{scope}{mlp}/"),
    }
    if fc1 is not None:
        if dinov2:
            config["mlp_ratio"] = fc1.shape[0] / hidden
        else:
            config["intermediate_size"] = int(fc1.shape[0])
    if dinov2:
        config["layerscale_value"] = 1.0
    return OnnxImport(state, config, prefix, dropped)
