"""BEiT and Data2Vec-vision load exactly (issue 25, item 5).

Tiny random ``transformers`` BEiT / Data2Vec-vision models (relative position bias per
block, shared, or both; absolute positions or none; LayerScale; mean or class-token
pooling), saved with ``save_pretrained`` and loaded with ``vitres.from_pretrained``, must
give the source's own outputs with ``interpolate_pos_encoding=True`` at the native size,
two non-square sizes and one the patch does not divide (the source floors the grid, and
resamples its bias tables bilinearly to it). timm's ``beit.py`` models, which run at their
native size only, are checked there, from ``save_for_hf``-style directories and bare files
with ``arch=``. Every table, bias and layer scale is random and large, so a wrong index,
resampling or pooling cannot hide.
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from timm_shim import load_timm, timm_module

import vitres
from vitres.layers.rel_pos_table import relative_position_index
from vitres.models.convert.beit import TIMM_BEIT_ARCHS

transformers = pytest.importorskip("transformers")

# native (4 x 4 patches of 8), non-square, smaller and not divisible by the patch
SIZES = [(32, 32), (48, 40), (24, 56), (37, 29)]
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-6,
)
# Hugging Face: the same operations in the same order, the same bits (0.0 at every size,
# as the other Hugging Face families). timm adds its absolute table to the class token in
# another order (2e-11 seen)
EXACT, TOLERANCE = 0.0, 1e-6


def randomise(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Bias tables, positions, class token and layer scales drawn at unit scale; norms
    away from 1 and 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if any(k in name for k in ("relative_position", "position_emb", "pos_embed")):
                param.copy_(noise)
            elif any(k in name for k in ("cls_token", "lambda", "gamma", "_bias")):
                param.copy_(0.5 * noise)
            elif "norm" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
    return model.eval()


def worst_diff(ours, source, pick, sizes=SIZES) -> float:
    """Max |diff| over ``sizes`` of ``ours(x)`` and ``pick(source(x))``."""
    torch.manual_seed(2)
    worst = 0.0
    for size in sizes:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            reference = pick(source(pixel_values=x, interpolate_pos_encoding=True))
            worst = max(worst, (ours(x) - reference).abs().max().item())
    return worst


VARIANTS = {
    "per_block_mean_pool": dict(use_relative_position_bias=True, use_mean_pooling=True),
    "shared_class_token": dict(use_shared_relative_position_bias=True, use_mean_pooling=False),
    "both_tables_abs_pos": dict(
        use_relative_position_bias=True,
        use_shared_relative_position_bias=True,
        use_absolute_position_embeddings=True,
    ),
    "abs_pos_no_layer_scale": dict(
        use_absolute_position_embeddings=True, layer_scale_init_value=0.0
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_beit_classifier(variant, tmp_path):
    config = transformers.BeitConfig(**SMALL, num_labels=5, **VARIANTS[variant])
    source = randomise(transformers.BeitForImageClassification(config))
    source.save_pretrained(tmp_path)
    ours = vitres.from_pretrained(tmp_path)
    assert worst_diff(ours, source, lambda r: r.logits) <= EXACT


@pytest.mark.parametrize("mean_pool", [True, False])
def test_hf_beit_model_pooler_and_tokens(mean_pool, tmp_path):
    config = transformers.BeitConfig(
        **SMALL, use_relative_position_bias=True, use_mean_pooling=mean_pool
    )
    source = randomise(transformers.BeitModel(config))
    source.save_pretrained(tmp_path)
    ours = vitres.from_pretrained(tmp_path)
    assert ours.config.num_classes == 0
    assert worst_diff(ours, source, lambda r: r.pooler_output) <= EXACT
    # the tokens too: normed (class-token pool) or not (the norm acts on the mean)
    diff = worst_diff(ours.forward_features, source, lambda r: r.last_hidden_state)
    assert diff <= EXACT


@pytest.mark.parametrize("shared", [True, False])
def test_hf_data2vec_vision(shared, tmp_path):
    config = transformers.Data2VecVisionConfig(
        **SMALL,
        num_labels=4,
        use_relative_position_bias=not shared,
        use_shared_relative_position_bias=shared,
        use_absolute_position_embeddings=shared,
    )
    source = randomise(transformers.Data2VecVisionForImageClassification(config))
    source.save_pretrained(tmp_path)
    ours = vitres.from_pretrained(tmp_path)
    assert worst_diff(ours, source, lambda r: r.logits) <= EXACT


def test_data2vec_vision_model_without_a_final_norm(tmp_path):
    """``Data2VecVisionModel``'s default: mean pooling but no pooler, so no norm at all."""
    config = transformers.Data2VecVisionConfig(**SMALL, use_relative_position_bias=True)
    source = randomise(transformers.Data2VecVisionModel(config))
    source.save_pretrained(tmp_path)
    ours = vitres.from_pretrained(tmp_path)
    assert not ours.config.final_norm
    diff = worst_diff(ours.forward_features, source, lambda r: r.last_hidden_state)
    assert diff <= EXACT
    tokens = lambda r: r.last_hidden_state[:, 1:].mean(dim=1)  # noqa: E731
    assert worst_diff(ours, source, tokens) <= EXACT


