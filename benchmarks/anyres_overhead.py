"""Overhead of running a ViT away from its native resolution.

Compares, side by side in one run, ViT-S/16 (native 224 px) called at 160, 224 and 320 px
against the same weights built natively for that resolution (position table resampled
once, up front). Both run eager fp32 on the CPU; calls are interleaved A/B/A/B so that
machine noise hits both alike. The overhead is the median over rounds of
t(any-res) / t(native) - 1, each round timing both back to back. The 224 px rows compare
two identical code paths (224 is native for both), so they show the noise floor.

Target: overhead <= 2 %.

    .venv/bin/python benchmarks/anyres_overhead.py [--rounds 60] [--threads 2]

Writes benchmarks/results/anyres_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics

import torch

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import vitres
from benchmarks._common import (
    RESULTS_DIR,
    interleaved_timing,
    markdown_table,
    write_json,
    write_markdown,
)
from vitres.measure import env_fingerprint, latency_stats, set_threads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolutions", default="160,224,320")
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    anyres = vitres.create_model("vit_small_patch16", img_size=224).eval()
    rows = []
    for res in [int(r) for r in args.resolutions.split(",")]:
        native = vitres.create_model("vit_small_patch16", img_size=res).eval()
        state = anyres.state_dict()
        state["pos_embed"] = vitres.resample_pos_embed(
            state["pos_embed"], res // 16, 224 // 16, 1, "bicubic"
        )
        native.load_state_dict(state)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(batch, 3, res, res)
            with torch.inference_mode():
                diff = (anyres(x) - native(x)).abs().max().item()
            rounds = max(20, args.rounds // batch) if batch > 1 else args.rounds
            with torch.inference_mode():  # A/B/A/B, the same order every round
                samples = interleaved_timing(
                    {"anyres": anyres, "native": native},
                    x,
                    rounds,
                    warmup_calls=args.warmup,
                    rotate=False,
                )
            a_s, n_s = samples["anyres"], samples["native"]
            a, n = latency_stats(a_s), latency_stats(n_s)
            # each round times both back to back: the median of per-round ratios cancels drift
            overhead = statistics.median(ta / tn for ta, tn in zip(a_s, n_s)) - 1
            rows.append(
                {
                    "model": "vit_small_patch16",
                    "resolution": res,
                    "batch": batch,
                    "anyres_median_ms": round(a.median_ms, 3),
                    "native_median_ms": round(n.median_ms, 3),
                    "anyres_iqr_ms": round(a.iqr_ms, 3),
                    "native_iqr_ms": round(n.iqr_ms, 3),
                    "calls_each": a.count,
                    "overhead_pct": round(100 * overhead, 2),
                    "max_abs_logit_diff": diff,
                    "meets_target": overhead <= 0.02,
                }
            )
            print(
                f"{res:4d} px  batch {batch}: any-res {a.median_ms:8.2f} ms  native {n.median_ms:8.2f} ms  "
                f"overhead {100 * overhead:+.2f} %  (max |diff| {diff:.1e})",
                flush=True,
            )
    write_results(rows, args.threads)


def write_results(rows: list[dict], threads: int) -> None:
    """``anyres_overhead.{json,md}`` in the results folder; prints the table."""
    report = {
        "benchmark": "anyres_overhead",
        "target_pct": 2.0,
        "env": env_fingerprint(threads),
        "rows": rows,
    }
    write_json(RESULTS_DIR / "anyres_overhead.json", report)
    header = (
        "resolution",
        "batch",
        "any-res median (ms)",
        "native median (ms)",
        "overhead",
        "logits max abs diff",
    )
    cells = [
        (
            r["resolution"],
            r["batch"],
            f"{r['anyres_median_ms']:.2f}",
            f"{r['native_median_ms']:.2f}",
            f"{r['overhead_pct']:+.2f} %",
            f"{r['max_abs_logit_diff']:.1e}",
        )
        for r in rows
    ]
    lines = markdown_table(header, cells, "rrrrrr")
    write_markdown(RESULTS_DIR / "anyres_overhead.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
