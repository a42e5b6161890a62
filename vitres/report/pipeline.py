"""The main job end to end: sweep a model over resolutions and precisions, recommend a
configuration under a budget, and write the report. Used by ``vitres demo``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitres.measure import TimingConfig
from vitres.report.writer import write_report
from vitres.tune.budget import Budget
from vitres.tune.recommend import Recommendation, format_recommendation, recommend
from vitres.tune.records import read_results
from vitres.tune.sweep import run_sweep

DEFAULT_MODEL = "fmnist-vit-multires"
DEFAULT_RESOLUTIONS = "12,16,20,24,28,40,56"
DEFAULT_BACKENDS = ("eager", "eager-bf16")


@dataclass
class TuneResult:
    results_path: Path
    report_path: Path
    markdown_path: Path | None
    recommendation: Recommendation

    def summary(self) -> str:
        lines = [
            format_recommendation(self.recommendation),
            "",
            f"results: {self.results_path}",
            f"report:  {self.report_path}",
        ]
        if self.markdown_path:
            lines.append(f"markdown: {self.markdown_path}")
        rec = self.recommendation
        if rec.choice is not None or rec.baseline is not None:
            model = (rec.choice or rec.baseline).config.model
            lines += [
                "",
                "Run it on a stream, or serve it, with these records (the backend they "
                "recommend is used unless --backend says otherwise):",
                f"  vitres run --model {model} --records {self.results_path} --source SOURCE --target-fps N",
                f"  vitres serve --model {model} --records {self.results_path} --slo-ms N",
            ]
        return "\n".join(lines)


def tune(
    model: str = DEFAULT_MODEL,
    data: str | None = "fashion-mnist",
    resolutions: str = DEFAULT_RESOLUTIONS,
    backends: tuple[str, ...] = DEFAULT_BACKENDS,
    out_dir: str | Path = "runs/demo",
    budget: Budget | None = None,
    baseline: str | None = None,
    eval_limit: int | None = None,
    timing: TimingConfig | None = None,
    threads: int | None = None,
    progress: bool = True,
    keep_unstable: bool = False,
    max_attempts: int = 3,
) -> TuneResult:
    """Sweeps, recommends and reports; resumable (re-running skips measured configs).

    Args:
        model: a model name, path or bundled reference model.
        data: dataset for accuracy (``None``: speed and memory only).
        resolutions: ladder, e.g. ``"16,20,28"`` or ``"96:448:32"``.
        backends: backend names (precision is part of the backend).
        out_dir: where ``results.jsonl``, ``report.html`` and ``report.md`` go.
        budget: the deployment budget (default: no limits, the seed's acceptance rule,
            i.e. the most accurate config the rule accepts).
        baseline: baseline config key (default: native resolution, fp32 eager).
        eval_limit: evaluate accuracy on the first N examples only.
        timing: warm-up and measurement lengths (default: >= 30 calls and >= 2 s).
        threads: torch threads (default: all cores).
        progress: show progress bars.
        keep_unstable: on resume, keep records flagged unstable or disturbed.
        max_attempts: measurements of a disturbed config at most (see ``run_sweep``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.jsonl"
    budget = budget or Budget()
    run_sweep(
        model,
        out_path=results_path,
        data=data,
        resolutions=resolutions,
        backends=backends,
        threads=threads,
        eval_limit=eval_limit,
        eval_batch_size=256,
        timing=timing,
        progress=progress,
        keep_unstable=keep_unstable,
        max_attempts=max_attempts,
    )
    rec = recommend(read_results(results_path), budget, baseline, model=model)
    html, md = write_report(rec, out_dir / "report.html", title=f"vitres: {model}")
    return TuneResult(results_path, Path(html), Path(md) if md else None, rec)
