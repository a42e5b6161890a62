"""Any-resolution ViT and MLP-Mixer: invariants, caching and input validation."""

import pytest
import torch
import torch.nn.functional as F

import vitres
from vitres.models.mixer import resample_token_mixing

POS_KINDS = ["learned", "sincos", "rope", "cpb", "mlp"]


def tiny_vit(**overrides):
    torch.manual_seed(0)
    base = dict(
        img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=2
    )
    return vitres.create_model("vit_tiny_patch8", **{**base, **overrides}).eval()


def test_registry_names_and_configs():
    names = vitres.list_models()
    assert "vit_small_patch16" in names and "mixer_b16" in names and "mixer_s16" in names
    small = vitres.create_model("vit_small_patch16")
    cfg = small.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (384, 12, 6, 16)
    n_params = sum(p.numel() for p in small.parameters())
    assert abs(n_params - 22_050_664) < 1000  # ViT-S/16 with a 1000-way head
    from vitres.models import model_config

    large = model_config("vit_large_patch14")
    assert (large.embed_dim, large.depth, large.num_heads, large.patch_size) == (1024, 24, 16, 14)
    with pytest.raises(ValueError, match="unknown model name"):
        vitres.create_model("vit_huge_patch16")
    with pytest.raises(ValueError, match="bad override"):
        vitres.create_model("vit_tiny_patch16", not_a_field=1)


@pytest.mark.parametrize("pos", POS_KINDS)
def test_any_resolution_and_patch_size(pos):
    model = tiny_vit(pos_embed=pos)
    with torch.no_grad():
        for shape, patch in [
            ((32, 32), None),
            ((48, 40), None),
            ((24, 56), 4),
            ((45, 30), 8),
            ((64, 64), 16),
        ]:
            out = model(torch.randn(2, 3, *shape), patch_size=patch)
            assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("pos", POS_KINDS)
def test_cached_forward_equals_uncached(pos):
    model = tiny_vit(pos_embed=pos, class_token=False, global_pool="avg", reg_tokens=2)
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        cached1 = model(x, patch_size=4)
        cached2 = model(x, patch_size=4)  # served from the cache
        model.train()  # training mode recomputes every derived tensor (no dropout here)
        uncached = model(x, patch_size=4)
        model.eval()
    torch.testing.assert_close(cached1, uncached, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached2, uncached, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pos", ["learned", "cpb", "mlp"])
def test_cache_never_serves_stale_weights(pos):
    model = tiny_vit(pos_embed=pos)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        before = model(x, patch_size=4)
    # an optimiser step changes every parameter in place
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(x, patch_size=4), torch.tensor([0, 1])).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model(x, patch_size=4)
        fresh = tiny_vit(pos_embed=pos)
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(after, fresh(x, patch_size=4))
        assert not torch.allclose(before, after)
        # load_state_dict into the cached model restores the old outputs
        other = tiny_vit(pos_embed=pos)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x, patch_size=4), other(x, patch_size=4))


def test_native_resolution_matches_model_built_for_it():
    """Running at 48 px equals a model whose table was resampled to 48 px up front."""
    model = tiny_vit()
    native48 = vitres.create_model(
        "vit_tiny_patch8",
        img_size=48,
        patch_size=8,
        num_classes=5,
        embed_dim=32,
        depth=2,
        num_heads=2,
    ).eval()
    state = model.state_dict()
    state["pos_embed"] = vitres.resample_pos_embed(state["pos_embed"], (6, 6), (4, 4), 1, "bicubic")
    native48.load_state_dict(state)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), native48(x), rtol=0, atol=0)


def test_patch_size_change_is_invariant_under_matching_resize():
    """FlexiViT invariance: doubling image and patch together leaves the output unchanged."""
    model = tiny_vit(kernel_resize_mode="nearest", patch_size=4, img_size=16)
    x = torch.randn(2, 3, 16, 16)
    x2 = F.interpolate(x, scale_factor=2, mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, patch_size=4), model(x2, patch_size=8), atol=1e-5, rtol=1e-5
        )


