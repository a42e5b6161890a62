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


# ----------------------------------------------------------------------------- the CLI catalogue
# Each case is a command line and the words its one-line error must hold (exit 2, no
# traceback). {tmp} is a scratch folder holding: results.jsonl (a real sweep's records),
# a_dir/, a_file, empty.jsonl, binary.jsonl, middle.jsonl (a bad line between good ones)
# and corrupt.safetensors.
CATALOGUE = [
    # output paths: checked before any work
    ("sweep --model fmnist-vit-single --res 16 --out {tmp}/a_dir", "--out {tmp}/a_dir is a directory"),
    ("export --model fmnist-vit-single --out {tmp}/a_dir", "--out {tmp}/a_dir is a directory"),
    ("report {tmp}/results.jsonl --out {tmp}/a_dir", "--out {tmp}/a_dir is a directory"),
    ("train --out-dir {tmp}/a_file --epochs 1", "--out-dir {tmp}/a_file is a file"),
    ("flexify --out-dir {tmp}/a_file", "is a file"),
    ("ood --model fmnist-vit-single --res 28 --plot {tmp}/a_dir", "--plot {tmp}/a_dir is a directory"),
    ("report {tmp}/results.jsonl --out {tmp}/r.html --screenshot {tmp}/a_file/x.png",
     "a_file is a file, not a folder"),
    # results files that are not results files
    ("recommend {tmp}/a_dir", "is a directory; give the results file"),
    ("recommend {tmp}/binary.jsonl", "binary.jsonl, line 1: not UTF-8 text"),
    ("recommend {tmp}/middle.jsonl", "middle.jsonl, line 2: not a valid result record"),
    ("report {tmp}/empty.jsonl --out {tmp}/e.html", "no records in {tmp}/empty.jsonl"),
    ("check --baseline {tmp}/none.jsonl --current {tmp}/results.jsonl", "no results file"),
    # sizes a run cannot afford, or that do not exist
    ("eval --model fmnist-vit-single --res 100000", "625,000,000 tokens per image, over the limit"),
    ("eval --model fmnist-vit-single --res 5000", "raise the limit with --max-tokens"),
    ("eval --model fmnist-vit-single --res abc", "cannot read resolution 'abc'"),
    ("sweep --model fmnist-vit-single --res 0 --out {tmp}/s.jsonl", "resolution must be positive"),
    ("train --resolutions 7 --epochs 1 --out-dir {tmp}/t7", "7 are not multiples of the patch size 4"),
    # models that are not models
    ("eval --model os:system --res 16", "os:system is a built-in function, not a model factory"),
    ("eval --model collections:OrderedDict --res 16", "not an nn.Module"),
    ("eval --model {tmp}/corrupt.safetensors --res 16", "not a readable safetensors file"),
    # counts and settings out of range
    ("sweep --model fmnist-vit-single --res 16 --threads 999 --out {tmp}/s.jsonl", "999 threads"),
    ("eval --model fmnist-vit-single --res 16 --threads 999", "999 threads"),
    ("serve --model fmnist-vit-single --port 70000", "--port 70000 is not a TCP port"),
    ("eval --model fmnist-vit-single --res 16 --limit -5", "must be at least 1"),
    ("eval --model fmnist-vit-single --res 16 --batch-size 0", "batch_size must be >= 1"),
    ("eval --model fmnist-vit-single --res 16 --patch-size 0", "patch_size must be positive"),
    ("recommend {tmp}/results.jsonl --max-latency-ms -1", "must be a positive finite number"),
    ("serve --model fmnist-vit-single --slo-ms 0", "--slo-ms must be a positive number"),
    ("run --model fmnist-vit-single --source fashion-mnist --target-fps -3", "target_fps must be > 0"),
    ("export --model fmnist-vit-single --opset 5 --out {tmp}/m.onnx", "opset 5 is not supported"),
    ("train --epochs 0 --out-dir {tmp}/t0", "epochs and batch_size must be >= 1"),
    # data and sources that are not there
    ("eval --model fmnist-vit-single --res 16 --data {tmp}/nothing", "not a known name"),
    ("ood --model fmnist-vit-single --res 28 --ood {tmp}/nothing", "not a known name"),
    ("run --model fmnist-vit-single --source {tmp}/nothing.mp4 --target-fps 30", "stream URL"),
    ("explain --model fmnist-vit-single --image {tmp}/nothing.png", "no image file at"),
    ("sweep --model fmnist-vit-single --res 16 --backend nosuch --out {tmp}/s.jsonl",
     "unknown backend(s) ['nosuch']"),
    ("recommend {tmp}/results.jsonl --csv {tmp}/a_dir", "is a directory"),
    # measurement settings no sweep can run with: refused up front, not recorded as failures
    ("sweep --model fmnist-vit-single --res 16 --min-calls 0 --out {tmp}/s.jsonl", "--min-calls must be at least 1"),
    ("sweep --model fmnist-vit-single --res 16 --timeout -1 --out {tmp}/s.jsonl", "--timeout must be a positive"),
    ("sweep --model fmnist-vit-single --res 16 --device tpu --out {tmp}/s.jsonl", "--device must be cpu, cuda"),
    ("sweep --model fmnist-vit-single --res 16 --max-attempts 0 --out {tmp}/s.jsonl", "--max-attempts must be"),
    ("export --model fmnist-vit-single --out {tmp}/m.txt", "--out must end in .onnx"),
]  # fmt: skip


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result

    tmp = tmp_path_factory.mktemp("catalogue")
    (tmp / "a_dir").mkdir()
    (tmp / "a_file").write_text("not a folder")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "binary.jsonl").write_bytes(bytes(range(128, 256)) * 8)
    (tmp / "corrupt.safetensors").write_bytes(b"\x00" * 100)
    records = []
    for size in (16, 28):
        config = SweepConfig("fmnist-vit-single", (size, size), None, 1, "fp32", "eager", 1, "cpu")
        latency = LatencyStats(1.0, 0.05, 1.1, 1.2, 1.3, 1.0, 1.0, 30, False)
        records.append(Measurement(config=config, accuracy=0.85, n_eval=500, latency=latency,
                                   throughput_ips=1000.0, native_resolution=(28, 28),
                                   native_patch_size=4))  # fmt: skip
    for m in records:
        append_result(tmp / "results.jsonl", m)
    lines = (tmp / "results.jsonl").read_text().splitlines()
    (tmp / "middle.jsonl").write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    return tmp


