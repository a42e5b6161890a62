"""`vitres serve --ray` on a real local Ray instance: the command runs as a subprocess (a
local instance of 1 CPU, 1 replica) on a free loopback port. Its answers on real
Fashion-MNIST test images are compared with the standalone server's on the same images
and records; a corrupt image gets the same 400; /metrics has the standalone server's
metric names, labelled by replica; SIGTERM stops it cleanly (exit 0, every request
counted once) and no Ray process is left behind.

Starting Ray and a replica takes most of this test's time (30-80 s on one busy core), so
it stays minimal: several replicas, shedding, 413/405, an upload cut by SIGTERM and a load
test are in ``benchmarks/ray_serve.py`` (``--quick``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

pytest.importorskip(
    "ray.serve",
    reason="Ray Serve is not installed; install the extra with pip install 'vitres[ray]'",
)
psutil = pytest.importorskip("psutil", reason="psutil (a dependency of Ray) is not installed")

from test_serve_app import MODEL, check_answer, free_port, png, scripted_records  # noqa: E402

import vitres  # noqa: E402
from vitres.data import load_fashion_mnist  # noqa: E402
from vitres.serve.app import create_app  # noqa: E402
from vitres.serve.config import ServeConfig  # noqa: E402
from vitres.serve.launch import build_worker  # noqa: E402
from vitres.serve.metrics import REPLICA_LABEL  # noqa: E402
from vitres.tune.records import append_result  # noqa: E402

SETTINGS = {"slo_ms": 2000.0, "max_batch": 4}


def start_ray_server(records, port, out, err):
    command = [sys.executable, "-m", "vitres.cli", "serve", "--ray", "--ray-cpus", "1"]
    command += ["--replicas", "1", "--model", MODEL, "--records", str(records)]
    command += ["--slo-ms", str(SETTINGS["slo_ms"]), "--max-batch", str(SETTINGS["max_batch"])]
    command += ["--port", str(port), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    return subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)


def metric_names(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def summed(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_serve_on_ray_answers_as_the_standalone_server_and_stops_cleanly(tmp_path):
    records = tmp_path / "records.jsonl"
    for m in scripted_records():
        append_result(records, m)
    port = free_port()
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = start_ray_server(records, port, out, err)
    ray_processes: list = []
    alive: list = []
    try:
        # meanwhile, the standalone server on the same records answers the same images
        images = load_fashion_mnist("test").images[:4]
        config = ServeConfig(model=MODEL, records=str(records), **SETTINGS)
        standalone = create_app(build_worker(config, log=lambda line: None), config.limits())
        with TestClient(standalone) as client:
            expected = [client.post("/v1/classify", content=png(i)).json() for i in images]
            standalone_metrics = client.get("/metrics").text

        deadline = time.monotonic() + 240
        while "serving on Ray Serve at" not in out_path.read_text():
            assert process.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray Serve deployment did not come up"
            time.sleep(0.5)
        ray_processes = psutil.Process(process.pid).children(recursive=True)
        assert ray_processes, "no Ray processes under the command"
        base = f"http://127.0.0.1:{port}"

        results: dict[int, httpx.Response] = {}

        def send(index: int) -> None:
            results[index] = httpx.post(
                f"{base}/v1/classify", content=png(images[index]), timeout=60
            )

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        model = vitres.load_model(MODEL).eval()
        for index, reference in enumerate(expected):
            response = results[index]
            assert response.status_code == 200, response.text
            answer = response.json()
            for key in ("label", "index", "resolution", "controller"):
                assert answer[key] == reference[key], (index, key)
            assert [t["index"] for t in answer["top_k"]] == [t["index"] for t in reference["top_k"]]
            got = torch.tensor([t["probability"] for t in answer["top_k"]])
            want = torch.tensor([t["probability"] for t in reference["top_k"]])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            check_answer(answer, model, images[index])  # and a direct call of the model

        corrupt = httpx.post(f"{base}/v1/classify", content=png(images[0])[:60], timeout=30)
        assert corrupt.status_code == 400 and corrupt.json()["error"] == "bad_image"

        text = httpx.get(f"{base}/metrics", timeout=30).text  # the one replica: current
        assert metric_names(text) == metric_names(standalone_metrics)
        replicas = {
            s.labels.get(REPLICA_LABEL)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert len(replicas) == 1 and None not in replicas
        assert summed(text, "vitres_requests_total", outcome="ok") == len(images)
        assert summed(text, "vitres_requests_total", outcome="bad_request") == 1

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _, alive = psutil.wait_procs(ray_processes, timeout=30)
        for leftover in alive:
            leftover.kill()
    out, err = out_path.read_text(), err_path.read_text()
    assert process.returncode == 0, err[-3000:]
    assert not alive, f"Ray processes left behind: {[p.pid for p in alive]}"
    assert "stopped on SIGTERM: 4 answered, 0 shed, 0 failed, in " in out, out
    assert "by 1 replica(s)" in out
