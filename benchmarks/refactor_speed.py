"""Speed and outputs of two vitres source trees, side by side: a refactor costs nothing.

Runs the same cases on the current tree and on an earlier commit (default: the parent of
the first commit given by ``--base``), each tree in its own worker process with one
thread. Rounds alternate between the two workers (A, B, B, A, ...), each timing a few
calls back to back; the slowdown of a case is the median over rounds of
t(current) / t(base) - 1. Every case's logits are compared between the trees too, so a
change of speed that comes with a change of result shows.

Cases: ViT-S/16 (random weights, seed 0) at 224 px batch 1 and 8 and at 320 px (the
any-resolution path), ToMe merging inside the blocks, and the bundled Fashion-MNIST
model on a uniform batch (1 and 64 images), a packed batch of mixed sizes and mixed-resolution (quadtree)
tokens.

Target: no case more than 2 % slower.

    .venv/bin/python benchmarks/refactor_speed.py --base 2526174 [--rounds 40]

Writes benchmarks/results/refactor_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET = 0.02

CASES = (
    "vit_s_224_b1",
    "vit_s_224_b8",
    "vit_s_320_b1",
    "vit_s_224_merge8_b1",
    "fmnist_28_b1",
    "fmnist_28_b64",
    "fmnist_packed_64",
    "fmnist_quadtree_56_b16",
)


# ----------------------------------------------------------------------------- worker
def _build_case(name: str):  # noqa: ANN202 - returns (callable, input)
    """The call to time and its input, written against the public API of either tree."""
    import torch

    import vitres

    generator = torch.Generator().manual_seed(0)
    if name.startswith("vit_s"):
        torch.manual_seed(0)
        model = vitres.create_model("vit_small_patch16", img_size=224).eval()
        size = 320 if "_320_" in name else 224
        batch = 8 if name.endswith("b8") else 1
        x = torch.randn(batch, 3, size, size, generator=generator)
        if "merge" in name:
            return _merged_call(model, 8), x
        return model, x
    model = vitres.load_model("fmnist-vit-multires").eval()
    if name in ("fmnist_28_b1", "fmnist_28_b64"):
        return model, torch.rand(int(name.rsplit("_b", 1)[1]), 1, 28, 28, generator=generator)
    if name == "fmnist_packed_64":
        sizes = torch.randint(12, 57, (64, 2), generator=generator).tolist()
        images = [torch.rand(1, h, w, generator=generator) for h, w in sizes]
        return _packed_call(model), images
    return _quadtree_call(model, 64), torch.rand(16, 1, 56, 56, generator=generator)


def _merged_call(model, r: int):  # noqa: ANN001, ANN202
    import vitres.tokens as tokens

    if hasattr(tokens, "TokenMode"):  # one typed token mode (issue 23)
        mode = tokens.TokenMode(merge=r)
        return lambda x: mode.forward(model, x)
    return lambda x: model(x, merge=r)


def _packed_call(model):  # noqa: ANN001, ANN202
    import vitres.tokens as tokens

    if hasattr(tokens, "forward_packed"):
        return lambda images: tokens.forward_packed(model, images, "pack")
    return lambda images: model.forward_packed(images, "pack")


def _quadtree_call(model, budget: int):  # noqa: ANN001, ANN202
    import vitres.tokens as tokens

    if hasattr(tokens, "TokenMode"):
        mode = tokens.TokenMode(token_budget=budget)
        return lambda x: mode.forward(model, x)
    return lambda x: model(x, token_budget=budget)


def worker(tree: str) -> None:
    """Serves timing requests on stdin/stdout for the vitres tree at ``tree``."""
    sys.path.insert(0, tree)
    import torch

    import vitres

    if not os.path.samefile(Path(vitres.__file__).parents[1], tree):
        raise SystemExit(f"worker imported vitres from {vitres.__file__}, not from {tree}")
    torch.set_num_threads(1)
    built: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        name, calls = request["case"], int(request["calls"])
        if name not in built:
            built[name] = _build_case(name)
        fn, x = built[name]
        times = []
        with torch.inference_mode():
            out = fn(x)
            for _ in range(calls):
                start = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - start)
        reply = {"times": times, "logits": out.flatten()[:640].tolist()}
        print(json.dumps(reply), flush=True)


# ----------------------------------------------------------------------------- driver
class Worker:
    """One worker process on one tree."""

    def __init__(self, tree: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tree))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(tree)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(tree),
        )

    def run(self, case: str, calls: int) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"case": case, "calls": calls}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker stopped while running {case}")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def checkout(ref: str, into: Path) -> Path:
    """The tree of ``ref`` unpacked into ``into`` (git archive; no worktree left behind)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compare(
    base: Path,
    current: Path,
    rounds: int,
    calls: int,
    cases: tuple[str, ...] = CASES,
    warmup: int = 10,
) -> list[dict[str, Any]]:
    workers = {"base": Worker(base), "current": Worker(current)}
    rows = []
    try:
        for case in cases:
            samples: dict[str, list[float]] = {"base": [], "current": []}
            ratios = []
            first = {name: w.run(case, warmup) for name, w in workers.items()}  # build, warm up
            diff = max(
                (abs(a - b) for a, b in zip(first["base"]["logits"], first["current"]["logits"])),
                default=0.0,
            )
            for index in range(rounds):
                order = ("base", "current") if index % 2 == 0 else ("current", "base")
                medians = {}
                for name in order:
                    times = workers[name].run(case, calls)["times"]
                    samples[name].extend(times)
                    medians[name] = statistics.median(times)
                ratios.append(medians["current"] / medians["base"])
            slowdown = statistics.median(ratios) - 1
            rows.append(
                {
                    "case": case,
                    "base_median_ms": round(statistics.median(samples["base"]) * 1e3, 3),
                    "current_median_ms": round(statistics.median(samples["current"]) * 1e3, 3),
                    "slowdown": round(slowdown, 4),
                    "logits_max_abs_diff": diff,
                    "met": slowdown <= TARGET,
                }
            )
            print(f"{case}: {slowdown:+.2%} (logits max |diff| {diff:.1e})", flush=True)
    finally:
        for w in workers.values():
            w.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="the earlier commit to compare with (required)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per round")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    if not args.base:
        parser.error("--base REV is required: the commit to compare the current tree with")
    sys.path.insert(0, str(REPO))
    from vitres.measure import env_fingerprint

    with tempfile.TemporaryDirectory(prefix="vitres-base-") as tmp:
        base = checkout(args.base, Path(tmp))
        rows = compare(base, REPO, args.rounds, args.calls, tuple(args.cases.split(",")))
    result = {
        "base": args.base,
        "current": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "threads": 1,
        "target_max_slowdown": TARGET,
        "env": env_fingerprint(1),
        "rows": rows,
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "refactor_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Current tree ({result['current']}, with uncommitted changes) against {args.base}, "
        f"one thread each, {args.rounds} alternating rounds of {args.calls} calls.",
        "",
        "| case | base median (ms) | current median (ms) | slowdown | logits max abs diff | met |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['base_median_ms']:.2f} | {row['current_median_ms']:.2f} "
            f"| {row['slowdown']:+.2%} | {row['logits_max_abs_diff']:.1e} "
            f"| {'yes' if row['met'] else '**no**'} |"
        )
    (out / "refactor_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
