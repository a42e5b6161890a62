"""Checkpoints, foreign imports and parity with Hugging Face transformers' ViT."""

import json

import pytest
import torch
from safetensors.torch import save_file

import vitres

transformers = pytest.importorskip("transformers")


def hf_vit(image_size=32, patch_size=8, seed=0):
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch_size,
        num_labels=5,
    )
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():  # random init leaves cls/pos near zero; make them matter
        model.vit.embeddings.position_embeddings.normal_(0, 1.0)
        model.vit.embeddings.cls_token.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_vit")
    hf_vit().save_pretrained(path)
    return path


def test_hf_parity_native_and_interpolated(hf_dir):
    hf = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    ours = vitres.from_pretrained(hf_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=0)
        for h, w in [(40, 56), (24, 48), (45, 61)]:  # non-square, and not divisible by 8
            x = torch.randn(2, 3, h, w)
            ref = hf(x, interpolate_pos_encoding=True).logits
            torch.testing.assert_close(ours(x), ref, atol=1e-4, rtol=0)


def test_hf_in_memory_key_names(tmp_path):
    hf = hf_vit(seed=3)
    save_file(
        {k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors")
    )
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    ours = vitres.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=0)


def test_hf_pytorch_bin_is_read_weights_only(tmp_path):
    hf = hf_vit(seed=4)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    ours = vitres.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=0)
    # a pickle with arbitrary objects is refused by weights_only loading
    torch.save({"evil": object()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        vitres.from_pretrained(tmp_path)


def test_hf_requested_grid_resamples_table(hf_dir):
    hf = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    ours = vitres.from_pretrained(hf_dir, img_size=48)
    assert ours.config.img_size == (48, 48)
    assert ours.pos_embed.shape == (1, 1 + 36, 32)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x), hf(x, interpolate_pos_encoding=True).logits, atol=1e-4, rtol=0
        )


def test_hf_unknown_and_missing_keys(tmp_path):
    hf = hf_vit()
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    save_file({**state, "vit.extra.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="unknown keys"):
        vitres.from_pretrained(tmp_path)
    del state["vit.layernorm.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        vitres.from_pretrained(tmp_path)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    for name, kw in [
        (
            "vit_tiny_patch8",
            dict(embed_dim=32, depth=2, num_heads=2, pos_embed="cpb", reg_tokens=1),
        ),
        ("mixer_tiny8", dict()),
    ]:
        model = vitres.create_model(name, img_size=32, num_classes=3, **kw).eval()
        path = vitres.save_model(model, tmp_path / f"{name}.safetensors", metadata={"note": "x"})
        loaded = vitres.load_model(path)
        assert loaded.config == model.config and loaded.metadata == {"note": "x"}
        x = torch.randn(2, 3, 40, 24)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # directory form, and from_pretrained detects vitres
    vitres.save_model(model, tmp_path / "ckpt_dir")
    assert (tmp_path / "ckpt_dir" / "config.json").exists()
    assert vitres.from_pretrained(tmp_path / "ckpt_dir").config == model.config
    # the safetensors file alone is self-contained (config in its metadata)
    (tmp_path / "mixer_tiny8.json").unlink()
    assert vitres.load_model(tmp_path / "mixer_tiny8.safetensors").config == model.config


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no vitres checkpoint"):
        vitres.load_model(tmp_path / "missing.safetensors")
    model = vitres.create_model("vit_tiny_patch8", img_size=16, embed_dim=16, depth=1, num_heads=2)
    path = vitres.save_model(model, tmp_path / "m.safetensors")
    doc = json.loads(path.with_suffix(".json").read_text())
    doc["config"]["depth"] = 2
    path.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="missing"):
        vitres.load_model(path)


def test_timm_state_dict_import(tmp_path):
    """timm names map one to one; avg-pool models keep their final norm as fc_norm."""
    torch.manual_seed(0)
    source = vitres.create_model(
        "vit_small_patch8", img_size=32, num_classes=4, embed_dim=384, depth=1, global_pool="avg"
    ).eval()
    state = dict(source.state_dict())
    state["fc_norm.weight"] = state.pop("norm.weight")
    state["fc_norm.bias"] = state.pop("norm.bias")
    folder = tmp_path / "timm"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    args = {"depth": 1, "img_size": 32, "num_classes": 4, "global_pool": "avg"}
    (folder / "config.json").write_text(  # heads and the rest: the architecture's own
        json.dumps({"architecture": "vit_small_patch8_224", "model_args": args})
    )
    ours = vitres.from_pretrained(folder)
    assert ours.config.num_heads == 6 and ours.config.global_pool == "avg"
    assert ours.config.pos_embed_antialias  # timm resamples with antialias
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), source(x), rtol=0, atol=1e-6)
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a timm ViT"):
        vitres.from_pretrained(tmp_path / "other.safetensors")
