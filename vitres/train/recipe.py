"""What a training recipe is to the loop of :mod:`vitres.train.loop`, and the numeric
settings a step runs under.

A recipe (:class:`Recipe`) says what one step of a kind of training does: its input
size, patch size and batch size (:class:`StepShape`) and its loss (:class:`StepOutput`).
:func:`autocast` is the mixed precision of a step on the CPU or a GPU (bf16, as in the
usual ViT training recipes); :func:`deterministic_cuda` the kernel settings that make a
GPU run repeat bit for bit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vitres.data import Dataset
from vitres.train.distributed import Ranks

__all__ = [
    "Recipe",
    "StepOutput",
    "StepShape",
    "ThreadChooser",
    "autocast",
    "deterministic_cuda",
]


@dataclass(frozen=True)
class StepShape:
    """The input of one step: square ``resolution``, ``patch_size`` (``None``: the model's
    own) and the number of examples."""

    resolution: int
    patch_size: int | None
    batch_size: int


@dataclass
class StepOutput:
    """What a recipe's step returns: the loss to minimise, the student's logits at the
    step's size (for the train accuracy) and named loss parts to log."""

    loss: Tensor
    logits: Tensor
    terms: dict[str, float] = field(default_factory=dict)


class Recipe(Protocol):
    """One kind of training, as the loop sees it.

    Attributes:
        model: the model being trained (its ``config`` has ``patch_size``).
        train_set: the training examples.
        images_per_epoch: examples one epoch uses, for the learning-rate schedule and
            the progress bar (the epoch ends when fewer than the next step needs remain).
        min_batch_size: the smallest batch a step may use.
    """

    model: nn.Module
    train_set: Dataset
    images_per_epoch: int
    min_batch_size: int

    def plan_step(self, epoch: int, step_in_epoch: int, generator: torch.Generator) -> StepShape:
        """The step's size and batch size; random draws come from ``generator`` only."""
        ...

    def place(self, device: torch.device, student: nn.Module, ranks: Ranks) -> None:
        """Trains on ``device`` from now on (``model`` is already there): moves what else
        it holds (a teacher) there, runs its training forward passes through ``student``
        (``model``, or its ``DistributedDataParallel`` wrapper under ``torchrun``) and
        averages what must agree over the processes (a sampler's gaps) with ``ranks``."""
        ...

    def step_loss(
        self,
        images: Tensor | list[Tensor],
        labels: Tensor,
        indices: Tensor,
        shape: StepShape,
        generator: torch.Generator,
    ) -> StepOutput:
        """The loss of one batch (called under the run's autocast; ``images`` on the CPU,
        ``labels`` on the run's device; under ``torchrun`` this process's share)."""
        ...

    def after_step(self, shape: StepShape, output: StepOutput) -> None:
        """Updates the recipe's state once the optimiser step is done."""
        ...

    def evaluate(self, precision: str) -> dict:
        """Fields of the epoch record; at least ``accuracy`` (``{"28": 0.9, ...}``)."""
        ...

    def state_dict(self) -> dict:
        """The recipe's JSON-ready state (stored in every checkpoint)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` on resume."""
        ...

    def model_metadata(self) -> dict:
        """Facts stored in the final model's metadata."""
        ...


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device_type`` (``"cpu"`` or ``"cuda"``) for ``"bf16"``, nothing
    for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def deterministic_cuda() -> None:
    """Asks PyTorch for deterministic CUDA kernels, so that a GPU run repeats bit for bit
    (and a resumed one matches the uninterrupted run): deterministic algorithms where
    they exist (a warning, not an error, where an op has none), cuDNN without autotuning,
    and the cuBLAS workspace setting that deterministic matmuls need (effective when set
    before the process's first cuBLAS call)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


class ThreadChooser(Protocol):
    """Chooses the thread count by timing a call (e.g.
    :func:`vitres.measure.threads.choose_threads`); returns an object with ``threads``
    and ``to_dict()``."""

    def __call__(self, fn: Callable[[], Any], *, rounds: int, calls: int) -> Any: ...
