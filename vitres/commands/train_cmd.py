"""`vitres train`: multi-resolution training; every :class:`TrainConfig` field is a flag,
its help taken from the field's entry in the config's docstring."""

from __future__ import annotations

import argparse
import json

from vitres.commands.flags import add_dataclass_arguments, config_from_args

# --device's help: the shared grammar, and what it means under torchrun
DEVICE_FLAG_HELP = {
    "device": "where training runs: cpu, cuda or cuda:N (an NVIDIA GPU; bf16 autocast "
    "there with --precision auto); under torchrun, cuda is each process's own GPU"
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitres.train import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train a model at one or many resolutions (resumable)",
        description="Multi-resolution training (FlexiViT-style, one resolution per step) "
        "with per-epoch checkpoints; --resume continues exactly where a run stopped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_arguments(
        parser, TrainConfig, flags={"model_overrides": ["--set"]}, help=DEVICE_FLAG_HELP
    )
    parser.add_argument("--json", action="store_true", help="print the final record as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.measure.threads import choose_threads
    from vitres.train import TrainConfig, train

    config = config_from_args(TrainConfig, args)
    from vitres.commands.paths import check_output_dir

    check_device(config.device)  # refused before any work; torchrun's GPUs: run_recipe

    check_output_dir(config.out_dir, "--out-dir")
    # "auto" threads (no --num-threads): a training step timed at 1 and at all cores
    result = train(config, thread_chooser=choose_threads)
    return print_run_summary(result, as_json=args.json)


def check_device(name: str) -> None:
    """Refuses a ``--device`` this machine cannot use, in one sentence."""
    from vitres.devices import check_device as check

    check(name)


def print_run_summary(result, as_json: bool) -> int:  # noqa: ANN001 - a TrainResult
    """The final record of a training or flexify run, as a table or one JSON line (printed
    by rank 0 alone under torchrun)."""
    if result.rank != 0:
        return 0
    summary = {
        "out_dir": str(result.out_dir),
        "model": str(result.out_dir / "model.safetensors"),
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 1),
        "precision": result.precision,
        "device": result.device,
        "processes": result.world_size,
        "accuracy": result.final_accuracy,
    }
    if as_json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>14}: {value}")
    return 0
