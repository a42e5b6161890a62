"""FlexiViT PI-resize and the size policy."""

import pytest
import torch
import torch.nn.functional as F

from vitres.layers.patch_embed import (
    PatchEmbed,
    fit_to_patch,
    padded_token_mask,
    resample_patch_embed,
)


@pytest.mark.parametrize(
    "mode,antialias", [("bicubic", True), ("bilinear", False), ("nearest", False), ("area", False)]
)
@pytest.mark.parametrize("old,new", [(4, 6), (4, 8), (8, 12), (5, 7)])
def test_pi_resize_preserves_inner_product_when_enlarging(mode, antialias, old, new):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 2, old, old, generator=g, dtype=torch.float64)
    x = torch.randn(5, 2, old, old, generator=g, dtype=torch.float64)
    new_weight = resample_patch_embed(weight, new, mode=mode, antialias=antialias)
    kwargs = (
        {"align_corners": False, "antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    )
    x_big = F.interpolate(x, size=(new, new), mode=mode, **kwargs)
    before = torch.einsum("bchw,dchw->bd", x, weight)
    after = torch.einsum("bchw,dchw->bd", x_big, new_weight)
    torch.testing.assert_close(after, before, atol=1e-8, rtol=1e-8)


def test_pi_resize_identity_and_shrink_least_squares():
    weight = torch.randn(2, 1, 8, 8)
    assert resample_patch_embed(weight, 8) is weight
    small = resample_patch_embed(weight, 4, mode="area")
    # area-shrink of 8 -> 4 averages 2x2 blocks: <x, w> = <B x, w'> has the least-squares
    # solution w' = 4 * (2x2 block sums of w) / 4 = block sums of w
    expected = weight.reshape(2, 1, 4, 2, 4, 2).sum(dim=(3, 5))
    torch.testing.assert_close(small, expected, atol=1e-5, rtol=1e-5)


def test_pi_resize_errors():
    with pytest.raises(ValueError, match="kernel"):
        resample_patch_embed(torch.randn(2, 3, 4), 8)
    with pytest.raises(ValueError, match="mode"):
        resample_patch_embed(torch.randn(2, 3, 4, 4), 8, mode="fourier")
    with pytest.raises(ValueError, match="positive"):
        resample_patch_embed(torch.randn(2, 3, 4, 4), 0)


def test_patch_embed_kernel_cache_follows_weight_updates():
    embed = PatchEmbed(4, 1, 6).eval()
    with torch.no_grad():
        k1 = embed.kernel(8)
        assert embed.kernel(8) is k1  # cached
        embed.proj.weight.mul_(2)  # in-place update bumps the version counter
        k2 = embed.kernel(8)
        torch.testing.assert_close(k2, 2 * k1)
        # never chained: 4 -> 8 -> 6 equals 4 -> 6 computed from the base
        torch.testing.assert_close(embed.kernel(6), resample_patch_embed(embed.proj.weight, 6))
    # with autograd on, the kernel is recomputed and carries gradients to the base
    k3 = embed.kernel(8)
    assert k3.requires_grad and k3 is not k2
    k3.sum().backward()
    assert embed.proj.weight.grad is not None and embed.proj.weight.grad.abs().sum() > 0


def test_fit_to_patch_policies():
    x = torch.randn(1, 2, 10, 13)
    padded, valid = fit_to_patch(x, 4, "pad")
    assert padded.shape[-2:] == (12, 16) and valid == (10, 13)
    torch.testing.assert_close(padded[..., :10, :13], x)
    assert padded[..., 10:, :].abs().sum() == 0 and padded[..., :, 13:].abs().sum() == 0
    cropped, valid = fit_to_patch(x, 4, "crop")
    torch.testing.assert_close(cropped, x[..., :8, :12])
    resized, valid = fit_to_patch(x, 4, "resize")
    assert resized.shape[-2:] == (12, 12)
    with pytest.raises(ValueError, match="not divisible"):
        fit_to_patch(x, 4, "error")
    same, _ = fit_to_patch(torch.randn(1, 1, 8, 8), 4, "error")
    assert same.shape[-2:] == (8, 8)


def test_padded_token_mask():
    assert padded_token_mask((3, 4), (10, 13), 4) is None  # minimal padding fills no token
    mask = padded_token_mask((3, 4), (5, 6), 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool).reshape(
        -1
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("old,new", [((4, 6), (6, 9)), ((4, 6), (8, 8)), ((4, 4), (6, 10))])
@pytest.mark.parametrize("mode,antialias", [("bicubic", True), ("bilinear", False)])
def test_pi_resize_rectangular_preserves_inner_product(old, new, mode, antialias):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 2, *old, generator=g, dtype=torch.float64)
    x = torch.randn(4, 2, *old, generator=g, dtype=torch.float64)
    new_weight = resample_patch_embed(weight, new, mode=mode, antialias=antialias)
    assert new_weight.shape == (3, 2, *new)
    x_big = F.interpolate(x, size=new, mode=mode, align_corners=False, antialias=antialias)
    before = torch.einsum("bchw,dchw->bd", x, weight)
    after = torch.einsum("bchw,dchw->bd", x_big, new_weight)
    torch.testing.assert_close(after, before, atol=1e-8, rtol=1e-8)


def test_rectangular_policies_and_mask():
    x = torch.randn(1, 1, 10, 13)
    padded, valid = fit_to_patch(x, (4, 6), "pad")
    assert padded.shape[-2:] == (12, 18) and valid == (10, 13)
    cropped, valid = fit_to_patch(x, (4, 6), "crop")
    torch.testing.assert_close(cropped, x[..., :8, :12])
    mask = padded_token_mask((3, 3), (5, 6), (4, 6))
    assert torch.equal(mask.reshape(3, 3).sum(dim=1), torch.tensor([1, 1, 0]))


def test_patch_embed_rectangular_kernel_and_mode_in_cache_key():
    embed = PatchEmbed((4, 8), 1, 6).eval()
    x = torch.randn(2, 1, 16, 32)
    with torch.no_grad():
        tokens, grid = embed(x)
        assert grid == (4, 4) and tokens.shape == (2, 16, 6)
        reference = F.conv2d(x, embed.proj.weight, embed.proj.bias, stride=(4, 8))
        torch.testing.assert_close(tokens, reference.flatten(2).transpose(1, 2))
        bicubic = embed.kernel((8, 8), "bicubic", True)
        nearest = embed.kernel((8, 8), "nearest", False)
        torch.testing.assert_close(nearest, resample_patch_embed(embed.proj.weight, 8, "nearest"))
        assert not torch.allclose(bicubic, nearest)
    with pytest.raises(AttributeError, match="model.config.kernel_resize_mode"):
        embed.kernel_resize_mode = "nearest"
