"""FLOPs of one forward pass: counted, and in closed form.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``, corrected for
``scaled_dot_product_attention`` (which the counter does not count on CPU), and
cross-checked against a closed form for ViT (Dosovitskiy et al., ICLR 2021) and
MLP-Mixer (Tolstikhin et al., NeurIPS 2021). A multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from vitres.layers.patch_embed import token_grid
from vitres.layers.pos_embed import to_grid

# Attention ops, and where their query/key/value tensors keep the sequence axis:
# ``bhne`` = (B, heads, N, head_dim); ``bnhe`` = (B, N, heads, head_dim). Under
# ``inference_mode`` the composite ``scaled_dot_product_attention`` itself reaches the
# dispatch modes; otherwise the fused kernel it selects does.
_ATTENTION_OPS = {
    "aten::scaled_dot_product_attention": "bhne",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "bhne",
    "aten::_scaled_dot_product_flash_attention": "bhne",
    "aten::_scaled_dot_product_efficient_attention": "bhne",
    "aten::_scaled_dot_product_cudnn_attention": "bhne",
    "aten::_scaled_dot_product_fused_attention_overrideable": "bhne",
    "aten::_flash_attention_forward": "bnhe",
    "aten::_efficient_attention_forward": "bnhe",
}


def attention_flops(
    q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], layout: str = "bhne"
) -> int:
    """FLOPs of ``softmax(Q Kᵀ) V``: ``2·B·H·Nq·Nk·E`` for QKᵀ plus ``2·B·H·Nq·Nk·Ev`` for AV.

    With ``E == Ev`` this is ``4·B·heads·Nq·Nk·head_dim``. Softmax and scaling are not
    counted (as for every other elementwise op).
    """
    seq_axis = -2 if layout == "bhne" else 1
    rows = math.prod(q_shape[:-1])  # B·H·Nq, whatever the layout
    n_k = k_shape[seq_axis]
    return 2 * rows * n_k * q_shape[-1] + 2 * rows * n_k * v_shape[-1]


class _AttentionCorrection(TorchDispatchMode):
    """Runs above a ``FlopCounterMode``: for every attention call, replaces what the
    counter added during that call (0 on CPU; the full term for kernels it knows; the
    ``bmm`` terms if the call decomposes into the math path) by the exact attention term."""

    def __init__(self, counter: FlopCounterMode) -> None:
        super().__init__()
        self.counter = counter
        self.correction = 0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        schema = getattr(func, "_schema", None)
        layout = None if schema is None else _ATTENTION_OPS.get(schema.name)
        if layout is None:
            return func(*args, **(kwargs or {}))
        before = self.counter.get_total_flops()
        out = func(*args, **(kwargs or {}))
        counted = self.counter.get_total_flops() - before
        q, k, v = args[0], args[1], args[2]
        self.correction += attention_flops(q.shape, k.shape, v.shape, layout) - counted
        self.calls += 1
        return out


def count_flops(model: nn.Module, x: Tensor, **kwargs: Any) -> int:
    """FLOPs of ``model(x, **kwargs)`` (a multiply-add = 2 FLOPs), attention included.

    ``FlopCounterMode`` counts matmuls and convolutions, and fused attention only on the
    kernels it knows (CUDA flash/efficient); on CPU ``scaled_dot_product_attention`` is
    counted as 0. A dispatch mode above the counter intercepts every attention call and
    replaces whatever the counter added during it by ``4·B·heads·Nq·Nk·head_dim``, so
    attention is counted exactly once whether or not the counter knows the kernel.
    Elementwise ops, norms, softmax and pooling are not counted.
    """
    counter = FlopCounterMode(display=False)
    # The counter's module tracker hooks autograd on inputs that require grad, which
    # fails under inference_mode when a module is handed parameters as inputs.
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.inference_mode(), counter:
            correction = _AttentionCorrection(counter)
            with correction:
                model(x, **kwargs)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return int(counter.get_total_flops() + correction.correction)


def analytic_flops(
    config: Any,
    resolution: int | Sequence[int],
    patch_size: int | None = None,
    batch: int = 1,
    grid: tuple[int, int] | None = None,
) -> int:
    """Closed-form FLOPs of a ViT or MLP-Mixer forward pass (a multiply-add = 2 FLOPs).

    With ``N`` patch tokens on a ``gh × gw`` grid, ``T = N + prefix`` tokens, width ``D``,
    MLP hidden ``Dh = int(D · mlp_ratio)``, ``C`` input channels and patch ``p``:

    - patch embedding (a ``p × p`` stride-``p`` conv): ``2·N·C·p²·D``
    - ViT block: qkv ``2·T·D·3D`` + QKᵀ and AV ``4·T²·D`` + proj ``2·T·D²`` + MLP ``4·T·D·Dh``
    - Mixer block: token MLP ``4·D·N·tokens_mlp_dim`` + channel MLP ``4·N·D·channels_mlp_dim``
    - head: ``2·D·num_classes``

    Biases, norms, activations, softmax, pooling and position-embedding generators
    (``cpb``/``mlp`` position embeddings) are not counted, matching the counter.

    Args:
        config: The model's ``ViTConfig`` or ``MixerConfig`` (a Mixer is recognised by
            its ``tokens_mlp_dim`` field).
        resolution: Input ``(H, W)`` or one int for a square.
        patch_size: Patch size used; ``None`` = ``config.patch_size``.
        batch: Images.
        grid: Token grid, if known (``model.grid_size``); otherwise derived from the
            config's ``size_policy`` (default ``pad``: round up).
    """
    patch = int(to_grid(patch_size if patch_size is not None else config.patch_size)[0])
    if grid is None:
        grid = token_grid(to_grid(resolution), patch, getattr(config, "size_policy", "pad"))
    n = grid[0] * grid[1]
    dim = int(config.embed_dim)
    flops = 2 * n * int(config.in_chans) * patch * patch * dim
    if hasattr(config, "tokens_mlp_dim"):
        per_block = 4 * dim * n * int(config.tokens_mlp_dim) + 4 * n * dim * int(
            config.channels_mlp_dim
        )
    else:
        prefix = int(bool(getattr(config, "class_token", True))) + int(
            getattr(config, "reg_tokens", 0)
        )
        t = n + prefix
        hidden = int(dim * float(getattr(config, "mlp_ratio", 4.0)))
        per_block = (
            2 * t * dim * 3 * dim + 4 * t * t * dim + 2 * t * dim * dim + 4 * t * dim * hidden
        )
    flops += int(config.depth) * per_block
    flops += 2 * dim * int(getattr(config, "num_classes", 0) or 0)
    return int(batch * flops)
