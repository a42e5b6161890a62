"""timm's ``eva.py`` families load exactly: DINOv3, the RoPE ViTs (axial, mixed, with a
learned table, on a reference grid), EVA-02 and PE-core.

Each case is a tiny model built by timm's own entry point with arguments that move every
feature off its default (rope periods, grid offsets, reference grids, LayerScale, q / v
biases, sub-LN, SwiGLU alignment, attention-pool heads), random unit-scale weights, and a
non-square native size. It is saved in timm's ``save_for_hf`` layout, loaded through
:func:`vitres.from_pretrained`, and compared with timm's own forward at the native size, a
non-square size and a size the patch does not divide (timm crops it, as its strided
convolution does). Token kinds beyond the uniform grid (packing, merging, quadtree) are
checked on the same models for their own invariants.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm_shim import load_timm

import vitres
from vitres.tokens.merge import merged_forward
from vitres.tokens.pack import forward_packed
from vitres.tokens.quadtree import QuadtreeTokenizer
from vitres.tokens.quadtree_forward import quadtree_forward

pytestmark = pytest.mark.skipif(load_timm() is None, reason="timm is not installed")
TOLERANCE = 2e-6  # max |diff| over max(1, max |logit|)
IMG = (48, 32)  # 6 x 4 patches of 8 pixels
COMMON = {"img_size": list(IMG), "patch_size": 8, "depth": 2, "num_classes": 5}
COMMON |= {"dynamic_img_size": True}

CASES = {
    # DINOv3: normalised RoPE in halves, registers, LayerScale, no qkv bias, SwiGLU aligned
    "dinov3_swiglu": ("vit_small_plus_patch16_dinov3", {"embed_dim": 64, "num_heads": 4,
                      "rope_temperature": 37.0, "num_reg_tokens": 2, "swiglu_align_to": 8,
                      "mlp_ratio": 2.3}),
    "dinov3_qkvb": ("vit_base_patch16_dinov3_qkvb", {"embed_dim": 48, "num_heads": 3,
                    "rope_temperature": 1000.0, "global_pool": "token"}),
    # RoPE-ViT: axial on column-first indices, with a table without prefix positions
    "rope_ape": ("vit_base_patch16_rope_ape_224", {"embed_dim": 64, "num_heads": 4,
                 "rope_temperature": 23.0}),
    # RoPE-Mixed: learned frequencies per block and head
    "rope_mixed": ("vit_base_patch16_rope_mixed_224", {"embed_dim": 64, "num_heads": 2}),
    "rope_mixed_ij": ("vit_base_patch16_rope_mixed_ape_224", {"embed_dim": 32, "num_heads": 2,
                      "rope_grid_indexing": "ij"}),
    # timm's SBB RoPE ViT: registers, q / v biases, avg pool with fc_norm, a reference grid
    "rope_reg_gap": ("vit_medium_patch16_rope_reg1_gap_256", {"embed_dim": 64, "num_heads": 4,
                     "ref_feat_shape": [5, 7], "num_reg_tokens": 3}),
    # EVA-02: separate q / k / v projections, SwiGLU with sub-LN, attention-output norm
    "eva02_clip": ("eva02_base_patch16_clip_224", {"embed_dim": 64, "num_heads": 4,
                   "ref_feat_shape": [7, 3], "rope_temperature": 500.0, "init_values": 0.3}),
    "eva02_packed_glu": ("eva02_tiny_patch14_224", {"embed_dim": 48, "num_heads": 3,
                         "patch_size": 8, "ref_feat_shape": [4, 6]}),
    # EVA-01: a learned table, q / v biases, avg pool
    "eva_giant": ("eva_giant_patch14_224", {"embed_dim": 32, "num_heads": 2, "patch_size": 8}),
    # PE-core: norm before the blocks, grid offset, attention pool over every token
    "pe_core": ("vit_pe_core_tiny_patch16_384", {"embed_dim": 64, "num_heads": 4,
                "ref_feat_shape": [3, 5], "rope_grid_offset": 0.5, "attn_pool_num_heads": 2,
                "attn_pool_mlp_ratio": 3.0, "init_values": 0.2}),
    # timm's zero padding of sizes the patch does not divide (dynamic_img_pad)
    "rope_padded": ("vit_small_patch16_rope_224", {"embed_dim": 32, "num_heads": 2,
                    "dynamic_img_pad": True}),
    # EVA-02-E: residual post-norm blocks, x + norm(attn(x))
    "eva02_post_norm": ("eva02_enormous_patch14_clip_224", {"embed_dim": 32, "num_heads": 2}),
    # PE-spatial: no final norm at all, LayerScale, avg pool of patches only
    "pe_spatial": ("vit_pe_spatial_tiny_patch16_512", {"embed_dim": 32, "num_heads": 2,
                   "ref_feat_shape": [6, 2], "init_values": 0.4}),
}  # fmt: skip


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Unit-scale weights: tables, tokens, layer scales and rope frequencies drawn large."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name == "rope.freqs":
                p.copy_(noise)
            elif p.ndim >= 2 and p.shape[0] > 1:
                p.copy_(noise / (p.numel() / p.shape[0]) ** 0.5)
            elif p.ndim >= 2:
                p.copy_(noise)
            elif name.endswith("weight") and "norm" in name:
                p.copy_(1 + 0.3 * noise)
            else:
                p.copy_(0.5 * noise)


def timm_model(case: str) -> tuple[str, torch.nn.Module, dict]:
    name, extra = CASES[case]
    args = {**COMMON, **extra}
    model = load_timm().model_entrypoint(name)(pretrained=False, **args).eval()
    randomise(model, seed=len(case))
    return name, model, args


def save_for_hf(folder: Path, name: str, model: torch.nn.Module, args: dict) -> Path:
    folder.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    document = {
        "architecture": name,
        "num_classes": args["num_classes"],
        "global_pool": model.global_pool,
        "model_args": args,
        "pretrained_cfg": {"input_size": [3, *IMG], "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    (folder / "config.json").write_text(json.dumps(document))
    return folder


def worst_difference(
    ours: torch.nn.Module, model: torch.nn.Module, patch: int, pad: bool = False
) -> float:
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for size in [IMG, (40, 56), (43, 61)]:
        x = torch.randn(2, 3, *size, generator=generator)
        cropped = x if pad else x[..., : size[0] // patch * patch, : size[1] // patch * patch]
        with torch.no_grad():
            expected, got = model(cropped), ours(x)
        scale = max(1.0, float(expected.abs().max()))
        worst = max(worst, float((expected - got).abs().max()) / scale)
    return worst


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict:
    """Each case: ``(timm's model, vitres's import, its args)``."""
    out = {}
    for case in CASES:
        name, model, args = timm_model(case)
        folder = save_for_hf(tmp_path_factory.mktemp("eva") / case, name, model, args)
        out[case] = (model, vitres.from_pretrained(folder), args)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_eva_family_matches_timm(loaded, case):
    model, ours, args = loaded[case]
    pad = bool(args.get("dynamic_img_pad"))
    assert worst_difference(ours, model, args["patch_size"], pad) <= TOLERANCE


def test_the_position_kinds_are_the_sources(loaded):
    cfg = {case: loaded[case][1].config for case in CASES}
    assert cfg["dinov3_swiglu"].rope_scale == pytest.approx(6.283185307179586)
    assert cfg["dinov3_swiglu"].mlp_kind == "swiglu" and cfg["dinov3_swiglu"].reg_tokens == 2
    assert cfg["rope_ape"].pos_embed == "learned" and cfg["rope_ape"].pos_embed_rope
    assert not cfg["rope_ape"].pos_embed_prefix  # no_embed_class
    assert cfg["rope_mixed"].rope_mixed and cfg["rope_mixed"].pos_embed == "rope"
    assert cfg["rope_reg_gap"].rope_ref_grid == (5, 7) and cfg["rope_reg_gap"].fc_norm
    assert cfg["eva02_clip"].mlp_norm and cfg["eva02_clip"].attn_norm
    assert cfg["pe_core"].rope_offset == 0.5 and cfg["pe_core"].pre_norm
    assert cfg["pe_core"].attn_pool_heads == 2 and cfg["pe_core"].attn_pool_prefix


@pytest.mark.parametrize("case", ["dinov3_swiglu", "rope_mixed", "eva02_clip", "pe_core"])
def test_packing_is_each_image_alone(loaded, case):
    """Packed sequences give each image's own rotary angles (mixed: per block and head)."""
    ours = loaded[case][1]
    generator = torch.Generator().manual_seed(1)
    images = [
        torch.randn(3, 40, 24, generator=generator),
        torch.randn(3, 32, 48, generator=generator),
    ]
    with torch.no_grad():
        alone = torch.cat([ours(image[None]) for image in images])
        packed = forward_packed(ours, images, strategy="pack")
    torch.testing.assert_close(packed, alone, atol=2e-5, rtol=0)


