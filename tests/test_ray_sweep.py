"""Sweeps on a real local Ray instance: same records as a local sweep, resume, lost tasks."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile

import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed; install the extra with pip install 'vitres[ray]'"
)

from vitres.cli import main  # noqa: E402
from vitres.measure import TimingConfig  # noqa: E402
from vitres.tune.grid import build_grid  # noqa: E402
from vitres.tune.hostkind import host_fingerprint  # noqa: E402
from vitres.tune.ray_executor import (  # noqa: E402
    RayExecutor,
    measure_task,
    parse_resources,
    use_threads,
)
from vitres.tune.records import read_results  # noqa: E402
from vitres.tune.sweep import measure_one, run_sweep  # noqa: E402

MODEL = "fmnist-vit-single"  # the bundled ViT (d=64, 28 px, patch 4)
TIMING = TimingConfig(min_calls=3, min_s=0.0)  # the CLI's warm-up, 3 timed calls

# The measure functions below travel to Ray workers by value (tests/ is not importable there).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_instance():
    temp_dir = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: Ray's socket paths are limited
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=80 * 2**20,
        _temp_dir=temp_dir,
    )
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _attempt(log_dir: str) -> int:
    """Counts attempts of one task in a file (workers are separate processes)."""
    path = os.path.join(log_dir, "attempts")
    with open(path, "a", encoding="utf-8") as f:
        f.write("x")
    with open(path, encoding="utf-8") as f:
        return len(f.read())


def die_on_first_attempt(log_dir: str, *args):
    if _attempt(log_dir) == 1:
        os._exit(1)  # the worker process dies: a system failure, as when a node is lost
    return measure_one(*args)


def die_always(log_dir: str, *args):
    _attempt(log_dir)
    os._exit(1)


def test_ray_sweep_matches_local_sweep_and_resumes(ray_instance, tmp_path, capsys):
    local_path, ray_path = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    configs = build_grid(MODEL, "16,28", threads=1)
    local = run_sweep(
        MODEL, configs, local_path, timing=TIMING, isolate=False, progress=False, max_attempts=1
    )
    args = ["sweep", "--model", MODEL, "--res", "16,28", "--threads", "1", "--min-calls", "3"]
    args += ["--min-time", "0", "--no-isolate", "--no-progress", "--out", str(ray_path), "--ray"]
    args += ["--max-attempts", "1"]
    assert main(args) == 0
    assert "2 ok, 0 failed" in capsys.readouterr().out
    assert ray.is_initialized()  # the sweep reused this process's instance, left it running

    remote = {m.key: m for m in read_results(ray_path)}
    assert sorted(remote) == sorted(m.key for m in local)
    for mine in local:
        theirs = remote[mine.key]
        assert theirs.ok and theirs.source == "measured"
        mine_d, theirs_d = mine.to_dict(), theirs.to_dict()
        assert list(theirs_d) == list(mine_d)  # same fields, same order
        assert list(theirs_d["latency"]) == list(mine_d["latency"])
        assert set(theirs.env) == set(mine.env)
        for name in ("tokens", "grid", "flops", "flops_analytic", "params", "native_resolution"):
            assert getattr(theirs, name) == getattr(mine, name), name
        assert theirs.model_digest == mine.model_digest is not None
        assert theirs.env["torch_threads"] == 1 and theirs.latency.count >= 3
        # the node is this machine: the same kind
        assert theirs.env["host_kind"] == mine.env["host_kind"] == host_fingerprint(mine.env)

    # resume: nothing left to measure, the file is untouched
    before = ray_path.read_bytes()
    executor = RayExecutor()
    again = run_sweep(MODEL, configs, ray_path, timing=TIMING, isolate=False, progress=False,
                      executor=executor, keep_unstable=True)  # fmt: skip
    assert executor.tasks == [] and ray_path.read_bytes() == before
    assert [m.key for m in again] == [c.key() for c in configs]

    # a driver killed while writing its second record: one whole line, one partial line
    first, second = before.decode().splitlines()
    ray_path.write_text(first + "\n" + second[: len(second) // 2])
    executor = RayExecutor()
    resumed = run_sweep(MODEL, configs, ray_path, timing=TIMING, isolate=False, progress=False,
                        executor=executor, keep_unstable=True)  # fmt: skip
    lost_key = json.loads(second)["key"]
    assert [t.key for t in executor.tasks] == [lost_key]  # only the lost config re-measured
    assert all(m.ok for m in resumed)
    lines = ray_path.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == first


def test_threads_follow_the_config_not_rays_default(ray_instance):
    @ray.remote(num_cpus=1)
    def probe(threads):
        import torch

        ray_default = os.environ.get("OMP_NUM_THREADS")
        torch.set_num_threads(int(ray_default))  # as a worker Ray started for 1 CPU would be
        in_effect = use_threads(threads)
        return ray_default, in_effect, os.environ["OMP_NUM_THREADS"], torch.get_num_threads()

    assert ray.get(probe.remote(2)) == ("1", 2, "2", 2)


def test_a_lost_task_is_retried_once(ray_instance, tmp_path):
    configs = build_grid(MODEL, "16", threads=1)
    flaky = functools.partial(die_on_first_attempt, str(tmp_path))
    (record,) = run_sweep(
        MODEL, configs, tmp_path / "r.jsonl", timing=TIMING, isolate=False, progress=False,
        measure=flaky, executor=RayExecutor(),
    )  # fmt: skip
    assert record.ok and (tmp_path / "attempts").read_text() == "xx"

    (tmp_path / "attempts").unlink()
    dead = functools.partial(die_always, str(tmp_path))
    (record,) = run_sweep(
        MODEL, configs, tmp_path / "lost.jsonl", timing=TIMING, isolate=False, progress=False,
        measure=dead, executor=RayExecutor(),
    )  # fmt: skip
    assert (tmp_path / "attempts").read_text() == "xx"  # the first try and one retry
    assert record.status == "error"
    assert record.error.startswith("Ray task lost after 2 attempt(s): ")
    assert "WorkerCrashedError: The worker died unexpectedly" in record.error
    assert [m.status for m in read_results(tmp_path / "lost.jsonl")] == ["error"]


def test_application_errors_become_error_records_and_bad_requests_are_refused(
    ray_instance, tmp_path
):
    configs = build_grid("no-such-model", "16", threads=1)
    (record,) = run_sweep(
        "no-such-model", configs, None, timing=TIMING, isolate=False, progress=False,
        executor=RayExecutor(),
    )  # fmt: skip
    assert record.status == "error" and "cannot resolve model 'no-such-model'" in record.error
    assert record.env["host_kind"] == host_fingerprint(record.env) != "unknown"  # the node's

    # a node whose checkpoint differs from the driver's measures nothing
    (config,) = build_grid(MODEL, "16", threads=1)
    args = (MODEL, config, None, TIMING, None, False, None)
    record, _, node = measure_task(measure_one, args, config, expected_digest="0" * 16)
    assert record.status == "error" and "install the same weights on every node" in record.error
    assert node == ray.get_runtime_context().get_node_id()

    too_big = build_grid(MODEL, "16", threads=8)
    with pytest.raises(ValueError, match="no Ray node can run .*'CPU': 8.0"):
        run_sweep(MODEL, too_big, None, isolate=False, progress=False, executor=RayExecutor())
    needs_box = RayExecutor(resources=parse_resources('{"edge_box": 1}'))
    with pytest.raises(ValueError, match="edge_box"):
        run_sweep(MODEL, configs, None, isolate=False, progress=False, executor=needs_box)
    with pytest.raises(ValueError, match="adaptive"):
        run_sweep(MODEL, configs, None, adaptive=True, executor=RayExecutor(), progress=False)