def test_non_square_native_image_is_refused(tmp_path):
    config = transformers.BeitConfig(**SMALL, use_relative_position_bias=True)
    transformers.BeitForImageClassification(config).save_pretrained(tmp_path)
    document = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**document, "image_size": [32, 40]}))
    with pytest.raises(ValueError, match=r"beit with image_size=\[32, 40\].*non-square"):
        vitres.from_pretrained(tmp_path)


def test_the_bias_tables_matter(tmp_path):
    """Zeroing a table changes the output: the test above would notice a dropped table."""
    config = transformers.BeitConfig(**SMALL, num_labels=3, use_relative_position_bias=True)
    source = randomise(transformers.BeitForImageClassification(config))
    source.save_pretrained(tmp_path)
    ours = vitres.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        before = ours(x)
        ours.rel_pos_tables[1].relative_position_bias_table.zero_()
        assert (ours(x) - before).abs().max() > 100 * TOLERANCE


def test_relative_position_index_matches_the_source():
    beit = pytest.importorskip("transformers.models.beit.modeling_beit")
    for grid in [(4, 4), (3, 5), (6, 2), (1, 1)]:
        theirs = beit.BeitRelativePositionBias.generate_relative_position_index(grid)
        assert torch.equal(relative_position_index(grid), theirs)


def test_merged_and_quadtree_tokens_are_refused(tmp_path):
    config = transformers.BeitConfig(**SMALL, num_labels=3, use_relative_position_bias=True)
    randomise(transformers.BeitForImageClassification(config)).save_pretrained(tmp_path)
    ours = vitres.from_pretrained(tmp_path)
    layout = ours.tokenize(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="token merging is not supported"):
        ours.encode(layout, reduction=lambda i, tokens, metric, lay: (tokens, lay))
    centres = torch.zeros(1, 16, 2, dtype=torch.float64)
    mixed = ours.layout_at(torch.randn(1, 16, 32), centres)
    with pytest.raises(ValueError, match="merged or mixed-resolution"):
        ours.encode(mixed)


def test_token_modes_refuse_merging_and_mixed_tokens_up_front(tmp_path):
    from vitres.tokens.mode import TokenMode

    config = transformers.BeitConfig(**SMALL, num_labels=3, use_shared_relative_position_bias=True)
    randomise(transformers.BeitForImageClassification(config)).save_pretrained(tmp_path)
    ours = vitres.from_pretrained(tmp_path)
    for mode in (TokenMode(merge=2), TokenMode(token_budget=8)):
        with pytest.raises(ValueError, match="not supported for a model with BEiT's relative"):
            mode.check_model(ours)
    TokenMode(pack="pack").check_model(ours)  # packed sequences carry the tables


def test_packed_sequences_match_one_image_at_a_time(tmp_path):
    from vitres.tokens.pack import forward_packed

    config = transformers.BeitConfig(
        **SMALL,
        num_labels=3,
        use_relative_position_bias=True,
        use_shared_relative_position_bias=True,
    )
    randomise(transformers.BeitForImageClassification(config)).save_pretrained(tmp_path)
    ours = vitres.from_pretrained(tmp_path)
    images = [torch.randn(3, 32, 32), torch.randn(3, 48, 40)]
    with torch.no_grad():
        packed = forward_packed(ours, images, strategy="pack", batch_tokens=200)
        single = torch.cat([ours(image[None]) for image in images])
    assert (packed - single).abs().max() <= 1e-5


