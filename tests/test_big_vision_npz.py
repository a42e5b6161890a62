"""big_vision / Google ViT ``.npz`` checkpoints load exactly: timm's own ``.npz`` loader
(``timm.models.vision_transformer._load_weights``) is the reference.

Each test builds a small timm model with random weights, writes its arrays in a
checkpoint layout (written out below from the layouts timm's loader reads: Flax kernels
``(in, out)``, convolutions ``HWIO``, attention kernels ``(D, heads, head_dim)``), loads
that file into a fresh timm model with timm's loader and into vitres with
``vitres.from_pretrained(path, arch=...)``, and compares the two at three sizes. If the
writer were wrong, timm would read something else, and vitres must read what timm reads.
"""

import numpy as np
import pytest
import torch
from timm_shim import load_timm

import vitres

pytestmark = pytest.mark.skipif(load_timm() is None, reason="timm is not installed")
ARGS = dict(depth=2, embed_dim=64, num_heads=4, img_size=64, num_classes=5, dynamic_img_size=True)


def timm_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = load_timm().model_entrypoint(arch)(pretrained=False, **ARGS).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (1.0 if p.ndim != 2 else p.shape[1] ** -0.5))
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model


def attention_arrays(qkv_w, qkv_b, proj_w, proj_b, heads):
    dim = proj_w.shape[0]
    hd = dim // heads
    out = {}
    for i, name in enumerate(("query", "key", "value")):
        w, b = qkv_w[i * dim : (i + 1) * dim], qkv_b[i * dim : (i + 1) * dim]
        out[f"{name}/kernel"] = w.T.reshape(dim, heads, hd)
        out[f"{name}/bias"] = b.reshape(heads, hd)
    out["out/kernel"] = proj_w.T.reshape(heads, hd, dim)
    out["out/bias"] = proj_b
    return out


