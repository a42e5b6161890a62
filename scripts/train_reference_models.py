"""Trains the bundled Fashion-MNIST reference models with fixed seeds.

The comparison runs share one recipe and one budget (same architecture, 10 epochs,
steps, seed) and differ only in the resolutions they train at; the bundled
single-resolution model is the same recipe trained longer:

* ``fmnist-vit-multires`` one size per step from 12, 16, ..., 56 -> vitres/weights/
* ``fmnist-vit-single``   28 px only, 22 epochs                   -> vitres/weights/
* ``fmnist-vit-spec16``   16 px only (benchmark baseline)        -> benchmarks/results/models/
* ``fmnist-vit-spec28``   28 px only (benchmark baseline)        -> benchmarks/results/models/
* ``fmnist-vit-spec56``   56 px only (benchmark baseline)        -> benchmarks/results/models/

Every run checkpoints into ``runs/reference/<name>/`` and resumes from there, so the
script can be killed and started again at any time. Runs go one thread each, in
subprocesses, one per core at a time (``--jobs``), longest first (one thread per process
was the fastest layout on a shared 2-core machine); the measured training time is stored
in each model's metadata.

Usage::

    nohup .venv/bin/python scripts/train_reference_models.py > runs/reference.log 2>&1 &
    .venv/bin/python scripts/train_reference_models.py --only fmnist-vit-single
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitres.train import TrainConfig, train  # noqa: E402

RUNS_DIR = ROOT / "runs" / "reference"
WEIGHTS_DIR = ROOT / "vitres" / "weights"
BENCH_MODELS_DIR = ROOT / "benchmarks" / "results" / "models"

BASE = TrainConfig(
    model="vit_tiny_patch4",
    img_size=28,
    embed_dim=64,
    depth=4,
    num_heads=2,
    pos_embed="learned",
    model_overrides={"class_token": False, "global_pool": "avg"},
    epochs=10,
    batch_size=128,
    lr=2e-3,
    min_lr=1e-5,
    warmup_steps=200,
    weight_decay=0.05,
    label_smoothing=0.1,
    grad_clip=1.0,
    random_crop=False,
    hflip=True,
    precision="fp32",
    seed=0,
    num_threads=1,
    eval_resolutions=(16, 28, 56),
    eval_limit=1000,
    checkpoint_every_steps=100,
    log_every_steps=50,
    progress=False,
    resume=True,
)

RECIPES: dict[str, dict] = {
    # the bundled single-resolution model gets a longer schedule (still < 45 min); the
    # comparisons in benchmarks/resolution_robustness.py use the equal-budget spec28
    "fmnist-vit-single": {"resolutions": (28,), "epochs": 22, "dest": WEIGHTS_DIR},
    "fmnist-vit-multires": {"resolutions": tuple(range(12, 57, 4)), "dest": WEIGHTS_DIR},
    "fmnist-vit-spec16": {"resolutions": (16,), "img_size": 16, "dest": BENCH_MODELS_DIR},
    "fmnist-vit-spec28": {"resolutions": (28,), "dest": BENCH_MODELS_DIR},
    "fmnist-vit-spec56": {"resolutions": (56,), "img_size": 56, "dest": BENCH_MODELS_DIR},
}

DESCRIPTIONS = {
    "fmnist-vit-single": (
        "ViT (d=64, L=4, patch 4, learned pos, average pool) trained at 28 px only, 22 epochs"
    ),
    "fmnist-vit-spec28": "the same ViT trained at 28 px only for the shared 10-epoch budget",
    "fmnist-vit-multires": "same ViT trained with one resolution per step from 12..56 px",
    "fmnist-vit-spec16": "same ViT trained at 16 px only (benchmark baseline)",
    "fmnist-vit-spec56": "same ViT trained at 56 px only (benchmark baseline)",
}


# core-minutes measured for each run here (one thread): the order runs are started in
RELATIVE_COST = {
    "fmnist-vit-spec56": 88.2,
    "fmnist-vit-single": 40.7,
    "fmnist-vit-multires": 34.5,
    "fmnist-vit-spec28": 18.4,
    "fmnist-vit-spec16": 6.1,
}


def recipe(name: str, epochs: int | None = None) -> TrainConfig:
    spec = {k: v for k, v in RECIPES[name].items() if k != "dest"}
    if epochs is not None:
        spec["epochs"] = epochs
    return dataclasses.replace(BASE, out_dir=str(RUNS_DIR / name), **spec)


def run_one(name: str, epochs: int | None = None) -> None:
    from vitres.models.checkpoint import load_model, save_model

    config = recipe(name, epochs)
    start = time.time()
    result = train(config)
    print(f"{name}: trained in {result.train_seconds:.0f} s", flush=True)
    model = load_model(Path(config.out_dir) / "model.safetensors")
    dest = RECIPES[name]["dest"]
    dest.mkdir(parents=True, exist_ok=True)
    last = result.history[-1]
    metadata = {
        "name": name,
        "description": DESCRIPTIONS[name],
        "dataset": "fashion-mnist",
        "train_resolutions": list(config.resolutions),
        "train_seconds": round(result.train_seconds, 1),
        "train_minutes": round(result.train_seconds / 60, 1),
        "train_hardware": "2 shared AMD EPYC cores, 1 thread, fp32 (other jobs running)",
        "script": "scripts/train_reference_models.py",
        "epochs": config.epochs,
        "steps": result.steps,
        "seed": config.seed,
        "final_eval": {"accuracy": last["accuracy"], "eval_limit": config.eval_limit},
        "train_config": config.to_dict(),
        "wall_seconds_this_invocation": round(time.time() - start, 1),
    }
    save_model(model, dest / f"{name}.safetensors", metadata=metadata)
    shutil.copy(Path(config.out_dir) / "log.jsonl", RUNS_DIR / f"{name}.log.jsonl")
    print(json.dumps({"name": name, "accuracy": last["accuracy"]}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(RECIPES), action="append")
    parser.add_argument("--sequential", action="store_true", help="one run after the other")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (one core each)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override (timing runs)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    names = args.only or list(RECIPES)
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    if args.sequential or len(names) == 1:
        for name in names:
            run_one(name, args.epochs)
        return 0
    # longest first, so the short runs fill the cores while the long one finishes
    pending = sorted(names, key=lambda name: -RELATIVE_COST[name])
    running: dict[str, subprocess.Popen] = {}
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            cmd = [sys.executable, __file__, "--only", name]
            if args.epochs is not None:
                cmd += ["--epochs", str(args.epochs)]
            with open(RUNS_DIR / f"{name}.out", "a") as out:
                running[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            print(
                f"started {name} (pid {running[name].pid}), log: {RUNS_DIR / name}.out", flush=True
            )
        time.sleep(5)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                if proc.returncode != 0:
                    failed.append(name)
                print(f"{name} exited with {proc.returncode}", flush=True)
    if failed:
        print(f"failed: {failed}; rerun to resume them", flush=True)
        return 1
    print("all reference models trained", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