@pytest.mark.parametrize("case", ["rope_mixed", "eva02_clip", "dinov3_swiglu"])
def test_merging_nothing_and_quadtree_at_full_depth_keep_the_output(loaded, case):
    """The relative-position paths at token centres reproduce the grid's angles: merging
    zero tokens and a quadtree that keeps every fine cell are the plain forward."""
    ours = loaded[case][1]
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = ours(x)
        merged = merged_forward(ours, x, None, schedule=[0] * ours.config.depth)
        tree = quadtree_forward(ours, x, 10_000, quadtree=QuadtreeTokenizer(align="clip"))
    torch.testing.assert_close(merged, plain, atol=2e-5, rtol=0)
    torch.testing.assert_close(tree, plain, atol=2e-5, rtol=0)


def test_features_vitres_does_not_have_are_refused_by_name(tmp_path):
    registry = load_timm()
    small = {**COMMON, "embed_dim": 32, "num_heads": 2}
    cases = {
        "two_norms": (
            "vit_base_patch16_rope_224",
            {"use_fc_norm": True, "use_post_transformer_norm": True},
            "both a final norm and an fc_norm",
        ),
    }
    for case, (name, extra, words) in cases.items():
        model = registry.model_entrypoint(name)(pretrained=False, **small, **extra).eval()
        folder = save_for_hf(tmp_path / case, name, model, {**small, **extra})
        with pytest.raises(ValueError, match=words) as err:
            vitres.from_pretrained(folder)
        assert name in str(err.value)
    with pytest.raises(ValueError, match="RmsNorm.*grouped-query attention.*attn_only_layer"):
        vitres.models.convert.timm_config_fields({}, arch="vit_large_patch16_sapiens2")


