"""timm ViT variants: state dicts and ``config.json`` files with exactly timm's layout.

timm is not installed here (it needs torchvision), so each test writes a random state
dict under timm's own key names (``timm/models/vision_transformer.py``: ``cls_token``,
``reg_token``, ``pos_embed``, ``patch_embed.proj``, ``norm_pre``, ``blocks.i.{norm1, attn.qkv,
attn.q_norm, attn.k_norm, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``,
``norm`` / ``fc_norm``, ``attn_pool.{latent, q, kv, proj, norm, mlp}``, ``head``) and the
``config.json`` timm's ``save_for_hf`` writes (``architecture``, ``num_classes``,
``global_pool``, ``model_args``, ``pretrained_cfg``). The reference is a direct
computation of timm's forward with ``dynamic_img_size=True`` (written out below with
``torch.nn.functional``, not with vitres modules): position table resampled by
``F.interpolate(bicubic, antialias=True)`` to the floored grid, prefix tokens concatenated
before or after adding positions (``no_embed_class``), pools over the patch tokens.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import vitres

DIM, HEADS, DEPTH, HIDDEN = 32, 2, 2, 64


def rand(*shape, scale=0.3):
    return torch.randn(*shape) * scale


def timm_state(
    *,
    patch=(7, 7),
    img=(28, 28),
    class_token=True,
    reg_tokens=0,
    no_embed_class=False,
    init_values=None,
    qk_norm=False,
    pre_norm=False,
    pool="token",
    fc_norm=None,
    num_classes=5,
    seed=0,
):
    """A random state dict with timm's names and shapes for these VisionTransformer args."""
    torch.manual_seed(seed)
    use_fc_norm = pool in ("avg", "avgmax", "max") if fc_norm is None else fc_norm
    grid = img[0] // patch[0] * (img[1] // patch[1])
    prefix = int(class_token) + reg_tokens
    state = {"patch_embed.proj.weight": rand(DIM, 3, *patch)}
    if not pre_norm:  # timm: bias=not pre_norm
        state["patch_embed.proj.bias"] = rand(DIM)
    if class_token:
        state["cls_token"] = rand(1, 1, DIM, scale=1.0)
    if reg_tokens:
        state["reg_token"] = rand(1, reg_tokens, DIM, scale=1.0)
    state["pos_embed"] = rand(1, grid + (0 if no_embed_class else prefix), DIM, scale=1.0)
    if pre_norm:
        state["norm_pre.weight"], state["norm_pre.bias"] = 1 + rand(DIM), rand(DIM)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state[b + "norm1.weight"], state[b + "norm1.bias"] = 1 + rand(DIM), rand(DIM)
        state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"] = rand(3 * DIM, DIM), rand(3 * DIM)
        if qk_norm:
            hd = DIM // HEADS
            state[b + "attn.q_norm.weight"], state[b + "attn.q_norm.bias"] = 1 + rand(hd), rand(hd)
            state[b + "attn.k_norm.weight"], state[b + "attn.k_norm.bias"] = 1 + rand(hd), rand(hd)
        state[b + "attn.proj.weight"], state[b + "attn.proj.bias"] = rand(DIM, DIM), rand(DIM)
        state[b + "norm2.weight"], state[b + "norm2.bias"] = 1 + rand(DIM), rand(DIM)
        state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"] = rand(HIDDEN, DIM), rand(HIDDEN)
        state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"] = rand(DIM, HIDDEN), rand(DIM)
        if init_values:
            state[b + "ls1.gamma"], state[b + "ls2.gamma"] = rand(DIM), rand(DIM)
    norm = "fc_norm" if use_fc_norm else "norm"
    state[f"{norm}.weight"], state[f"{norm}.bias"] = 1 + rand(DIM), rand(DIM)
    if pool == "map":
        state["attn_pool.latent"] = rand(1, 1, DIM, scale=1.0)
        state["attn_pool.q.weight"], state["attn_pool.q.bias"] = rand(DIM, DIM), rand(DIM)
        state["attn_pool.kv.weight"], state["attn_pool.kv.bias"] = rand(2 * DIM, DIM), rand(2 * DIM)
        state["attn_pool.proj.weight"], state["attn_pool.proj.bias"] = rand(DIM, DIM), rand(DIM)
        state["attn_pool.norm.weight"], state["attn_pool.norm.bias"] = 1 + rand(DIM), rand(DIM)
        state["attn_pool.mlp.fc1.weight"] = rand(HIDDEN, DIM)
        state["attn_pool.mlp.fc1.bias"] = rand(HIDDEN)
        state["attn_pool.mlp.fc2.weight"] = rand(DIM, HIDDEN)
        state["attn_pool.mlp.fc2.bias"] = rand(DIM)
    if num_classes:
        state["head.weight"], state["head.bias"] = rand(num_classes, DIM), rand(num_classes)
    return state


