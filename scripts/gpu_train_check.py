"""The GPU check of ``vitres train`` (issue 28): one prepared command for a lent GPU.

On a machine with CUDA it checks what the CPU tests cannot:

1. ``--device cuda`` trains a small ViT on Fashion-MNIST in bf16 autocast (``auto``);
2. exact resume on the GPU: two epochs in one go against one epoch plus a resumed one,
   with drop path on (the per-step torch seed drives the CUDA generator), compared
   weight by weight (max |diff|, expected 0.0 with deterministic kernels);
3. with two GPUs or more, ``torchrun --nproc_per_node=<GPUs> -m vitres train --device
   cuda`` (nccl) on the same global batch, against one process (max |diff|, float-sum
   order only: ~1e-6 expected in fp32; bf16 is not compared).

It prints one JSON line per check and writes them to
``benchmarks/results/gpu_train_check.json``. Each check is seconds on a GPU.

Usage::

    python scripts/gpu_train_check.py [--out runs/gpu_train_check]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = dict(
    embed_dim=64, depth=4, num_heads=2, img_size=28, train_limit=4096, batch_size=128,
    lr=2e-3, warmup_steps=10, resolutions=(12, 16, 20, 24, 28), eval_resolutions=(16, 28),
    eval_limit=1000, eval_batch_size=500, progress=False, log_every_steps=8, seed=0,
)  # fmt: skip


def max_diff(a: Path, b: Path) -> float:
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max(float((left[k].double() - right[k].double()).abs().max()) for k in left)


def check_resume(out: Path) -> dict:
    from vitres.train import TrainConfig, train

    settings = dict(SETTINGS, device="cuda", drop_path_rate=0.1, precision="auto")
    full = train(TrainConfig(**settings, epochs=2, out_dir=str(out / "full"), overwrite=True))
    train(TrainConfig(**settings, epochs=2, out_dir=str(out / "split"), overwrite=True),
          until_epoch=1)  # fmt: skip
    train(TrainConfig(**settings, epochs=2, out_dir=str(out / "split"), resume=True))
    return {"check": "resume on cuda", "precision": full.precision, "device": full.device,
            "accuracy": full.final_accuracy, "train_seconds": round(full.train_seconds, 2),
            "max_abs_diff": max_diff(out / "full", out / "split")}  # fmt: skip


def check_torchrun(out: Path, gpus: int) -> dict:
    from vitres.train import TrainConfig, train

    settings = dict(SETTINGS, precision="fp32", random_crop=False, hflip=False)
    train(TrainConfig(**settings, epochs=1, device="cuda", out_dir=str(out / "one"),
                      overwrite=True))  # fmt: skip
    flags = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [name, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={gpus}", "-m", "vitres", "train", *flags, "--epochs", "1",
               "--device", "cuda", "--out-dir", str(out / "ddp"), "--overwrite"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if done.returncode:
        return {"check": "torchrun", "error": (done.stdout + done.stderr)[-2000:]}
    return {"check": "torchrun", "processes": gpus,
            "max_abs_diff": max_diff(out / "one", out / "ddp")}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/gpu_train_check", help="scratch folder")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_train_check: no CUDA GPU here; run it on a machine with one", file=sys.stderr)
        return 2
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    results = [{"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}]
    results.append(check_resume(out))
    print(json.dumps(results[-1]), flush=True)
    gpus = torch.cuda.device_count()
    if gpus >= 2:
        results.append(check_torchrun(out, gpus))
        print(json.dumps(results[-1]), flush=True)
    target = ROOT / "benchmarks" / "results" / "gpu_train_check.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