@pytest.mark.parametrize("case", ["rope_mixed", "eva02_clip", "pe_spatial"])
def test_imports_round_trip_through_a_vitres_checkpoint(loaded, case, tmp_path):
    """The new config fields (reference grid, mixed frequencies, no final norm...) and
    weights save and load with vitres's own safetensors + JSON checkpoint."""
    from vitres.models.checkpoint import load_model, save_model

    ours = loaded[case][1]
    path = save_model(ours, tmp_path / "model")
    again = load_model(path).eval()
    assert again.config == ours.config
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(again(x), ours(x), atol=0, rtol=0)


def test_rotary_angles_are_timms_to_the_bit():
    """Index-coordinate RoPE (reference grid, offset) and RoPE-Mixed give timm's own sin
    and cos bit for bit; token centres of a grid map back onto its indices."""
    import importlib

    from vitres.layers.pos_embed import rope_at
    from vitres.layers.rotary import index_coordinates, rope_index, rope_mixed

    load_timm()
    sincos = importlib.import_module("timm.layers.pos_embed_sincos")
    rope = sincos.RotaryEmbeddingCat(
        dim=16, temperature=37.0, in_pixels=False, ref_feat_shape=[5, 7], grid_offset=0.5
    )
    sin, cos = rope.get_embed(shape=[6, 4]).chunk(2, dim=-1)
    ours_cos, ours_sin = rope_index((6, 4), 16, 37.0, 0.5, (5, 7))
    assert torch.equal(ours_cos, cos) and torch.equal(ours_sin, sin)

    mixed = sincos.RotaryEmbeddingMixed(dim=24, depth=2, num_heads=2, grid_indexing="xy")
    sin, cos = mixed.get_embed(shape=[3, 5]).chunk(2, dim=-1)  # (depth, heads, N, 12)
    rows, cols = torch.meshgrid(torch.arange(3.0), torch.arange(5.0), indexing="ij")
    ours_cos, ours_sin = rope_mixed(mixed.freqs.detach(), rows.reshape(-1), cols.reshape(-1))
    assert torch.equal(ours_cos, cos) and torch.equal(ours_sin, sin)

    base, grid = (4, 4), (6, 4)  # centres in base-grid units of a 6 x 4 grid
    ys = ((torch.arange(6.0) + 0.5) / 6 * 2 - 1) * base[0] / 2
    xs = ((torch.arange(4.0) + 0.5) / 4 * 2 - 1) * base[1] / 2
    centres = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    iy, ix = index_coordinates(centres.double(), base, grid, 0.5, (5, 7))
    at_cos, at_sin = rope_at(iy, ix, 16, 37.0)
    ours_cos, ours_sin = rope_index(grid, 16, 37.0, 0.5, (5, 7))
    torch.testing.assert_close(at_cos, ours_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(at_sin, ours_sin, atol=1e-6, rtol=0)
