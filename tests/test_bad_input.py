"""Bad input gets a clear error or a correct result (issue 9, section 4), never a deep traceback."""

import json

import pytest
import torch
from safetensors.torch import save_file

import vitres
from vitres.cli import main
from vitres.models.config import MixerConfig, ViTConfig


def tiny_vit(**overrides):
    torch.manual_seed(0)
    base = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=2)
    return vitres.create_model("vit_tiny_patch8", **{**base, **overrides}).eval()


# ----------------------------------------------------------------------------- input dtype
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_weights_dtype(dtype):
    model = tiny_vit(global_pool="avg", class_token=False)
    x = torch.randn(2, 3, 40, 24).to(dtype)
    with torch.no_grad():
        out = model(x)
        expected = model(x.float())  # the same values, cast exactly as the model does
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_float32_input_to_a_bfloat16_model_is_cast():
    model = tiny_vit().to(torch.bfloat16)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        expected = model(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_mixer_casts_float64_input():
    torch.manual_seed(0)
    mixer = vitres.create_model("mixer_tiny8", img_size=32, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), mixer(x.float()), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_input_is_an_error_with_a_message(dtype):
    x = torch.ones(1, 3, 32, 32, dtype=dtype)
    with pytest.raises(ValueError, match=r"floating-point images.*x\.float\(\) / 255"):
        tiny_vit()(x)


def test_nan_input_is_an_error_not_nan_logits():
    x = torch.randn(1, 3, 32, 32)
    x[0, 1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tiny_vit()(x)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"num_classes": -1}, "num_classes must be >= 0"),
        ({"in_chans": 0}, "in_chans must be a positive int"),
        (
            {"embed_dim": 30, "num_heads": 4},
            r"embed_dim \(30\) must be divisible by num_heads \(4\)",
        ),
        ({"num_heads": 0}, "num_heads must be a positive int"),
        ({"embed_dim": 0}, "embed_dim must be a positive int"),
        ({"depth": 0}, "depth must be a positive int"),
        ({"patch_size": 0}, "patch_size must be positive"),
        ({"patch_size": (8, -2)}, "patch_size must be positive"),
        ({"patch_size": 2.5}, "patch_size must be a positive int"),
        ({"img_size": 4}, r"img_size \(4, 4\) must hold one 8x8 patch"),
        ({"img_size": (0, 32)}, "img_size must be positive"),
        ({"mlp_ratio": 0}, "mlp_ratio must be positive"),
        ({"mean": (0.1, 0.2)}, "mean has 2 values .* in_chans=3"),
        ({"std": (0.0,)}, "std must be positive"),
        ({"norm_eps": 0}, "norm_eps must be positive"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\)"),
    ],
)
def test_invalid_vit_config_is_a_value_error(overrides, match):
    with pytest.raises(ValueError, match="invalid ViTConfig: " + match):
        ViTConfig(**{**dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2), **overrides})


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"num_classes": -1}, "num_classes must be >= 0"),
        ({"in_chans": 0}, "in_chans must be a positive int"),
        ({"tokens_mlp_dim": 0}, "tokens_mlp_dim must be a positive int"),
        ({"patch_size": 0}, "patch_size must be positive"),
    ],
)
def test_invalid_mixer_config_is_a_value_error(overrides, match):
    with pytest.raises(ValueError, match="invalid MixerConfig: " + match):
        MixerConfig(**{**dict(img_size=32, patch_size=8), **overrides})


def test_single_or_equal_mean_is_broadcast_per_channel():
    cfg = ViTConfig(img_size=32, patch_size=8, in_chans=1, embed_dim=32, num_heads=2)
    assert cfg.mean == (0.5,) and cfg.std == (0.5,)  # the 3-channel default, all equal
    cfg = ViTConfig(img_size=32, patch_size=8, in_chans=3, embed_dim=32, num_heads=2, mean=(0.2,))
    assert cfg.mean == (0.2, 0.2, 0.2)


# ----------------------------------------------------------------------------- valid_size
@pytest.mark.parametrize(
    "valid,match",
    [
        ((0, 0), "valid_size must be positive"),
        ((10, 0), "valid_size must be positive"),
        ((33, 16), "larger than the 32x32 input"),
        ((16,), "pair of ints"),
        ("16x16", "pair of ints"),
        ((16.0, 16.0), "pair of ints"),
    ],
)
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_bad_valid_size_is_an_error_not_nan(valid, match, pool):
    model = tiny_vit(global_pool=pool)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(1, 3, 32, 32), valid_size=valid)


def test_valid_size_of_the_whole_input_changes_nothing():
    model = tiny_vit(global_pool="avg")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x, valid_size=(32, 32)), model(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- files
@pytest.fixture
def saved(tmp_path):
    model = tiny_vit()
    return vitres.save_model(model, tmp_path / "m.safetensors")


def test_corrupt_safetensors_is_named(saved, capsys):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ValueError, match=r"m\.safetensors is not a readable safetensors file"):
        vitres.load_model(saved)
    saved.write_bytes(b"\x00" * 64)  # garbage header
    with pytest.raises(ValueError, match=r"m\.safetensors .*truncated or corrupt"):
        vitres.from_pretrained(saved)
    # the CLI prints one line, no traceback
    assert main(["eval", "--model", str(saved), "--res", "16", "--limit", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitres eval: error: ") and "m.safetensors" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_corrupt_foreign_safetensors_is_named(tmp_path):
    path = tmp_path / "timm.safetensors"
    path.write_bytes(b"{not json" + b"\x00" * 32)
    with pytest.raises(ValueError, match=r"timm\.safetensors is not a readable safetensors"):
        vitres.from_pretrained(path)


@pytest.mark.parametrize(
    "content",
    [b"\x80\x02garbage" * 20, b"hello world, not a pickle", b"PK\x03\x04 a broken zip"],
)
def test_garbage_pth_is_a_clear_error(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"weights\.pth is not a readable PyTorch weights file"):
        vitres.from_pretrained(path)


def test_truncated_pth_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(8)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"weights\.pth is not a readable PyTorch weights file"):
        vitres.from_pretrained(path)


def test_load_model_of_a_foreign_file_says_what_it_is(tmp_path):
    path = tmp_path / "x.pth"
    torch.save(tiny_vit().state_dict(), path)
    with pytest.raises(
        ValueError, match=r"x\.pth is not a vitres checkpoint.*from_pretrained"
    ) as info:
        vitres.load_model(path)
    assert "model.safetensors" not in str(info.value).split("(")[0]
    assert "x.pth/model.safetensors" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"no such file: .*missing\.pth$"):
        vitres.load_model(tmp_path / "missing.pth")
    # the resolver reads the same file as timm weights, and asks for its architecture
    with pytest.raises(ValueError, match="bare timm state dict.*pass arch="):
        vitres.resolve_model(path, num_heads=2)


def test_load_model_of_a_non_vitres_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not a vitres config.*from_pretrained"):
        vitres.load_model(tmp_path)
