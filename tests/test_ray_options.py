"""Ray executor options that need no Ray instance: resources, addresses, a missing Ray."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from vitres.tune.ray_executor import (
    check_reachable,
    parse_resources,
    physical_cores,
    require_ray,
    task_resources,
)
from vitres.tune.records import SweepConfig


def test_parse_resources_and_what_a_task_asks_for():
    assert parse_resources('{"edge_box": 1, "timing_slot": 0.5}') == {
        "edge_box": 1.0,
        "timing_slot": 0.5,
    }
    assert parse_resources(None) == {}
    for bad in ('{"edge_box": -1}', "[1]", "edge_box", '{"CPU": 2}', '{"x": "1"}'):
        with pytest.raises(ValueError, match="--ray-resources"):
            parse_resources(bad)
    config = SweepConfig("m", (28, 28), threads=3)
    assert task_resources(config, {"edge_box": 1.0}) == {"CPU": 3.0, "edge_box": 1.0}
    gpu = SweepConfig("m", (28, 28), threads=1, device="cuda:0")
    assert task_resources(gpu, {}) == {"CPU": 1.0, "GPU": 1.0}
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_an_unreachable_head_fails_fast_with_a_hint():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")  # something answers: no error
        check_reachable(f"ray://127.0.0.1:{port}")
    with pytest.raises(ValueError, match=f"no Ray head answers at 127.0.0.1:{port}.*ray start"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=2)
    check_reachable("auto")  # left to Ray


def test_without_ray_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'vitres\[ray\]'"):
        require_ray()
