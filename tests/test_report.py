"""Report: self-contained HTML with embedded PNG plots, Markdown beside it, escaped text."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import pytest

from vitres.report import write_report
from vitres.report.render import find_chromium, screenshot
from vitres.tune.recommend import Budget
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def mk(
    res: int,
    backend: str,
    acc: float | None,
    ms: float,
    mem: float,
    status: str = "ok",
    error: str | None = None,
) -> Measurement:
    precision = "bf16" if backend.endswith("bf16") else "fp32"
    lat = None if status == "error" else LatencyStats(ms, 0.05 * ms, ms, ms, ms, ms, ms, 30, False)
    m = Measurement(
        SweepConfig("m", (res, res), None, 1, precision, backend, 1),
        status=status,
        error=error,
        accuracy=acc,
        latency=lat,
        throughput_ips=None if lat is None else 1000 / ms,
        peak_mem_mb=mem if status != "error" else None,
        tokens=(res // 4) ** 2,
        native_resolution=(28, 28),
        native_patch_size=4,
        embed_dim=64,
        flops=1000 * res * res,
        flops_analytic=1000 * res * res,
    )
    if status == "predicted":
        m.source = "predicted"
    return m


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_embeds_pngs_escapes_text_and_writes_markdown(tmp_path):
    results = tmp_path / "results.jsonl"
    for res, ms, mem, acc in [
        (16, 1.0, 20.0, 0.80),
        (20, 1.5, 22.0, 0.86),
        (28, 2.6, 26.0, 0.90),
        (40, 5.5, 35.0, 0.89),
    ]:
        append_result(results, mk(res, "eager", acc, ms, mem))
        append_result(results, mk(res, "eager-bf16", acc - 0.003, 0.7 * ms, mem - 3))
    append_result(results, mk(56, "eager", None, 11.0, 50.0, status="predicted"))
    append_result(
        results,
        mk(64, "eager", None, 0, 0, status="error", error="<script>alert('x')</script> | oom"),
    )
    out = tmp_path / "out" / "report.html"
    html_path, md_path = write_report(
        str(results), out, Budget(max_latency_ms=3.0, max_memory_mb=30.0)
    )

    text = out.read_text(encoding="utf-8")
    parser = Collector()
    parser.feed(text)
    parser.close()
    assert len(parser.images) == 4
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<script" not in parser.tags and "script" not in parser.tags
    assert any("alert('x')" in t for t in parser.text)  # shown as text
    body = "".join(parser.text)
    assert "Recommended: 28 px bf16" in body  # most accurate passing under 3 ms / 30 MiB
    assert "naive formula" in body

    markdown = open(md_path, encoding="utf-8").read()
    assert markdown.startswith("# vitres resolution report")
    assert "m\\|16x16\\|pnative" in markdown  # pipes in keys escaped inside tables
    assert "\\| oom" in markdown
    for name in (
        "accuracy_vs_resolution",
        "latency_vs_resolution",
        "pareto",
        "memory_vs_resolution",
    ):
        png_path = tmp_path / "out" / "report_files" / f"{name}.png"
        assert png_path.read_bytes().startswith(PNG_MAGIC)
        assert f"report_files/{name}.png" in markdown


def test_report_without_accuracy_or_memory_still_renders(tmp_path):
    records = [mk(r, "eager", None, ms, None) for r, ms in ((16, 1.0), (28, 2.0))]
    html_path, md_path = write_report(records, tmp_path / "r.html", markdown=False)
    assert md_path is None
    parser = Collector()
    parser.feed(open(html_path, encoding="utf-8").read())
    assert len(parser.images) == 4


@pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium installed (apt-get install chromium)"
)
def test_report_renders_in_a_real_browser(tmp_path):
    """Headless Chromium draws the answer banner and the embedded plots."""
    from PIL import Image

    results = tmp_path / "results.jsonl"
    # 20 px passes the rule (0.6 % less accurate, 42 % faster): a green answer banner
    for res, ms, acc in [(16, 1.0, 0.80), (20, 1.5, 0.895), (28, 2.6, 0.90), (40, 5.5, 0.89)]:
        append_result(results, mk(res, "eager", acc, ms, 20.0 + res))
    html_path, _ = write_report(str(results), tmp_path / "report.html", markdown=False)
    assert 'class="answer"' in open(html_path).read()
    png = screenshot(html_path, tmp_path / "report.png", width=1000, height=1400)
    image = Image.open(png).convert("RGB")
    assert image.size == (1000, 1400)
    colors = image.getcolors(maxcolors=1_000_000)
    count = {rgb: n for n, rgb in colors}
    banner = count.get((0xEE, 0xF6, 0xEE), 0)  # the .answer background
    border = count.get((0x33, 0xAA, 0x33), 0)  # its left border
    plot_blue = sum(
        n
        for rgb, n in count.items()
        if abs(rgb[0] - 31) + abs(rgb[1] - 119) + abs(rgb[2] - 180) < 30
    )
    assert banner > 5000 and border > 100 and plot_blue > 200


def test_report_draws_ood_when_records_have_it(tmp_path):
    records = []
    for res, ms, acc, auroc in [
        (16, 1.0, 0.80, 0.81),
        (28, 2.6, 0.90, 0.95),
        (40, 5.5, 0.89, 0.93),
    ]:
        m = mk(res, "eager", acc, ms, 20.0)
        m.ood_auroc = auroc
        records.append(m)
    html_path, md_path = write_report(records, tmp_path / "r.html", Budget(min_ood_auroc=0.9))
    markdown = open(md_path).read()
    assert "ood_vs_resolution.png" in markdown and "OOD AUROC" in markdown and "0.95" in markdown
    assert (tmp_path / "r_files" / "ood_vs_resolution.png").read_bytes().startswith(PNG_MAGIC)


def report_records(tmp_path):
    results = tmp_path / "results.jsonl"
    for res, ms, acc in [(16, 1.0, 0.80), (20, 1.5, 0.895), (24, 1.4, 0.85), (28, 2.6, 0.90)]:
        m = mk(res, "eager", acc, ms, 20.0 + res)
        m.n_eval = 500
        m.env = {
            "torch": "2.13.0",
            "cpu": {"model": "AMD EPYC", "cores": 2},
            "flags": ["avx2", "avx512f"],
        }
        append_result(results, m)
    return results


def test_one_answer_no_jargon_readable_budget_and_environment(tmp_path):
    results = report_records(tmp_path)
    html_path, _ = write_report(str(results), tmp_path / "r.html", markdown=False)
    text = open(html_path, encoding="utf-8").read()
    parser = Collector()
    parser.feed(text)
    body = "\n".join(parser.text)
    sentence = body.split("\n")[1] if body.startswith("vitres") else None
    answer = text.split('class="answer', 1)[1].split(">", 1)[1].split("</p>", 1)[0]
    assert body.count(answer.split(":")[0]) == 1, "the answer appears once"
    assert "seed" not in body.lower()
    assert "no limits — no limits given" not in body and "Budget: none given" in body
    assert "{'" not in body and "cpu.model" in body and "avx2, avx512f" in body
    assert "(-0.0" not in body
    assert '<div class="wide"><table>' in text  # the results table scrolls inside the page
    assert sentence is None or sentence  # (the page title is first)


def test_the_pareto_front_is_two_dimensional():
    from vitres.report.plots import front_2d

    points = [mk(r, "eager", a, ms, 1.0) for r, a, ms in
              [(16, 0.80, 1.0), (24, 0.85, 1.4), (20, 0.895, 1.5), (28, 0.90, 2.6), (40, 0.89, 5.5)]]  # fmt: skip
    front = front_2d(points)
    # 24 px is faster than 20 px, 20 px more accurate than 24 px: both on the front;
    # 40 px is slower and less accurate than 28 px: not on it
    assert [m.config.resolution[0] for m in front] == [16, 24, 20, 28]
    accuracies = [m.accuracy for m in front]
    assert accuracies == sorted(accuracies)  # no zig-zag: accuracy only rises with latency


@pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium installed (apt-get install chromium)"
)
def test_the_screenshot_shows_the_whole_page(tmp_path):
    from PIL import Image

    results = report_records(tmp_path)
    for res in range(30, 90, 2):  # a long results table: the page is taller than 2200 px
        m = mk(res, "eager", 0.9, res / 10, 40.0)
        m.env = {"torch": "2.13.0", "cpu": {"model": "AMD EPYC", "cores": 2}, "flags": ["avx2"]}
        append_result(results, m)
    html_path, _ = write_report(str(results), tmp_path / "report.html", markdown=False)
    png = screenshot(html_path, tmp_path / "report.png", width=1280)
    image = Image.open(png).convert("RGB")
    assert image.size[0] == 1280 and image.size[1] > 2200  # taller than the old fixed window
    # the bottom of the page (the environment table) is in the picture: the last rows of
    # pixels are the white page background, not cut mid-table
    bottom = image.crop((0, image.size[1] - 20, 1280, image.size[1])).getcolors(100_000)
    assert max(bottom)[1] == (255, 255, 255)
