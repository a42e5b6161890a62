"""`vitres eval`: accuracy of a model at several input resolutions."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="accuracy of a model at several resolutions",
        description="Scores a model on a dataset's test split at each resolution; --mode and "
        "--size-policy override how it adapts. --model takes any model reference: a bundled "
        "name, a vitres checkpoint, a Hugging Face directory, a timm file or directory, or a "
        "registry name.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="bundled name, vitres checkpoint, Hugging Face directory, timm file/directory, "
        "or registry name",
    )
    parser.add_argument("--data", default="fashion-mnist", help="dataset name or image folder")
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST files")
    parser.add_argument("--res", default="16,20,28,40,56", help="comma-separated resolutions")
    parser.add_argument(
        "--mode",
        default=None,
        help="position-table resampling: nearest|bilinear|bicubic|area|fourier",
    )
    parser.add_argument("--size-policy", default=None, help="pad | crop | resize | error")
    parser.add_argument("--patch-size", type=int, default=None, help="patch size for every call")
    parser.add_argument("--limit", type=int, default=None, help="first N test examples only")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.evaluate import evaluate

    result = evaluate(
        args.model,
        args.data,
        args.res,
        batch_size=args.batch_size,
        limit=args.limit,
        patch_size=args.patch_size,
        pos_embed_mode=args.mode,
        size_policy=args.size_policy,
        data_dir=args.data_dir,
        precision=args.precision,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['model']} on {result['data']} (n={result['n']}, patch {result['patch_size']}, "
        f"pos_embed_mode={result['pos_embed_mode']}, size_policy={result['size_policy']})"
    )
    print(f"{'resolution':>10}  {'accuracy':>8}")
    for res, acc in result["accuracy"].items():
        print(f"{res + ' px':>10}  {acc * 100:7.2f}%")
    return 0
