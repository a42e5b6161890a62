"""`vitres flexify`: make a trained model accurate at every size; every
:class:`vitres.train.flexify.FlexifyConfig` field is a flag."""

from __future__ import annotations

import argparse

from vitres.commands.flags import add_dataclass_arguments, config_from_args
from vitres.commands.train_cmd import DEVICE_FLAG_HELP, check_device, print_run_summary


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitres.train.flexify import FlexifyConfig

    parser = subparsers.add_parser(
        "flexify",
        help="fine-tune a trained model to be accurate at every resolution (resumable)",
        description="Flexify (FlexiViT, ResFormer): the student starts from --model and "
        "is distilled from the teacher at its native size while each step draws a "
        "resolution / patch size, favouring the sizes furthest from the teacher, with a "
        "batch scaled by the token count. Checkpoints, --resume and --overwrite work as "
        "in `vitres train`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_arguments(
        parser,
        FlexifyConfig,
        flags={
            "model_overrides": ["--set"],
            "resolutions": ["--res", "--resolutions"],
            "patch_sizes": ["--patch-size", "--patch-sizes"],
            "out_dir": ["--out", "--out-dir"],
        },
        help=DEVICE_FLAG_HELP,
    )
    parser.add_argument("--json", action="store_true", help="print the final record as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.measure.threads import choose_threads
    from vitres.train.flexify import FlexifyConfig, flexify

    config = config_from_args(FlexifyConfig, args)
    from vitres.commands.paths import check_output_dir

    check_device(config.device)  # refused before any work (loading the models included)

    check_output_dir(config.out_dir, "--out-dir")
    # "auto" threads (no --num-threads): a training step timed at 1 and at all cores
    result = flexify(config, thread_chooser=choose_threads)
    return print_run_summary(result, as_json=args.json)
