"""`vitres eval`: accuracy of a model at several input resolutions."""

from __future__ import annotations

import argparse
import json
import sys

from vitres.commands.args import (
    RES_HELP,
    DefaultsFormatter,
    add_common_arguments,
    add_device_argument,
    add_merge_argument,
    add_model_argument,
)
from vitres.commands.csv_out import add_csv_argument, check_csv_path, write_csv

DEFAULT_RES = "16,20,28,40,56"


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitres.tokens.pack import PACK_STRATEGIES

    parser = subparsers.add_parser(
        "eval",
        help="accuracy of a model at several resolutions",
        description="Scores a model (any model reference) on a dataset's test split at each "
        "resolution; --mode and --size-policy override how it adapts.",
        formatter_class=DefaultsFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--data", default="fashion-mnist", help="dataset name or image folder")
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST files")
    parser.add_argument(
        "--res",
        default=None,
        help=f"{RES_HELP} (default: {DEFAULT_RES}; not with --pack)",
    )
    parser.add_argument(
        "--pack",
        metavar="STRATEGY",
        choices=PACK_STRATEGIES,
        default=None,
        help="score every image at its own size (a folder of mixed sizes), images of "
        "different sizes run together: loop | pad | bucket | pack | auto (fastest here, "
        "measured); ViT only for all but loop",
    )
    add_merge_argument(parser)
    parser.add_argument(
        "--mode",
        default=None,
        help="position-table resampling: nearest|bilinear|bicubic|area|fourier",
    )
    parser.add_argument("--size-policy", default=None, help="pad | crop | resize | error")
    parser.add_argument(
        "--token-budget",
        type=int,
        default=None,
        metavar="K",
        help="mixed-resolution tokens: at most K patch tokens per image, coarse patches where "
        "the image is flat and fine ones where it has detail (a quadtree)",
    )
    parser.add_argument(
        "--quadtree-levels",
        type=int,
        default=None,
        metavar="L",
        help="patch sizes of that quadtree: p .. 2^(L-1) p (default 2: p and 2p); more levels "
        "allow smaller budgets",
    )
    add_common_arguments(parser, batch_default=256)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    add_device_argument(parser)
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="refuse resolutions with more patch tokens per image than this (default "
        "16384, a 128x128 grid: attention grows with its square); raise it for very large "
        "inputs",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_csv_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.evaluate import evaluate
    from vitres.layers.sizes import DEFAULT_MAX_TOKENS

    check_csv_path(args.csv)
    if args.pack is not None and args.res is not None:
        raise ValueError("--pack scores every image at its own size; drop --res (or --pack)")
    result = evaluate(
        args.model,
        args.data,
        None if args.pack else (args.res or DEFAULT_RES),
        batch_size=args.batch_size,
        limit=args.limit,
        patch_size=args.patch_size,
        pos_embed_mode=args.mode,
        size_policy=args.size_policy,
        data_dir=args.data_dir,
        precision=args.precision,
        threads=args.threads,
        progress=not args.json,
        merge=args.merge,
        pack=args.pack,
        token_budget=args.token_budget,
        quadtree_levels=args.quadtree_levels,
        max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS,
        device=args.device,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, _rows(result))
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    mode = result.token_mode
    extra = "" if mode.merge is None else f", merge={mode.merge}"
    if mode.pack is not None:
        used = ", ".join(f"{k} x{v}" for k, v in result.pack_used.items())
        extra += f", pack={mode.pack} ({used} batches)"
    print(
        f"{result.model} on {result.data} (n={result.n}, patch {result.patch_size}, "
        f"pos_embed_mode={result.pos_embed_mode}, size_policy={result.size_policy}{extra}"
        + ("" if mode.token_budget is None else f", token budget {mode.token_budget}")
        + ")"
    )
    print(f"{'resolution':>10}  {'accuracy':>8}")
    for res, acc in result.accuracy.items():
        label = "own size" if res == "native" else res + " px"
        print(f"{label:>10}  {acc * 100:7.2f}%")
    return 0


def _rows(result) -> list[dict]:  # noqa: ANN001 - an EvalResult
    """One CSV row per resolution (``native``: every image at its own size)."""
    from vitres.tune.intervals import wilson_interval

    rows = []
    for res, accuracy in result.accuracy.items():
        low, high = wilson_interval(accuracy, result.n) if result.n else (None, None)
        rows.append(
            {
                "model": result.model,
                "data": result.data,
                "resolution": res,
                "patch_size": result.patch_size,
                "accuracy": accuracy,
                "accuracy_low95": low,
                "accuracy_high95": high,
                "n": result.n,
                "pos_embed_mode": result.pos_embed_mode,
                "size_policy": result.size_policy,
            }
        )
    return rows
