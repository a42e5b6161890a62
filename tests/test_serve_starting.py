"""The server listens at once: live while it builds, ready once built (a real uvicorn
server on loopback, the real app of the bundled model, the build held back by a test)."""

import threading
import time

import httpx
import uvicorn
from test_serve_app import free_port, make_app, png

from vitres.data import load_fashion_mnist
from vitres.serve.starting import StartingApp


def run_server(app, port):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    return server, thread


def test_live_at_once_ready_when_built_then_serving():
    release = threading.Event()
    ready_apps = []

    def build():
        assert release.wait(60)
        return make_app()

    starting = StartingApp(build, on_ready=ready_apps.append)
    port = free_port()
    server, thread = run_server(starting, port)
    base = f"http://127.0.0.1:{port}"
    image = png(load_fashion_mnist("test").images[0])
    try:
        assert httpx.get(f"{base}/v2/health/live").status_code == 200
        for path in ("/v2/health/ready", "/healthz", "/v2/models/model/ready"):
            answer = httpx.get(base + path)
            assert answer.status_code == 503 and answer.json()["status"] == "starting", path
        early = httpx.post(f"{base}/v1/classify", content=image)
        assert early.status_code == 503 and early.headers["retry-after"] == "2"
        assert "starting" in early.json()["message"]
        release.set()
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.05)
        assert ready_apps and starting.ready
        answer = httpx.post(f"{base}/v1/classify", content=image, timeout=30)
        assert answer.status_code == 200 and answer.json()["label"]
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_a_failed_build_is_kept_and_stops_the_server():
    failures = []

    def build():
        raise ValueError("no results file runs/x.jsonl")

    starting = StartingApp(build, on_failure=failures.append)
    port = free_port()
    server, thread = run_server(starting, port)
    try:
        deadline = time.monotonic() + 30
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert isinstance(starting.error, ValueError) and not starting.ready
        answer = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
        assert answer.status_code == 503
    finally:
        server.should_exit = True
        thread.join(30)
