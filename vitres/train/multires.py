"""Multi-resolution training from scratch (FlexiViT-style): :func:`train`.

Each optimisation step draws one input resolution and one patch size for its whole
batch, uniformly from the configured sets (Beyer et al., "FlexiViT: One Model for All
Patch Sizes", CVPR 2023), so a single set of weights learns to work across the range
instead of relying on position-table interpolation at test time. The loss is
cross-entropy with label smoothing; everything else (AdamW, schedule, clipping,
precision, checkpoints, exact resume, logs) is the shared loop of
:mod:`vitres.train.loop`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.data import FASHION_MNIST_ALIASES, FMNIST_MEAN, FMNIST_STD, get_dataset, prepare_batch
from vitres.train.config import TrainConfig, TrainResult
from vitres.train.distributed import Ranks
from vitres.train.loop import StepOutput, StepShape, ThreadChooser, eval_accuracies, run_recipe
from vitres.train.sampling import sample_step_shape

__all__ = ["build_model", "train"]

RECIPE_NAME = "train"


def _normalisation(config: TrainConfig, in_chans: int) -> tuple[tuple, tuple]:
    if config.mean is not None and config.std is not None:
        return config.mean, config.std
    if config.data.lower() in FASHION_MNIST_ALIASES:
        return FMNIST_MEAN, FMNIST_STD
    return (0.5,) * in_chans, (0.5,) * in_chans


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
    model = create_model(config.model, **overrides)
    check_training_sizes(config, model)
    return model


def check_training_sizes(config: TrainConfig, model: nn.Module) -> None:
    """Refuses training resolutions the model's patch size does not divide (with one
    patch size): the model would see them resized to another size than the one asked for.

    Raises:
        ValueError: naming the sizes, the patch and the nearest sizes that work.
    """
    if config.patch_sizes:  # several patch sizes: each step pairs them with sizes itself
        return
    patch = int(model.config.patch_size)
    bad = [r for r in (*config.resolutions, *config.eval_resolutions) if r % patch]
    if bad:
        near = sorted({max(patch, round(r / patch) * patch) for r in bad})
        raise ValueError(
            f"resolutions {', '.join(map(str, bad))} are not multiples of the patch size "
            f"{patch}: the model would see them resized to another size; use multiples of "
            f"{patch} (e.g. {', '.join(map(str, near))})"
        )


def flip_unaugmented(
    x: Tensor, generator: torch.Generator, hflip: bool, random_crop: bool
) -> Tensor:
    """Random horizontal flips when the batch had no random crop (which flips itself)."""
    if random_crop or not hflip:
        return x
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class MultiResRecipe:
    """One uniformly drawn ``(resolution, patch size)`` per step, cross-entropy loss."""

    def __init__(self, config: TrainConfig, precision: str) -> None:
        self.config = config
        in_chans = config.in_chans or (1 if config.data.lower() in FASHION_MNIST_ALIASES else 3)
        self.in_chans = in_chans
        self.train_set = get_dataset(
            config.data, "train", data_dir=config.data_dir, in_chans=in_chans
        )
        self.test_set = get_dataset(
            config.data, "test", data_dir=config.data_dir, in_chans=in_chans
        )
        self.model = build_model(config, len(self.train_set.classes), in_chans)
        self.student: nn.Module = self.model  # what a step runs (DDP wraps it under torchrun)
        self.device = torch.device("cpu")
        count = len(self.train_set)
        if config.train_limit is not None:
            count = min(count, config.train_limit)
        steps_per_epoch = count // config.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {config.batch_size} is larger than the {count} training examples; "
                "lower --batch-size or raise --train-limit"
            )
        self.images_per_epoch = steps_per_epoch * config.batch_size
        self.min_batch_size = config.batch_size

    def place(self, device: torch.device, student: nn.Module, ranks: Ranks) -> None:
        self.device, self.student = device, student

    def plan_step(self, epoch: int, step_in_epoch: int, generator: torch.Generator) -> StepShape:
        res, patch = sample_step_shape(self.config.resolutions, self.config.patch_sizes, generator)
        return StepShape(res, patch, self.config.batch_size)

    def step_loss(
        self,
        images: Tensor | list[Tensor],
        labels: Tensor,
        indices: Tensor,
        shape: StepShape,
        generator: torch.Generator,
    ) -> StepOutput:
        config, model_cfg = self.config, self.model.config
        x = prepare_batch(
            images,
            shape.resolution,
            train=config.random_crop,
            mean=model_cfg.mean,
            std=model_cfg.std,
            in_chans=self.in_chans,
            generator=generator,
            hflip=config.hflip,
            crop_scale=config.crop_scale,
        )
        x = flip_unaugmented(x, generator, config.hflip, config.random_crop).to(self.device)
        if shape.patch_size is None:
            logits = self.student(x)
        else:
            logits = self.student(x, patch_size=shape.patch_size)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        return StepOutput(loss, logits)

    def after_step(self, shape: StepShape, output: StepOutput) -> None:
        pass

    def evaluate(self, precision: str) -> dict:
        return {"accuracy": eval_accuracies(self.model, self.test_set, self.config, precision)}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def model_metadata(self) -> dict:
        return {}


def train(
    config: TrainConfig,
    callback: Callable[[dict], None] | None = None,
    until_epoch: int | None = None,
    thread_chooser: ThreadChooser | None = None,
) -> TrainResult:
    """Trains a model from scratch as ``config`` says and returns it with its history.

    Writes into ``config.out_dir``: ``checkpoint.json`` + ``ckpt-*.safetensors`` (after
    every epoch, and every ``checkpoint_every_steps`` steps when > 0), ``log.jsonl`` (one
    JSON record per logged step and per epoch) and, at the end, ``model.safetensors`` +
    ``model.json`` (:func:`vitres.save_model`).

    Args:
        config: the run. With ``resume=True`` an existing checkpoint in ``out_dir`` is
            continued (its config must match on every field that changes the result;
            ``epochs`` may change, see :mod:`vitres.train.schedule`); without one the run
            starts fresh. Without ``resume`` an ``out_dir`` that holds a run is refused
            unless ``overwrite=True``.
        callback: called after every optimisation step with a dict (``epoch``,
            ``step_in_epoch``, ``global_step``, ``loss``, ``lr``, ``resolution``,
            ``patch_size``, ``batch_size``); an exception raised there stops training
            like a crash.
        until_epoch: stop cleanly once this many epochs are done (checkpoint written,
            no final model), to continue later with ``resume=True``; ``None`` runs to
            ``config.epochs``.
        thread_chooser: with ``config.num_threads`` unset, chooses 1 thread or all cores
            by timing a training step (:func:`vitres.measure.threads.choose_threads`, as
            the CLI passes); without it torch's current thread count is kept.

    Returns:
        A :class:`TrainResult`.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() needs a TrainConfig, got {type(config).__name__}")
    return run_recipe(
        config,
        RECIPE_NAME,
        lambda precision: MultiResRecipe(config, precision),
        callback=callback,
        until_epoch=until_epoch,
        thread_chooser=thread_chooser,
    )
