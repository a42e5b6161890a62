"""Model configs: what a ViT or an MLP-Mixer is, as typed dataclasses with checked values.

A config describes the architecture and the run-time behaviour that can change without
retraining (how position tables are resampled, what happens to sizes the patch does not
divide). Every config checks its values when it is built and says what was wrong, so a
bad value fails here and not as a ``ZeroDivisionError`` deep inside the model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vitres.layers.mlp import ACTIVATIONS, MLP_KINDS
from vitres.layers.patch_embed import (
    KERNEL_RESIZE_MODES,
    SIZE_POLICIES,
    PatchSize,
    canonical_patch,
    to_patch,
)
from vitres.layers.pos_embed import INTERPOLATION_MODES, to_grid
from vitres.layers.rotary import ROPE_COORDS

ConfigT = TypeVar("ConfigT", bound="ConfigBase")

POS_EMBED_KINDS = ("learned", "sincos", "rope", "cpb", "mlp", "none")
# token: the class token; avg / max / avgmax: of the patch tokens; map: attention pool
# (SigLIP, big_vision); token_avg: [class token, mean of patch tokens] (DINOv2's classifier)
GLOBAL_POOLS = ("token", "avg", "max", "avgmax", "map", "token_avg")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ConfigBase:
    """Mixin for model config dataclasses: the shared fields, their checks and (de)serialisation.

    Subclasses have ``img_size``, ``patch_size``, ``in_chans``, ``num_classes``,
    ``embed_dim``, ``depth``, ``norm_eps``, ``size_policy``, ``kernel_resize_mode``,
    ``mean`` and ``std``.
    """

    def _normalise_common(self) -> None:
        name = type(self).__name__
        try:
            self.img_size = to_grid(self.img_size, "img_size")
            self.patch_size = canonical_patch(self.patch_size)
        except (ValueError, TypeError) as err:
            raise ValueError(f"invalid {name}: {err}") from None
        self._check(
            [
                (_is_int(self.in_chans) and self.in_chans > 0, "in_chans must be a positive int"),
                (
                    _is_int(self.num_classes) and self.num_classes >= 0,
                    "num_classes must be >= 0 (0 = no classifier, the model returns features)",
                ),
                (
                    _is_int(self.embed_dim) and self.embed_dim > 0,
                    "embed_dim must be a positive int",
                ),
                (_is_int(self.depth) and self.depth > 0, "depth must be a positive int"),
                (
                    isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0,
                    "norm_eps must be positive",
                ),
                (self.size_policy in SIZE_POLICIES, f"size_policy must be one of {SIZE_POLICIES}"),
                (
                    self.kernel_resize_mode in KERNEL_RESIZE_MODES,
                    f"kernel_resize_mode must be one of {KERNEL_RESIZE_MODES}",
                ),
            ]
        )
        ph, pw = to_patch(self.patch_size)
        if self.img_size[0] < ph or self.img_size[1] < pw:
            raise ValueError(
                f"invalid {name}: img_size {self.img_size} must hold one {ph}x{pw} patch"
            )
        self.mean = self._per_channel(self.mean, "mean")
        self.std = self._per_channel(self.std, "std")
        if any(not v > 0 for v in self.std):
            raise ValueError(f"invalid {name}: std must be positive, got {self.std}")

    def _per_channel(self, values: Any, what: str) -> tuple[float, ...]:
        """One value per input channel: a single value (or all-equal values) is broadcast."""
        try:
            numbers = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ValueError(
                f"invalid {type(self).__name__}: {what} must be a sequence of numbers, got {values!r}"
            ) from None
        if not numbers or not all(math.isfinite(v) for v in numbers):
            raise ValueError(
                f"invalid {type(self).__name__}: {what} must be finite numbers, got {values!r}"
            )
        if len(numbers) == self.in_chans:
            return numbers
        if len(set(numbers)) == 1:
            return (numbers[0],) * self.in_chans
        raise ValueError(
            f"invalid {type(self).__name__}: {what} has {len(numbers)} values {numbers} but "
            f"in_chans={self.in_chans}; give one value per channel (or a single value)"
        )

    def _check(self, conditions: list[tuple[bool, str]]) -> None:
        for ok, message in conditions:
            if not ok:
                raise ValueError(f"invalid {type(self).__name__}: {message} (got {self})")

    @property
    def patch_hw(self) -> tuple[int, int]:
        """The patch size as a ``(height, width)`` pair."""
        return to_patch(self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """The native token grid ``(rows, cols)``."""
        ph, pw = self.patch_hw
        return (self.img_size[0] // ph, self.img_size[1] // pw)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["img_size"] = list(self.img_size)
        if isinstance(self.patch_size, tuple):
            data["patch_size"] = list(self.patch_size)
        if data.get("rope_ref_grid") is not None:
            data["rope_ref_grid"] = list(data["rope_ref_grid"])
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**data)


@dataclass
class ViTConfig(ConfigBase):
    """Architecture and run-time behaviour of a :class:`~vitres.models.vit.VisionTransformer`.

    ``img_size`` is the native resolution: the learned position table has
    ``img_size // patch_size`` positions per side, and coordinate-based embeddings
    measure positions in units of that grid. Other sizes work at run time.
    ``patch_size`` is an int or a ``(height, width)`` pair (rectangular patches).

    The options after ``drop_path_rate``'s group describe the imported families (names as
    timm's ``VisionTransformer``): ``dist_token`` / ``head_dist`` (DeiT), ``init_values``
    (LayerScale), ``qk_norm``, ``pre_norm`` (CLIP's pre-LayerNorm), ``fc_norm`` (the final
    norm after pooling instead of before; ``None``: after for avg/max/avgmax pools),
    ``act_layer``, ``patch_embed_bias``, ``representation_size`` (a tanh pre-logits
    layer, Hugging Face's pooler) and ``head_bias`` (CLIP's projection has none).
    ``rel_pos_bias`` / ``shared_rel_pos_bias`` add BEiT's learned relative position bias
    tables (per block / shared; :mod:`vitres.layers.rel_pos_table`), beside any
    ``pos_embed`` kind; they need exactly one prefix token, the class token.
    ``final_norm=False``: the model ends without a norm (``fc_norm`` then says nothing).
    """

    img_size: tuple[int, int] = (224, 224)
    patch_size: PatchSize = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    reg_tokens: int = 0
    global_pool: str = "token"
    pos_embed: str = "learned"
    pos_embed_mode: str = "bicubic"
    pos_embed_antialias: bool = False
    pos_embed_prefix: bool = True  # class/register tokens have learned positions (timm/HF)
    # "resize" measured most accurate at sizes the patch does not divide, on both bundled
    # models (benchmarks/size_policy.py: +4 to +18 points over "pad"); imported models set
    # their source's own policy ("crop" for timm and Hugging Face)
    size_policy: str = "resize"
    kernel_resize_mode: str = "bicubic"
    kernel_resize_antialias: bool = True
    norm_eps: float = 1e-6
    rope_theta: float = 100.0
    # None: rotary angles in base-grid patch units (vitres's own RoPE); a number: angles
    # of patch centres normalised to [-1, 1] times this scale (DINOv3: 2 pi)
    rope_scale: float | None = None
    cpb_hidden_dim: int = 256
    drop_path_rate: float = 0.0
    mean: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    std: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    dist_token: bool = False
    head_dist: bool = False
    init_values: float | None = None
    qk_norm: bool = False
    pre_norm: bool = False
    fc_norm: bool | None = None
    act_layer: str = "gelu"
    patch_embed_bias: bool = True
    representation_size: int = 0
    head_bias: bool = True
    # BEiT / Data2Vec-vision: learned relative position bias tables on the attention
    # logits, one per block and/or one shared by all blocks (timm's use_rel_pos_bias /
    # use_shared_rel_pos_bias), resampled bilinearly to each grid
    rel_pos_bias: bool = False
    shared_rel_pos_bias: bool = False
    # timm's eva.py families (EVA-02, the RoPE ViTs, DINOv3, PE): where rotary coordinates
    # come from (ROPE_COORDS: "index" = patch index + rope_offset, scaled to
    # rope_ref_grid), learned per-block rotary frequencies (rope_mixed), RoPE beside a
    # learned table (pos_embed_rope), the MLP kind and its sub-LN (mlp_kind, mlp_norm), a
    # norm on the attention output (attn_norm), and the attention pool's own heads, MLP
    # ratio and whether it reads the prefix tokens too (0: the blocks' values)
    rope_coords: str = "centred"
    rope_offset: float = 0.0
    rope_ref_grid: tuple[int, int] | None = None
    rope_mixed: bool = False
    pos_embed_rope: bool = False
    mlp_kind: str = "mlp"
    mlp_norm: bool = False
    attn_norm: bool = False
    attn_pool_heads: int = 0
    attn_pool_mlp_ratio: float = 0.0
    attn_pool_prefix: bool = False
    # the norms of each block on its branches' outputs, x + norm(attn(x)) (EVA-02-E)
    res_post_norm: bool = False
    # False: no final norm at all (Data2VecVisionModel without its pooler; PE-spatial)
    final_norm: bool = True

    def __post_init__(self) -> None:
        if not (_is_int(self.num_heads) and self.num_heads > 0):
            raise ValueError(f"invalid ViTConfig: num_heads must be a positive int (got {self})")
        self._normalise_common()
        self._check_eva_fields()
        self._check(
            [
                (self.pos_embed in POS_EMBED_KINDS, f"pos_embed must be one of {POS_EMBED_KINDS}"),
                (
                    self.pos_embed_mode in INTERPOLATION_MODES,
                    f"pos_embed_mode must be one of {INTERPOLATION_MODES}",
                ),
                (self.global_pool in GLOBAL_POOLS, f"global_pool must be one of {GLOBAL_POOLS}"),
                (
                    self.embed_dim % self.num_heads == 0,
                    f"embed_dim ({self.embed_dim}) must be divisible by num_heads "
                    f"({self.num_heads})",
                ),
                (
                    self.class_token or self.global_pool != "token",
                    "global_pool='token' needs class_token=True",
                ),
                (_is_int(self.reg_tokens) and self.reg_tokens >= 0, "reg_tokens must be >= 0"),
                (
                    isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0,
                    "mlp_ratio must be positive",
                ),
                (0.0 <= self.drop_path_rate < 1.0, "drop_path_rate must be in [0, 1)"),
                (self.cpb_hidden_dim > 0 and self.rope_theta > 0, "sizes must be positive"),
                (
                    self.rope_scale is None
                    or (isinstance(self.rope_scale, (int, float)) and self.rope_scale > 0),
                    "rope_scale must be None or positive",
                ),
                (
                    self.class_token or self.global_pool not in ("token", "token_avg"),
                    f"global_pool={self.global_pool!r} needs class_token=True",
                ),
                (self.class_token or not self.dist_token, "dist_token needs class_token=True"),
                (
                    self.dist_token or not self.head_dist,
                    "head_dist (a distillation head) needs dist_token=True",
                ),
                (
                    self.num_classes > 0 or not self.head_dist,
                    "head_dist needs num_classes > 0",
                ),
                (
                    self.init_values is None
                    or (isinstance(self.init_values, (int, float)) and self.init_values > 0),
                    "init_values (LayerScale) must be None or positive",
                ),
                (self.act_layer in ACTIVATIONS, f"act_layer must be one of {ACTIVATIONS}"),
                (
                    _is_int(self.representation_size) and self.representation_size >= 0,
                    "representation_size must be an int >= 0",
                ),
                (
                    self.global_pool != "token_avg" or not self.fc_norm,
                    "global_pool='token_avg' normalises the tokens, not the pool: fc_norm=False",
                ),
            ]
        )
        if (self.rel_pos_bias or self.shared_rel_pos_bias) and (
            not self.class_token or self.num_prefix_tokens != 1
        ):
            raise ValueError(
                "invalid ViTConfig: rel_pos_bias / shared_rel_pos_bias (BEiT's relative "
                "position bias table) has entries for exactly one class token: it needs "
                f"class_token=True and no distillation or register tokens (got {self})"
            )
        head_dim = self.embed_dim // self.num_heads
        if self.uses_rope and head_dim % 4:
            raise ValueError(f"pos_embed='rope' needs head_dim divisible by 4, got {head_dim}")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(
                f"pos_embed='sincos' needs embed_dim divisible by 4, got {self.embed_dim}"
            )

    def _check_eva_fields(self) -> None:
        if self.rope_ref_grid is not None:
            try:
                self.rope_ref_grid = to_grid(self.rope_ref_grid, "rope_ref_grid")
            except (ValueError, TypeError) as err:
                raise ValueError(f"invalid ViTConfig: {err}") from None
        pool_heads = self.attn_pool_heads or self.num_heads
        self._check(
            [
                (self.rope_coords in ROPE_COORDS, f"rope_coords must be one of {ROPE_COORDS}"),
                (
                    self.rope_coords == "centred" or self.rope_scale is None,
                    "rope_scale applies to rope_coords='centred' only",
                ),
                (
                    not self.rope_mixed or self.rope_coords == "index",
                    "rope_mixed (learned frequencies) turns patch indices: rope_coords='index'",
                ),
                (
                    not self.pos_embed_rope or self.pos_embed in ("learned", "sincos", "mlp"),
                    "pos_embed_rope adds RoPE to an additive kind (learned, sincos, mlp)",
                ),
                (self.mlp_kind in MLP_KINDS, f"mlp_kind must be one of {MLP_KINDS}"),
                (
                    _is_int(self.attn_pool_heads) and self.attn_pool_heads >= 0,
                    "attn_pool_heads must be an int >= 0 (0: num_heads)",
                ),
                (
                    self.global_pool != "map" or self.embed_dim % pool_heads == 0,
                    f"embed_dim must be divisible by the attention pool's {pool_heads} heads",
                ),
                (
                    isinstance(self.attn_pool_mlp_ratio, (int, float))
                    and self.attn_pool_mlp_ratio >= 0,
                    "attn_pool_mlp_ratio must be >= 0 (0: mlp_ratio)",
                ),
            ]
        )

    @property
    def uses_rope(self) -> bool:
        """Whether the blocks rotate q and k (RoPE alone, or beside an additive kind)."""
        return self.pos_embed == "rope" or self.pos_embed_rope

    @property
    def num_prefix_tokens(self) -> int:
        """Class, distillation and register tokens, in that order before the patches."""
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def use_fc_norm(self) -> bool:
        """Whether the final norm acts on the pooled vector (else on every token)."""
        if self.fc_norm is None:
            return self.global_pool in ("avg", "max", "avgmax")
        return bool(self.fc_norm)

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled vector the head reads."""
        if self.representation_size:
            return self.representation_size
        return 2 * self.embed_dim if self.global_pool == "token_avg" else self.embed_dim


