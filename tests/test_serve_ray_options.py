"""`vitres serve --ray` without a Ray instance: merging replicas' metrics, the metrics hub's
ordering, what a replica accepts at once, flag checks and a missing Ray Serve."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vitres.cli import main
from vitres.serve.config import RayServeConfig, ServeConfig
from vitres.serve.metrics import REPLICA_LABEL, ServerMetrics, render_replicas, sum_samples
from vitres.serve.ray_serve import ReplicaMetricsHub, max_ongoing_requests, require_serve


def served(metrics: ServerMetrics, ok: int, bad: int, batch_sizes: list[int]) -> None:
    metrics.requests.labels(outcome="ok").inc(ok)
    metrics.requests.labels(outcome="bad_request").inc(bad)
    for size in batch_sizes:
        metrics.batch_size.observe(size)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_replica_metrics_merge_into_one_exposition_with_a_replica_label():
    first, second = ServerMetrics(50.0, 8), ServerMetrics(50.0, 8)
    served(first, ok=5, bad=1, batch_sizes=[4, 1])
    served(second, ok=3, bad=0, batch_sizes=[3])
    second.queue_depth.set_function(lambda: 2.0)
    snapshots = {"a": first.snapshot(), "b": second.snapshot()}
    merged = render_replicas(snapshots).decode()

    # the same families (names, types) as one server's exposition
    def kinds(text: str) -> dict[str, str]:
        return {f.name: f.type for f in text_string_to_metric_families(text)}

    assert kinds(merged) == kinds(first.render().decode())
    # every sample of each replica, unchanged, with its replica's label added
    got = samples(merged)
    for replica, metrics in (("a", first), ("b", second)):
        for (name, labels), value in samples(metrics.render().decode()).items():
            key = (name, tuple(sorted((*labels, (REPLICA_LABEL, replica)))))
            assert got[key] == value, key
    assert len(got) == 2 * len(samples(first.render().decode()))
    # sums over replicas, as `sum without (replica)` would give
    assert sum_samples(snapshots, "vitres_requests_total", outcome="ok") == 8
    assert sum_samples(snapshots, "vitres_requests_total", outcome="bad_request") == 1
    assert sum_samples(snapshots, "vitres_batch_size_count") == 3
    assert sum_samples(snapshots, "vitres_batch_size_sum") == 8
    assert sum_samples(snapshots, "vitres_queue_depth") == 2


def text_families(text: str) -> list:
    return list(text_string_to_metric_families(text))


def test_a_sample_that_already_names_a_replica_is_refused():
    merged = render_replicas({"a": ServerMetrics(50.0, 8).snapshot()}).decode()
    with pytest.raises(ValueError, match="already has a 'replica' label"):
        render_replicas({"b": text_families(merged)})


def test_the_hub_never_goes_back_to_an_older_snapshot(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("vitres.serve.ray_serve.time.monotonic", lambda: clock[0])
    hub = ReplicaMetricsHub(stale_after_s=5.0)
    hub.put("a", 2, ["new"])
    hub.put("a", 1, ["old"])  # a periodic push that was overtaken by a scrape's
    assert hub.collect() == {"a": ["new"]}
    assert hub.exchange("b", 1, ["b1"]) == {"a": ["new"], "b": ["b1"]}
    clock[0] += 4.0
    hub.put("b", 2, ["b2"])
    clock[0] += 2.0  # a: 6 s without a push, gone; b: 2 s
    assert hub.collect() == {"b": ["b2"]}
    hub.put("b", 3, ["b3-final"], stopped=True)
    assert hub.collect() == {}
    assert hub.collect(include_stopped=True) == {"a": ["new"], "b": ["b3-final"]}


def test_a_replica_takes_its_queue_and_two_batches_at_once():
    config = ServeConfig(model="m", max_batch=8)
    assert max_ongoing_requests(config) == 4 * 8 + 2 * 8
    config = ServeConfig(model="m", max_batch=4, queue_limit=10)
    assert max_ongoing_requests(config) == 10 + 8


def test_ray_serve_settings_are_checked():
    with pytest.raises(ValueError, match="--replicas must be at least 1"):
        RayServeConfig(replicas=0)
    with pytest.raises(ValueError, match="--ray-cpus must be at least 1"):
        RayServeConfig(num_cpus=0)


def test_replicas_without_ray_is_refused_by_the_cli(capsys):
    code = main(["serve", "--model", "fmnist-vit-single", "--replicas", "2"])
    assert code == 2
    assert "--replicas and --ray-cpus need --ray" in capsys.readouterr().err


def test_without_ray_serve_the_error_names_the_extra(monkeypatch):
    ray_installed = importlib.util.find_spec("ray") is not None
    monkeypatch.setitem(sys.modules, "ray.serve", None)  # `import ray.serve` now raises
    with pytest.raises(ValueError, match=r"pip install 'vitres\[ray\]'") as error:
        require_serve()
    assert ("needs Ray Serve" if ray_installed else "needs Ray") in str(error.value)
