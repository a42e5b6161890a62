"""Cost model: coefficient recovery, form choice by leave-one-out, ceilings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitres.tune.costmodel import (
    CostFit,
    fit_cost,
    fit_latency,
    loo_error_pct,
    max_tokens_within,
    memory_ceiling,
    naive_max_side,
    nonnegative_lstsq,
    predicted_measurement,
)
from vitres.tune.records import LatencyStats, Measurement, SweepConfig

TOKENS = np.array([16, 49, 100, 196, 400, 784, 1024, 1600], dtype=float)


def test_recovers_quadratic_coefficients_from_noisy_data():
    a, b, c = 2e-4, 0.02, 0.5
    rng = np.random.default_rng(0)
    y = (a * TOKENS**2 + b * TOKENS + c) * (1 + 0.005 * rng.standard_normal(len(TOKENS)))
    fit = fit_cost(TOKENS, y)
    assert fit.form == "quadratic"
    assert fit.a == pytest.approx(a, rel=0.05)
    assert fit.b == pytest.approx(b, rel=0.10)
    assert fit.c == pytest.approx(c, rel=0.10)
    assert fit.loo_error_pct < 1.0
    assert fit.predict(900) == pytest.approx(a * 900**2 + b * 900 + c, rel=0.02)


def test_picks_linear_for_linear_data():
    exact = fit_cost(TOKENS, 0.01 * TOKENS + 1.0)
    assert exact.form == "linear" and exact.a == 0.0
    assert exact.b == pytest.approx(0.01) and exact.c == pytest.approx(1.0)
    forms = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = (0.01 * TOKENS + 1.0) * (1 + 0.01 * rng.standard_normal(len(TOKENS)))
        fit = fit_cost(TOKENS, y)
        forms.append(fit.form)
        assert fit.candidates["constant"] > 10 * fit.candidates["linear"]
        # whatever form wins, it must describe a line: no real curvature
        assert fit.predict(TOKENS) == pytest.approx(0.01 * TOKENS + 1.0, rel=0.03)
    assert forms.count("linear") >= 17


def test_picks_constant_for_flat_data():
    fit = fit_cost(TOKENS, np.full(len(TOKENS), 3.0))
    assert (
        fit.form == "constant"
        and fit.c == pytest.approx(3.0)
        and fit.loo_error_pct == pytest.approx(0.0)
    )


def test_loo_error_by_hand():
    # constant form, ordinary least squares: leave out each point, predict it by the mean
    # of the others: 11/3 vs 1 (266.7 %), 10/3 vs 2 (66.7 %), 3 vs 3 (0 %), 2 vs 6 (66.7 %)
    assert loo_error_pct([1, 2, 3, 4], [1, 2, 3, 6], "constant", weighting="none") == pytest.approx(
        200 / 3
    )
    # relative weighting fits c = Σ(1/y) / Σ(1/y²); leaving out y=1: c = 1 / (7/18) = 18/7
    errors = []
    values = [1.0, 2.0, 3.0, 6.0]
    for i in range(4):
        rest = [v for j, v in enumerate(values) if j != i]
        c = sum(1 / v for v in rest) / sum(1 / v**2 for v in rest)
        errors.append(100 * abs(c - values[i]) / values[i])
    assert errors[0] == pytest.approx(100 * (18 / 7 - 1))
    assert loo_error_pct([1, 2, 3, 4], values, "constant") == pytest.approx(
        float(np.median(errors))
    )
    # too few points to leave one out for a 3-coefficient form
    assert math.isnan(loo_error_pct([1, 2, 3], [1, 2, 3], "quadratic"))


def test_coefficients_are_non_negative():
    decreasing = 10.0 - 0.004 * TOKENS  # cost falling with N is not a cost curve
    fit = fit_cost(TOKENS, decreasing)
    assert min(fit.a, fit.b, fit.c) >= 0.0
    matrix = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    coef = nonnegative_lstsq(matrix, np.array([2.0, -1.0, 1.0]))
    assert np.all(coef >= 0) and coef[1] == 0.0 and coef[0] == pytest.approx(1.5)


def test_memory_ceiling_and_naive_formula():
    fit = CostFit("linear", 0.0, 0.1, 10.0, 0.0)  # 10 MiB + 0.1 MiB per token
    assert max_tokens_within(fit, 20.0) == pytest.approx(100.0)
    assert memory_ceiling(fit, 20.0, patch_size=4) == 40  # 10 x 10 tokens of 4 px
    assert memory_ceiling(fit, 5.0, patch_size=4) is None
    quad = CostFit("quadratic", 1e-3, 0.0, 0.0, 0.0)
    assert max_tokens_within(quad, 0.1) == pytest.approx(10.0)
    assert memory_ceiling(CostFit("constant", 0, 0, 1.0, 0.0), 2.0, 16, max_side=512) == 512
    # side = p·sqrt(mem / (p²·D·4)) = sqrt(mem / (4·D)): 1 MiB, D = 64 -> 64
    assert naive_max_side(2**20, 4, 64) == pytest.approx(64.0)
    assert naive_max_side(2**20, 16, 64) == pytest.approx(math.sqrt(2**20 / (4 * 64)))


def _record(backend: str, tokens: int, ms: float) -> Measurement:
    side = int(math.sqrt(tokens)) * 4
    lat = LatencyStats(ms, 0.0, ms, ms, ms, ms, ms, 10, False)
    return Measurement(
        SweepConfig("m", (side, side), backend=backend, threads=1),
        latency=lat,
        tokens=tokens,
        peak_mem_mb=5.0 + tokens * 0.01,
    )


def test_fit_latency_groups_by_backend_and_predicts():
    records = [
        _record(b, n, (2.0 if b == "eager" else 1.0) * (0.5 + 0.01 * n))
        for b in ("eager", "eager-bf16")
        for n in (16, 49, 100, 196, 400)
    ]
    fits = fit_latency(records)
    assert len(fits) == 2
    eager = next(f for k, f in fits.items() if k.backend == "eager")
    assert (
        eager.form == "linear" and eager.b == pytest.approx(0.02) and eager.c == pytest.approx(1.0)
    )
    p = predicted_measurement(
        SweepConfig("m", (32, 32), backend="eager", threads=1), 64, eager, like=records[0]
    )
    assert p.status == "predicted" and p.latency_ms == pytest.approx(1.0 + 0.02 * 64)
    assert Measurement.from_json(p.to_json()).latency_ms == pytest.approx(p.latency_ms)
