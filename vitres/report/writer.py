"""A report of a sweep: one self-contained HTML file and a Markdown file beside it.

Plots (PNG, embedded in the HTML as base64; written as files for the Markdown):
accuracy vs resolution, latency vs resolution (measured points and the fitted cost
model), the accuracy-vs-latency Pareto front with the recommendation marked, and peak
memory vs resolution with the budget line. Tables list the recommendation, every
record, the cost-model fits, and the memory ceiling next to the seed's naive formula.

The report draws what the other stages computed (:mod:`vitres.tune.costmodel`,
:mod:`vitres.tune.recommend`); it computes no results itself. Given ``analysis=`` (a
:class:`~vitres.report.analysis.ReportAnalysis`, measured beforehand by
:func:`~vitres.report.analysis.analyse_for_report`), it adds the "what changes with
resolution" section: OOD AUROC per method, class overlap and silhouette beside accuracy,
t-SNE, and the seed's overlap rule as advice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vitres.report.content import report_content
from vitres.report.html import html_page
from vitres.report.markdown import markdown_page
from vitres.tune.budget import Budget
from vitres.tune.recommend import Recommendation, recommend
from vitres.tune.records import Measurement, read_results

if TYPE_CHECKING:
    from vitres.report.analysis import ReportAnalysis

__all__ = ["write_report"]


def _recommendation(
    source: Recommendation | str | os.PathLike[str] | Sequence[Measurement],
    budget: Budget | None,
    baseline: str | None,
) -> Recommendation:
    """``source`` itself, or ``recommend`` run on the records it names."""
    if isinstance(source, Recommendation):
        if budget is not None or baseline is not None:
            raise ValueError(
                "write_report: budget and baseline belong to recommend(); pass them there, "
                "or pass records instead of a Recommendation"
            )
        return source
    records = read_results(source) if isinstance(source, (str, os.PathLike)) else list(source)
    return recommend(records, budget, baseline)


def write_report(
    recommendation: Recommendation | str | os.PathLike[str] | Sequence[Measurement],
    out_html: str | os.PathLike[str],
    budget: Budget | None = None,
    *,
    baseline: str | None = None,
    title: str = "vitres resolution report",
    markdown: bool = True,
    analysis: ReportAnalysis | None = None,
) -> tuple[str, str | None]:
    """Writes the HTML report (and ``<name>.md`` with ``<name>_files/*.png`` beside it).

    The report draws what :func:`vitres.tune.recommend.recommend` decided and the
    evidence it carries (records, fits, ceilings); it computes no results itself.

    Args:
        recommendation: The :class:`Recommendation` to draw. A results file or a list
            of records is accepted too: it is first passed to ``recommend`` with
            ``budget`` and ``baseline`` (the same call ``vitres recommend`` makes).
        out_html: Path of the HTML file.
        budget: Budget, only when ``recommendation`` is records.
        baseline: Baseline config key, only when ``recommendation`` is records.
        title: Page title.
        markdown: Also write the Markdown file.
        analysis: What :func:`vitres.report.analysis.analyse_for_report` measured:
            adds the OOD / class overlap / t-SNE section and the seed's overlap rule as
            advice. ``None`` (the default): the report without it, nothing computed.

    Returns:
        The HTML path and the Markdown path (``None`` without Markdown).
    """
    rec = _recommendation(recommendation, budget, baseline)
    content = report_content(rec, title, analysis)
    out_html = os.fspath(out_html)
    directory = os.path.dirname(out_html)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(out_html, "w", encoding="utf-8") as f:
        f.write(html_page(content))

    if not markdown:
        return out_html, None
    stem = os.path.splitext(out_html)[0]
    files_dir = stem + "_files"
    os.makedirs(files_dir, exist_ok=True)
    text = markdown_page(content, files_dir)
    md_path = stem + ".md"
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(text)
    return out_html, md_path
