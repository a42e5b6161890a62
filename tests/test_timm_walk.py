"""Every architecture in timm's ``vision_transformer``, ``eva`` and ``deit`` registries is
either exact or refused, never silently wrong.

Each one is built by timm itself (depth 2, 16 channels per head, 4x4 patches, random
unit-scale weights: :func:`timm_shim.small_model`), saved in timm's ``save_for_hf`` layout
(``model.safetensors`` + ``config.json`` with ``architecture`` and ``model_args``) and
loaded through :func:`vitres.from_pretrained`. The reference is timm's own forward at the
native size, a non-square size and one the patch does not divide (timm's strided
convolution drops the remainder; with ``dynamic_img_pad`` it zero-pads).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm_shim import architectures, load_timm, small_model

import vitres
from vitres.models.convert import timm_architectures, timm_config_fields

pytestmark = pytest.mark.skipif(load_timm() is None, reason="timm is not installed")
TOLERANCE = 1e-5  # max |diff| over max(1, max |logit|)


def save_for_hf(folder: Path, name: str, model: torch.nn.Module, args: dict) -> Path:
    folder.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    cfg = model.pretrained_cfg
    document = {
        "architecture": name,
        "num_classes": args["num_classes"],
        "global_pool": getattr(model, "global_pool", None),
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [3, *args["img_size"]],
            "mean": list(cfg.get("mean", (0.5, 0.5, 0.5))),
            "std": list(cfg.get("std", (0.5, 0.5, 0.5))),
        },
    }
    (folder / "config.json").write_text(json.dumps(document))
    return folder


def worst_difference(ours: torch.nn.Module, model: torch.nn.Module, args: dict) -> float:
    ph, pw = args["img_size"][0] // 4, args["img_size"][1] // 4
    pad = getattr(model.patch_embed, "dynamic_img_pad", False)
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for size in [(4 * ph, 4 * pw), (3 * ph, 5 * pw), (3 * ph + 3, 5 * pw - 2)]:
        x = torch.randn(2, 3, *size, generator=generator)
        cropped = x if pad else x[..., : size[0] // ph * ph, : size[1] // pw * pw]
        with torch.no_grad():
            expected, got = model(cropped), ours(x)
        scale = max(1.0, float(expected.abs().max()))
        worst = max(worst, float((expected - got).abs().max()) / scale)
    return worst


def test_every_timm_vit_architecture_is_exact_or_refused(tmp_path):
    outcomes: dict[str, str] = {}
    wrong, unclear = [], []
    for module, name in architectures():
        built = small_model(module, name)
        if built is None:  # timm cannot build it at depth 2: refused by its name alone
            with pytest.raises(ValueError, match=name):
                timm_config_fields({}, arch=name)
            outcomes[name] = "refused"
            continue
        model, args = built
        folder = save_for_hf(tmp_path / name, name, model, args)
        try:
            ours = vitres.from_pretrained(folder)
        except ValueError as err:
            outcomes[name] = "refused"
            if name not in str(err):
                unclear.append(f"{name}: {err}")
            continue
        worst = worst_difference(ours, model, args)
        outcomes[name] = "exact" if worst <= TOLERANCE else "wrong"
        if worst > TOLERANCE:
            wrong.append(f"{name}: max |diff| {worst:.2e}")
    assert not wrong, f"silently wrong: {wrong}"
    assert not unclear, f"refusals that do not name the architecture: {unclear}"
    assert set(outcomes) == set(timm_architectures()), "the architecture table is stale"
    # the plain ViTs, DINOv2, CLIP, SigLIP (incl. gelu_tanh SigLIP-2) and DeiT load exactly
    for name in (
        "vit_base_patch16_gap_224",  # 16 heads: not guessed from "base"
        "vit_so400m_patch16_siglip_256",  # gelu_tanh, attention pool
        "vit_base_patch16_clip_quickgelu_224",
        "vit_small_patch14_reg4_dinov2",
        "deit_base_distilled_patch16_224",
        "vit_betwixt_patch16_reg4_gap_256",
    ):
        assert outcomes[name] == "exact", name
    # timm's eva.py: DINOv3, the RoPE ViTs (axial, mixed, with a table), EVA-02, PE-core
    for name in ("vit_base_patch16_dinov3", "vit_small_plus_patch16_dinov3_qkvb",
                 "vit_base_patch16_rope_224", "vit_base_patch16_rope_mixed_ape_224",
                 "vit_mediumd_patch16_rope_reg1_gap_256", "eva02_base_patch14_224",
                 "eva02_tiny_patch14_224", "eva02_large_patch14_clip_224",
                 "vit_pe_core_tiny_patch16_384"):  # fmt: skip
        assert outcomes[name] == "exact", name
    # residual post-norm blocks (ResPostBlock, EVA-02-E), DINOv2-g's packed SwiGLU, BEiT-3's
    # attention / MLP norms, no final norm (RADIO, InternViT)
    for name in ("vit_base_patch16_rpn_224", "eva02_enormous_patch14_clip_224",
                 "vit_giant_patch14_reg4_dinov2", "beit3_base_patch16_224",
                 "vit_base_patch16_radio_v3", "vit_intern300m_patch14_448"):  # fmt: skip
        assert outcomes[name] == "exact", name
    for name in ("vit_base_patch16_sapiens2", "aimv2_large_patch14_224",
                 "vit_base_patch16_xp_224"):  # fmt: skip
        assert outcomes[name] == "refused", name
    assert list(outcomes.values()).count("exact") >= 216  # timm 1.0.31: 216 of 244


def test_a_bare_timm_file_loads_with_its_architecture_only(tmp_path):
    torch.manual_seed(0)
    model = load_timm().model_entrypoint("vit_tiny_patch16_224")(pretrained=False).eval()
    save_file(model.state_dict(), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match="pass arch="):
        vitres.from_pretrained(tmp_path / "tiny.safetensors")
    ours = vitres.from_pretrained(tmp_path / "tiny.safetensors", arch="vit_tiny_patch16_224")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="do not fit timm architecture 'vit_small_patch16_224'"):
        vitres.from_pretrained(tmp_path / "tiny.safetensors", arch="vit_small_patch16_224")
    with pytest.raises(ValueError, match="do not fit timm architecture 'vit_small_patch16_dino"):
        vitres.from_pretrained(tmp_path / "tiny.safetensors", arch="vit_small_patch16_dinov3")
