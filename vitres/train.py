"""Multi-resolution training of any-resolution classifiers (FlexiViT-style).

Each optimisation step draws one input resolution and one patch size for its whole
batch from the configured sets (Beyer et al., "FlexiViT: One Model for All Patch
Sizes", CVPR 2023), so a single set of weights learns to work across the range instead
of relying on position-table interpolation at test time.

The loop is deliberately plain: AdamW (no weight decay on norms, biases, position
tables and prefix tokens), linear warm-up then cosine decay evaluated per step, label
smoothing, gradient-norm clipping, optional bf16 autocast on CPUs with native bf16.

Reproducibility and resume: the shuffle order of an epoch is a pure function of
``(seed, epoch)`` (:func:`vitres.data.iterate_batches`) and every random draw of a step
(resolution, patch size, crop, flip, stochastic depth) comes from generators seeded by
``(seed, epoch, step)``. A checkpoint therefore only needs the weights, the optimiser
state and the position ``(epoch, step)``; ``resume=True`` continues bit for bit where the
last checkpoint stopped. Checkpoints hold safetensors for the weights and the flattened
AdamW state, and one JSON document (position, RNG states, config, log) that is written
last, atomically, and names the tensor files: a crash at any point leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vitres.data import (
    FASHION_MNIST_ALIASES,
    FMNIST_MEAN,
    FMNIST_STD,
    get_dataset,
    iterate_batches,
    prepare_batch,
)
from vitres.evaluate import accuracy_at

__all__ = [
    "CHECKPOINT_FILE",
    "PRECISIONS",
    "TrainConfig",
    "TrainResult",
    "cpu_supports_bf16",
    "lr_at",
    "param_groups",
    "resolve_precision",
    "sample_step_shape",
    "train",
]

PRECISIONS = ("auto", "bf16", "fp32")
CHECKPOINT_FILE = "checkpoint.json"
LOG_FILE = "log.jsonl"
MODEL_FILE = "model.safetensors"
# Per-step seeds are hashed from (seed, epoch, step, stream) so streams never overlap.
_STREAM_AUGMENT, _STREAM_TORCH = 0, 1
# "auto" picks bf16 only where the CPU has AMX tiles. Measured on this project's 2-core
# AMD EPYC (avx512_bf16, no AMX), one thread, ViT d=64 L=4 patch 4, batch 128, one
# training step: bf16 autocast ran at 0.69x (16 px), 0.79-0.81x (28 px) and 0.97-1.11x
# (56 px) the speed of fp32 (docs/training.md): the casts cost more than the bf16 dot
# products save at these matrix sizes, so fp32 is the default here.
_BF16_FAST_FLAGS = ("amx_bf16",)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass
class TrainConfig:
    """Everything that defines a training run (serialised into every checkpoint).

    Model: ``model`` is a registry name (:func:`vitres.list_models`); the fields
    ``img_size`` .. ``drop_path_rate`` override its config, ``model_overrides`` any other
    config field. ``num_classes``, ``in_chans``, ``mean`` and ``std`` follow the data
    unless given.
    """

    # model
    model: str = "vit_tiny_patch4"
    img_size: int = 28
    embed_dim: int | None = 64
    depth: int | None = 4
    num_heads: int | None = 2
    pos_embed: str = "learned"
    drop_path_rate: float = 0.0
    model_overrides: dict = field(default_factory=dict)
    # data
    data: str = "fashion-mnist"
    data_dir: str | None = None
    in_chans: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    train_limit: int | None = None
    # multi-resolution: one (resolution, patch size) drawn per step, uniformly
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

    def __post_init__(self) -> None:
        self.resolutions = tuple(int(r) for r in self.resolutions)
        self.patch_sizes = tuple(int(p) for p in self.patch_sizes)
        self.eval_resolutions = tuple(int(r) for r in self.eval_resolutions)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        self.betas = tuple(float(v) for v in self.betas)
        if self.mean is not None:
            self.mean = tuple(float(v) for v in self.mean)
        if self.std is not None:
            self.std = tuple(float(v) for v in self.std)
        checks = [
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (len(self.resolutions) > 0, "resolutions needs at least one size"),
            (all(r > 0 for r in self.resolutions), "resolutions must be positive"),
            (all(p > 0 for p in self.patch_sizes), "patch_sizes must be positive"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr"),
            (self.warmup_steps >= 0 and self.grad_clip >= 0, "warmup_steps, grad_clip >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.seed >= 0, "seed must be non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid TrainConfig: {message}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (eval mode).
        history: one record per epoch: ``epoch``, ``global_step``, ``loss`` (mean train
            loss), ``train_accuracy``, ``lr``, ``accuracy`` (test, ``{"28": 0.9, ...}``),
            ``eval_limit``, ``epoch_seconds``, ``images_per_second``, ``eval_seconds``,
            ``train_seconds`` (cumulative), ``precision``.
        out_dir: folder of the checkpoint, the log and ``model.safetensors``.
        train_seconds: wall time spent training, summed over resumed segments.
        precision: the precision actually used (``bf16`` or ``fp32``).
        steps: optimisation steps done.
    """

    model: nn.Module
    history: list[dict]
    out_dir: Path
    train_seconds: float
    precision: str
    steps: int

    @property
    def final_accuracy(self) -> dict[str, float]:
        return self.history[-1]["accuracy"] if self.history else {}