ACTS = {
    "gelu": F.gelu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def timm_reference(state, x, *, patch, img, pool, no_embed_class, eps=1e-6, act="gelu"):
    """timm's VisionTransformer forward (dynamic_img_size=True), written out."""
    s = state
    ln = lambda t, name: F.layer_norm(t, t.shape[-1:], s[name + ".weight"], s[name + ".bias"], eps)  # noqa: E731
    lin = lambda t, name: F.linear(t, s[name + ".weight"], s.get(name + ".bias"))  # noqa: E731
    feats = F.conv2d(x, s["patch_embed.proj.weight"], s.get("patch_embed.proj.bias"), stride=patch)
    batch, _, gh, gw = feats.shape
    tokens = feats.flatten(2).transpose(1, 2)
    prefix = [s[k].expand(batch, -1, -1) for k in ("cls_token", "reg_token") if k in s]
    num_prefix = sum(p.shape[1] for p in prefix)
    pos = s["pos_embed"]
    table_prefix = 0 if no_embed_class else num_prefix
    old = (img[0] // patch[0], img[1] // patch[1])
    if (gh, gw) != old:
        grid = pos[:, table_prefix:].reshape(1, *old, DIM).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True)
        pos = torch.cat([pos[:, :table_prefix], grid.permute(0, 2, 3, 1).reshape(1, -1, DIM)], 1)
    if no_embed_class:
        tokens = torch.cat(prefix + [tokens + pos], dim=1)
    else:
        tokens = torch.cat(prefix + [tokens], dim=1) + pos
    if "norm_pre.weight" in s:
        tokens = ln(tokens, "norm_pre")
    hd = DIM // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        y = ln(tokens, b + "norm1")
        q, k, v = lin(y, b + "attn.qkv").reshape(batch, -1, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        if b + "attn.q_norm.weight" in s:
            q, k = ln(q, b + "attn.q_norm"), ln(k, b + "attn.k_norm")
        attn = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        y = lin(attn.transpose(1, 2).reshape(batch, -1, DIM), b + "attn.proj")
        tokens = tokens + y * s.get(b + "ls1.gamma", 1.0)
        y = lin(ACTS[act](lin(ln(tokens, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
        tokens = tokens + y * s.get(b + "ls2.gamma", 1.0)
    if "norm.weight" in s:
        tokens = ln(tokens, "norm")
    patches = tokens[:, num_prefix:]
    if pool == "token":
        pooled = tokens[:, 0]
    elif pool == "avg":
        pooled = patches.mean(1)
    elif pool == "max":
        pooled = patches.amax(1)
    elif pool == "avgmax":
        pooled = 0.5 * (patches.amax(1) + patches.mean(1))
    else:  # map: AttentionPoolLatent
        q = lin(s["attn_pool.latent"].expand(batch, -1, -1), "attn_pool.q")
        q = q.reshape(batch, 1, HEADS, hd).transpose(1, 2)
        k, v = lin(patches, "attn_pool.kv").reshape(batch, -1, 2, HEADS, hd).permute(2, 0, 3, 1, 4)
        a = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        a = lin(a.transpose(1, 2).reshape(batch, 1, DIM), "attn_pool.proj")
        a = a + lin(
            ACTS[act](lin(ln(a, "attn_pool.norm"), "attn_pool.mlp.fc1")), "attn_pool.mlp.fc2"
        )
        pooled = a[:, 0]
    if "fc_norm.weight" in s:
        pooled = ln(pooled, "fc_norm")
    return lin(pooled, "head") if "head.weight" in s else pooled


def save_for_hf(folder, state, *, architecture, model_args, pool, img, num_classes):
    """The directory timm's ``save_for_hf`` writes: ``model.safetensors`` + ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": DIM,
        "global_pool": pool,
        "model_args": model_args,
        "pretrained_cfg": {
            "tag": "test",
            "custom_load": False,
            "input_size": [3, *img],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 0.9,
            "crop_mode": "center",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "num_classes": num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


VARIANTS = {
    "layerscale": dict(init_values=1e-5),
    "qk_norm_avg": dict(qk_norm=True, pool="avg"),
    "map_no_class_token": dict(class_token=False, pool="map"),
    "dinov2_registers": dict(reg_tokens=4, no_embed_class=True, init_values=1e-5),
    "reg_tokens_with_positions": dict(reg_tokens=2),
    "clip_pre_norm": dict(pre_norm=True),
    "max": dict(pool="max"),
    "avgmax": dict(pool="avgmax"),
    "avg_without_fc_norm": dict(class_token=False, pool="avg", fc_norm=False),
    "rectangular_img_size": dict(img=(28, 42)),
    "rectangular_patch": dict(patch=(7, 14), img=(28, 42)),
}
ARCH = {"clip_pre_norm": "vit_base_patch16_clip_quickgelu_224"}


def model_args(variant: dict) -> dict:
    """The ``model_args`` a user would have passed to ``timm.create_model``."""
    args = {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "mlp_ratio": HIDDEN / DIM}
    for key in ("init_values", "qk_norm", "class_token", "reg_tokens", "no_embed_class",
                "pre_norm", "fc_norm"):  # fmt: skip
        if key in variant:
            args[key] = variant[key]
    if "img" in variant:
        args["img_size"] = list(variant["img"])
    args["patch_size"] = list(variant.get("patch", (7, 7)))
    return args


@pytest.mark.parametrize("name", list(VARIANTS))
def test_timm_variant_matches_timm_forward_at_every_size(name, tmp_path):
    variant = VARIANTS[name]
    state = timm_state(**variant)
    img, patch = variant.get("img", (28, 28)), variant.get("patch", (7, 7))
    pool = variant.get("pool", "token")
    folder = save_for_hf(
        tmp_path / name,
        state,
        architecture=ARCH.get(name, "vit_custom_patch7"),
        model_args=model_args(variant),
        pool=pool,
        img=img,
        num_classes=5,
    )
    ours = vitres.from_pretrained(folder)
    assert ours.config.img_size == img and ours.config.global_pool == pool
    clip = name == "clip_pre_norm"
    kwargs = dict(
        patch=patch, img=img, pool=pool, no_embed_class=variant.get("no_embed_class", False)
    )
    if clip:  # timm's CLIP: LayerNorm eps 1e-5, quick GELU from the architecture name
        kwargs.update(eps=1e-5, act="quick_gelu")
        assert ours.config.act_layer == "quick_gelu" and ours.config.norm_eps == 1e-5
    torch.manual_seed(3)
    sizes = [img, (img[0] + 14, img[1] - 7), (img[0] + 10, img[1] + 9), (15, 22)]
    for size in sizes:  # native, non-square, not divisible by the patch, smaller than native
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = timm_reference(state, x, **kwargs)
            torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0, msg=f"at {size}")


def test_top_level_global_pool_is_honoured(tmp_path):
    """timm writes the pool at the top level of config.json; max is not avg, avg is not token."""
    for pool, fc_norm in [("max", None), ("avg", False)]:
        variant = dict(pool=pool, fc_norm=fc_norm)
        state = timm_state(**variant)
        args = {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS}  # pool not in model_args
        folder = save_for_hf(tmp_path / f"{pool}_{fc_norm}", state, architecture="vit_custom",
                             model_args=args, pool=pool, img=(28, 28), num_classes=5)  # fmt: skip
        ours = vitres.from_pretrained(folder)
        assert ours.config.global_pool == pool
        assert ours.config.use_fc_norm == (fc_norm is None)
        x = torch.randn(2, 3, 28, 35)
        with torch.no_grad():
            expected = timm_reference(state, x, patch=(7, 7), img=(28, 28), pool=pool,
                                      no_embed_class=False)  # fmt: skip
            torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)
            other = timm_reference(state, x, patch=(7, 7), img=(28, 28),
                                   pool="avg" if pool == "max" else "token", no_embed_class=False)  # fmt: skip
            assert not torch.allclose(ours(x), other, atol=1e-3)  # the old, silently wrong reading


def test_non_square_img_size_from_model_args(tmp_path):
    state = timm_state(img=(21, 35))
    folder = save_for_hf(tmp_path / "rect", state, architecture="vit_custom",
                         model_args={"img_size": [21, 35], "num_heads": HEADS}, pool="token",
                         img=(224, 224), num_classes=5)  # fmt: skip
    ours = vitres.from_pretrained(folder)
    assert ours.config.img_size == (21, 35) and ours.config.grid == (3, 5)
    x = torch.randn(1, 3, 21, 35)
    with torch.no_grad():
        expected = timm_reference(state, x, patch=(7, 7), img=(21, 35), pool="token",
                                  no_embed_class=False)  # fmt: skip
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)


def test_a_bare_file_is_refused_without_its_architecture(tmp_path):
    """A bare state dict cannot say its activation, norm eps or pooling: never guessed."""
    state = timm_state(init_values=1e-5)
    torch.save(state, tmp_path / "vit.pth")
    for overrides in ({}, {"num_heads": HEADS}):
        with pytest.raises(ValueError, match="does not say its architecture.*pass arch="):
            vitres.from_pretrained(tmp_path / "vit.pth", **overrides)
    with pytest.raises(ValueError, match="do not fit timm architecture"):
        vitres.from_pretrained(tmp_path / "vit.pth", arch="vit_base_patch16_224")
    with pytest.raises(ValueError, match="timm architecture 'vit_nope'"):
        vitres.from_pretrained(tmp_path / "vit.pth", arch="vit_nope")
    # in its save_for_hf directory the same weights load exactly (model_args say it all)
    folder = save_for_hf(tmp_path / "dir", state, architecture="vit_custom",
                         model_args=model_args({"init_values": 1e-5}), pool="token",
                         img=(28, 28), num_classes=5)  # fmt: skip
    x = torch.randn(2, 3, 33, 28)
    with torch.no_grad():
        expected = timm_reference(state, x, patch=(7, 7), img=(28, 28), pool="token",
                                  no_embed_class=False)  # fmt: skip
        torch.testing.assert_close(vitres.from_pretrained(folder)(x), expected, atol=1e-5, rtol=0)


def test_unsupported_timm_variants_are_named(tmp_path):
    state = timm_state()
    state["patch_embed.norm.weight"] = torch.ones(DIM)
    norm = save_for_hf(tmp_path / "norm", state, architecture="vit_custom",
                       model_args={"num_heads": HEADS}, pool="token", img=(28, 28),
                       num_classes=5)  # fmt: skip
    with pytest.raises(ValueError, match="unsupported timm ViT variant.*patch_embed.norm"):
        vitres.from_pretrained(norm)
    folder = save_for_hf(tmp_path / "args", timm_state(), architecture="vit_custom",
                         model_args={"num_heads": HEADS, "block_fn": "ParallelScalingBlock"},
                         pool="token", img=(28, 28), num_classes=5)  # fmt: skip
    with pytest.raises(ValueError, match=r"unsupported timm block_fn 'ParallelScalingBlock'"):
        vitres.from_pretrained(folder)
