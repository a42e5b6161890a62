"""Attention maps: known patterns on non-square grids, rollout vs a direct product, and the
fused forward left untouched."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitres
from vitres.explain import attention_maps, capture_attention, parse_layers


def _vit(**overrides):
    torch.manual_seed(0)
    settings = {
        "img_size": (20, 12),
        "in_chans": 1,
        "num_classes": 3,
        "embed_dim": 16,
        "depth": 3,
        "num_heads": 2,
    }
    settings.update(overrides)
    return vitres.create_model("vit_tiny_patch4", **settings).eval()


def _single_key_model(global_pool: str, depth: int = 3):
    """Every query attends (one-hot) to the one token whose patch is bright.

    Patch embedding: channel 0 = sum of the patch's pixels, so only the bright token has a
    non-zero embedding (no position embedding, zero prefix tokens). After LayerNorm the
    other tokens are 0, so their keys are 0 and every query is the q-bias; the bright key
    is aligned with that bias with a logit of 50. Attention projections and MLPs are zero,
    so every block passes its input on and all layers share the pattern.
    """
    model = _vit(
        pos_embed="none",
        class_token=global_pool == "token",
        global_pool=global_pool,
        depth=depth,
        embed_dim=8,
    )
    dim, head_dim = 8, 4
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.weight[0] = 1.0
        model.patch_embed.proj.bias.zero_()
        if model.cls_token is not None:
            model.cls_token.zero_()
        bright = torch.zeros(1, dim)
        bright[0, 0] = 16.0
        normed = model.blocks[0].norm1(bright)[0]  # LayerNorm output of the bright token
        for block in model.blocks:
            attn = block.attn
            attn.qkv.weight.zero_()
            attn.qkv.bias.zero_()
            attn.qkv.weight[dim : 2 * dim] = torch.eye(dim)  # k = LN(x)
            for head in range(2):
                key = normed[head * head_dim : (head + 1) * head_dim]
                attn.qkv.bias[head * head_dim : (head + 1) * head_dim] = (
                    50.0 * head_dim**0.5 * key / key.dot(key)
                )
            attn.proj.weight.zero_()
            attn.proj.bias.zero_()
            block.mlp.fc2.weight.zero_()
            block.mlp.fc2.bias.zero_()
    return model


def _image_with_bright_patch(row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 1, 20, 12)  # grid 5 x 3
    x[..., row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = 1.0
    return x


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_one_hot_attention_on_a_non_square_grid(pool):
    depth = 3
    model = _single_key_model(pool, depth)
    x = _image_with_bright_patch(1, 2)
    valid_size = (12, 12)  # rows 3 and 4 of the 5 x 3 grid are padding
    valid = torch.zeros(5, 3, dtype=torch.bool)
    valid[:3] = True
    target = torch.zeros(5, 3)
    target[1, 2] = 1.0

    last = attention_maps(model, x, method="last", valid_size=valid_size)
    assert last.grid == (5, 3) and last.layers == (depth - 1,)
    assert torch.equal(last.valid, valid)
    torch.testing.assert_close(last.maps[0, 0], target, atol=1e-6, rtol=0)

    raw = attention_maps(model, x, method="raw", valid_size=valid_size)
    assert raw.maps.shape == (1, depth, 5, 3)
    torch.testing.assert_close(raw.maps[0], target.expand(depth, 5, 3), atol=1e-6, rtol=0)

    # A' = (P + I) / 2 with P = 1 e^T idempotent: A'^L = 2^-L I + (1 - 2^-L) P
    rollout = attention_maps(model, x, method="rollout", valid_size=valid_size)
    keep = 0.5**depth
    if pool == "token":  # the class token's row: its own mass (2^-L) is a prefix column
        expected = (1 - keep) * target
    else:  # mean over the 9 content rows
        expected = keep / 9 * valid.float() + (1 - keep) * target
    torch.testing.assert_close(rollout.maps[0, 0], expected, atol=1e-6, rtol=0)


def test_uniform_attention_with_register_tokens_and_padding():
    depth = 3
    model = _vit(reg_tokens=2, depth=depth)
    with torch.no_grad():
        for block in model.blocks:  # q = k = 0: uniform over the unmasked keys
            block.attn.qkv.weight[: 2 * 16] = 0.0
            block.attn.qkv.bias[: 2 * 16] = 0.0
    x = torch.randn(2, 1, 20, 12)
    maps = attention_maps(model, x, method="rollout", valid_size=(12, 12))
    keys = 3 + 9  # class + 2 registers + 3 x 3 content tokens
    expected = torch.zeros(5, 3)
    expected[:3] = (1 - 0.5**depth) / keys
    torch.testing.assert_close(maps.maps[:, 0], expected.expand(2, 5, 3), atol=1e-6, rtol=0)
    last = attention_maps(model, x, method="last", valid_size=(12, 12))
    expected[:3] = 1 / keys
    torch.testing.assert_close(last.maps[:, 0], expected.expand(2, 5, 3), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "settings",
    [
        {"class_token": True, "reg_tokens": 1},
        {"class_token": False, "global_pool": "avg"},
        {"class_token": True, "global_pool": "avg", "pos_embed": "rope"},
    ],
)
def test_rollout_equals_the_direct_matrix_product(settings):
    model = _vit(**settings)
    x = torch.randn(2, 1, 18, 12)  # padded to 20 x 12: grid 5 x 3
    with capture_attention(model) as captured:
        model(x)
    prefix = model.num_prefix_tokens
    tokens = prefix + 15
    product = np.tile(np.eye(tokens), (2, 1, 1))
    for layer in range(3):
        step = 0.5 * captured[layer].double().numpy().mean(axis=1) + 0.5 * np.eye(tokens)
        step /= step.sum(axis=-1, keepdims=True)
        product = np.einsum("bij,bjk->bik", step, product)
    if model.config.global_pool == "token":
        rows = product[:, 0]
    else:
        rows = product[:, prefix:].mean(axis=1)
    maps = attention_maps(model, x, method="rollout")
    assert maps.grid == (5, 3) and bool(maps.valid.all())
    np.testing.assert_allclose(
        maps.maps[:, 0].numpy(), rows[:, prefix:].reshape(2, 5, 3), atol=1e-6
    )
    # a subset of layers: the product runs over those only
    sub = attention_maps(model, x, layers=[-1, 1], method="rollout")
    assert sub.layers == (1, 2)
    head_max = attention_maps(model, x, layers=[0], method="raw", head_fusion="max")
    fused = captured[0].amax(dim=1)
    expected = fused[:, 0] if model.config.global_pool == "token" else fused[:, prefix:].mean(1)
    torch.testing.assert_close(head_max.maps[:, 0].flatten(1), expected[:, prefix:])


@pytest.mark.parametrize("pos", ["learned", "rope", "cpb"])
def test_explicit_attention_reproduces_the_fused_blocks(pos):
    model = _vit(pos_embed=pos, reg_tokens=1)
    x = torch.randn(2, 1, 20, 12)
    inputs = {}

    def keep_inputs(index):
        def hook(module, args, kwargs):
            inputs[index] = (args, kwargs)

        return hook

    handles = [
        b.attn.register_forward_pre_hook(keep_inputs(i), with_kwargs=True)
        for i, b in enumerate(model.blocks)
    ]
    with torch.no_grad():
        model(x, valid_size=(12, 8))
    for handle in handles:
        handle.remove()
    for index, block in enumerate(model.blocks):
        args, kwargs = inputs[index]
        fused = block.attn(*args, **kwargs)
        explicit, weights = block.attn.forward_with_weights(*args, **kwargs)
        torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        keep = torch.zeros(5, 3, dtype=torch.bool)
        keep[:3, :2] = True
        padded = torch.cat([torch.zeros(2, dtype=torch.bool), ~keep.flatten()])
        assert float(weights[..., padded].abs().max()) == 0.0
        if pos == "learned":  # against softmax(q k^T / sqrt(d) + mask) written out
            h = args[0]
            qkv = h @ block.attn.qkv.weight.T + block.attn.qkv.bias
            q, k, _ = qkv.reshape(2, 17, 3, 2, 8).permute(2, 0, 3, 1, 4)
            logits = q @ k.transpose(-1, -2) / 8**0.5 + kwargs["attn_mask"]
            torch.testing.assert_close(weights, logits.softmax(-1), atol=1e-6, rtol=1e-5)


def test_normal_forward_stays_fused_and_unchanged(monkeypatch):
    model = _vit(reg_tokens=1)
    x = torch.randn(2, 1, 20, 12)
    calls = []
    fused = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        before = model(x)
        assert len(calls) == 3
        with capture_attention(model, layers=[1]) as captured:
            during = model(x)
        assert len(calls) == 6  # the fused kernel still runs in every block
        assert sorted(captured) == [1] and captured[1].shape == (2, 2, 17, 17)
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert not model.blocks[1].attn._forward_hooks  # the hook is removed


def test_bad_input_is_reported():
    model = _vit()
    x = torch.randn(1, 1, 20, 12)
    mixer = vitres.create_model("mixer_tiny4", img_size=16, in_chans=1, num_classes=3, depth=1)
    with pytest.raises(ValueError, match="no attention"):
        attention_maps(mixer, torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="does not exist"):
        attention_maps(model, x, layers=[3])
    with pytest.raises(ValueError, match="unknown method"):
        attention_maps(model, x, method="gradcam")
    with pytest.raises(ValueError, match="channel"):
        attention_maps(model, torch.randn(1, 3, 20, 12))
    with pytest.raises(ValueError, match="smaller than one"):
        attention_maps(model, torch.randn(1, 1, 2, 12))
    assert parse_layers("0, -1") == [0, -1] and parse_layers("all") is None
    with pytest.raises(ValueError, match="block indices"):
        parse_layers("first")
