"""The Open Inference Protocol (KServe v2) beside ``/v1/classify``: the real
``tritonclient`` HTTP client, curl and httpx against a real ``vitres serve`` on loopback,
and the protocol's details through FastAPI's test client. Every answer is checked
against the bundled model called directly on the same preprocessed image."""

import json
import shutil
import struct
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from test_serve_app import (
    MODEL,
    expected_probabilities,
    free_port,
    make_app,
    png,
    scripted_records,
    start_server,
)

import vitres
from vitres.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from vitres.serve.oip import HEADER_LENGTH, served_model_name
from vitres.tune.records import append_result

NAME = "fmnist-vit-multires"


@pytest.fixture(scope="module")
def model():
    return vitres.load_model(MODEL).eval()


@pytest.fixture(scope="module")
def images():
    data = load_fashion_mnist("test")
    return data.images[:8], data.labels[:8]


def check(probabilities, resolutions, model, images):
    for row, size, image in zip(probabilities, resolutions, images, strict=True):
        expected = expected_probabilities(model, image, tuple(int(v) for v in size))
        torch.testing.assert_close(
            torch.tensor(np.array(row), dtype=torch.float32), expected, atol=1e-5, rtol=0
        )


def test_names_health_and_metadata():
    assert served_model_name("fmnist-vit-multires") == "fmnist-vit-multires"
    assert served_model_name("/data/runs/best.safetensors") == "best"
    assert served_model_name("pkg.models:build vit") == "build_vit"
    with TestClient(make_app()) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
        meta = client.get("/v2/models/model").json()
        assert meta["outputs"][0] == {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [-1, 10],
        }
        assert client.get("/v2/models/model/ready").json()["ready"] is True
        missing = client.get("/v2/models/other/ready")
        assert missing.status_code == 404 and "serves 'model'" in missing.json()["error"]


def test_json_bytes_uint8_and_fp32_inputs_agree_with_the_model(model, images):
    pictures, _ = images
    with TestClient(make_app()) as client:
        encoded = [png(p).decode("latin-1") for p in pictures[:3]]
        answer = client.post("/v2/models/model/infer", json={
            "id": "r1",
            "inputs": [{"name": "images", "datatype": "BYTES", "shape": [3], "data": encoded}],
        })  # fmt: skip
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["id"] == "r1" and body["model_name"] == "model"
        outputs = {o["name"]: o for o in body["outputs"]}
        probabilities = np.array(outputs["probabilities"]["data"]).reshape(3, 10)
        resolutions = np.array(outputs["resolution"]["data"]).reshape(3, 2)
        check(probabilities, resolutions, model, pictures[:3])
        assert outputs["label"]["data"] == [
            FASHION_MNIST_CLASSES[i] for i in probabilities.argmax(1)
        ]
        pixels = pictures[3:5].numpy()  # uint8 (2, 1, 28, 28)
        for datatype, values in (("UINT8", pixels), ("FP32", pixels / 255.0)):
            answer = client.post("/v2/models/model/infer", json={
                "inputs": [{"name": "pixels", "datatype": datatype, "shape": list(values.shape),
                            "data": values.reshape(-1).tolist()}],
                "outputs": [{"name": "probabilities"}, {"name": "resolution"}],
            })  # fmt: skip
            assert answer.status_code == 200, answer.text
            outputs = {o["name"]: o for o in answer.json()["outputs"]}
            assert set(outputs) == {"probabilities", "resolution"}
            check(np.array(outputs["probabilities"]["data"]).reshape(2, 10),
                  np.array(outputs["resolution"]["data"]).reshape(2, 2), model, pictures[3:5])  # fmt: skip


def binary_request(blobs: list[bytes]) -> tuple[bytes, dict]:
    data = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    header = json.dumps({
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(blobs)],
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                    {"name": "label"}],
    }).encode()  # fmt: skip
    return header + data, {HEADER_LENGTH: str(len(header))}


