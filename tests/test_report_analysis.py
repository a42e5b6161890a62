"""The report's analysis section (OOD, class overlap, t-SNE) and the seed's overlap rule.

Values in the report are checked against direct calls of the separability and OOD
functions on the same Fashion-MNIST / digits images, and the rule against numbers on
both sides of its 30 % threshold.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import vitres
from vitres.cli import main
from vitres.data import get_dataset
from vitres.explain import (
    DetectionMetrics,
    MahalanobisDetector,
    ResolutionAnalysis,
    ResolutionResult,
    analysis_table,
    class_overlap,
    detection_metrics,
    energy_score,
    extract_features,
    load_digits_dataset,
    silhouette,
)
from vitres.report import write_report
from vitres.report.analysis import ReportAnalysis, analyse_for_report, analysis_section
from vitres.report.render import find_chromium, screenshot
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
MODEL = "fmnist-vit-single"
SIZES = (16, 28)
LIMITS = {"limit": 200, "train_limit": 500, "ood_limit": 200}


def record(
    res: int, accuracy: float, ms: float, model: str = MODEL, backend: str = "eager"
) -> Measurement:
    latency = LatencyStats(ms, 0.05 * ms, ms, ms, ms, ms, ms, 30, False)
    precision = "bf16" if backend.endswith("bf16") else "fp32"
    return Measurement(
        SweepConfig(model, (res, res), None, 1, precision, backend, 1),
        accuracy=accuracy,
        latency=latency,
        throughput_ips=1000 / ms,
        peak_mem_mb=20.0 + res,
        tokens=(res // 4) ** 2,
        native_resolution=(28, 28),
        native_patch_size=4,
        embed_dim=64,
    )


RECORDS = [record(16, 0.62, 1.0), record(28, 0.908, 2.6)]


class Section(HTMLParser):
    """Text of the ``<section id="analysis">``: its advice paragraphs, table cells, images."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.tag: list[str] = []
        self.advice: list[str] = []
        self.rows: list[list[str]] = []
        self.header: list[str] = []
        self.images: dict[str, str] = {}
        self.pre: list[str] = []
        self._in_advice = self._in_pre = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and attrs.get("id") == "analysis":
            self.inside = True
        if tag == "pre":
            self._in_pre = True
        if not self.inside:
            return
        self.tag.append(tag)
        if tag == "p" and attrs.get("class") == "advice":
            self._in_advice = True
            self.advice.append("")
        elif tag == "tr":
            self.rows.append([])
        elif tag == "img":
            self.images[attrs["id"]] = attrs["src"]

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_pre = False
        if tag == "section":
            self.inside = False
        if tag == "p":
            self._in_advice = False

    def handle_data(self, data):
        if self._in_pre:
            self.pre.append(data)
        if not self.inside:
            return
        if self._in_advice:
            self.advice[-1] += data
        elif self.tag and self.tag[-1] in ("td", "th") and self.rows:
            self.rows[-1].append(data)

    def table(self) -> list[dict[str, str]]:
        header, *body = self.rows
        return [dict(zip(header, row)) for row in body]


def parse(path: str | Path) -> Section:
    parser = Section()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    parser.close()
    return parser


@pytest.fixture(scope="module")
def measured():
    """The report analysis of the bundled model on 200 test / 200 digit images."""
    torch.set_num_threads(1)
    return analyse_for_report(
        RECORDS, tsne=True, ood="digits", tsne_points=150, progress=False, **LIMITS
    )


@pytest.fixture(scope="module")
def direct():
    """Features of the same images, taken directly, and the numbers computed from them."""
    torch.set_num_threads(1)
    model = vitres.load_model(MODEL)
    test = get_dataset("fashion-mnist", "test", in_chans=1)
    train = get_dataset("fashion-mnist", "train", in_chans=1)
    digits = load_digits_dataset()
    out = {}
    for size in SIZES:
        features = extract_features(model, test, size, limit=LIMITS["limit"])
        fit = extract_features(model, train, size, limit=LIMITS["train_limit"])
        outliers = extract_features(model, digits, size, limit=LIMITS["ood_limit"])
        detector = MahalanobisDetector.fit(fit.features, fit.labels)
        out[str(size)] = {
            "accuracy": features.accuracy,
            "overlap": class_overlap(features.features, features.labels),
            "silhouette": silhouette(features.features, features.labels),
            "energy": detection_metrics(
                energy_score(features.logits), energy_score(outliers.logits)
            ),
            "mahalanobis": detection_metrics(
                detector.score(features.features), detector.score(outliers.features)
            ),
        }
    return out