@dataclass
class MixerConfig(ConfigBase):
    """Architecture of an :class:`~vitres.models.mixer.MlpMixer`; ``img_size`` is the native resolution."""

    img_size: tuple[int, int] = (224, 224)
    patch_size: PatchSize = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 512
    depth: int = 8
    tokens_mlp_dim: int = 256
    channels_mlp_dim: int = 2048
    norm_eps: float = 1e-6
    size_policy: str = "pad"
    token_resample_mode: str = "bilinear"
    kernel_resize_mode: str = "bicubic"
    kernel_resize_antialias: bool = True
    mean: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    std: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self) -> None:
        self._normalise_common()
        self._check(
            [
                (
                    self.token_resample_mode in INTERPOLATION_MODES,
                    f"token_resample_mode must be one of {INTERPOLATION_MODES}",
                ),
                (
                    _is_int(self.tokens_mlp_dim) and self.tokens_mlp_dim > 0,
                    "tokens_mlp_dim must be a positive int",
                ),
                (
                    _is_int(self.channels_mlp_dim) and self.channels_mlp_dim > 0,
                    "channels_mlp_dim must be a positive int",
                ),
            ]
        )


__all__ = ["GLOBAL_POOLS", "POS_EMBED_KINDS", "ConfigBase", "MixerConfig", "ViTConfig"]
