"""The report as Markdown: the same content as the HTML page, with the figures written as
PNG files in ``<name>_files/`` beside it."""

from __future__ import annotations

import os
from collections.abc import Sequence

from vitres.report.content import ReportContent
from vitres.report.html import ANALYSIS_TITLE, rule_paragraphs
from vitres.report.tables import (
    CEILING_HEADER,
    FIT_HEADER,
    QUALITY_HEADER,
    RESULT_COLUMNS,
)

__all__ = ["markdown_page", "md_table"]


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, pipes and backslashes escaped, newlines flattened."""
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_png(files_dir: str, name: str, title: str, png: bytes) -> list[str]:
    """Writes ``files_dir/name.png``; the lines that show it."""
    with open(os.path.join(files_dir, name + ".png"), "wb") as f:
        f.write(png)
    return [f"![{title}]({os.path.basename(files_dir)}/{name}.png)", ""]


def _analysis_markdown(content: ReportContent, files_dir: str) -> list[str]:
    section = content.section
    assert section is not None
    md = [f"## {ANALYSIS_TITLE}", ""]
    for line in rule_paragraphs(content):
        md += [f"> {line}", ""]
    md += [md_table(section.header, section.rows), ""]
    for note in section.notes:
        md += [note, ""]
    for name, title, png in section.figures:
        md += _write_png(files_dir, name, title, png)
    return md


def markdown_page(content: ReportContent, files_dir: str) -> str:
    """The whole Markdown file; writes its figures into ``files_dir`` (which must exist)."""
    md = [f"# {content.title}", "", f"**{content.sentence}**", ""]
    md += [content.budget_text, "", content.counts, ""]
    md += ["## Recommendation", "", "```", content.summary, "```", "", "## Plots", ""]
    for plot in content.plots:
        md += _write_png(files_dir, plot.name, plot.title, plot.png)
    if content.section is not None:
        md += _analysis_markdown(content, files_dir)
    md += [
        "## Cost model",
        "",
        md_table(FIT_HEADER, content.fits) if content.fits else "Too few points to fit.",
        "",
    ]
    if content.ceilings:
        md += [
            f"## Memory ceiling for {content.memory_limit} MiB",
            "",
            md_table(CEILING_HEADER, content.ceilings),
            "",
        ]
    md += ["## Measurement quality", "", content.quality, ""]
    if content.quality_table:
        md += [md_table(QUALITY_HEADER, content.quality_table), ""]
    md += ["## All results", "", md_table(RESULT_COLUMNS, content.rows), ""]
    if content.env_rows:
        md += ["## Environment", "", md_table(("field", "value"), content.env_rows), ""]
    return "\n".join(md)
