"""An exported file works without vitres: its metadata says how to feed it.

The bundled Fashion-MNIST model is exported from a sweep record, then a separate Python
process that never imports vitres reads the file with plain ONNX Runtime, takes the
normalisation, the recommended size and the class names from the file's own metadata,
and classifies real Fashion-MNIST test images given as 8-bit pixels. Its answers must be
vitres's answers.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vitres
from vitres.cli import main
from vitres.data import load_fashion_mnist
from vitres.data.fashion_mnist import FASHION_MNIST_CLASSES
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result

STANDALONE = r"""
import json, sys
import numpy as np
import pytest
import onnxruntime as ort

path, images_path = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
mean = np.array(json.loads(meta["vitres.mean"]), np.float32)[None, :, None, None]
std = np.array(json.loads(meta["vitres.std"]), np.float32)[None, :, None, None]
names = json.loads(meta["vitres.class_names"])
assert meta["vitres.input_layout"] == "NCHW float32"
pixels = np.load(images_path)  # uint8 (N, H, W), greyscale
x = (pixels[:, None].astype(np.float32) / 255.0 - mean) / std
logits = session.run(None, {session.get_inputs()[0].name: x})[0]
print(json.dumps({
    "labels": [names[i] for i in logits.argmax(1)],
    "size": meta["vitres.recommended_size"],
    "vitres_imported": "vitres" in sys.modules,
}))
"""


def test_exported_file_classifies_real_images_without_vitres(tmp_path, capsys):
    config = SweepConfig(
        model="fmnist-vit-single", resolution=(28, 28), patch_size=4,
        backend="onnxruntime", precision="fp32", threads=1,
    )  # fmt: skip
    latency = LatencyStats(2.0, 0.1, 2.2, 2.3, 2.4, 1.9, 2.0, 10, False)
    record = Measurement(config=config, status="ok", accuracy=0.9, data="fashion-mnist",
                         latency=latency, throughput_ips=500.0)  # fmt: skip
    results = tmp_path / "results.jsonl"
    append_result(results, record)
    out = tmp_path / "model.onnx"
    assert main(["export", "--from", str(results), "--key", record.key, "--out", str(out)]) == 0
    capsys.readouterr()
    test = load_fashion_mnist("test")
    pixels = test.images[:64, 0].numpy()  # uint8, as the dataset stores them
    np.save(tmp_path / "images.npy", pixels)
    done = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, str(out), str(tmp_path / "images.npy")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    answer = json.loads(done.stdout)
    assert answer["vitres_imported"] is False and answer["size"] == "28x28"
    model = vitres.load_model("fmnist-vit-single")
    cfg = model.config
    x = torch.from_numpy(pixels).float()[:, None] / 255.0
    x = (x - torch.tensor(cfg.mean).view(1, -1, 1, 1)) / torch.tensor(cfg.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = [FASHION_MNIST_CLASSES[i] for i in model(x).argmax(1).tolist()]
    assert answer["labels"] == expected
    truth = [FASHION_MNIST_CLASSES[i] for i in test.labels[:64].tolist()]
    assert sum(a == b for a, b in zip(answer["labels"], truth, strict=True)) >= 50  # ~90 %


OPENVINO_STANDALONE = r"""
import json, sys
import numpy as np
import pytest
import openvino as ov

