"""The one model-reference grammar: every accepted form resolves to the model it names."""

import json

import pytest
import torch
from torch import nn

import vitres
from vitres.cli import main
from vitres.data import eval_batches, get_dataset
from vitres.models.resolve import describe_reference, resolve_model

transformers = pytest.importorskip("transformers")


def tiny_vit(**overrides):
    torch.manual_seed(0)
    base = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=2)
    return vitres.create_model("vit_tiny_patch8", **{**base, **overrides}).eval()


def same_outputs(a: nn.Module, b: nn.Module, shape=(2, 3, 32, 32)) -> None:
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def hf_fmnist_dir(tmp_path_factory):
    """A tiny random transformers ViT for 28 px, 1 channel, 10 classes (Fashion-MNIST shaped)."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
        num_channels=1,
        num_labels=10,
    )
    model = transformers.ViTForImageClassification(config).eval()
    path = tmp_path_factory.mktemp("hf_fmnist")
    model.save_pretrained(path)
    return path


def test_module_and_factory_forms():
    model = tiny_vit()
    assert resolve_model(model) is model
    assert describe_reference(model).kind == "module"
    with pytest.raises(ValueError, match="already built"):
        resolve_model(model, num_classes=3)
    built = resolve_model(lambda **kw: tiny_vit(**kw), num_classes=3)
    assert built.config.num_classes == 3
    assert describe_reference(tiny_vit).kind == "factory"


def test_import_form():
    assert describe_reference("torch.nn:Identity").kind == "import"
    assert isinstance(resolve_model("torch.nn:Identity"), nn.Identity)
    linear = resolve_model("torch.nn:Linear", in_features=3, out_features=2)
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (2, 3)
    with pytest.raises(ValueError, match="cannot import 'no_such_pkg:thing'"):
        resolve_model("no_such_pkg:thing")
    with pytest.raises(ValueError, match="the class dict, not an nn.Module"):
        resolve_model("builtins:dict")  # refused before it is called
    with pytest.raises(ValueError, match="returned dict, expected an nn.Module"):
        resolve_model("json:loads", s="{}")  # a Python function: called, its result checked


def test_vitres_checkpoint_file_and_directory(tmp_path):
    model = tiny_vit()
    file = vitres.save_model(model, tmp_path / "m.safetensors")
    vitres.save_model(model, tmp_path / "ckpt")
    for ref in (file, str(file), tmp_path / "m.json", tmp_path / "ckpt"):
        assert describe_reference(ref).kind == "vitres"
        same_outputs(resolve_model(ref), model)
    # run-time overrides apply to a checkpoint
    assert resolve_model(file, pos_embed_mode="fourier").config.pos_embed_mode == "fourier"


def test_bundled_name():
    ref = describe_reference("fmnist-vit-multires")
    assert ref.kind == "bundled"
    same_outputs(resolve_model("fmnist-vit-multires"), vitres.load_model("fmnist-vit-multires"),
                 shape=(2, 1, 28, 28))  # fmt: skip


def test_registry_name_builds_random_weights():
    assert describe_reference("vit_tiny_patch16").kind == "registry"
    model = resolve_model("vit_tiny_patch16", img_size=32, num_classes=7, depth=1)
    cfg = model.config
    assert (cfg.embed_dim, cfg.num_heads, cfg.patch_size, cfg.num_classes) == (192, 3, 16, 7)


def test_hf_directory(hf_fmnist_dir):
    ref = describe_reference(hf_fmnist_dir)
    assert ref.kind == "hf" and "Hugging Face vit directory" in ref.detail
    hf = transformers.ViTForImageClassification.from_pretrained(hf_fmnist_dir).eval()
    ours = resolve_model(hf_fmnist_dir)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=0)


def test_timm_file_and_directory(tmp_path):
    source = tiny_vit(embed_dim=64, num_heads=4)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    assert describe_reference(tmp_path / "vit.pth").kind == "timm"
    with pytest.raises(ValueError, match="pass arch="):  # a bare file: its facts not guessed
        resolve_model(tmp_path / "vit.pth", num_heads=4)
    folder = tmp_path / "timm_dir"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file(dict(source.state_dict()), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "vit_custom",
                "num_classes": 5,
                "global_pool": "token",
                "model_args": {"num_heads": 4},
                "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3},
            }
        )
    )
    assert describe_reference(folder).kind == "timm"
    same_outputs(resolve_model(folder), source)


def test_nothing_matches_lists_what_was_tried():
    with pytest.raises(ValueError) as info:
        resolve_model("vit_gigantic_patch99x")
    message = str(info.value)
    assert "cannot resolve model 'vit_gigantic_patch99x'" in message
    for form in ("module:factory", "bundled", "registry", "Hugging Face", "timm", "vitres"):
        assert form in message
    with pytest.raises(FileNotFoundError, match="no such file or directory: models/x.pth"):
        resolve_model("models/x.pth")
    with pytest.raises(ValueError, match="must be a string"):
        resolve_model(42)


def test_cli_eval_accepts_a_hugging_face_directory(hf_fmnist_dir, capsys):
    """`vitres eval --model hf-dir` scores the HF model itself: same accuracy as transformers."""
    assert main(["eval", "--model", str(hf_fmnist_dir), "--res", "28,21", "--limit", "64",
                 "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    hf = transformers.ViTForImageClassification.from_pretrained(hf_fmnist_dir).eval()
    data = get_dataset("fashion-mnist", "test", in_chans=1)
    cfg = resolve_model(hf_fmnist_dir).config
    for res in (28, 21):
        correct = total = 0
        for x, y in eval_batches(data, res, 64, mean=cfg.mean, std=cfg.std, in_chans=1, limit=64):
            with torch.no_grad():
                logits = hf(x, interpolate_pos_encoding=True).logits
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
        assert result["accuracy"][str(res)] == pytest.approx(correct / total)
    assert result["n"] == 64 and result["model"] == str(hf_fmnist_dir)