def test_beit_loads_through_the_cli_and_refuses_dynamic_export(tmp_path, capsys):
    from vitres.cli import main
    from vitres.export.exportable import check_exportable

    config = transformers.BeitConfig(**SMALL, num_labels=10, use_relative_position_bias=True)
    config.num_channels = 1
    source = randomise(transformers.BeitForImageClassification(config))
    source.save_pretrained(tmp_path)
    assert main(["eval", "--model", str(tmp_path), "--res", "32,40", "--limit", "8"]) == 0
    assert "40 px" in capsys.readouterr().out
    with pytest.raises(ValueError, match="relative position bias.*dynamic=False"):
        check_exportable(vitres.from_pretrained(tmp_path), dynamic=True, opset=18)


# ----------------------------------------------------------------------------- timm
def _timm_beit(name: str, **kwargs) -> torch.nn.Module:
    beit = timm_module("beit")
    args = {**dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5), **kwargs}
    return randomise(getattr(beit, name)(pretrained=False, **args), seed=3)


def _timm_diff(ours, source) -> float:
    """Max |diff| at timm's native size (its BEiT takes no other)."""
    x = torch.randn(2, 3, *source.patch_embed.img_size)
    with torch.no_grad():
        return (ours(x) - source(x)).abs().max().item()


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("beit_base_patch16_224", dict(patch_size=8)),
        ("beitv2_base_patch16_224", dict(patch_size=8, global_pool="token")),
        ("beit_base_patch16_224", dict(patch_size=8, img_size=[24, 48])),  # 3 x 6 patches
        (
            "beit_base_patch16_224",
            dict(
                patch_size=8,
                use_abs_pos_emb=True,
                use_rel_pos_bias=False,
                use_shared_rel_pos_bias=True,
            ),
        ),  # fmt: skip
    ],
)
def test_timm_beit_save_for_hf_directory(name, extra, tmp_path):
    source = _timm_beit(name, **extra)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors"
    )
    model_args = {**dict(img_size=32, embed_dim=32, depth=2, num_heads=2, init_values=0.1), **extra}
    (tmp_path / "config.json").write_text(
        json.dumps({"architecture": name, "num_classes": 5, "model_args": model_args})
    )
    assert _timm_diff(vitres.from_pretrained(tmp_path), source) <= TOLERANCE


def test_the_architecture_table_is_timms_own():
    """vitres's table of timm's BEiT names holds what each entry point passes (the walk
    below builds every one of them)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "timm_arch_table.py"
    spec = importlib.util.spec_from_file_location("timm_arch_table", script)
    table_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table_script)
    capture = table_script.capture
    module = timm_module("beit")
    registry = load_timm()
    names = registry.list_models(module="beit")
    assert sorted(names) == sorted(TIMM_BEIT_ARCHS)
    for name in names:
        facts = TIMM_BEIT_ARCHS[name]
        args = capture(module, "_create_beit", name, registry.model_entrypoint(name))
        assert {"img_size": 224, "mlp_ratio": 4, **args} == {"mlp_ratio": 4, **facts["model_args"]}
        cfg = registry.get_pretrained_cfg(name)
        assert (tuple(cfg.mean), tuple(cfg.std)) == (facts["mean"], facts["std"]), name


@pytest.mark.parametrize("name", sorted(TIMM_BEIT_ARCHS))
def test_every_timm_beit_architecture_small(name, tmp_path):
    """Each architecture at depth 2, 8 channels per head, 4 x 4 patches of 8: exact."""
    heads = TIMM_BEIT_ARCHS[name]["model_args"]["num_heads"]
    small = dict(img_size=32, patch_size=8, embed_dim=8 * heads, depth=2)
    module = timm_module("beit")
    source = randomise(getattr(module, name)(pretrained=False, num_classes=5, **small), seed=4)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors"
    )
    (tmp_path / "config.json").write_text(
        json.dumps({"architecture": name, "num_classes": 5, "model_args": small})
    )
    assert _timm_diff(vitres.from_pretrained(tmp_path), source) <= TOLERANCE


def test_timm_beit_bare_file_needs_its_architecture(tmp_path):
    source = _timm_beit("beit_base_patch16_224", patch_size=8)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    with pytest.raises(ValueError, match="pass arch="):
        vitres.from_pretrained(path)
    # the architecture's own widths do not fit these tiny weights: said, not guessed
    with pytest.raises(ValueError, match="do not fit timm architecture"):
        vitres.from_pretrained(path, arch="beit_base_patch16_224")