def npz_arrays(model, layout: str) -> dict[str, np.ndarray]:
    """``layout``: ``google`` (original ViT), ``big_vision`` (per layer) or ``scan``
    (big_vision with the blocks stacked along a leading axis, under ``params/img/``)."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    heads = ARGS["num_heads"]
    big = layout != "google"
    prefix = {"google": "", "big_vision": "params/", "scan": "params/img/"}[layout]
    a = {
        "embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": s["patch_embed.proj.bias"],
        "Transformer/encoder_norm/scale": s["norm.weight"],
        "Transformer/encoder_norm/bias": s["norm.bias"],
        "head/kernel": s["head.weight"].T,
        "head/bias": s["head.bias"],
    }
    if "cls_token" in s:
        a["cls"] = s["cls_token"]
    a["pos_embedding" if big else "Transformer/posembed_input/pos_embedding"] = s["pos_embed"]
    mha, ln2, mlp = (0, 1, 0) if big else (1, 2, 3)
    blocks = []
    for i in range(ARGS["depth"]):
        b = f"blocks.{i}."
        block = {
            "LayerNorm_0/scale": s[b + "norm1.weight"],
            "LayerNorm_0/bias": s[b + "norm1.bias"],
            f"LayerNorm_{ln2}/scale": s[b + "norm2.weight"],
            f"LayerNorm_{ln2}/bias": s[b + "norm2.bias"],
        }
        att = attention_arrays(s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"],
                               s[b + "attn.proj.weight"], s[b + "attn.proj.bias"], heads)  # fmt: skip
        block.update({f"MultiHeadDotProductAttention_{mha}/{k}": v for k, v in att.items()})
        for r in range(2):
            block[f"MlpBlock_{mlp}/Dense_{r}/kernel"] = s[f"{b}mlp.fc{r + 1}.weight"].T
            block[f"MlpBlock_{mlp}/Dense_{r}/bias"] = s[f"{b}mlp.fc{r + 1}.bias"]
        blocks.append(block)
    if layout == "scan":
        for key in blocks[0]:
            a[f"Transformer/encoderblock/{key}"] = np.stack([blk[key] for blk in blocks])
    else:
        for i, blk in enumerate(blocks):
            a.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in blk.items()})
    if "attn_pool.latent" in s:
        dim = s["attn_pool.q.weight"].shape[0]
        qkv_w = np.concatenate([s["attn_pool.q.weight"], s["attn_pool.kv.weight"]])
        qkv_b = np.concatenate([s["attn_pool.q.bias"], s["attn_pool.kv.bias"]])
        att = attention_arrays(qkv_w, qkv_b, s["attn_pool.proj.weight"], s["attn_pool.proj.bias"],
                               heads)  # fmt: skip
        a["MAPHead_0/probe"] = s["attn_pool.latent"]
        a.update({f"MAPHead_0/MultiHeadDotProductAttention_0/{k}": v for k, v in att.items()})
        a["MAPHead_0/LayerNorm_0/scale"] = s["attn_pool.norm.weight"]
        a["MAPHead_0/LayerNorm_0/bias"] = s["attn_pool.norm.bias"]
        for r in range(2):
            a[f"MAPHead_0/MlpBlock_0/Dense_{r}/kernel"] = s[f"attn_pool.mlp.fc{r + 1}.weight"].T
            a[f"MAPHead_0/MlpBlock_0/Dense_{r}/bias"] = s[f"attn_pool.mlp.fc{r + 1}.bias"]
        assert dim == a["MAPHead_0/probe"].shape[-1]
    out = {prefix + k: v for k, v in a.items()}
    if layout == "scan":  # a two-tower SigLIP checkpoint: its text tower is not the image's
        out["params/txt/head/kernel"] = np.zeros((3, 3), np.float32)
        out["params/t"] = np.ones((1,), np.float32)
    return out


@pytest.mark.parametrize(
    "arch,layout",
    [
        ("vit_tiny_patch16_224", "google"),
        ("vit_small_patch16_224", "big_vision"),
        ("vit_base_patch16_siglip_224", "scan"),  # MAP head, gelu_tanh, no class token
        ("vit_base_patch16_siglip_gap_224", "big_vision"),
    ],
)
def test_npz_matches_timms_own_npz_loader(tmp_path, arch, layout):
    import timm.models.vision_transformer as timm_vit

    path = tmp_path / "ckpt.npz"
    np.savez(path, **npz_arrays(timm_model(arch), layout))
    reference = timm_model(arch, seed=1)  # other weights until the file is loaded
    timm_vit._load_weights(reference, str(path))
    ours = vitres.from_pretrained(path, arch=arch)
    for size in [(64, 64), (48, 80), (51, 77)]:
        x = torch.randn(2, 3, *size)
        cropped = x[..., : size[0] // 16 * 16, : size[1] // 16 * 16]
        with torch.no_grad():
            expected = reference(cropped)
            worst = float((ours(x) - expected).abs().max())
        assert worst <= 1e-5 * max(1.0, float(expected.abs().max())), (size, worst)


def test_npz_refusals_are_clear(tmp_path):
    arrays = npz_arrays(timm_model("vit_tiny_patch16_224"), "google")
    path = tmp_path / "ckpt.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="pass its timm architecture"):
        vitres.from_pretrained(path)
    np.savez(tmp_path / "extra.npz", **arrays, **{"pre_logits/kernel": np.zeros((64, 64))})
    with pytest.raises(ValueError, match=r"does not map: \['pre_logits/kernel'\]"):
        vitres.from_pretrained(tmp_path / "extra.npz", arch="vit_tiny_patch16_224")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="no embedding/kernel"):
        vitres.from_pretrained(tmp_path / "other.npz", arch="vit_tiny_patch16_224")
    objects = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **{"embedding/kernel": objects})
    with pytest.raises(ValueError, match="never pickled objects|not a readable"):
        vitres.from_pretrained(tmp_path / "pickled.npz", arch="vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="do not fit timm architecture 'vit_base_patch16_dinov3'"):
        vitres.from_pretrained(path, arch="vit_base_patch16_dinov3")