@pytest.mark.parametrize("line,words", CATALOGUE, ids=[c[0][:60] for c in CATALOGUE])
def test_the_cli_catalogue_ends_in_clear_errors(scratch, capsys, line, words):
    argv = line.format(tmp=scratch).split()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, (line, err[-600:])
    assert words.format(tmp=scratch) in err, (line, err[-600:])
    assert "Traceback" not in err


def test_a_folder_written_by_train_loads_as_a_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out-dir", str(out), "--epochs", "1", "--train-limit", "32",
                 "--eval-limit", "16", "--embed-dim", "16", "--depth", "1", "--num-heads", "2",
                 "--batch-size", "16", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    from vitres.models.resolve import describe_reference

    assert describe_reference(str(out)).kind == "vitres"
    model = vitres.resolve_model(str(out))
    assert model.config.embed_dim == 16 and model.config.num_heads == 2
    assert main(["eval", "--model", str(out), "--res", "28", "--limit", "16"]) == 0


def test_explain_writes_into_a_folder_and_refuses_a_bomb(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "boot.png"
    Image.new("L", (28, 28), 128).save(image)
    folder = tmp_path / "maps"
    folder.mkdir()
    assert main(["explain", "--model", "fmnist-vit-single", "--image", str(image),
                 "--res", "28", "--out", str(folder)]) == 0  # fmt: skip
    assert (folder / "boot_attention.png").is_file() and not (tmp_path / "maps.png").exists()
    capsys.readouterr()
    # a 20000 x 20000 PNG: refused from its header, before 400 million pixels are decoded
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    assert main(["explain", "--model", "fmnist-vit-single", "--image", str(bomb),
                 "--out", str(tmp_path / "b.png")]) == 2  # fmt: skip
    assert "400000000 pixels" in capsys.readouterr().err  # refused, not decoded


def test_a_tiny_image_is_answered_with_a_warning(tmp_path, capsys):
    from fastapi.testclient import TestClient
    from PIL import Image
    from test_serve_app import make_app

    buffer = tmp_path / "dot.png"
    Image.new("L", (1, 1), 200).save(buffer)
    with TestClient(make_app()) as client:
        answer = client.post("/v1/classify", content=buffer.read_bytes())
        normal = client.post("/v1/classify", content=_png(28))
    assert answer.status_code == 200 and "smaller than one 4x4 patch" in answer.json()["warning"]
    assert "warning" not in normal.json()
    assert main(["explain", "--model", "fmnist-vit-single", "--image", str(buffer),
                 "--res", "28", "--out", str(tmp_path / "d.png")]) == 0  # fmt: skip
    assert "smaller than one 4x4 patch" in capsys.readouterr().err


def _png(side):
    import io

    from PIL import Image

    data = io.BytesIO()
    Image.new("L", (side, side), 100).save(data, "PNG")
    return data.getvalue()


def test_check_fails_on_missing_configs_unless_allowed(tmp_path, capsys):
    from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result

    base, current = tmp_path / "base.jsonl", tmp_path / "current.jsonl"
    for size in (16, 20, 24, 28):
        config = SweepConfig("m", (size, size), None, 1, "fp32", "eager", 1, "cpu")
        m = Measurement(config=config, latency=LatencyStats(1.0, 0.05, 1.1, 1.2, 1.3, 1.0, 1.0,
                                                             30, False))  # fmt: skip
        append_result(base, m)
        if size == 16:
            append_result(current, m)
    assert main(["check", "--baseline", str(base), "--current", str(current)]) == 1
    assert "3 baseline config(s) not in the current run" in capsys.readouterr().out
    assert main(["check", "--baseline", str(base), "--current", str(current),
                 "--allow-missing"]) == 0  # fmt: skip


def test_models_lists_the_train_commands_default(capsys):
    assert main(["models"]) == 0
    assert "vit_tiny_patch4" in capsys.readouterr().out