def test_size_policies():
    x = torch.randn(1, 3, 30, 37)
    pad = tiny_vit(size_policy="pad")
    crop = tiny_vit(size_policy="crop")
    with torch.no_grad():
        torch.testing.assert_close(pad(x), pad(F.pad(x, (0, 3, 0, 2))))
        torch.testing.assert_close(crop(x), crop(x[..., :24, :32]))
        assert pad.grid_size((30, 37)) == (4, 5) and crop.grid_size((30, 37)) == (3, 4)
    with pytest.raises(ValueError, match="not divisible"):
        tiny_vit(size_policy="error")(x)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_padded_tokens_are_masked_out(pool):
    model = tiny_vit(global_pool=pool, class_token=pool == "token")
    x = torch.randn(1, 3, 48, 48)
    garbage = x.clone()
    garbage[..., 24:, :] = 100.0  # tokens start at multiples of 8: rows >= 24 hold no content
    garbage[..., :, 32:] = -50.0
    with torch.no_grad():
        a = model(x, valid_size=(20, 28))
        b = model(garbage, valid_size=(20, 28))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make_input,match",
    [
        (lambda: torch.randn(3, 32, 32), "shape"),
        (lambda: torch.randn(1, 1, 32, 32), "channel"),
        (lambda: torch.randint(0, 255, (1, 3, 32, 32)), "floating"),
        (lambda: torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (lambda: torch.full((1, 3, 32, 32), float("inf")), "NaN or Inf"),
        (lambda: torch.randn(1, 3, 4, 32), "smaller than one"),
        (lambda: [[1.0]], "torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error(make_input, match):
    model = tiny_vit()
    with pytest.raises(ValueError, match=match):
        model(make_input())


@pytest.mark.parametrize("patch", [0, -4, 2.5, True, 64])
def test_bad_patch_size_raises(patch):
    with pytest.raises(ValueError, match="patch"):
        tiny_vit()(torch.randn(1, 3, 32, 32), patch_size=patch)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="pos_embed"):
        tiny_vit(pos_embed="alibi")
    with pytest.raises(ValueError, match="divisible"):
        tiny_vit(embed_dim=30, num_heads=4)


def test_mixer_token_resampling_invariant_on_smooth_weights():
    """Token-constant weights and a constant image give the same logits at any grid."""
    torch.manual_seed(0)
    mixer = vitres.create_model("mixer_tiny8", img_size=32, num_classes=4, in_chans=1).eval()
    with torch.no_grad():
        for block in mixer.blocks:
            fc1, fc2 = block.mlp_tokens.fc1, block.mlp_tokens.fc2
            fc1.weight.copy_(fc1.weight[:, :1].expand_as(fc1.weight))
            fc2.weight.copy_(fc2.weight[:1].expand_as(fc2.weight))
            fc2.bias.fill_(0.1)
        x = torch.full((1, 1, 32, 32), 0.3)
        native = mixer(x)
        for size in [(16, 48), (40, 40), (64, 24)]:
            torch.testing.assert_close(
                mixer(torch.full((1, 1, *size), 0.3)), native, atol=1e-5, rtol=1e-5
            )
        assert mixer(torch.randn(2, 1, 40, 56), patch_size=4).shape == (2, 4)


def test_resample_token_mixing_shapes_and_scale():
    w1 = torch.randn(6, 16)
    w2 = torch.randn(16, 6)
    b2 = torch.randn(16)
    n1, n2, nb = resample_token_mixing(w1, w2, b2, (4, 4), (2, 8), "area")
    assert n1.shape == (6, 16) and n2.shape == (16, 6) and nb.shape == (16,)
    m1, _, _ = resample_token_mixing(w1, w2, b2, (4, 4), (8, 8), "nearest")
    # nearest upsampling by 2 duplicates each column 4x and scales by 16/64
    torch.testing.assert_close(m1.reshape(6, 8, 8)[:, ::2, ::2] * 4, w1.reshape(6, 4, 4))


def test_rectangular_patch_model_matches_flexi_invariance():
    """A (4, 8) patch model: its grid, and doubling image and patch together changes nothing."""
    model = tiny_vit(patch_size=(4, 8), img_size=(16, 32), kernel_resize_mode="nearest")
    assert model.config.patch_size == (4, 8) and model.config.grid == (4, 4)
    assert model.pos_embed.shape == (1, 1 + 16, 32)
    x = torch.randn(2, 3, 16, 32)
    x2 = F.interpolate(x, scale_factor=2, mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x2, patch_size=(8, 16)), atol=1e-5, rtol=1e-5)
    assert model.grid_size((30, 37)) == (8, 5)  # pad policy, per side


def test_square_model_runs_rectangular_patches_by_pi_resize():
    """Stretching the width by 2 and the patch width by 2 keeps every token (nearest resize)."""
    model = tiny_vit(kernel_resize_mode="nearest")
    x = torch.randn(2, 3, 32, 32)
    wide = F.interpolate(x, size=(32, 64), mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(wide, patch_size=(8, 16)), atol=1e-5, rtol=1e-5)


def test_rectangular_patch_config_round_trip(tmp_path):
    model = tiny_vit(patch_size=(4, 8), img_size=(16, 32))
    path = vitres.save_model(model, tmp_path / "rect.safetensors")
    loaded = vitres.load_model(path)
    assert loaded.config == model.config and loaded.config.patch_size == (4, 8)
    x = torch.randn(1, 3, 20, 36)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # a new native patch size: the kernel is PI-resized, the table resampled to the new grid
    resized = vitres.from_pretrained(path, patch_size=(8, 8), kernel_resize_mode="nearest")
    assert resized.patch_embed.proj.weight.shape[-2:] == (8, 8)
    assert resized.config.grid == (2, 4) and resized.pos_embed.shape == (1, 1 + 8, 32)
    assert tiny_vit(patch_size=8).config.patch_size == 8  # square pairs stay ints
    assert tiny_vit(patch_size=(8, 8)).config.patch_size == 8