# ----------------------------------------------------------------------------- pieces
def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo", flags: tuple[str, ...] = _BF16_FLAGS) -> bool:
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


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on CPUs with AMX (``amx_bf16``), else ``fp32``; others pass through.

    ``bf16`` autocast is accepted on any CPU (PyTorch emulates it without native support,
    slowly); ``auto`` only picks it where it measured faster.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_supports_bf16(flags=_BF16_FAST_FLAGS) else "fp32"
    return precision


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr``."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    span = max(total_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def _no_decay(name: str, param: Tensor) -> bool:
    return param.ndim <= 1 or any(
        key in name for key in ("pos_embed", "cls_token", "reg_token", "norm")
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices; none on norms, biases, position tables, tokens."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _mix_seed(*values: int) -> int:
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The random source of one step's augmentation and resolution draw."""
    return torch.Generator().manual_seed(_mix_seed(seed, epoch, step, _STREAM_AUGMENT))


def sample_step_shape(
    resolutions: tuple[int, ...], patch_sizes: tuple[int, ...], generator: torch.Generator
) -> tuple[int, int | None]:
    """Draws ``(resolution, patch_size)`` for one batch, each uniform over its set.

    ``patch_size`` is ``None`` (the model's own) when ``patch_sizes`` is empty.
    """
    res = resolutions[int(torch.randint(len(resolutions), (1,), generator=generator))]
    patch = None
    if patch_sizes:
        patch = patch_sizes[int(torch.randint(len(patch_sizes), (1,), generator=generator))]
    return res, patch


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(config: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The randomly initialised model a config asks for (seeded by ``config.seed``)."""
    from vitres.models.registry import create_model

    overrides: dict = {
        "img_size": config.img_size,
        "in_chans": in_chans,
        "num_classes": num_classes,
        "pos_embed": config.pos_embed,
        "drop_path_rate": config.drop_path_rate,
    }
    for name in ("embed_dim", "depth", "num_heads"):
        if getattr(config, name) is not None:
            overrides[name] = getattr(config, name)
    mean, std = _normalisation(config, in_chans)
    overrides.update(mean=mean, std=std)
    overrides.update(config.model_overrides)
    torch.manual_seed(config.seed)
    return create_model(config.model, **overrides)


def _normalisation(config: TrainConfig, in_chans: int) -> tuple[tuple, tuple]:
    if config.mean is not None and config.std is not None:
        return config.mean, config.std
    if config.data.lower() in FASHION_MNIST_ALIASES:
        return FMNIST_MEAN, FMNIST_STD
    return (0.5,) * in_chans, (0.5,) * in_chans


# ----------------------------------------------------------------------------- checkpoints
def _encode_rng(state: Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode_rng(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """AdamW state as ``{"state.<param index>.<key>": tensor}`` plus JSON-ready group settings."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    for index, slots in state_dict["state"].items():
        for key, value in slots.items():
            tensor = value if isinstance(value, Tensor) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = tensor.detach().contiguous().cpu()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
        for group in state_dict["param_groups"]
    ]
    return tensors, {"param_groups": groups}


def unflatten_optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _atomic_save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def save_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    position: dict,
    config: TrainConfig,
    log: list[dict],
) -> Path:
    """Writes weights and optimiser tensors, then the JSON that points at them, atomically.

    ``position`` holds ``epoch`` and ``step_in_epoch`` (where training resumes),
    ``global_step`` and ``train_seconds``. Older tensor files are removed afterwards.
    """
    tag = f"{position['global_step']:09d}"
    model_file, optim_file = f"ckpt-{tag}.model.safetensors", f"ckpt-{tag}.optim.safetensors"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_save_tensors(state, out_dir / model_file)
    optim_tensors, optim_meta = flatten_optimizer_state(optimizer)
    _atomic_save_tensors(optim_tensors, out_dir / optim_file)
    document = {
        "format": "vitres-train-checkpoint",
        "version": 1,
        **position,
        "model_file": model_file,
        "optimizer_file": optim_file,
        "optimizer": optim_meta,
        "model_config": model.config.to_dict(),
        "rng": {"torch": _encode_rng(torch.get_rng_state())},
        "train_config": config.to_dict(),
        "log": log,
    }
    _atomic_write_text(out_dir / CHECKPOINT_FILE, json.dumps(document) + "\n")
    for old in out_dir.glob("ckpt-*.safetensors"):
        if old.name not in (model_file, optim_file):
            old.unlink(missing_ok=True)
    return out_dir / CHECKPOINT_FILE


