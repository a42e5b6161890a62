"""`vitres flexify`: make a trained model accurate at every size; every
:class:`vitres.train.flexify.FlexifyConfig` field is a flag."""

from __future__ import annotations

import argparse

from vitres.commands.config_flags import add_config_flags, config_from_args
from vitres.commands.train_cmd import HELP as TRAIN_HELP
from vitres.commands.train_cmd import print_run_summary

HELP = {
    **TRAIN_HELP,
    "model": "source model: bundled name, vitres checkpoint, Hugging Face / timm folder or "
    "file, or registry name (random weights)",
    "teacher": "model distilled from, at its native size (the source when omitted)",
    "model_overrides": "config field for loading the source, KEY=VALUE (repeatable)",
    "distill": "kl (tempered KL to the teacher) | none (cross-entropy only)",
    "temperature": "distillation temperature T (the KL is scaled by T^2)",
    "distill_weight": "weight a of the distillation: (1 - a) CE + a T^2 KL",
    "scale_consistency": "also train a second resolution of the same images, with a KL of "
    "the smaller view to the larger (ResFormer)",
    "consistency_weight": "weight of the scale-consistency KL",
    "sampler": "gap (sizes drawn in proportion to their KL gap to the teacher) | uniform",
    "sampler_floor": "share of the draws spread uniformly over the sizes",
    "sampler_momentum": "weight of the newest gap in each size's running average",
    "min_batch_size": "smallest batch (largest sizes)",
    "max_batch_size": "largest batch (smallest sizes)",
    "teacher_cache": "compute the teacher's outputs once per image and flip (needs "
    "--no-random-crop)",
    "resolutions": "student resolutions, one drawn per step: 12:56:4 or 12,16,20",
    "patch_sizes": "student patch sizes, one drawn per step (the model's own when empty)",
    "batch_size": "examples per step at the native token count (scaled by tokens)",
    "out_dir": "folder of checkpoints, log.jsonl and the flexified model.safetensors",
}


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
    add_config_flags(
        parser,
        FlexifyConfig,
        HELP,
        flags={
            "model_overrides": ["--set"],
            "resolutions": ["--res", "--resolutions"],
            "patch_sizes": ["--patch-size", "--patch-sizes"],
            "out_dir": ["--out", "--out-dir"],
        },
    )
    parser.add_argument("--json", action="store_true", help="print the final record as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.measure.threads import choose_threads
    from vitres.train.flexify import FlexifyConfig, flexify

    config = config_from_args(FlexifyConfig, args)
    # "auto" threads (no --num-threads): a training step timed at 1 and at all cores
    result = flexify(config, thread_chooser=choose_threads)
    return print_run_summary(result, as_json=args.json)