def test_report_sections_hold_the_directly_computed_values(measured, direct, tmp_path):
    html_path, md_path = write_report(RECORDS, tmp_path / "r.html", analysis=measured)
    section = parse(html_path)
    rows = {row["resolution"]: row for row in section.table()}
    assert set(rows) == {"16 px", "28 px"}
    values = {v["label"]: v for v in analysis_section(measured, RECORDS).values}
    for label, expected in direct.items():
        row, value = rows[f"{label} px"], values[label]
        overlap = expected["overlap"]
        assert value["overlap"] == pytest.approx(overlap.overlap, abs=1e-12)
        assert value["disagreement"] == pytest.approx(overlap.disagreement, abs=1e-12)
        assert value["silhouette"] == pytest.approx(expected["silhouette"], abs=1e-9)
        assert value["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
        assert row["overlap"] == f"{overlap.overlap * 100:.1f} %"
        assert row["disagreement"] == f"{overlap.disagreement:.3f}"
        assert row["silhouette"] == f"{expected['silhouette']:.3f}"
        assert row["accuracy"] == f"{expected['accuracy'] * 100:.1f} %"
        for method in ("energy", "mahalanobis"):
            metrics: DetectionMetrics = expected[method]
            assert value["ood"][method]["auroc"] == pytest.approx(metrics.auroc, abs=1e-9)
            assert value["ood"][method]["fpr95"] == pytest.approx(metrics.fpr95, abs=1e-9)
            cell = f"{metrics.auroc:.3f} ({metrics.fpr95 * 100:.0f} %)"
            assert row[f"{method} AUROC (FPR95)"] == cell
        sweep = next(m.accuracy for m in RECORDS if m.config.resolution[0] == int(label))
        assert row["sweep accuracy"] == f"{sweep * 100:.1f} %"
    # the plots and the t-SNE grid are embedded PNGs
    assert set(section.images) == {
        "separability_vs_resolution",
        "ood_methods_vs_resolution",
        "tsne",
    }
    for src in section.images.values():
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert {label: points.shape for label, (points, _) in measured.tsne.items()} == {
        "16": (150, 2),
        "28": (150, 2),
    }
    # the seed's rule, with its threshold, at the highest resolution (28 px here)
    top = direct["28"]["overlap"].overlap
    verdict = "fires" if top > 0.30 else "does not fire"
    assert section.advice[0].startswith(
        "Seed's rule (class overlap > 30 % at the highest resolution → lower the resolution) "
        f"{verdict}: overlap {top * 100:.0f} % at 28 px"
    )
    assert section.advice[1].startswith(
        f"Measured accuracy: 28 px {direct['28']['accuracy'] * 100:.1f} %, best lower 16 px"
    )
    assert f"Advice (feature space): {section.advice[0]}" in "".join(section.pre)
    markdown = Path(md_path).read_text(encoding="utf-8")
    assert "## What changes with resolution" in markdown and f"> {section.advice[0]}" in markdown
    for name in section.images:
        assert (tmp_path / "r_files" / f"{name}.png").read_bytes().startswith(PNG)


def test_report_command_adds_the_asked_sections(measured, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    for m in RECORDS:
        append_result(results, m)
    out = tmp_path / "r.html"
    args = ["report", str(results), "--out", str(out), "--separability", "--ood", "digits"]
    args += ["--methods", "energy", "--limit", "200", "--train-limit", "500"]
    assert main([*args, "--ood-limit", "200", "--threads", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    check = measured.rule_check()
    assert printed[1] == f"Advice (feature space): {check.text()}"
    section = parse(out)
    assert set(section.images) == {"separability_vs_resolution", "ood_methods_vs_resolution"}
    rows = {row["resolution"]: row for row in section.table()}
    for result in measured.analysis.results:
        row = rows[f"{result.label} px"]
        assert row["overlap"] == f"{result.overlap * 100:.1f} %"
        energy = result.ood["energy"]
        assert row["energy AUROC (FPR95)"] == f"{energy.auroc:.3f} ({energy.fpr95 * 100:.0f} %)"
        assert "mahalanobis AUROC (FPR95)" not in row


def test_report_without_analysis_flags_is_unchanged(tmp_path, monkeypatch, capsys):
    import vitres.report.analysis as report_analysis

    def refuse(*args, **kwargs):
        raise AssertionError("the report computed an analysis nobody asked for")

    monkeypatch.setattr(report_analysis, "analyse_for_report", refuse)
    monkeypatch.setattr(report_analysis, "analysis_section", refuse)
    results = tmp_path / "results.jsonl"
    for m in RECORDS:
        append_result(results, m)
    assert main(["report", str(results), "--out", str(tmp_path / "cli.html")]) == 0
    assert "Advice" not in capsys.readouterr().out
    plain, _ = write_report(RECORDS, tmp_path / "a.html", markdown=False)
    explicit, _ = write_report(RECORDS, tmp_path / "b.html", markdown=False, analysis=None)
    text = Path(plain).read_text(encoding="utf-8")
    assert text == Path(explicit).read_text(encoding="utf-8")
    assert text == (tmp_path / "cli.html").read_text(encoding="utf-8")
    assert 'id="analysis"' not in text and "Advice (feature space)" not in text
    assert text.count("<img") == 4


def synthetic(overlaps: dict[int, float], accuracies: dict[int, float]) -> ReportAnalysis:
    """An analysis made of given numbers (no model, no t-SNE)."""
    results = [
        ResolutionResult(
            (res, res),
            accuracies[res],
            {"energy": DetectionMetrics(0.8 + res / 1000, 0.5)},
            overlap=overlaps[res],
            disagreement=overlaps[res] / 2,
            silhouette=0.5 - overlaps[res],
        )
        for res in sorted(overlaps)
    ]
    analysis = ResolutionAnalysis(
        "m", "fashion-mnist/test", "digits", "as given", ("energy",), 0, 1000, 100, 10, results
    )
    return ReportAnalysis(analysis, "m")


RULE = "Seed's rule (class overlap > 30 % at the highest resolution → lower the resolution)"


@pytest.mark.parametrize(
    ("top_overlap", "top_accuracy", "expected"),
    [
        (
            0.34,
            0.75,
            f"{RULE} fires: overlap 34 % at 56 px > 30 % → consider lowering the resolution "
            "(28 px: 12 %). Measured accuracy: 56 px 75.0 %, best lower 28 px 90.0 % "
            "(+15.0 points): lowering helps, as the rule says.",
        ),
        (
            0.34,
            0.91,
            f"{RULE} fires: overlap 34 % at 56 px > 30 % → consider lowering the resolution "
            "(28 px: 12 %). Measured accuracy: 56 px 91.0 %, best lower 28 px 90.0 % "
            "(-1.0 points): lowering does not help, though the rule says to.",
        ),
        (
            0.29,
            0.75,
            f"{RULE} does not fire: overlap 29 % at 56 px ≤ 30 % → no reason to lower the "
            "resolution, though 28 px overlaps less (12 %). Measured accuracy: 56 px 75.0 %, "
            "best lower 28 px 90.0 % (+15.0 points): lowering would help, and the rule misses it.",
        ),
        (
            0.30,
            0.905,
            f"{RULE} does not fire: overlap 30 % at 56 px ≤ 30 % → no reason to lower the "
            "resolution, though 28 px overlaps less (12 %). Measured accuracy: 56 px 90.5 %, "
            "best lower 28 px 90.0 % (-0.5 points): lowering does not help; the rule is right "
            "to stay silent.",
        ),
    ],
)
def test_rule_advice_fires_above_the_threshold_only(top_overlap, top_accuracy, expected, tmp_path):
    extra = synthetic({16: 0.2, 28: 0.12, 56: top_overlap}, {16: 0.6, 28: 0.9, 56: top_accuracy})
    check = extra.rule_check()
    assert check.fires is (top_overlap > 0.30)
    assert check.text() == expected
    html_path, md_path = write_report(RECORDS, tmp_path / "r.html", analysis=extra)
    section = parse(html_path)
    assert " ".join(section.advice) == expected
    assert f"Advice (feature space): {check.rule_text()}" in "".join(section.pre)
    assert set(section.images) == {"separability_vs_resolution", "ood_methods_vs_resolution"}


def test_rule_needs_overlap_and_says_so(tmp_path):
    extra = synthetic({28: 0.1}, {28: 0.9})
    assert extra.rule_check().text() == (
        f"{RULE} does not fire: overlap 10 % at 28 px ≤ 30 % → no reason to lower the resolution."
    )
    no_overlap = ReportAnalysis(
        ResolutionAnalysis(
            "m",
            "d",
            "digits",
            "as given",
            ("energy",),
            0,
            9,
            9,
            10,
            [ResolutionResult((28, 28), 0.9, {"energy": DetectionMetrics(0.9, 0.3)})],
        ),
        "m",
    )
    assert no_overlap.rule_check() is None
    section = parse(write_report(RECORDS, tmp_path / "r.html", analysis=no_overlap)[0])
    assert section.advice == [
        "Class overlap was not measured, so the overlap rule (lower the resolution when more than 30 % of the classes' neighbourhoods overlap) is not applied."
    ]
    assert set(section.images) == {"ood_methods_vs_resolution"}
    assert section.table()[0]["overlap"] == "–"


def test_sweep_ood_auroc_is_shown_beside_the_analysis(tmp_path):
    records = [record(16, 0.62, 1.0), record(28, 0.908, 2.6)]
    records.append(record(28, 0.905, 2.0, backend="eager-bf16"))
    for m, auroc in zip(records, (0.81, 0.955, 0.952)):
        m.ood_auroc = auroc
    extra = synthetic({16: 0.2, 28: 0.1}, {16: 0.6, 28: 0.9})
    section = parse(write_report(records, tmp_path / "r.html", analysis=extra)[0])
    rows = {row["resolution"]: row for row in section.table()}
    assert rows["16 px"]["sweep OOD AUROC"] == "0.810"
    assert rows["28 px"]["sweep OOD AUROC"] == "0.952–0.955"  # two configs at 28 px
    assert rows["28 px"]["sweep accuracy"] == "90.5–90.8 %"
    assert rows["28 px"]["best OOD"] == "energy 0.828"


def _benchmark_analyses() -> dict[str, ResolutionAnalysis]:
    """The measured analyses of benchmarks/analysis.py, rebuilt from its JSON."""
    data = json.loads((ROOT / "benchmarks" / "results" / "analysis.json").read_text())
    out = {}
    for name, entry in data["results"].items():
        results = [
            ResolutionResult(
                tuple(r["resolution"]),
                r["accuracy"],
                {m: DetectionMetrics(v["auroc"], v["fpr95"]) for m, v in r["ood"].items()},
                r["overlap"],
                r["disagreement"],
                r["silhouette"],
            )
            for r in entry["results"]
        ]
        fields = ("model", "id_data", "ood_data", "ood_conversion")
        counts = ("n_train", "n_id", "n_ood", "k")
        out[name] = ResolutionAnalysis(
            *(entry[f] for f in fields),
            tuple(entry["methods"]),
            *(entry[c] for c in counts),
            results,
        )
    return out


def test_rule_check_on_the_measured_models_matches_the_benchmark():
    analyses = _benchmark_analyses()
    markdown = (ROOT / "benchmarks" / "results" / "analysis.md").read_text(encoding="utf-8")
    assert analysis_table(analyses) in markdown  # the table's cells are those of the benchmark
    cases = json.loads((ROOT / "benchmarks" / "results" / "analysis.json").read_text())
    for case in cases["rule_check"]["cases"]:
        if case["high_res"] != "56":
            continue
        check = analyses[case["model"]].rule_check()
        assert check.resolution == "56" and check.overlap == case["overlap"]
        assert check.fires is case["rule_fires"] is False  # the rule never fires here
        assert check.lowering_helps is case["lowering_helps"]
        assert check.right is case["rule_right"]
    single = analyses["single"].rule_check().text()
    assert "does not fire" in single and "lowering would help, and the rule misses it" in single


def test_bad_analysis_requests_get_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="nothing to analyse"):
        analyse_for_report(RECORDS, separability=False)
    two = [*RECORDS, record(20, 0.8, 1.5, model="other")]
    with pytest.raises(ValueError, match="pass model="):
        analyse_for_report(two)
    with pytest.raises(ValueError, match="ReportAnalysis"):
        write_report(RECORDS, tmp_path / "r.html", analysis={"overlap": 0.3})
    results = tmp_path / "results.jsonl"
    for m in two:
        append_result(results, m)
    assert main(["report", str(results), "--out", str(tmp_path / "x.html"), "--tsne"]) == 2
    assert "--for-model NAME" in capsys.readouterr().err


@pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium installed (apt-get install chromium)"
)
def test_analysis_section_renders_in_a_real_browser(tmp_path):
    """Headless Chromium draws the analysis section's advice boxes."""
    from PIL import Image

    analysis = _benchmark_analyses()["single"]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 20)
    tsne = {
        r.label: (rng.normal(size=(200, 2)) + labels[:, None], labels) for r in analysis.results
    }
    extra = ReportAnalysis(analysis, MODEL, tsne)
    html_path, _ = write_report(RECORDS, tmp_path / "r.html", markdown=False, analysis=extra)
    png = screenshot(html_path, tmp_path / "r.png", width=1000, height=4800)
    count = {rgb: n for n, rgb in Image.open(png).convert("RGB").getcolors(maxcolors=1_000_000)}
    advice = count.get((0xEE, 0xF2, 0xFA), 0)  # the .advice background
    border = count.get((0x44, 0x66, 0xCC), 0)  # its left border
    assert advice > 5000 and border > 100
