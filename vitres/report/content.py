"""What a report shows, gathered once from a :class:`~vitres.tune.recommend.Recommendation`
(and an optional :class:`~vitres.report.analysis.ReportAnalysis`) for the HTML and the
Markdown writers, so that both say the same thing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vitres.report.plots import (
    Plot,
    plot_accuracy,
    plot_latency,
    plot_memory,
    plot_ood,
    plot_pareto,
)
from vitres.report.tables import (
    ceiling_rows,
    fit_rows,
    format_value,
    quality_rows,
    quality_summary,
    result_rows,
)
from vitres.tune.recommend import Recommendation, format_recommendation
from vitres.tune.recommendation import budget_line
from vitres.tune.records import Measurement

if TYPE_CHECKING:
    from vitres.report.analysis import AnalysisSection, ReportAnalysis

__all__ = ["ReportContent", "report_content"]


@dataclass
class ReportContent:
    """Every piece of one report, as text, table rows and PNGs.

    Attributes:
        title: The page title.
        sentence: The one-sentence answer.
        chosen: Whether a configuration was recommended (styles the answer).
        budget_text: The budget and the acceptance rule, one line.
        counts: How many records were measured, failed, predicted.
        summary: The recommendation as printed by ``vitres recommend`` (plus the
            feature-space advice when the analysis section is present).
        plots: The figures.
        section: The "what changes with resolution" section (``None``: not asked).
        fits: Cost-model fit rows.
        ceilings: Memory-ceiling rows (empty without a memory budget).
        memory_limit: The memory budget, formatted (for the ceiling heading).
        quality: The measurement-quality sentence.
        quality_table: Rows of re-measured, disturbed or unstable configs.
        rows: Every record, one row each.
        env_rows: ``[field, value]`` of the environment the records were measured in.
    """

    title: str
    sentence: str
    chosen: bool
    budget_text: str
    counts: str
    summary: str
    plots: list[Plot]
    section: AnalysisSection | None
    fits: list[list[str]]
    ceilings: list[list[str]]
    memory_limit: str
    quality: str
    quality_table: list[list[str]]
    rows: list[list[str]]
    env_rows: list[list[str]]


def env_rows(env: dict, prefix: str = "") -> list[list[str]]:
    """The environment as ``[field, value]`` rows, nested fields spelled out
    (``cpu.model``), lists joined: no raw Python reprs."""
    rows: list[list[str]] = []
    for key, value in env.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += env_rows(value, name + ".")
        elif isinstance(value, (list, tuple)):
            rows.append([name, ", ".join(str(v) for v in value)])
        else:
            rows.append([name, format_value(value)])
    return rows


def _analysis_section(
    analysis: ReportAnalysis | None, records: Sequence[Measurement]
) -> AnalysisSection | None:
    if analysis is None:
        return None
    from vitres.report.analysis import ReportAnalysis, analysis_section

    if not isinstance(analysis, ReportAnalysis):
        raise ValueError(
            "write_report: analysis must be a ReportAnalysis from "
            f"vitres.report.analyse_for_report; got {type(analysis).__name__}"
        )
    return analysis_section(analysis, records)


def report_content(
    rec: Recommendation, title: str, analysis: ReportAnalysis | None = None
) -> ReportContent:
    """Draws the plots and lays out the tables of ``rec`` (and of ``analysis``).

    Raises:
        ValueError: ``analysis`` is not a :class:`~vitres.report.analysis.ReportAnalysis`.
    """
    budget, records = rec.budget, rec.records
    ok = [m for m in records if m.ok]
    predicted = [m for m in records if m.status == "predicted"]
    lat_fits, mem_fits = rec.latency_fits, rec.memory_fits
    plots = [
        plot_accuracy(ok),
        plot_latency(ok, predicted, lat_fits, budget, rec),
        plot_pareto(ok, rec),
        plot_memory(ok, predicted, mem_fits, budget),
    ]
    if any(m.ood_auroc is not None for m in ok):
        plots.append(plot_ood(ok, budget))
    # the answer sentence heads the page; the details block does not repeat it
    summary = "\n".join(format_recommendation(rec).splitlines()[3:])
    section = _analysis_section(analysis, records)
    if section is not None and section.rule is not None:
        summary += f"\nAdvice (feature space): {section.rule.rule_text()}"
    budget_text = f"{budget_line(budget)}. Rule: {budget.rule_text()}."
    env = next((m.env for m in ok if m.env), {})
    counts = (
        f"{len(ok)} measured ok, {sum(m.status == 'error' for m in records)} failed, "
        f"{len(predicted)} predicted (not measured)"
    )
    return ReportContent(
        title=title,
        sentence=rec.sentence(),
        chosen=rec.choice is not None,
        budget_text=budget_text,
        counts=counts,
        summary=summary,
        plots=plots,
        section=section,
        fits=fit_rows(lat_fits, mem_fits),
        ceilings=ceiling_rows(rec.ceilings),
        memory_limit=format_value(budget.max_memory_mb),
        quality=quality_summary(records),
        quality_table=quality_rows(records),
        rows=result_rows(records),
        env_rows=env_rows(env),
    )
