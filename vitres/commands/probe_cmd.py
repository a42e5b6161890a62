"""`vitres probe`: linear and k-NN probes on a frozen backbone, per resolution."""

from __future__ import annotations

import argparse
import sys

from vitres.commands.args import add_device_argument, positive_int, thread_count
from vitres.commands.csv_out import add_csv_argument, check_csv_path, write_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="a linear (and k-NN) probe on a frozen backbone's features, per resolution",
        description="Extracts a frozen backbone's pooled features of a train and a test "
        "subset at each resolution (cached by resolution in --out-dir, so a killed run "
        "resumes), fits a linear classifier on them, scores it and a k-NN probe with 95 %% "
        "intervals, and writes the backbone with the best resolution's head as a vitres "
        "checkpoint (OUT_DIR/model.safetensors) that every command takes as --model.",
    )
    parser.add_argument("--model", required=True, help="the backbone: any model reference")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an image folder")
    parser.add_argument("--res", default="224", help="resolutions, e.g. 112,224")
    parser.add_argument("--out-dir", default="runs/probe", help="output folder")
    parser.add_argument("--train-limit", type=positive_int, default=2000, help="training images")
    parser.add_argument("--limit", type=positive_int, default=2000, help="test images")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward")
    parser.add_argument("--k", type=positive_int, default=20, help="neighbours of the k-NN probe")
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST files")
    parser.add_argument("--threads", type=thread_count, default=None, help="CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    add_device_argument(parser)
    add_csv_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitres.commands.paths import check_output_dir
    from vitres.devices import check_device
    from vitres.layers.sizes import parse_resolutions
    from vitres.train.probe import ProbeConfig, probe

    check_device(args.device)  # before any work
    check_csv_path(args.csv)
    check_output_dir(args.out_dir, "--out-dir")
    sizes = parse_resolutions(args.res)
    if any(h != w for h, w in sizes):
        raise ValueError(f"--res takes square sizes for a probe, got {args.res}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ProbeConfig(
        model=args.model, data=args.data, resolutions=tuple(h for h, _ in sizes),
        out_dir=args.out_dir, train_limit=args.train_limit, test_limit=args.limit,
        batch_size=args.batch_size, k=args.k, data_dir=args.data_dir,
        progress=not args.no_progress, device=args.device,
    )  # fmt: skip
    result = probe(config)
    print(f"{'resolution':>10}  {'linear':>8}  {'95 % interval':>15}  {'k-NN':>7}")
    for row in result.rows:
        print(f"{row['resolution']:>7} px  {100 * row['linear_accuracy']:7.2f}%  "
              f"{100 * row['linear_low95']:6.1f}–{100 * row['linear_high95']:5.1f} %  "
              f"{100 * row['knn_accuracy']:6.2f}%")  # fmt: skip
    first = result.rows[0]
    print(f"{first['train_images']} training and {first['test_images']} test images; best "
          f"{result.best_resolution} px -> {result.checkpoint}")  # fmt: skip
    if args.csv:
        write_csv(args.csv, [{"model": args.model, **row} for row in result.rows])
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0
