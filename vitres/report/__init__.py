"""The report of a sweep: what the tuner decided, drawn as one self-contained HTML page
and a Markdown file, with its plots; the optional "what changes with resolution"
analysis section; rendering the page in a headless browser; and the main job end to end
(``vitres demo``). The report draws; it decides nothing (:mod:`vitres.tune` does).

One concept per module:

- :mod:`~vitres.report.writer`: :func:`write_report`;
- :mod:`~vitres.report.content`: what a report shows, gathered once for both formats;
- :mod:`~vitres.report.plots`, :mod:`~vitres.report.tables`: the figures and the tables;
- :mod:`~vitres.report.html`, :mod:`~vitres.report.markdown`: the two formats;
- :mod:`~vitres.report.analysis`: the OOD / class-overlap / t-SNE section
  (:func:`analyse_for_report` computes it, only when asked; :func:`analysis_section`
  draws it);
- :mod:`~vitres.report.render`: a screenshot of the page in headless Chromium;
- :mod:`~vitres.report.pipeline`: sweep, recommend and report in one call (:func:`tune`).

Names are loaded on first use, so importing this package loads neither matplotlib nor
torch until a report is drawn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitres.report.analysis import (
        AnalysisSection,
        ReportAnalysis,
        analyse_for_report,
        analysis_section,
    )
    from vitres.report.pipeline import TuneResult, tune
    from vitres.report.render import find_chromium, screenshot
    from vitres.report.writer import write_report

#: Public name -> the module that defines it.
_EXPORTS = {
    "AnalysisSection": "vitres.report.analysis",
    "ReportAnalysis": "vitres.report.analysis",
    "TuneResult": "vitres.report.pipeline",
    "analyse_for_report": "vitres.report.analysis",
    "analysis_section": "vitres.report.analysis",
    "find_chromium": "vitres.report.render",
    "screenshot": "vitres.report.render",
    "tune": "vitres.report.pipeline",
    "write_report": "vitres.report.writer",
}

__all__ = [
    "AnalysisSection",
    "ReportAnalysis",
    "TuneResult",
    "analyse_for_report",
    "analysis_section",
    "find_chromium",
    "screenshot",
    "tune",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vitres.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (what tab completion offers)."""
    return sorted(__all__)
