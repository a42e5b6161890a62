"""What defines a training run: the configs, the result, and the precision a run uses.

:class:`RunConfig` holds the fields every recipe of :mod:`vitres.train` shares (data,
augmentation, optimisation, evaluation, output and resume); :class:`TrainConfig` adds
the model to build from scratch for :func:`vitres.train.train`, and
:class:`vitres.train.flexify.FlexifyConfig` the source model and the losses of
:func:`vitres.train.flexify.flexify`. Configs are plain dataclasses, serialised into
every checkpoint, and ``vitres train`` / ``vitres flexify`` generate their flags (and
help, with defaults) from them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

__all__ = [
    "PRECISIONS",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "cpu_supports_bf16",
    "resolve_precision",
]

PRECISIONS = ("auto", "bf16", "fp32")
# "auto" picks bf16 only where the CPU has AMX tiles. Measured on this project's 2-core
# AMD EPYC (avx512_bf16, no AMX), one thread, ViT d=64 L=4 patch 4, batch 128, one
# training step: bf16 autocast ran at 0.69x (16 px), 0.79-0.81x (28 px) and 0.97-1.11x
# (56 px) the speed of fp32 (docs/training.md): the casts cost more than the bf16 dot
# products save at these matrix sizes, so fp32 is the default here.
BF16_FAST_FLAGS = ("amx_bf16",)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


@dataclass
class RunConfig:
    """Fields shared by every training recipe (serialised into every checkpoint).

    ``resolutions`` / ``patch_sizes`` are the sets a step draws its input size and patch
    size from; how it draws is the recipe's (uniform for :func:`vitres.train.train`).
    ``resume`` continues the checkpoint in ``out_dir``; without it a fresh run refuses an
    ``out_dir`` that already holds a run unless ``overwrite`` is set.

    Attributes:
        data: fashion-mnist or an image folder
        data_dir: folder of the Fashion-MNIST files
        train_limit: train on the first N examples only
        resolutions: training resolutions, one drawn per step, e.g. 12,16,20,...,56
        patch_sizes: patch sizes, one drawn per step (the model's own when empty)
        crop_scale: area range of the random resized crop, e.g. 0.8,1.0
        random_crop: random resized crop (else the whole image is resized)
        hflip: random horizontal flips
        epochs: epochs
        batch_size: examples per step
        lr: peak learning rate (AdamW)
        min_lr: final learning rate of the cosine decay
        warmup_steps: linear warm-up steps
        weight_decay: AdamW weight decay (not on norms, biases, position tables, tokens)
        betas: AdamW betas, e.g. 0.9,0.999
        label_smoothing: label smoothing of the cross-entropy
        grad_clip: max gradient norm (0 disables)
        precision: auto | bf16 | fp32 (auto: bf16 on a GPU and on CPUs with AMX, else fp32)
        device: where training runs: cpu, cuda or cuda:N (under torchrun, cuda means each
            process's own GPU)
        seed: seed of initialisation, data order and augmentation
        num_threads: torch CPU threads (none: 1 or all cores, whichever a training step runs
            faster now)
        eval_resolutions: resolutions evaluated after each epoch
        eval_limit: evaluate on the first N test examples ('none' for all)
        eval_batch_size: evaluation batch size
        out_dir: folder of checkpoints, log.jsonl and model.safetensors
        checkpoint_every_steps: also checkpoint every N steps inside an epoch (0: per epoch)
        log_every_steps: write a step record to log.jsonl every N steps
        progress: tqdm progress bar
        resume: continue the run in --out-dir (--epochs may grow; other changes are refused)
        overwrite: delete the run already in --out-dir and start again
    """

    # data
    data: str = "fashion-mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    # sizes drawn per step
    resolutions: tuple[int, ...] = (28,)
    patch_sizes: tuple[int, ...] = ()
    # augmentation
    crop_scale: tuple[float, float] = (0.8, 1.0)
    random_crop: bool = True
    hflip: bool = True
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    precision: str = "auto"
    device: str = "cpu"
    seed: int = 0
    num_threads: int | None = None
    # evaluation after each epoch
    eval_resolutions: tuple[int, ...] = (16, 28, 56)
    eval_limit: int | None = 2000
    eval_batch_size: int = 500
    # output
    out_dir: str = "runs/train"
    checkpoint_every_steps: int = 0
    log_every_steps: int = 50
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    #: Fields that may change between a run and its resume without changing the result.
    #: ``epochs`` and ``precision`` are checked on their own (see :mod:`vitres.train.loop`).
    RESUME_FREE = (
        "out_dir",
        "resume",
        "overwrite",
        "progress",
        "num_threads",
        "device",
        "log_every_steps",
        "checkpoint_every_steps",
    )

    def __post_init__(self) -> None:
        self.resolutions = tuple(int(r) for r in self.resolutions)
        self.patch_sizes = tuple(int(p) for p in self.patch_sizes)
        self.eval_resolutions = tuple(int(r) for r in self.eval_resolutions)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        self.betas = tuple(float(v) for v in self.betas)
        checks = [
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (
                re.fullmatch(r"cpu|cuda(:\d+)?", str(self.device)) is not None,
                f"device must be cpu, cuda or cuda:N, got {self.device!r}",
            ),
            (len(self.resolutions) > 0, "resolutions needs at least one size"),
            (all(r > 0 for r in self.resolutions), "resolutions must be positive"),
            (all(p > 0 for p in self.patch_sizes), "patch_sizes must be positive"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr"),
            (self.warmup_steps >= 0 and self.grad_clip >= 0, "warmup_steps, grad_clip >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.seed >= 0, "seed must be non-negative"),
            (
                self.checkpoint_every_steps >= 0 and self.log_every_steps >= 0,
                "checkpoint_every_steps and log_every_steps must be >= 0",
            ),
            (
                not (self.resume and self.overwrite),
                "resume and overwrite exclude each other: --resume continues the run in "
                "out_dir, --overwrite deletes it and starts again",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid {type(self).__name__}: {message}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class TrainConfig(RunConfig):
    """A run of :func:`vitres.train.train`: a model trained from scratch.

    Model: ``model`` is a registry name (:func:`vitres.list_models`); the fields
    ``img_size`` .. ``drop_path_rate`` override its config, ``model_overrides`` any other
    config field. ``num_classes``, ``in_chans``, ``mean`` and ``std`` follow the data
    unless given.

    Attributes:
        model: registry name of the architecture, e.g. vit_tiny_patch4
        img_size: native resolution of the model (learned position table size)
        embed_dim: width override (the named size's own when 'none')
        depth: depth override
        num_heads: attention heads override
        pos_embed: learned | sincos | rope | cpb | mlp | none
        drop_path_rate: stochastic depth rate
        model_overrides: any other model config field, KEY=VALUE (repeatable)
        in_chans: input channels (from the data when omitted)
        mean: normalisation mean, comma-separated (data default when omitted)
        std: normalisation std, comma-separated
    """

    model: str = "vit_tiny_patch4"
    img_size: int = 28
    embed_dim: int | None = 64
    depth: int | None = 4
    num_heads: int | None = 2
    pos_embed: str = "learned"
    drop_path_rate: float = 0.0
    model_overrides: dict = field(default_factory=dict)
    in_chans: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mean is not None:
            self.mean = tuple(float(v) for v in self.mean)
        if self.std is not None:
            self.std = tuple(float(v) for v in self.std)


@dataclass
class TrainResult:
    """What :func:`vitres.train.train` (and :func:`vitres.train.flexify.flexify`) return.

    Attributes:
        model: the trained model (eval mode).
        history: one record per epoch: ``epoch``, ``global_step``, ``loss`` (mean train
            loss over the whole epoch, resumed or not), ``train_accuracy``, ``lr``,
            ``accuracy`` (test, ``{"28": 0.9, ...}``), ``eval_limit``, ``epoch_seconds``,
            ``images_per_second``, ``eval_seconds``, ``train_seconds`` (cumulative),
            ``precision``, and whatever the recipe adds.
        out_dir: folder of the checkpoint, the log and ``model.safetensors``.
        train_seconds: wall time spent training (evaluation excluded, building the
            recipe included: for flexify, the teacher's cached outputs), summed over
            resumed segments.
        precision: the precision actually used (``bf16`` or ``fp32``).
        steps: optimisation steps done.
        cpu_seconds: CPU time of the process over the same spans (with one thread, the
            core-seconds used; less sensitive than ``train_seconds`` to other jobs).
        device: where this process trained (``cpu``, ``cuda:0`` ...).
        world_size: processes that trained together (``torchrun``), 1 otherwise.
        rank: this process's rank among them (0 wrote the run folder).
    """

    model: nn.Module
    history: list[dict]
    out_dir: Path
    train_seconds: float
    precision: str
    steps: int
    cpu_seconds: float = 0.0
    device: str = "cpu"
    world_size: int = 1
    rank: int = 0

    @property
    def final_accuracy(self) -> dict[str, float]:
        return self.history[-1]["accuracy"] if self.history else {}


def cpu_supports_bf16(cpuinfo: str = CPUINFO, flags: tuple[str, ...] = BF16_FLAGS) -> bool:
    """Whether the CPU lists any of ``flags`` (default: native bf16, ``avx512_bf16`` or ``amx_bf16``)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return any(flag in present for flag in flags)
    return False


def resolve_precision(precision: str, cpuinfo: str = CPUINFO, device: str = "cpu") -> str:
    """``auto`` -> ``bf16`` on a GPU and on CPUs with AMX (``amx_bf16``), else ``fp32``;
    others pass through.

    ``bf16`` autocast is accepted on any CPU (PyTorch emulates it without native support,
    slowly); ``auto`` only picks it where it measured faster. On CUDA, bf16 autocast is
    the usual mixed precision of ViT training (bf16 matmuls, fp32 weights, optimiser and
    loss; no loss scaling needed, unlike fp16). A run stores the resolved value, so
    resuming it elsewhere keeps the precision it started with.

    Args:
        precision: ``auto``, ``bf16`` or ``fp32``.
        cpuinfo: the file listing the CPU flags (``/proc/cpuinfo``).
        device: where the run trains (``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if precision == "auto":
        if str(device).startswith("cuda"):
            return "bf16"
        return "bf16" if cpu_supports_bf16(cpuinfo, flags=BF16_FAST_FLAGS) else "fp32"
    return precision
