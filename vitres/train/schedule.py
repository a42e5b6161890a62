"""The learning-rate schedule and the per-step random sources of a training run.

The learning rate is a pure function of the position in the run (linear warm-up, then
cosine decay to ``min_lr``, Loshchilov & Hutter, "SGDR", ICLR 2017), and every random
draw of a step comes from a generator seeded by ``(seed, epoch, step)``: a run resumed
from any checkpoint repeats the same draws.

Changing ``epochs`` on resume changes the schedule's total: the steps after the resume
follow ``lr_at(step, new_total)``, the warm-up and cosine recomputed over the new total
as if the run had been planned that long (the steps already done keep the learning
rates they had). A finished run extended from ``E`` to ``E' > E`` epochs therefore
restarts at ``lr_at(E * steps_per_epoch, E' * steps_per_epoch)`` (a warm restart, higher
the more epochs are added) and decays to ``min_lr`` again at the new end.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["STREAM_AUGMENT", "STREAM_TORCH", "lr_at", "mix_seed", "step_generator"]

# Per-step seeds are hashed from (seed, epoch, step, stream) so streams never overlap.
STREAM_AUGMENT, STREAM_TORCH = 0, 1


def lr_at(step: float, total_steps: float, config) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr``.

    Args:
        step: position in the run, in steps of ``config.batch_size`` examples (a float for
            recipes whose batch size varies per step).
        total_steps: length of the run in the same unit.
        config: any config with ``lr``, ``min_lr`` and ``warmup_steps``.
    """
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    span = max(total_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative integers."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The random source of one step's augmentation and size draw."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, step, STREAM_AUGMENT))
