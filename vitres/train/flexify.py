"""Flexify: fine-tune a trained single-resolution model to be accurate at every size.

FlexiViT (Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023) makes a
trained ViT flexible by initialising a student from it and distilling from the model
itself, run at its native size, while the student sees a random resolution or patch size
at every step. ResFormer (Tian et al., CVPR 2023) adds a consistency loss between the
predictions for the same images at two scales. :func:`flexify` does both for any vitres
model (bundled, vitres checkpoint, Hugging Face or timm import, or a registry name):

* **Student**: starts from the source; **teacher**: the source (or ``teacher``) in eval
  mode without gradients, at its native size. Without random crops the teacher's
  outputs depend only on the image and its flip, so they are computed once for the
  training set (``teacher_cache``) instead of at every step.
* **Sizes**: each step draws one ``(resolution, patch size)`` from
  :class:`vitres.train.sampling.GapSampler`: in proportion to the running distillation
  gap (KL to the teacher) measured at each size, mixed with a uniform floor
  (``sampler="uniform"`` for plain uniform draws).
* **Batch**: normalised by tokens (:func:`vitres.train.sampling.token_batch_size`), so
  a step costs about the same at every size: ``batch_size`` is the batch at the native
  token count.
* **Loss**: ``(1 - distill_weight) * CE(label smoothing) + distill_weight * T^2 KL``,
  and with ``scale_consistency`` the step also trains a second resolution of the same
  images (the losses of both views averaged) plus ``consistency_weight`` times the KL
  of the smaller view to the larger one.

Everything else (AdamW, schedule, checkpoints, exact resume, logs, progress) is the
shared loop of :mod:`vitres.train.loop`; the learning-rate schedule runs on examples
seen (in steps of ``batch_size`` examples), since steps hold different numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitres.data import get_dataset, take_batch
from vitres.data.transforms import match_channels, normalize, resize, sample_crop_box, to_float
from vitres.train.config import RunConfig, TrainResult
from vitres.train.distributed import Ranks
from vitres.train.loop import (
    StepOutput,
    StepShape,
    ThreadChooser,
    autocast,
    eval_accuracies,
    run_recipe,
)
from vitres.train.losses import distillation_loss, scale_consistency_loss
from vitres.train.sampling import GapSampler, token_batch_size, token_count

__all__ = ["DISTILL_KINDS", "FlexifyConfig", "FlexifyStep", "flexify", "load_source"]

RECIPE_NAME = "flexify"
DISTILL_KINDS = ("kl", "none")


@dataclass
class FlexifyConfig(RunConfig):
    """A run of :func:`flexify`.

    ``model`` is the source (the student's start); ``teacher`` the model distilled from
    (the source when ``None``). Both are model references for :func:`load_source`;
    ``model_overrides`` are config fields passed when loading them (e.g. the width of a
    registry model). ``batch_size`` is the batch at the student's native token count;
    other sizes get ``token_batch_size(...)`` examples, within ``[min_batch_size,
    max_batch_size]``. The learning rate and warm-up are smaller than for training from
    scratch, since the model starts trained.

    Attributes:
        resolutions: student resolutions, one drawn per step: 12:56:4 or 12,16,20
        patch_sizes: student patch sizes, one drawn per step (the model's own when empty)
        batch_size: examples per step at the native token count (scaled by tokens)
        out_dir: folder of checkpoints, log.jsonl and the flexified model.safetensors
        model: source model: bundled name, vitres checkpoint, Hugging Face / timm folder or
            file, or registry name (random weights)
        teacher: model distilled from, at its native size (the source when omitted)
        model_overrides: config field for loading the source, KEY=VALUE (repeatable)
        distill: kl (tempered KL to the teacher) | none (cross-entropy only)
        temperature: distillation temperature T (the KL is scaled by T^2)
        distill_weight: weight a of the distillation: (1 - a) CE + a T^2 KL
        scale_consistency: also train a second resolution of the same images, with a KL of
            the smaller view to the larger (ResFormer)
        consistency_weight: weight of the scale-consistency KL
        sampler: gap (sizes drawn in proportion to their KL gap to the teacher) | uniform
        sampler_floor: share of the draws spread uniformly over the sizes
        sampler_momentum: weight of the newest gap in each size's running average
        min_batch_size: smallest batch (largest sizes)
        max_batch_size: largest batch (smallest sizes)
        teacher_cache: compute the teacher's outputs once per image and flip (needs
            --no-random-crop)
    """

    model: str = "fmnist-vit-single"
    teacher: str | None = None
    model_overrides: dict = field(default_factory=dict)
    distill: str = "kl"
    temperature: float = 1.0
    distill_weight: float = 0.5
    scale_consistency: bool = False
    consistency_weight: float = 1.0
    sampler: str = "gap"
    sampler_floor: float = 0.25
    sampler_momentum: float = 0.1
    min_batch_size: int = 16
    max_batch_size: int = 512
    teacher_cache: bool = True
    # defaults of the shared fields that differ from training from scratch
    resolutions: tuple[int, ...] = tuple(range(12, 57, 4))
    random_crop: bool = False
    epochs: int = 5
    lr: float = 5e-4
    warmup_steps: int = 100
    eval_resolutions: tuple[int, ...] = (12, 16, 28, 56)
    out_dir: str = "runs/flexify"

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.distill in DISTILL_KINDS, f"distill must be one of {DISTILL_KINDS}"),
            (self.temperature > 0, "temperature must be > 0"),
            (0 <= self.distill_weight <= 1, "distill_weight must be in [0, 1]"),
            (self.consistency_weight >= 0, "consistency_weight must be >= 0"),
            (self.sampler in GapSampler.KINDS, f"sampler must be one of {GapSampler.KINDS}"),
            (0 <= self.sampler_floor <= 1, "sampler_floor must be in [0, 1]"),
            (0 < self.sampler_momentum <= 1, "sampler_momentum must be in (0, 1]"),
            (
                1 <= self.min_batch_size <= self.max_batch_size,
                "need 1 <= min_batch_size <= max_batch_size",
            ),
            (
                not self.scale_consistency or len(set(self.resolutions)) >= 2,
                "scale_consistency needs at least two resolutions",
            ),
            (
                self.teacher is None or self.distill != "none",
                "a teacher was given but distill is 'none'; use --distill kl or drop --teacher",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid FlexifyConfig: {message}")


@dataclass(frozen=True)
class FlexifyStep(StepShape):
    """A flexify step: the drawn size, and the second resolution of the same images when
    scale consistency is on (``None`` otherwise)."""

    partner: int | None = None


def load_source(reference: str, **overrides) -> nn.Module:
    """The model a reference names, in eval mode.

    A path (a vitres checkpoint, the output folder of ``vitres train`` / ``vitres
    flexify``, a Hugging Face folder, a timm file or folder) goes to
    :func:`vitres.from_pretrained` (:func:`vitres.load_model` for a run folder), a bundled name (``fmnist-vit-single``) to
    :func:`vitres.load_model`, a registry name (``vit_tiny_patch4``) to
    :func:`vitres.create_model` (random weights).
    """
    from vitres.models.checkpoint import (
        WEIGHTS_DIR,
        from_pretrained,
        load_model,
        read_safetensors_metadata,
    )
    from vitres.models.registry import create_model

    if os.path.isdir(reference):
        # a `vitres train` / `vitres flexify` output folder: model.safetensors + model.json
        weights = os.path.join(reference, "model.safetensors")
        if os.path.exists(weights) and "vitres" in read_safetensors_metadata(weights):
            return load_model(weights, **overrides).eval()
    if os.path.exists(reference):
        return from_pretrained(reference, **overrides).eval()
    if (WEIGHTS_DIR / f"{reference}.safetensors").exists():
        return load_model(reference, **overrides).eval()
    try:
        return create_model(reference, **overrides).eval()
    except (ValueError, KeyError) as error:
        bundled = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))
        raise ValueError(
            f"cannot load model {reference!r}: it is no file or folder, no bundled model "
            f"({bundled}) and no registry name ({error})"
        ) from None


def _label(arm: tuple[int, int | None]) -> str:
    res, patch = arm
    return str(res) if patch is None else f"{res}/p{patch}"


class FlexifyRecipe:
    """The flexify step for the shared loop (see the module docstring)."""

    def __init__(self, config: FlexifyConfig, precision: str) -> None:
        from vitres.models.checkpoint import checkpoint_digest

        self.config, self.precision = config, precision
        torch.manual_seed(config.seed)  # registry sources start from seeded random weights
        self.model = load_source(config.model, **config.model_overrides)
        # where steps run, and through what (DDP wraps the student under torchrun)
        self.device, self.student, self.ranks = torch.device("cpu"), self.model, Ranks()
        cfg = self.model.config
        self.in_chans = cfg.in_chans
        self.train_set = get_dataset(
            config.data, "train", data_dir=config.data_dir, in_chans=self.in_chans
        )
        self.test_set = get_dataset(
            config.data, "test", data_dir=config.data_dir, in_chans=self.in_chans
        )
        classes = len(self.train_set.classes)
        if cfg.num_classes != classes:
            raise ValueError(
                f"{config.model} has {cfg.num_classes} classes, {config.data} has {classes}: "
                "flexify fine-tunes a classifier for the same classes"
            )
        self.teacher: nn.Module | None = None
        self.teacher_digest = None
        if config.distill != "none":
            reference = config.teacher or config.model
            overrides = config.model_overrides if config.teacher is None else {}
            torch.manual_seed(config.seed)
            self.teacher = load_source(reference, **overrides).eval().requires_grad_(False)
            if self.teacher.config.num_classes != classes:
                raise ValueError(
                    f"teacher {reference} has {self.teacher.config.num_classes} classes, "
                    f"{config.data} has {classes}"
                )
            self.teacher_digest = checkpoint_digest(reference)
        self.model.train()
        count = len(self.train_set)
        if config.train_limit is not None:
            count = min(count, config.train_limit)
        self.count = count
        self.images_per_epoch = count
        patches = config.patch_sizes or (None,)
        arms = [(r, p) for r in config.resolutions for p in patches]
        self.sampler = GapSampler(
            arms, config.sampler, floor=config.sampler_floor, momentum=config.sampler_momentum
        )
        native_tokens = token_count(tuple(cfg.img_size), cfg.patch_size, cfg.size_policy)
        self.native_tokens = native_tokens

        def tokens(res: int, patch: int | None) -> int:
            return token_count(res, patch or cfg.patch_size, cfg.size_policy)

        self._tokens = tokens
        smallest = token_batch_size(
            max(tokens(r, p) for r, p in arms) * (2 if config.scale_consistency else 1),
            native_tokens,
            config.batch_size,
            config.min_batch_size,
            config.max_batch_size,
        )
        if smallest > count:
            raise ValueError(
                f"a step needs up to {smallest} examples but the data has {count}; lower "
                "--batch-size / --min-batch-size or raise --train-limit"
            )
        self.min_batch_size = smallest
        # forward work done, for a cost measure independent of other jobs on the machine:
        # sums of examples x tokens and examples x tokens^2 (the attention's term)
        self.work = {"student": [0, 0], "teacher": [0, 0]}
        # the teacher's outputs are cached at the first step (a finished run never needs them)
        self.cache: tuple[Tensor, Tensor] | None = None
        self.use_cache = (
            self.teacher is not None and config.teacher_cache and not config.random_crop
        )

    # ------------------------------------------------------------------ views
    def _teacher_size(self) -> tuple[int, int]:
        return tuple(self.teacher.config.img_size)

    def _views(
        self, images: Tensor | list[Tensor], sizes: list, generator: torch.Generator
    ) -> tuple[list[Tensor], Tensor]:
        """The same augmented images at each size ([0, 1] floats) and the flip mask."""
        config = self.config
        if config.random_crop:
            crops = []
            for image in images:
                top, left, h, w = sample_crop_box(
                    image.shape[-2], image.shape[-1], config.crop_scale, generator=generator
                )
                crop = image[:, top : top + h, left : left + w]
                crops.append(to_float(crop) if crop.dtype == torch.uint8 else crop.float())
            views = [torch.stack([resize(c[None], size)[0] for c in crops]) for size in sizes]
        elif isinstance(images, Tensor):
            batch = to_float(images) if images.dtype == torch.uint8 else images.float()
            views = [resize(batch, size) for size in sizes]
        else:
            floats = [to_float(im) if im.dtype == torch.uint8 else im.float() for im in images]
            views = [torch.stack([resize(im[None], size)[0] for im in floats]) for size in sizes]
        count = views[0].shape[0]
        if config.hflip:
            flip = torch.rand(count, generator=generator) < 0.5
            views = [torch.where(flip[:, None, None, None], v.flip(-1), v) for v in views]
        else:
            flip = torch.zeros(count, dtype=torch.bool)
        return views, flip

    def _teacher_tokens(self) -> int:
        cfg = self.teacher.config
        return token_count(tuple(cfg.img_size), cfg.patch_size, cfg.size_policy)

    def _count_work(self, model: str, examples: int, tokens: int) -> None:
        self.work[model][0] += examples * tokens
        self.work[model][1] += examples * tokens * tokens

    @staticmethod
    def _model_input(view: Tensor, model: nn.Module) -> Tensor:
        cfg = model.config
        return normalize(match_channels(view, cfg.in_chans), cfg.mean, cfg.std)

    @torch.no_grad()
    def _teacher_cache(self) -> tuple[Tensor, Tensor]:
        """Teacher logits of every training image, as is and flipped: ``(N, K)`` twice."""
        size = self._teacher_size()
        plain, flipped = [], []
        order = torch.arange(self.count)
        for start in range(0, self.count, 500):
            images, _ = take_batch(self.train_set, order[start : start + 500])
            if isinstance(images, Tensor):
                batch = to_float(images) if images.dtype == torch.uint8 else images.float()
                view = resize(batch, size)
            else:
                view = torch.stack([resize(to_float(im)[None], size)[0] for im in images])
            x = self._model_input(view, self.teacher).to(self.device)
            with autocast(self.precision, self.device.type):
                plain.append(self.teacher(x).float().cpu())
                if self.config.hflip:
                    flipped.append(self.teacher(x.flip(-1)).float().cpu())
        passes = 2 if self.config.hflip else 1
        self._count_work("teacher", self.count * passes, self._teacher_tokens())
        plain_logits = torch.cat(plain)
        return plain_logits, torch.cat(flipped) if flipped else plain_logits

    # ------------------------------------------------------------------ the loop's hooks
    def place(self, device: torch.device, student: nn.Module, ranks: Ranks) -> None:
        self.device, self.student, self.ranks = device, student, ranks
        if self.teacher is not None:
            self.teacher.to(device)

    def plan_step(self, epoch: int, step_in_epoch: int, generator: torch.Generator) -> FlexifyStep:
        config = self.config
        res, patch = self.sampler.draw(generator)
        tokens = self._tokens(res, patch)
        partner = None
        if config.scale_consistency:
            others = sorted({r for r in config.resolutions if r != res})
            partner = others[int(torch.randint(len(others), (1,), generator=generator))]
            tokens += self._tokens(partner, patch)
        batch = token_batch_size(
            tokens,
            self.native_tokens,
            config.batch_size,
            config.min_batch_size,
            config.max_batch_size,
        )
        return FlexifyStep(res, patch, batch, partner)

    def _forward(self, view: Tensor, patch: int | None) -> Tensor:
        x = self._model_input(view, self.model).to(self.device)
        return self.student(x) if patch is None else self.student(x, patch_size=patch)

    def _view_loss(
        self, logits: Tensor, labels: Tensor, teacher_logits: Tensor | None
    ) -> tuple[Tensor, dict[str, float], float]:
        config = self.config
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        if teacher_logits is None:
            return ce, {"ce": float(ce.detach())}, float(ce.detach())
        kd = distillation_loss(logits, teacher_logits, config.temperature)
        loss = (1 - config.distill_weight) * ce + config.distill_weight * kd
        gap = float(kd.detach()) / config.temperature**2  # the KL itself
        return loss, {"ce": float(ce.detach()), "kd": float(kd.detach())}, gap

    def step_loss(
        self,
        images: Tensor | list[Tensor],
        labels: Tensor,
        indices: Tensor,
        shape: FlexifyStep,
        generator: torch.Generator,
    ) -> StepOutput:
        examples = len(labels) * self.ranks.world_size  # every rank's equal share
        sizes: list = [shape.resolution]
        if shape.partner is not None:
            sizes.append(shape.partner)
        if self.use_cache and self.cache is None:
            self.cache = self._teacher_cache()
        need_teacher_view = self.teacher is not None and self.cache is None
        if need_teacher_view:
            sizes.append(self._teacher_size())
        views, flip = self._views(images, sizes, generator)
        teacher_logits = None
        if self.teacher is not None:
            if self.cache is not None:
                plain, flipped = self.cache
                teacher_logits = torch.where(flip[:, None], flipped[indices], plain[indices])
                teacher_logits = teacher_logits.to(self.device)
            else:
                x = self._model_input(views[-1], self.teacher).to(self.device)
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                self._count_work("teacher", examples, self._teacher_tokens())
        self._count_work("student", examples, self._tokens(shape.resolution, shape.patch_size))
        if shape.partner is not None:
            self._count_work("student", examples, self._tokens(shape.partner, shape.patch_size))
        logits = self._forward(views[0], shape.patch_size)
        loss, terms, gap = self._view_loss(logits, labels, teacher_logits)
        gaps = [((shape.resolution, shape.patch_size), gap)]
        if shape.partner is not None:
            partner_logits = self._forward(views[1], shape.patch_size)
            partner_loss, partner_terms, partner_gap = self._view_loss(
                partner_logits, labels, teacher_logits
            )
            gaps.append(((shape.partner, shape.patch_size), partner_gap))
            small, large = logits, partner_logits
            if self._tokens(shape.partner, shape.patch_size) < self._tokens(
                shape.resolution, shape.patch_size
            ):
                small, large = partner_logits, logits
            consistency = scale_consistency_loss(small, large, self.config.temperature)
            loss = 0.5 * (loss + partner_loss) + self.config.consistency_weight * consistency
            terms = {k: 0.5 * (terms[k] + partner_terms[k]) for k in terms}
            terms["consistency"] = float(consistency.detach())
        self._pending_gaps = gaps
        return StepOutput(loss, logits, terms)

    def after_step(self, shape: StepShape, output: StepOutput) -> None:
        # every rank measured its own share: the sampler folds in the mean over the ranks,
        # so that all of them keep drawing the same sizes
        gaps = self.ranks.mean([gap for _, gap in self._pending_gaps])
        for (arm, _), gap in zip(self._pending_gaps, gaps):
            self.sampler.update(arm, gap)

    def evaluate(self, precision: str) -> dict:
        accuracy = eval_accuracies(self.model, self.test_set, self.config, precision)
        probabilities = self.sampler.probabilities()
        return {
            "accuracy": accuracy,
            "work": {k: list(v) for k, v in self.work.items()},
            "sampler": {_label(a): round(p, 4) for a, p in zip(self.sampler.arms, probabilities)},
            "gap": {
                _label(a): (None if g is None else round(g, 5))
                for a, g in zip(self.sampler.arms, self.sampler.gaps)
            },
        }

    def state_dict(self) -> dict:
        return {
            "sampler": self.sampler.state_dict(),
            "teacher_digest": self.teacher_digest,
            "work": self.work,
        }

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("teacher_digest")
        if saved is not None and saved != self.teacher_digest:
            raise ValueError(
                f"cannot resume: the teacher's weights changed since the run started (digest "
                f"{saved} then, {self.teacher_digest} now); restore them or start again with "
                "--overwrite"
            )
        self.sampler.load_state_dict(state.get("sampler", {}))
        saved_work = state.get("work")
        if saved_work is not None:
            self.work = {k: list(saved_work[k]) for k in self.work}

    def model_metadata(self) -> dict:
        from vitres.models.checkpoint import checkpoint_digest

        return {
            "source": self.config.model,
            "source_digest": checkpoint_digest(self.config.model),
            "teacher": None if self.teacher is None else (self.config.teacher or self.config.model),
            "teacher_digest": self.teacher_digest,
            "native_tokens": self.native_tokens,
            "work": self.work,
        }


def flexify(
    config: FlexifyConfig,
    callback: Callable[[dict], None] | None = None,
    until_epoch: int | None = None,
    thread_chooser: ThreadChooser | None = None,
) -> TrainResult:
    """Fine-tunes ``config.model`` to be accurate at every size in ``config.resolutions``.

    Writes into ``config.out_dir`` what :func:`vitres.train.train` writes (checkpoints,
    ``log.jsonl``, ``model.safetensors`` + ``model.json`` at the end), with resume,
    overwrite and epoch-extension behaving the same. Step records add ``ce``, ``kd``
    (and ``consistency``) and the batch size; epoch records add the sampler's
    probabilities (``sampler``) and running gaps (``gap``) per size.

    Args:
        config: the run.
        callback: called after every optimisation step with the step record.
        until_epoch: stop cleanly after this many epochs (resume later).
        thread_chooser: with ``config.num_threads`` unset, chooses 1 thread or all cores
            by timing a training step (:func:`vitres.measure.threads.choose_threads`, as
            the CLI passes); without it torch's current thread count is kept.

    Returns:
        A :class:`vitres.train.TrainResult` whose model is the flexified student.
    """
    if not isinstance(config, FlexifyConfig):
        raise TypeError(f"flexify() needs a FlexifyConfig, got {type(config).__name__}")
    return run_recipe(
        config,
        RECIPE_NAME,
        lambda precision: FlexifyRecipe(config, precision),
        callback=callback,
        until_epoch=until_epoch,
        thread_chooser=thread_chooser,
    )