def load_checkpoint(out_dir: Path) -> dict | None:
    """The checkpoint document of ``out_dir`` with its tensors loaded, or ``None``."""
    path = out_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    document = json.loads(path.read_text())
    document["model_state"] = load_file(str(out_dir / document["model_file"]))
    document["optimizer_state"] = unflatten_optimizer_state(
        load_file(str(out_dir / document["optimizer_file"])), document["optimizer"]
    )
    return document


# ----------------------------------------------------------------------------- loop
def _resumable_fields(config: TrainConfig) -> dict:
    """Fields that must match for a resume to be exact (output and display fields may change)."""
    free = {"out_dir", "resume", "progress", "num_threads", "log_every_steps"}
    return {k: v for k, v in config.to_dict().items() if k not in free}


def train(
    config: TrainConfig,
    callback: Callable[[dict], None] | None = None,
    until_epoch: int | None = None,
) -> TrainResult:
    """Trains a model as ``config`` says and returns it with its history.

    Writes into ``config.out_dir``: ``checkpoint.json`` + ``ckpt-*.safetensors`` (after
    every epoch, and every ``checkpoint_every_steps`` steps when > 0), ``log.jsonl`` (one
    JSON record per logged step and per epoch) and, at the end, ``model.safetensors`` +
    ``model.json`` (:func:`vitres.save_model`).

    Args:
        config: the run. With ``resume=True`` an existing checkpoint in ``out_dir`` is
            continued (its config must match on every field that changes the result);
            without one the run starts fresh.
        callback: called after every optimisation step with a dict (``epoch``,
            ``step_in_epoch``, ``global_step``, ``loss``, ``lr``, ``resolution``,
            ``patch_size``); an exception raised there stops training like a crash.
        until_epoch: stop cleanly once this many epochs are done (checkpoint written,
            no final model), to continue later with ``resume=True``; ``None`` runs to
            ``config.epochs``.

    Returns:
        A :class:`TrainResult`.
    """
    from vitres.models.checkpoint import save_model

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    precision = resolve_precision(config.precision)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    in_chans = config.in_chans or (1 if config.data.lower() in FASHION_MNIST_ALIASES else 3)
    train_set = get_dataset(config.data, "train", data_dir=config.data_dir, in_chans=in_chans)
    test_set = get_dataset(config.data, "test", data_dir=config.data_dir, in_chans=in_chans)
    num_classes = len(train_set.classes)
    model = build_model(config, num_classes, in_chans)
    model_cfg = model.config
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas
    )

    count = (
        len(train_set) if config.train_limit is None else min(len(train_set), config.train_limit)
    )
    steps_per_epoch = count // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the {count} training examples; "
            "lower --batch-size or raise --train-limit"
        )
    total_steps = steps_per_epoch * config.epochs

    start_epoch, start_step, train_seconds, log = 0, 0, 0.0, []
    checkpoint = load_checkpoint(out_dir) if config.resume else None
    if checkpoint is not None:
        saved = TrainConfig.from_dict(checkpoint["train_config"])
        if _resumable_fields(saved) != _resumable_fields(config):
            diff = sorted(
                k
                for k, v in _resumable_fields(config).items()
                if _resumable_fields(saved).get(k) != v
            )
            raise ValueError(
                f"cannot resume {out_dir}: the config differs from the checkpoint's in {diff}; "
                "use the same settings or a new --out-dir"
            )
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        torch.set_rng_state(_decode_rng(checkpoint["rng"]["torch"]))
        start_epoch, start_step = checkpoint["epoch"], checkpoint["step_in_epoch"]
        train_seconds, log = checkpoint["train_seconds"], checkpoint["log"]
    # log.jsonl mirrors the checkpoint's log: records of lost steps are dropped.
    _atomic_write_text(out_dir / LOG_FILE, "".join(json.dumps(r) + "\n" for r in log))
    log_handle = open(out_dir / LOG_FILE, "a")

    def record(entry: dict) -> None:
        log.append(entry)
        log_handle.write(json.dumps(entry) + "\n")
        log_handle.flush()

    history = [r for r in log if r.get("kind") == "epoch"]
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total_steps,
            initial=start_epoch * steps_per_epoch + start_step,
            unit="step",
            dynamic_ncols=True,
        )
    global_step = start_epoch * steps_per_epoch + start_step
    try:
        last_epoch = config.epochs if until_epoch is None else min(until_epoch, config.epochs)
        for epoch in range(start_epoch, last_epoch):
            model.train()
            epoch_start = time.perf_counter()
            segment_start = epoch_start
            loss_sum, seen, correct = 0.0, 0, 0
            first = start_step if epoch == start_epoch else 0
            batches = iterate_batches(
                train_set,
                config.batch_size,
                shuffle=True,
                seed=config.seed,
                epoch=epoch,
                drop_last=True,
                limit=config.train_limit,
            )
            for step_in_epoch, (images, labels) in enumerate(batches):
                if step_in_epoch < first:
                    continue
                generator = step_generator(config.seed, epoch, step_in_epoch)
                torch.manual_seed(_mix_seed(config.seed, epoch, step_in_epoch, _STREAM_TORCH))
                res, patch = sample_step_shape(config.resolutions, config.patch_sizes, generator)
                x = prepare_batch(
                    images,
                    res,
                    train=config.random_crop,
                    mean=model_cfg.mean,
                    std=model_cfg.std,
                    in_chans=in_chans,
                    generator=generator,
                    hflip=config.hflip,
                    crop_scale=config.crop_scale,
                )
                if not config.random_crop and config.hflip:
                    flip = torch.rand(x.shape[0], generator=generator) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                lr = lr_at(global_step, total_steps, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with _autocast(precision):
                    logits = model(x) if patch is None else model(x, patch_size=patch)
                    loss = F.cross_entropy(
                        logits.float(), labels, label_smoothing=config.label_smoothing
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                global_step += 1
                loss_value = float(loss.detach())
                loss_sum += loss_value * len(labels)
                seen += len(labels)
                correct += int((logits.detach().argmax(-1) == labels).sum())
                info = {
                    "kind": "step",
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "global_step": global_step,
                    "loss": round(loss_value, 5),
                    "lr": lr,
                    "resolution": res,
                    "patch_size": patch or model_cfg.patch_size,
                }
                if bar is not None:
                    rate = seen / max(time.perf_counter() - segment_start, 1e-9)
                    bar.set_postfix(
                        epoch=epoch, loss=f"{loss_value:.3f}", res=res, img_s=f"{rate:.0f}"
                    )
                    bar.update(1)
                if config.log_every_steps and global_step % config.log_every_steps == 0:
                    record(info)
                done_in_epoch = step_in_epoch + 1
                if (
                    config.checkpoint_every_steps
                    and global_step % config.checkpoint_every_steps == 0
                    and done_in_epoch < steps_per_epoch
                ):
                    now = time.perf_counter()
                    train_seconds += now - segment_start
                    segment_start = now
                    save_checkpoint(
                        out_dir,
                        model,
                        optimizer,
                        {
                            "epoch": epoch,
                            "step_in_epoch": done_in_epoch,
                            "global_step": global_step,
                            "train_seconds": train_seconds,
                        },
                        config,
                        log,
                    )
                if callback is not None:
                    callback(info)
            train_seconds += time.perf_counter() - segment_start
            epoch_seconds = time.perf_counter() - epoch_start
            eval_start = time.perf_counter()
            accuracy = {}
            for res in config.eval_resolutions:
                acc, _ = accuracy_at(
                    model,
                    test_set,
                    res,
                    config.eval_batch_size,
                    config.eval_limit,
                    precision=precision,
                )
                accuracy[str(res)] = round(acc, 5)
            entry = {
                "kind": "epoch",
                "epoch": epoch,
                "global_step": global_step,
                "loss": round(loss_sum / max(seen, 1), 5),
                "train_accuracy": round(correct / max(seen, 1), 5),
                "lr": optimizer.param_groups[0]["lr"],
                "accuracy": accuracy,
                "eval_limit": config.eval_limit,
                "epoch_seconds": round(epoch_seconds, 2),
                "images_per_second": round(seen / max(epoch_seconds, 1e-9), 1),
                "eval_seconds": round(time.perf_counter() - eval_start, 2),
                "train_seconds": round(train_seconds, 2),
                "precision": precision,
            }
            record(entry)
            history.append(entry)
            if bar is not None:
                bar.write(json.dumps({k: entry[k] for k in ("epoch", "loss", "accuracy")}))
            save_checkpoint(
                out_dir,
                model,
                optimizer,
                {
                    "epoch": epoch + 1,
                    "step_in_epoch": 0,
                    "global_step": global_step,
                    "train_seconds": train_seconds,
                },
                config,
                log,
            )
    finally:
        log_handle.close()
        if bar is not None:
            bar.close()

    model.eval()
    if global_step < total_steps:  # stopped early by until_epoch: no final model yet
        return TrainResult(model, history, out_dir, train_seconds, precision, global_step)
    save_model(
        model,
        out_dir / MODEL_FILE,
        metadata={
            "train_config": config.to_dict(),
            "train_seconds": round(train_seconds, 1),
            "precision": precision,
            "steps": global_step,
            "history": history,
        },
    )
    return TrainResult(model, history, out_dir, train_seconds, precision, global_step)
