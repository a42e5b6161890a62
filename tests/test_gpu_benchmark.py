"""``benchmarks/gpu_backends.py`` is a script for a GPU machine that CI never has: its
smoke mode runs the same code on a CPU, so a lent GPU does not find it broken."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_backends


def test_without_a_gpu_it_says_how_to_run_it(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_backends.main(["--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--smoke --device cpu" in err
    assert gpu_backends.main(["--device", "cpu"]) == 2
    assert "only for --smoke" in capsys.readouterr().err


def test_smoke_run_on_cpu_times_compares_and_reports_what_it_skipped(tmp_path):
    out = tmp_path / "gpu"
    assert gpu_backends.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["rows"]
    cases = {(r["resolution"], r["batch"]) for r in rows}
    assert cases == {(32, 1), (32, 2)}
    for resolution, batch in cases:
        by = {r["backend"]: r for r in rows if (r["resolution"], r["batch"]) == (resolution, batch)}
        eager = by["eager"]
        # the baseline against itself, and the same weights as the reference
        assert eager["speedup_vs_eager_fp32"] == pytest.approx(1.0)
        assert eager["max_abs_diff"] <= 1e-5 and eager["top1_agreement"] == 1.0
        timed = [r for r in by.values() if "median_ms" in r]
        for row in timed:
            assert row["speedup_vs_eager_fp32"] == pytest.approx(
                eager["median_ms"] / row["median_ms"]
            )
            assert row["images_per_s"] == pytest.approx(1000.0 * batch / row["median_ms"])
            assert row["p90_ms"] >= row["median_ms"] > 0
        # half precision computes the same function, less exactly
        for name in ("eager-bf16", "eager-fp16"):
            assert 0 < by[name]["max_abs_diff"] < 0.25, name
            assert 0 < by[name]["relative_error"] < 0.05, name
        assert eager["relative_error"] <= 1e-6
        # no TensorRT here: listed with the reason, never timed
        assert "median_ms" not in by["tensorrt"] and by["tensorrt"]["skipped"]
        assert "median_ms" not in by["fp8"] and "compute capability" in by["fp8"]["skipped"]
        # the peers hold the vitres model's weights: bf16 close to the fp32 reference
        peers = [by[name] for name in ("peer:timm-eager-bf16", "peer:hf-sdpa-bf16")]
        for peer in peers:
            assert peer["relative_error"] < 0.05 and "speedup_vs_best_peer" not in peer
        best_peer = min(p["median_ms"] for p in peers)
        for row in timed:
            if not row["backend"].startswith("peer:"):
                assert row["speedup_vs_best_peer"] == pytest.approx(best_peer / row["median_ms"])
    table = out.with_suffix(".md").read_text()
    assert "tensorrt: not measured" in table and "| eager | " in table


def test_every_backend_name_resolves_to_a_backend_or_a_reason():
    for name in gpu_backends.BACKENDS:
        if name.startswith("peer:"):
            continue  # peers are made per case, with the case's weights
        backend, reason = gpu_backends.make_backend(name, "cpu", 224, 32)
        assert (backend is None) == bool(reason), name
        if name.startswith("tensorrt"):
            assert backend is None and "tensorrt" in reason.lower()  # no GPU / package here


def test_verdicts_judge_the_worst_tensorrt_case_against_the_target():
    rows = [
        {"backend": "tensorrt", "resolution": 224, "batch": 1, "speedup_vs_eager_fp32": 3.4},
        {"backend": "tensorrt", "resolution": 384, "batch": 32, "speedup_vs_eager_fp32": 2.9},
        {"backend": "tensorrt-int8", "resolution": 224, "batch": 1, "skipped": "no | engine"},
    ]
    lines = gpu_backends.verdicts(rows)
    assert lines[0].startswith("- [MISSED] tensorrt: worst speed-up 2.90×")
    assert "384 px, batch 32" in lines[0]
    assert lines[1] == "- tensorrt-int8: not measured (no | engine)."
    rows[1]["speedup_vs_eager_fp32"] = 3.0
    assert gpu_backends.verdicts(rows)[0].startswith("- [MET] tensorrt: worst speed-up 3.00×")


def test_verdicts_judge_peers_fp8_and_the_resolution_switch():
    case = {"model": "vit_base_patch16", "resolution": 224}
    rows = [
        {**case, "batch": 1, "backend": "cudagraph-bf16", "speedup_vs_best_peer": 3.2},
        {**case, "batch": 1, "backend": "compile-bf16", "speedup_vs_best_peer": 1.1},
        {**case, "batch": 64, "backend": "fp8", "speedup_vs_best_peer": 1.2,
         "relative_error": 0.015, "top1_agreement": 0.995},
    ]  # fmt: skip
    switch = {"added_ms_per_switch": 0.04, "recorded_while_switching": 0,
              "compiled_while_switching": 0}  # fmt: skip
    lines = gpu_backends.verdicts(rows, switch)
    assert (
        "- [MET] vit_base_patch16 224 px batch 1: best vitres path cudagraph-bf16 is 3.20×"
        in lines[2]
    )
    assert lines[3].startswith("- [MISSED] vit_base_patch16 224 px batch 64: best vitres path fp8")
    assert lines[4].startswith("- [MET] fp8 accuracy: worst logits' relative error 1.50 %")
    assert lines[5].startswith("- [MET] resolution switch") and "+0.040 ms" in lines[5]
    switch["recorded_while_switching"] = 1
    assert gpu_backends.verdicts(rows, switch)[5].startswith("- [MISSED] resolution switch")


def test_a_skip_reason_cannot_break_the_table():
    result = {
        "command": "c",
        "rounds": 1,
        "calls": 1,
        "env": {"gpu": "g", "torch": "t", "tensorrt": None},
        "rows": [
            {"model": "m", "resolution": 1, "batch": 1, "backend": "b", "skipped": "a | b\nc"}
        ],
        "verdicts": [],
    }
    table = gpu_backends.markdown(result)
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    row = next(line for line in table.splitlines() if line.startswith("| m |"))
    assert row.count("|") == header.count("|") and "a / b c" in row
