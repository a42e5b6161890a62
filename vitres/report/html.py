"""The report as one self-contained HTML page: the answer, the plots (PNG embedded as
base64), the analysis section, and the tables."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from vitres.report.content import ReportContent
from vitres.report.tables import (
    CEILING_HEADER,
    FIT_HEADER,
    QUALITY_HEADER,
    RESULT_COLUMNS,
)

__all__ = ["ANALYSIS_TITLE", "html_page", "html_table", "rule_paragraphs"]

ANALYSIS_TITLE = "What changes with resolution: OOD detection, class overlap, t-SNE"

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f3f3f3}pre{background:#f8f8f8;padding:1em;white-space:pre-wrap}
.plots img{max-width:48%;margin:0.5%}
.answer{font-size:1.35em;font-weight:600;background:#eef6ee;border-left:6px solid #3a3;padding:.6em 1em}
.answer.none{background:#fff4e0;border-left-color:#d80}
.advice{background:#eef2fa;border-left:6px solid #46c;padding:.5em 1em}
.plots img.wide{max-width:97%}
.wide{overflow-x:auto;max-width:100%}.wide table{white-space:nowrap}"""


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def rule_paragraphs(content: ReportContent) -> list[str]:
    """The seed's overlap rule and its check against accuracy, as sentences."""
    section = content.section
    assert section is not None
    if section.rule is None:
        return [
            "Class overlap was not measured, so the overlap rule (lower the resolution when more than 30 % of the classes' neighbourhoods overlap) is not applied."
        ]
    lines = [section.rule.rule_text()]
    if section.rule.accuracy_text():
        lines.append(section.rule.accuracy_text())
    return lines


def _analysis_html(content: ReportContent) -> list[str]:
    section = content.section
    assert section is not None
    parts = [f'<section id="analysis"><h2>{html.escape(ANALYSIS_TITLE)}</h2>']
    parts += [f'<p class="advice">{html.escape(line)}</p>' for line in rule_paragraphs(content)]
    parts.append(html_table(section.header, section.rows))
    parts += [f"<p>{html.escape(note)}</p>" for note in section.notes]
    parts.append('<div class="plots">')
    for name, title, png in section.figures:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<img class="wide" id="{name}" alt="{html.escape(title, quote=True)}" '
            f'title="{html.escape(title, quote=True)}" src="data:image/png;base64,{encoded}">'
        )
    parts.append("</div></section>")
    return parts


def _head(content: ReportContent) -> list[str]:
    title = content.title
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="answer{"" if content.chosen else " none"}">{html.escape(content.sentence)}</p>',
        f"<p>{html.escape(content.budget_text)}</p>",
        f"<p>{html.escape(content.counts)}</p>",
        "<h2>Details</h2>",
        f"<pre>{html.escape(content.summary)}</pre>",
        '<h2>Plots</h2><div class="plots">',
    ]
    for plot in content.plots:
        encoded = base64.b64encode(plot.png).decode("ascii")
        parts.append(
            f'<img alt="{html.escape(plot.title, quote=True)}" title="{html.escape(plot.title, quote=True)}" '
            f'src="data:image/png;base64,{encoded}">'
        )
    parts.append("</div>")
    return parts


def html_page(content: ReportContent) -> str:
    """The whole page."""
    parts = _head(content)
    if content.section is not None:
        parts += _analysis_html(content)
    parts += [
        "<h2>Cost model</h2>",
        html_table(FIT_HEADER, content.fits) if content.fits else "<p>Too few points to fit.</p>",
    ]
    if content.ceilings:
        parts += [
            f"<h2>Memory ceiling for {html.escape(content.memory_limit)} MiB</h2>",
            "<p>Fitted: the largest square side whose predicted peak memory fits. Naive: the back-of-envelope "
            "formula side = p·sqrt(mem / (p²·D·4)), read as pixels.</p>",
            html_table(CEILING_HEADER, content.ceilings),
        ]
    parts += ["<h2>Measurement quality</h2>", f"<p>{html.escape(content.quality)}</p>"]
    if content.quality_table:
        parts.append(html_table(QUALITY_HEADER, content.quality_table))
    parts += [
        "<h2>All results</h2>",
        f'<div class="wide">{html_table(RESULT_COLUMNS, content.rows)}</div>',
    ]
    if content.env_rows:
        parts += ["<h2>Environment</h2>", html_table(("field", "value"), content.env_rows)]
    parts.append("</body></html>")
    return "\n".join(parts)