xml, images_path = sys.argv[1], sys.argv[2]
model = ov.Core().read_model(xml)
info = lambda key: model.get_rt_info(["vitres", key]).astype(str)
mean = np.array(json.loads(info("mean")), np.float32)[None, :, None, None]
std = np.array(json.loads(info("std")), np.float32)[None, :, None, None]
compiled = ov.Core().compile_model(model, "CPU")
pixels = np.load(images_path)
x = (pixels[:, None].astype(np.float32) / 255.0 - mean) / std
logits = compiled(x)[0]
print(json.dumps({"index": logits.argmax(1).tolist(), "vitres_imported": "vitres" in sys.modules}))
"""


def test_openvino_ir_runs_in_plain_openvino_and_benchmark_app(tmp_path, capsys):
    xml = tmp_path / "model.xml"
    assert main(["export", "--model", "fmnist-vit-single", "--format", "openvino",
                 "--out", str(xml)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "benchmark_app -m" in printed and (tmp_path / "model.bin").exists()
    test = load_fashion_mnist("test")
    pixels = test.images[64:96, 0].numpy()
    np.save(tmp_path / "images.npy", pixels)
    done = subprocess.run(
        [sys.executable, "-I", "-c", OPENVINO_STANDALONE, str(xml), str(tmp_path / "images.npy")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    answer = json.loads(done.stdout)
    model = vitres.load_model("fmnist-vit-single")
    x = torch.from_numpy(pixels).float()[:, None] / 255.0
    x = (x - model.config.mean[0]) / model.config.std[0]
    with torch.no_grad():
        assert answer["index"] == model(x).argmax(1).tolist()
    assert answer["vitres_imported"] is False
    tool = Path(sys.executable).with_name("benchmark_app")
    if tool.exists():  # the command the export printed, as written
        command = printed.split("benchmark it: ")[1].split(" (")[0].split()
        ran = subprocess.run([str(tool), *command[1:], "-niter", "5"], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert ran.returncode == 0 and "Throughput" in ran.stdout, ran.stdout[-2000:]


def test_export_format_refusals(tmp_path, capsys):
    base = ["export", "--model", "fmnist-vit-single"]
    assert main([*base, "--format", "openvino", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "must end in .xml" in capsys.readouterr().err
    assert main([*base, "--format", "openvino", "--int8", "dynamic",
                 "--out", str(tmp_path / "m.xml")]) == 2  # fmt: skip
    assert "float32 IR" in capsys.readouterr().err
    assert main([*base, "--format", "tensorrt", "--out", str(tmp_path / "m.plan")]) == 2
    assert "TensorRT" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


PREPROCESSED = r"""
import json, sys
import numpy as np
import pytest
import onnxruntime as ort

path, images_path = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
pixels = np.load(images_path)[:, :, :, None]  # decoded 8-bit images, NHWC: nothing else
logits = session.run(None, {session.get_inputs()[0].name: pixels})[0]
print(json.dumps({"index": logits.argmax(1).tolist(), "logits": logits.tolist(),
                  "vitres_imported": "vitres" in sys.modules}))
"""


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_preprocessing_in_the_graph_takes_raw_pixels(tmp_path, capsys, layout):
    out = tmp_path / "pre.onnx"
    argv = ["export", "--model", "fmnist-vit-single", "--out", str(out), "--preprocess", layout]
    assert main(argv) == 0
    capsys.readouterr()
    test = load_fashion_mnist("test")
    pixels = test.images[:32, 0].numpy()
    model = vitres.load_model("fmnist-vit-single")
    x = (
        torch.from_numpy(pixels).float()[:, None] / 255.0 - model.config.mean[0]
    ) / model.config.std[0]
    with torch.no_grad():
        expected = model(x)
    if layout == "nhwc":
        np.save(tmp_path / "images.npy", pixels)
        done = subprocess.run([sys.executable, "-I", "-c", PREPROCESSED, str(out),
                               str(tmp_path / "images.npy")], capture_output=True, text=True,
                              timeout=120, check=True)  # fmt: skip
        answer = json.loads(done.stdout)
        assert answer["vitres_imported"] is False
        assert answer["index"] == expected.argmax(1).tolist()
        torch.testing.assert_close(torch.tensor(answer["logits"]), expected, atol=1e-4, rtol=0)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: pixels[:, None]})[0]
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)
    meta = onnx_metadata(out)
    assert meta["vitres.input_layout"] == f"{layout.upper()} uint8"


def onnx_metadata(path):
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
