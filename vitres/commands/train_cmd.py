"""`vitres train`: multi-resolution training; every :class:`TrainConfig` field is a flag."""

from __future__ import annotations

import argparse
import json

from vitres.commands.config_flags import add_config_flags, config_from_args

HELP = {
    "model": "registry name of the architecture, e.g. vit_tiny_patch4",
    "img_size": "native resolution of the model (learned position table size)",
    "embed_dim": "width override (the named size's own when 'none')",
    "depth": "depth override",
    "num_heads": "attention heads override",
    "pos_embed": "learned | sincos | rope | cpb | mlp | none",
    "drop_path_rate": "stochastic depth rate",
    "model_overrides": "any other model config field, KEY=VALUE (repeatable)",
    "data": "fashion-mnist or an image folder",
    "data_dir": "folder of the Fashion-MNIST files",
    "in_chans": "input channels (from the data when omitted)",
    "mean": "normalisation mean, comma-separated (data default when omitted)",
    "std": "normalisation std, comma-separated",
    "train_limit": "train on the first N examples only",
    "resolutions": "training resolutions, one drawn per step, e.g. 12,16,20,...,56",
    "patch_sizes": "patch sizes, one drawn per step (the model's own when empty)",
    "crop_scale": "area range of the random resized crop, e.g. 0.8,1.0",
    "random_crop": "random resized crop (else the whole image is resized)",
    "hflip": "random horizontal flips",
    "epochs": "epochs",
    "batch_size": "examples per step",
    "lr": "peak learning rate (AdamW)",
    "min_lr": "final learning rate of the cosine decay",
    "warmup_steps": "linear warm-up steps",
    "weight_decay": "AdamW weight decay (not on norms, biases, position tables, tokens)",
    "betas": "AdamW betas, e.g. 0.9,0.999",
    "label_smoothing": "label smoothing of the cross-entropy",
    "grad_clip": "max gradient norm (0 disables)",
    "precision": "auto | bf16 | fp32 (auto: bf16 only on CPUs with AMX)",
    "seed": "seed of initialisation, data order and augmentation",
    "num_threads": "torch CPU threads (none: 1 or all cores, whichever a training step runs faster now)",
    "eval_resolutions": "resolutions evaluated after each epoch",
    "eval_limit": "evaluate on the first N test examples ('none' for all)",
    "eval_batch_size": "evaluation batch size",
    "out_dir": "folder of checkpoints, log.jsonl and model.safetensors",
    "checkpoint_every_steps": "also checkpoint every N steps inside an epoch (0: per epoch)",
    "log_every_steps": "write a step record to log.jsonl every N steps",
    "progress": "tqdm progress bar",
    "resume": "continue the run in --out-dir (--epochs may grow; other changes are refused)",
    "overwrite": "delete the run already in --out-dir and start again",
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
    add_config_flags(parser, TrainConfig, HELP, flags={"model_overrides": ["--set"]})
    parser.add_argument("--json", action="store_true", help="print the final record as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.measure.threads import choose_threads
    from vitres.train import TrainConfig, train

    config = config_from_args(TrainConfig, args)
    # "auto" threads (no --num-threads): a training step timed at 1 and at all cores
    result = train(config, thread_chooser=choose_threads)
    return print_run_summary(result, as_json=args.json)


def print_run_summary(result, as_json: bool) -> int:  # noqa: ANN001 - a TrainResult
    """The final record of a training or flexify run, as a table or one JSON line."""
    summary = {
        "out_dir": str(result.out_dir),
        "model": str(result.out_dir / "model.safetensors"),
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 1),
        "precision": result.precision,
        "accuracy": result.final_accuracy,
    }
    if as_json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>14}: {value}")
    return 0
