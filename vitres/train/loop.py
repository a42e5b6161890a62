"""The training loop every recipe of :mod:`vitres.train` runs in.

A *recipe* (:class:`Recipe`) says what one step does: which input size, patch size and
batch size it uses, and what its loss is. The loop does the rest, the same way for
:func:`vitres.train.train` (from scratch) and :func:`vitres.train.flexify.flexify`:
AdamW with the learning rate set per step (:func:`vitres.train.schedule.lr_at`),
gradient-norm clipping, optional bf16 autocast, evaluation after each epoch,
``log.jsonl``, a tqdm bar, checkpoints and exact resume.

Reproducibility and resume: the shuffle order of an epoch is a pure function of
``(seed, epoch)`` (:func:`vitres.data.epoch_order`); each step takes the next
``batch_size`` examples of that order, and every random draw of a step comes from
generators seeded by ``(seed, epoch, step)``. A checkpoint holds the weights, the
optimiser state, the position (epoch, step, examples consumed), the epoch's running
sums (so the epoch record of a resumed epoch covers the whole epoch) and the recipe's
own state; ``resume=True`` continues bit for bit where the last checkpoint stopped.

The run folder is guarded: a fresh run refuses a folder that already holds a run
unless ``overwrite=True``; every start removes the temporary files a killed write left
there; the precision is resolved once and stored, so a resume on another CPU keeps it;
``epochs`` may grow (or shrink, not below what is done) on resume, and any other change
that would alter the result is refused with the field's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vitres.data import Dataset, epoch_order, take_batch
from vitres.train.checkpoint import (
    CHECKPOINT_FILE,
    LOG_FILE,
    MODEL_FILE,
    atomic_write_text,
    clear_run,
    decode_rng,
    load_checkpoint,
    remove_stale_files,
    run_files,
    save_checkpoint,
)
from vitres.train.config import RunConfig, TrainResult, resolve_precision
from vitres.train.schedule import STREAM_TORCH, lr_at, mix_seed, step_generator

__all__ = ["Recipe", "StepOutput", "StepShape", "autocast", "run_recipe"]


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

    def step_loss(
        self,
        images: Tensor | list[Tensor],
        labels: Tensor,
        indices: Tensor,
        shape: StepShape,
        generator: torch.Generator,
    ) -> StepOutput:
        """The loss of one batch (called under the run's autocast)."""
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


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bf16 CPU autocast for ``"bf16"``, nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _zero_sums() -> dict:
    return {"loss_sum": 0.0, "seen": 0, "correct": 0, "seconds": 0.0, "terms": {}}


def _describe_run(out_dir: Path) -> str:
    checkpoint = out_dir / CHECKPOINT_FILE
    if (out_dir / MODEL_FILE).exists():
        return "a finished run"
    if checkpoint.exists():
        try:
            document = json.loads(checkpoint.read_text())
            return (
                f"a partial run ({document['epoch']} of "
                f"{document['train_config']['epochs']} epochs done)"
            )
        except (ValueError, KeyError, TypeError):
            return "a partial run"
    return "files of a run"


def _prepare_out_dir(config: RunConfig, out_dir: Path) -> dict | None:
    """Guards ``out_dir`` and returns the checkpoint to resume from, if any."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.overwrite:
        clear_run(out_dir)
        return None
    remove_stale_files(out_dir)
    checkpoint = load_checkpoint(out_dir) if config.resume else None
    if checkpoint is None:
        # a log alone (a run killed before its first checkpoint) holds nothing to resume
        existing = [p for p in run_files(out_dir) if p.name != LOG_FILE]
        if existing:
            names = ", ".join(sorted({p.name for p in existing})[:4])
            found = f"{_describe_run(out_dir)} ({names})"
            if config.resume:
                raise ValueError(
                    f"cannot resume {out_dir}: it has no checkpoint.json but holds {found}; "
                    "pass --overwrite (overwrite=True) to delete it and start again, or "
                    "choose another --out-dir"
                )
            raise ValueError(
                f"{out_dir} already holds {found}; pass --resume (resume=True) to continue "
                "it, --overwrite (overwrite=True) to delete it and start again, or choose "
                "another --out-dir"
            )
    return checkpoint


def _stored_precision(checkpoint: dict) -> str | None:
    if "precision" in checkpoint:
        return checkpoint["precision"]
    # version-1 checkpoints: the epoch records say what was used
    for entry in reversed(checkpoint.get("log", [])):
        if entry.get("kind") == "epoch" and entry.get("precision"):
            return entry["precision"]
    saved = checkpoint["train_config"].get("precision")
    return saved if saved in ("bf16", "fp32") else None


def _check_resume(config: RunConfig, checkpoint: dict, recipe_name: str, out_dir: Path) -> str:
    """Refuses a resume that would not continue the same run; returns its precision."""
    saved_recipe = checkpoint.get("recipe", "train")
    if saved_recipe != recipe_name:
        raise ValueError(
            f"cannot resume {out_dir}: it holds a {saved_recipe!r} run, not {recipe_name!r}; "
            "use another --out-dir"
        )
    saved = type(config).from_dict(checkpoint["train_config"]).to_dict()
    current = config.to_dict()
    ignored = set(config.RESUME_FREE) | {"epochs", "precision"}
    diff = sorted(k for k in current if k not in ignored and saved.get(k) != current[k])
    if diff:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in diff)
        raise ValueError(
            f"cannot resume {out_dir}: the config differs from the checkpoint's in {diff} "
            f"({details}); a resume must use the same settings (only epochs may change), "
            "or start a new run with another --out-dir"
        )
    done = checkpoint["epoch"] + (1 if checkpoint["step_in_epoch"] else 0)
    if config.epochs < done:
        raise ValueError(
            f"cannot resume {out_dir} with epochs={config.epochs}: the checkpoint is in "
            f"or past epoch {done}; give --epochs {done} or more"
        )
    stored = _stored_precision(checkpoint)
    if stored is None:
        return resolve_precision(config.precision)
    if config.precision not in ("auto", stored):
        raise ValueError(
            f"cannot resume {out_dir} with precision={config.precision!r}: the run trains "
            f"in {stored!r}; resume with --precision {stored} or auto"
        )
    return stored


def run_recipe(
    config: RunConfig,
    recipe_name: str,
    make_recipe: Callable[[str], Recipe],
    callback: Callable[[dict], None] | None = None,
    until_epoch: int | None = None,
) -> TrainResult:
    """Runs a recipe as ``config`` says and returns the model with its history.

    Writes into ``config.out_dir``: ``checkpoint.json`` + ``ckpt-*.safetensors`` (after
    every epoch, and every ``checkpoint_every_steps`` steps when > 0), ``log.jsonl`` (one
    JSON record per logged step and per epoch) and, at the end, ``model.safetensors`` +
    ``model.json`` (:func:`vitres.save_model`).

    Args:
        config: the run (see :class:`vitres.train.RunConfig` for resume / overwrite).
        recipe_name: the recipe's name (a checkpoint resumes under the same one only).
        make_recipe: builds the recipe, given the resolved precision; called after the
            run folder was checked, so a refused run costs nothing.
        callback: called after every optimisation step with the step record (``epoch``,
            ``step_in_epoch``, ``global_step``, ``loss``, ``lr``, ``resolution``,
            ``patch_size``, ``batch_size``, loss parts); an exception raised there stops
            training like a crash.
        until_epoch: stop cleanly once this many epochs are done (checkpoint written,
            no final model), to continue later with ``resume=True``; ``None`` runs to
            ``config.epochs``.

    Returns:
        A :class:`vitres.train.TrainResult`.
    """
    from vitres.models.checkpoint import save_model
    from vitres.train.optim import build_optimizer

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out_dir = Path(config.out_dir)
    checkpoint = _prepare_out_dir(config, out_dir)
    if checkpoint is None:
        precision = resolve_precision(config.precision)
    else:
        precision = _check_resume(config, checkpoint, recipe_name, out_dir)
    # the config as run: "auto" replaced by what it resolved to on the first start
    run_config = dataclasses.replace(config, precision=precision).to_dict()

    setup_start, setup_cpu_start = time.perf_counter(), time.process_time()
    recipe = make_recipe(precision)
    # building the recipe (loading the data and models) is part of the cost
    setup_seconds = time.perf_counter() - setup_start
    setup_cpu_seconds = time.process_time() - setup_cpu_start
    model, train_set = recipe.model, recipe.train_set
    thread_choice = None if config.num_threads else _choose_training_threads(model, config)
    optimizer = build_optimizer(model, config)
    total_images = recipe.images_per_epoch * config.epochs
    order_limit = config.train_limit

    start_epoch, step_in_epoch, images_in_epoch = 0, 0, 0
    global_step, images_done, train_seconds, cpu_seconds, log = 0, 0, 0.0, 0.0, []
    sums = _zero_sums()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        torch.set_rng_state(decode_rng(checkpoint["rng"]["torch"]))
        recipe.load_state_dict(checkpoint.get("recipe_state", {}))
        start_epoch, step_in_epoch = checkpoint["epoch"], checkpoint["step_in_epoch"]
        images_in_epoch = checkpoint["images_in_epoch"]
        global_step, images_done = checkpoint["global_step"], checkpoint["images_done"]
        train_seconds, log = checkpoint["train_seconds"], checkpoint["log"]
        cpu_seconds = checkpoint.get("cpu_seconds", 0.0)
        sums = checkpoint.get("epoch_sums") or _zero_sums()
        saved_epochs = checkpoint["train_config"]["epochs"]
        if saved_epochs != config.epochs:
            log.append(
                {
                    "kind": "resume",
                    "global_step": global_step,
                    "epochs_before": saved_epochs,
                    "epochs": config.epochs,
                    "lr_next": lr_at(
                        images_done / config.batch_size, total_images / config.batch_size, config
                    ),
                }
            )
    if thread_choice is not None:
        log.append({"kind": "threads", "global_step": global_step, **thread_choice.to_dict()})
    # log.jsonl mirrors the checkpoint's log: records of lost steps are dropped.
    atomic_write_text(out_dir / LOG_FILE, "".join(json.dumps(r) + "\n" for r in log))
    log_handle = open(out_dir / LOG_FILE, "a")

    def record(entry: dict) -> None:
        log.append(entry)
        log_handle.write(json.dumps(entry) + "\n")
        log_handle.flush()

    def position(next_epoch: int, next_step: int, next_images: int, epoch_sums: dict) -> dict:
        return {
            "epoch": next_epoch,
            "step_in_epoch": next_step,
            "images_in_epoch": next_images,
            "global_step": global_step,
            "images_done": images_done,
            "train_seconds": train_seconds,
            "cpu_seconds": cpu_seconds,
            "epoch_sums": epoch_sums,
        }

    def checkpoint_now(pos: dict) -> None:
        extra = {"recipe": recipe_name, "precision": precision}
        extra["recipe_state"] = recipe.state_dict()
        save_checkpoint(out_dir, model, optimizer, pos, run_config, log, extra)

    train_seconds += setup_seconds
    cpu_seconds += setup_cpu_seconds
    history = [r for r in log if r.get("kind") == "epoch"]
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total_images,
            initial=min(images_done, total_images),
            unit="img",
            unit_scale=True,
            dynamic_ncols=True,
        )
    last_epoch = config.epochs if until_epoch is None else min(until_epoch, config.epochs)
    patch_default = model.config.patch_size
    try:
        for epoch in range(start_epoch, last_epoch):
            model.train()
            segment_start, cpu_start = time.perf_counter(), time.process_time()
            order = epoch_order(
                len(train_set), shuffle=True, seed=config.seed, epoch=epoch, limit=order_limit
            )
            while True:
                generator = step_generator(config.seed, epoch, step_in_epoch)
                torch.manual_seed(mix_seed(config.seed, epoch, step_in_epoch, STREAM_TORCH))
                shape = recipe.plan_step(epoch, step_in_epoch, generator)
                if images_in_epoch + shape.batch_size > len(order):
                    break  # the last partial batch is dropped
                indices = order[images_in_epoch : images_in_epoch + shape.batch_size]
                images, labels = take_batch(train_set, indices)
                images_in_epoch += shape.batch_size
                step_in_epoch += 1
                if len(labels) == 0:
                    continue  # every file of the batch was unreadable
                lr = lr_at(
                    images_done / config.batch_size, total_images / config.batch_size, config
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast(precision):
                    output = recipe.step_loss(images, labels, indices, shape, generator)
                optimizer.zero_grad(set_to_none=True)
                output.loss.backward()
                if config.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                recipe.after_step(shape, output)
                global_step += 1
                images_done += len(labels)
                loss_value = float(output.loss.detach())
                sums["loss_sum"] += loss_value * len(labels)
                sums["seen"] += len(labels)
                sums["correct"] += int((output.logits.detach().argmax(-1) == labels).sum())
                for name, value in output.terms.items():
                    sums["terms"][name] = sums["terms"].get(name, 0.0) + value * len(labels)
                info = {
                    "kind": "step",
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch - 1,
                    "global_step": global_step,
                    "loss": round(loss_value, 5),
                    "lr": lr,
                    "resolution": shape.resolution,
                    "patch_size": shape.patch_size or patch_default,
                    "batch_size": len(labels),
                    **{name: round(value, 5) for name, value in output.terms.items()},
                }
                if bar is not None:
                    elapsed = sums["seconds"] + time.perf_counter() - segment_start
                    bar.set_postfix(
                        epoch=epoch,
                        loss=f"{loss_value:.3f}",
                        res=shape.resolution,
                        img_s=f"{sums['seen'] / max(elapsed, 1e-9):.0f}",
                    )
                    bar.update(len(labels))
                if config.log_every_steps and global_step % config.log_every_steps == 0:
                    record(info)
                epoch_continues = len(order) - images_in_epoch >= recipe.min_batch_size
                if (
                    config.checkpoint_every_steps
                    and global_step % config.checkpoint_every_steps == 0
                    and epoch_continues
                ):
                    now, cpu_now = time.perf_counter(), time.process_time()
                    train_seconds += now - segment_start
                    cpu_seconds += cpu_now - cpu_start
                    sums["seconds"] += now - segment_start
                    segment_start, cpu_start = now, cpu_now
                    checkpoint_now(position(epoch, step_in_epoch, images_in_epoch, sums))
                if callback is not None:
                    callback(info)
            segment = time.perf_counter() - segment_start
            train_seconds += segment
            cpu_seconds += time.process_time() - cpu_start
            epoch_seconds = sums["seconds"] + segment
            eval_start = time.perf_counter()
            evaluation = recipe.evaluate(precision)
            seen = max(sums["seen"], 1)
            entry = {
                "kind": "epoch",
                "epoch": epoch,
                "global_step": global_step,
                "loss": round(sums["loss_sum"] / seen, 5),
                "train_accuracy": round(sums["correct"] / seen, 5),
                "images": sums["seen"],
                **{name: round(total / seen, 5) for name, total in sums["terms"].items()},
                "lr": optimizer.param_groups[0]["lr"],
                **evaluation,
                "eval_limit": config.eval_limit,
                "epoch_seconds": round(epoch_seconds, 2),
                "images_per_second": round(sums["seen"] / max(epoch_seconds, 1e-9), 1),
                "eval_seconds": round(time.perf_counter() - eval_start, 2),
                "train_seconds": round(train_seconds, 2),
                "cpu_seconds": round(cpu_seconds, 2),
                "precision": precision,
            }
            record(entry)
            history.append(entry)
            if bar is not None:
                bar.write(json.dumps({k: entry[k] for k in ("epoch", "loss", "accuracy")}))
            step_in_epoch, images_in_epoch, sums = 0, 0, _zero_sums()
            checkpoint_now(position(epoch + 1, 0, 0, sums))
    finally:
        log_handle.close()
        if bar is not None:
            bar.close()

    model.eval()
    result = TrainResult(
        model, history, out_dir, train_seconds, precision, global_step, cpu_seconds
    )
    if last_epoch < config.epochs:  # stopped early by until_epoch: no final model yet
        return result
    save_model(
        model,
        out_dir / MODEL_FILE,
        metadata={
            **recipe.model_metadata(),
            "recipe": recipe_name,
            "train_config": run_config,
            "train_seconds": round(train_seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "precision": precision,
            "steps": global_step,
            "history": history,
        },
    )
    return result


def _choose_training_threads(model: torch.nn.Module, config: Any) -> Any:
    """Sets torch's threads to the faster of 1 and all cores for a training step of this
    model, timed now under the load present (:func:`vitres.measure.threads.choose_threads`).

    The probe runs forward and backward in eval mode on its own random generator and
    clears the gradients after, so it leaves the run's random state and results alone.
    """
    from vitres.layers.pos_embed import to_grid
    from vitres.measure.threads import choose_threads

    cfg = model.config
    size = to_grid(cfg.img_size)
    batch = max(1, min(int(config.batch_size), 64))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_chans, *size, generator=generator)
    was_training = model.training
    model.eval()

    def step() -> None:
        model(x).float().sum().backward()

    try:
        choice = choose_threads(step, rounds=2, calls=2)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    torch.set_num_threads(choice.threads)
    return choice


def eval_accuracies(model: torch.nn.Module, test_set: Any, config: Any, precision: str) -> dict:
    """Top-1 accuracy at each of ``config.eval_resolutions`` (the per-epoch evaluation of
    every recipe), as ``{"28": 0.91234, ...}``."""
    from vitres.evaluate import accuracy_at

    accuracy = {}
    for res in config.eval_resolutions:
        acc, _ = accuracy_at(
            model, test_set, res, config.eval_batch_size, config.eval_limit, precision=precision
        )
        accuracy[str(res)] = round(acc, 5)
    return accuracy