def test_binary_tensor_data_in_and_out(model, images):
    pictures, _ = images
    body, headers = binary_request([png(p) for p in pictures[:2]])
    with TestClient(make_app()) as client:
        answer = client.post("/v2/models/model/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    size = int(answer.headers[HEADER_LENGTH])
    meta = json.loads(answer.content[:size])
    (prob,) = [o for o in meta["outputs"] if o["name"] == "probabilities"]
    values = np.frombuffer(answer.content[size : size + prob["parameters"]["binary_data_size"]],
                           np.float32).reshape(2, 10)  # fmt: skip
    labels = [o for o in meta["outputs"] if o["name"] == "label"][0]["data"]
    assert labels == [FASHION_MNIST_CLASSES[i] for i in values.argmax(1)]
    assert values.sum(1) == pytest.approx([1.0, 1.0], abs=1e-5)


@pytest.mark.parametrize(
    "request_body,status,words",
    [
        ({"inputs": []}, 400, "exactly one input"),
        ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}]}, 400,
         "datatype 'INT8' is not accepted"),
        ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 3, 4, 4],
                      "data": [0] * 48}]}, 400, "must be [N, 1, H, W]"),
        ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 1, 4, 4],
                      "data": [0] * 5}]}, 400, "holds 16 values, got 5"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["nope"]}]}, 400,
         "image"),
        ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 1, 4, 4], "data": [0] * 16}],
          "outputs": [{"name": "logits"}]}, 400, "unknown outputs ['logits']"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 1, 2],
                      "data": [0.5, "nan"]}]}, 400, "FP32"),
    ],
)  # fmt: skip
def test_bad_requests_get_the_protocols_error(request_body, status, words):
    with TestClient(make_app()) as client:
        answer = client.post("/v2/models/model/infer", json=request_body)
        assert answer.status_code == status, answer.text
        assert words in answer.json()["error"]
        bad = client.post("/v2/models/model/infer", content=b"{not json")
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
        other = client.post("/v2/models/other/infer", json={"inputs": []})
        assert other.status_code == 404


def test_tritonclient_curl_and_httpx_against_a_real_server(tmp_path, model, images):
    tritonclient = pytest.importorskip("tritonclient.http")
    pictures, _ = images
    records = tmp_path / "records.jsonl"
    for m in scripted_records():
        append_result(records, m)
    port = free_port()
    command = [sys.executable, "-m", "vitres.cli", "serve", "--model", MODEL, "--records",
               str(records), "--slo-ms", "2000", "--max-batch", "4", "--port", str(port),
               "--no-progress"]  # fmt: skip
    process, base = start_server(command, port, ready_path="/v2/health/ready")
    try:
        client = tritonclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(NAME)
        assert client.get_model_metadata(NAME)["name"] == NAME
        # encoded images as BYTES, sent and answered as binary tensor data (the default)
        blobs = np.array([png(p) for p in pictures[:4]], dtype=np.object_)
        tensor = tritonclient.InferInput("images", [4], "BYTES")
        tensor.set_data_from_numpy(blobs)
        result = client.infer(NAME, [tensor])
        check(result.as_numpy("probabilities"), result.as_numpy("resolution"), model, pictures[:4])
        labels = [v.decode() for v in result.as_numpy("label")]
        assert labels == [FASHION_MNIST_CLASSES[i] for i in result.as_numpy("index")]
        # uint8 pixels as JSON
        pixels = tritonclient.InferInput("pixels", [2, 1, 28, 28], "UINT8")
        pixels.set_data_from_numpy(pictures[4:6].numpy(), binary_data=False)
        wanted = [tritonclient.InferRequestedOutput("probabilities", binary_data=False),
                  tritonclient.InferRequestedOutput("resolution", binary_data=False)]  # fmt: skip
        result = client.infer(NAME, [pixels], outputs=wanted)
        check(result.as_numpy("probabilities"), result.as_numpy("resolution"), model, pictures[4:6])
        # httpx with JSON, and curl with a file
        encoded = png(pictures[6]).decode("latin-1")
        answer = httpx.post(
            f"{base}/v2/models/{NAME}/infer",
            timeout=30,
            json={
                "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [encoded]}]
            },
        )
        assert answer.status_code == 200, answer.text
        if shutil.which("curl"):
            request = tmp_path / "request.json"
            pixels7 = pictures[7].numpy()
            request.write_text(json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8",
                "shape": [1, 1, 28, 28], "data": pixels7.reshape(-1).tolist()}]}))  # fmt: skip
            done = subprocess.run(["curl", "-sf", "-H", "Content-Type: application/json",
                                   "--data-binary", f"@{request}",
                                   f"{base}/v2/models/{NAME}/infer"],
                                  capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
            outputs = {o["name"]: o for o in json.loads(done.stdout)["outputs"]}
            check([outputs["probabilities"]["data"]], [outputs["resolution"]["data"]], model,
                  pictures[7:8])  # fmt: skip
    finally:
        process.terminate()
        process.communicate(timeout=60)
