"""AUROC and overlap with their 95 % intervals; advice and warnings that respect them."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from vitres.cli import main
from vitres.explain import ResolutionAnalysis, ResolutionResult, resolution_advice
from vitres.explain.metrics import (
    DetectionMetrics,
    auroc_images_needed,
    auroc_interval,
    detection_metrics,
    proportion_interval,
)
from vitres.explain.sample import sample_warnings

ID = np.array([0.9, 0.8, 0.7, 0.4])
OOD = np.array([0.6, 0.3, 0.2])


def test_auroc_interval_is_hanley_mcneil_on_a_hand_built_score_set():
    metrics = detection_metrics(ID, OOD)
    # 12 pairs; 0.4 loses to 0.6 only: A = 11/12
    a = Fraction(11, 12)
    assert metrics.auroc == pytest.approx(float(a), abs=1e-12)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    assert (q1, q2) == (Fraction(11, 13), Fraction(121, 138))
    variance = (a * (1 - a) + 3 * (q1 - a * a) + 2 * (q2 - a * a)) / 12
    half = 1.959963984540054 * math.sqrt(variance)
    low, high = metrics.auroc_ci95
    assert low == pytest.approx(float(a) - half, abs=1e-12)
    assert high == pytest.approx(min(1.0, float(a) + half), abs=1e-12)
    assert 0.6 < low < 0.75 and high == 1.0  # clipped
    assert metrics.to_dict()["auroc_ci95"] == [low, high]
    assert DetectionMetrics(0.9, 0.1).auroc_ci95 is None  # set sizes unknown


def test_interval_shrinks_with_images_and_the_needed_count_reaches_the_width():
    low5, high5 = auroc_interval(0.47, 5, 5)
    assert low5 < 0.1 and high5 > 0.84  # 5 images: almost anything
    needed = auroc_images_needed(0.5, 0.05)
    assert needed == 257  # 1.96·sqrt(1/(6n)) <= 0.05 at A = 0.5, with H–M's exact terms
    low, high = auroc_interval(0.5, needed, needed)
    assert (high - low) / 2 <= 0.05 < (lambda i: (i[1] - i[0]) / 2)(auroc_interval(0.5, 256, 256))


def test_wilson_interval_of_an_overlap():
    low, high = proportion_interval(17 / 50, 50)  # 34 % of 50 images
    assert (low, high) == (pytest.approx(0.22437, abs=1e-4), pytest.approx(0.47846, abs=1e-4))


def test_lowering_advice_is_withheld_on_a_tiny_sample():
    overlaps = {28: 0.12, 56: 0.34}
    small = resolution_advice(overlaps, n=50)
    assert "consider lowering" not in small
    assert small == (
        "overlap 34 % at 56 px, but its 95 % interval from 50 test images (22–48 %) reaches "
        "30 % → too few images to tell whether to lower the resolution; about 505 test "
        "images would tell"
    )
    assert proportion_interval(0.34, 505)[0] > 0.30 >= proportion_interval(0.34, 504)[0]
    assert resolution_advice(overlaps, n=5000) == (
        "overlap 34 % at 56 px > 30 % → consider lowering the resolution (28 px: 12 %)"
    )
    # a lower size within the noise of the top one is not named
    assert resolution_advice({28: 0.31, 56: 0.34}, n=1000) == (
        "overlap 34 % at 56 px > 30 % → consider lowering the resolution"
    )


def analysis(n_train, n_id, n_ood, auroc=0.47, overlap=0.34):
    results = [
        ResolutionResult(
            (side, side),
            0.8,
            {
                "energy": DetectionMetrics(auroc, 0.9, n_id, n_ood),
                "mahalanobis": DetectionMetrics(auroc - 0.02, 0.9, n_id, n_ood),
            },
            overlap=overlap if side == 56 else 0.12,
        )
        for side in (28, 56)
    ]
    return ResolutionAnalysis(
        "m", "fashion-mnist/test", "digits", "as given", ("energy", "mahalanobis"),
        n_train, n_id, n_ood, 10, results,
    )  # fmt: skip


def test_small_samples_are_warned_about_in_one_line_each():
    tiny = analysis(5, 5, 5)
    auroc_line, fit_line = sample_warnings(tiny)
    low, high = auroc_interval(0.47, 5, 5)  # energy, nearer 0.5: the widest interval
    assert auroc_line == (
        "AUROC from 5 in-distribution and 5 OOD images is too noisy to compare resolutions "
        f"or methods (energy at 28 px: 0.470, 95 % interval {low:.2f}–{high:.2f}, which "
        "holds 0.5 (chance)); about 256 images per set (--limit, --ood-limit) would pin "
        "AUROC to ±0.05"
    )
    assert fit_line.startswith("mahalanobis was fitted on only 5 training images")
    assert "\n" not in auroc_line + fit_line
    assert "consider lowering" not in tiny.advice()
    assert "consider lowering" not in tiny.rule_check().advice
    assert tiny.to_dict()["warnings"] == [auroc_line, fit_line]
    big = analysis(10_000, 5000, 5000, auroc=0.9)
    assert sample_warnings(big) == []
    assert "consider lowering the resolution (28 px: 12 %)" in big.advice()


def test_ood_command_warns_and_withholds_advice(monkeypatch, capsys):
    import vitres.explain as explain

    monkeypatch.setattr(explain, "analyse_resolutions", lambda *a, **k: analysis(5, 50, 50))
    assert main(["ood", "--model", "m", "--res", "28,56", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    warnings = err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("vitres: warning: ") for w in warnings)
    assert "AUROC from 50 in-distribution and 50 OOD images is too noisy" in warnings[0]
    assert "consider lowering" not in out and "too few images to tell" in out
    half = (lambda i: (i[1] - i[0]) / 2)(auroc_interval(0.47, 50, 50))
    assert f"AUROC 95 % intervals (Hanley–McNeil, 50 vs 50 images): ±{half:.3f}\n" in out
    assert 0.11 < half < 0.12


def test_an_analysis_rebuilt_without_set_sizes_uses_its_own_counts():
    rebuilt = ResolutionAnalysis(
        "m", "d", "digits", "as given", ("energy",), 0, 40, 60, 10,
        [ResolutionResult((28, 28), 0.9, {"energy": DetectionMetrics(0.8, 0.3)})],
    )  # fmt: skip
    low, high = auroc_interval(0.8, 40, 60)
    (line,) = sample_warnings(rebuilt)
    assert f"(energy at 28 px: 0.800, 95 % interval {low:.2f}–{high:.2f}); about 200 " in line
