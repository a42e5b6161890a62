"""Derived-tensor caches are never stale, however the weights were written (issue 11)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import vitres
from vitres.layers.cache import VersionedCache


def tiny_vit(**overrides):
    torch.manual_seed(0)
    base = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=2)
    return vitres.create_model("vit_tiny_patch8", **{**base, **overrides}).eval()


def tiny_mixer():
    torch.manual_seed(0)
    return vitres.create_model("mixer_tiny8", img_size=32, num_classes=5, depth=2).eval()


def fused_adamw_step(model):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    x = torch.randn(2, model.config.in_chans, 32, 32)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    opt.step()
    model.eval()


def data_mul(model):
    for p in model.parameters():
        p.data.mul_(1.5)


def data_copy(model):
    for p in model.parameters():
        p.data.copy_(torch.randn_like(p) * 0.1)


def numpy_edit(model):
    for p in model.parameters():
        view = p.detach().numpy()  # shares memory with the parameter
        view *= -1.0


def no_grad_in_place(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)


WRITES = [fused_adamw_step, data_mul, data_copy, numpy_edit, no_grad_in_place]


def fresh_copy(model, build):
    other = build()
    other.load_state_dict(model.state_dict())
    return other.eval()


@pytest.mark.parametrize("write", WRITES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("pos", ["learned", "cpb", "mlp"])
def test_vit_cache_sees_every_way_of_writing_weights(write, pos):
    build = lambda: tiny_vit(pos_embed=pos)  # noqa: E731
    model = build()
    x = torch.randn(2, 3, 48, 40)  # non-native grid and patch: tables and kernel are resampled
    with torch.no_grad():
        before = model(x, patch_size=4)
        assert torch.equal(model(x, patch_size=4), before)  # served from the caches
    write(model)
    with torch.no_grad():
        after = model(x, patch_size=4)
        expected = fresh_copy(model, build)(x, patch_size=4)
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


@pytest.mark.parametrize("write", WRITES, ids=lambda f: f.__name__)
def test_mixer_cache_sees_every_way_of_writing_weights(write):
    model = tiny_mixer()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        before = model(x, patch_size=4)
    write(model)
    with torch.no_grad():
        after = model(x, patch_size=4)
        expected = fresh_copy(model, tiny_mixer)(x, patch_size=4)
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_cache_hits_while_weights_are_unchanged():
    model = tiny_vit()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        model(x, patch_size=4)
        hits = model._cache.hits + model.patch_embed._kernels.hits
        model(x, patch_size=4)
        assert model._cache.hits + model.patch_embed._kernels.hits == hits + 2
    with torch.inference_mode():  # inference mode is cached too
        torch.testing.assert_close(model(x, patch_size=4), model(x, patch_size=4))


def test_kernel_resize_mode_follows_the_config():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        bicubic = model(x, patch_size=4)
        model.config.kernel_resize_mode = "nearest"  # edited in place
        nearest = model(x, patch_size=4)
        torch.testing.assert_close(nearest, tiny_vit(kernel_resize_mode="nearest")(x, patch_size=4))
        model.config = dataclasses.replace(model.config, kernel_resize_mode="bilinear")
        bilinear = model(x, patch_size=4)
        torch.testing.assert_close(
            bilinear, tiny_vit(kernel_resize_mode="bilinear")(x, patch_size=4)
        )
        model.config = dataclasses.replace(model.config, kernel_resize_antialias=False)
        no_aa = model(x, patch_size=4)
    assert not torch.allclose(bicubic, nearest) and not torch.allclose(nearest, bilinear)
    assert not torch.allclose(no_aa, bilinear)  # 8 -> 4 shrinks: antialias matters


def test_cache_entry_survives_equal_content_and_misses_on_dtype():
    cache = VersionedCache()
    source = torch.randn(4)
    calls = []

    def compute():
        calls.append(1)
        return source * 2

    cache.get("k", [source], compute)
    source.data.copy_(source.clone())  # same values written again: still valid
    cache.get("k", [source], compute)
    assert len(calls) == 1
    source.data[0] += 1.0
    torch.testing.assert_close(cache.get("k", [source], compute), source * 2)
    assert len(calls) == 2
