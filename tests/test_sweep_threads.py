"""A resumed sweep keeps the thread count its "auto" (``tauto``) records were measured
with, and never mixes machine kinds under one key. Nothing is timed: the thread chooser
and the measurement are fakes."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

import vitres.tune.sweep as sweep_module
from vitres.measure import LatencyStats, env_fingerprint
from vitres.measure.threads import ThreadChoice
from vitres.tune.records import Measurement, read_results
from vitres.tune.sweep import run_sweep

MODEL = "vit_tiny_patch16"


@pytest.fixture()
def fakes(monkeypatch):
    """A chooser that says 2 threads the first time and 1 after, and a measurement that
    records the thread count it was given."""
    chosen = []
    measured = []

    def chooser(model_ref, configs, overrides):
        threads = 2 if not chosen else 1
        chosen.append(threads)
        return ThreadChoice(threads, {1: 3.0, 2: 2.0}, f"fake; chose {threads}")

    def measure_one(model_ref, config, data, timing, known, isolated, overrides, **extra):
        threads = extra["threads"]
        measured.append((config.resolution[0], threads))
        stats = LatencyStats(1.0, 0.0, 1.1, 1.1, 1.2, 0.9, 1.0, 20, False)
        env = env_fingerprint(threads)
        return Measurement(config, status="ok", latency=stats, env=env)

    monkeypatch.setattr(sweep_module, "choose_sweep_threads", chooser)
    monkeypatch.setattr(sweep_module, "measure_one", measure_one)
    return chosen, measured


def sweep(path, resolutions, messages):
    return run_sweep(
        MODEL,
        out_path=path,
        resolutions=resolutions,
        isolate=False,
        progress=False,
        log=messages.append,
    )


def test_a_resumed_sweep_reuses_the_recorded_thread_count(tmp_path, fakes):
    chosen, measured = fakes
    path = tmp_path / "r.jsonl"
    messages: list[str] = []
    sweep(path, "16,20", messages)
    assert chosen == [2] and measured == [(16, 2), (20, 2)]
    # the sweep grows: the new sizes are measured with the first choice, not timed again
    records = sweep(path, "16,20,24,28", messages)
    assert chosen == [2]
    assert measured == [(16, 2), (20, 2), (24, 2), (28, 2)]
    assert [m.env["torch_threads"] for m in records] == [2, 2, 2, 2]
    assert any("reusing 2 threads" in line for line in messages)
    by_key = defaultdict(set)
    for m in read_results(path):
        assert m.key.split("|")[6] == "tauto"
        by_key[m.key].add(m.env["torch_threads"])
    assert len(by_key) == 4 and all(counts == {2} for counts in by_key.values())


def test_a_file_from_another_machine_kind_is_not_mixed_into(tmp_path, fakes):
    chosen, measured = fakes
    path = tmp_path / "r.jsonl"
    sweep(path, "16", [])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:  # as if measured on another kind of machine
        line["env"]["cpu"] = "Some Other CPU 9000"
        line["env"].pop("host_kind", None)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match="another machine kind") as error:
        sweep(path, "16,20", [])
    assert "--out" in str(error.value)
    assert chosen == [2] and measured == [(16, 2)]  # nothing measured or chosen again
    assert len(read_results(path)) == 1
    sweep(path, "16", [])  # nothing left to measure: nothing mixed, no refusal
    assert chosen == [2] and measured == [(16, 2)]


def test_a_file_already_mixed_is_made_consistent_at_the_latest_count(tmp_path, fakes):
    from vitres.tune.records import latest_by_key

    chosen, measured = fakes
    path = tmp_path / "r.jsonl"
    sweep(path, "16", [])
    line = json.loads(path.read_text())
    # what the old resume wrote: 20 px at a second choice of 1 thread, under 'tauto' too
    line["config"]["resolution"] = [20, 20]
    line["env"]["torch_threads"] = 1
    line["env"]["thread_choice"]["threads"] = 1
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    messages: list[str] = []
    sweep(path, "16,20", messages)
    assert chosen == [2] and measured == [(16, 2), (16, 1)]  # 16 px again, at 1 thread
    assert any("measuring 1 config(s) again at 1 threads" in m for m in messages)
    latest = latest_by_key(read_results(path))
    assert sorted((m.config.resolution[0], m.env["torch_threads"]) for m in latest) == [
        (16, 1),
        (20, 1),
    ]
