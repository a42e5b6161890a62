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

Devices: ``config.device`` is checked before any work (:func:`vitres.devices.check_device`);
the model, the batches and the loss live there, and ``bf16`` runs under
``torch.autocast`` of that device's type (:func:`autocast`). ``auto`` precision is bf16
on CUDA. Every step re-seeds torch (which seeds the CUDA generators too), so the CPU
RNG state in the checkpoint is all a bit-exact resume needs on a GPU as well; a CUDA
run also asks PyTorch for deterministic kernels (:func:`deterministic_cuda`), without
which two runs on a GPU could differ in the last bits whether resumed or not. Under
``torchrun`` the loop trains data-parallel (:mod:`vitres.train.distributed`): each
process its share of every batch, rank 0 alone writing the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitres.data import epoch_order, take_batch
from vitres.devices import device_record
from vitres.train.checkpoint import (
    LOG_FILE,
    MODEL_FILE,
    atomic_write_text,
    decode_rng,
    load_checkpoint,
    save_checkpoint,
)
from vitres.train.config import RunConfig, TrainResult, resolve_precision
from vitres.train.distributed import Ranks, join, launched_ranks, training_device
from vitres.train.recipe import (
    Recipe,
    StepOutput,
    StepShape,
    ThreadChooser,
    autocast,
    deterministic_cuda,
)
from vitres.train.run_dir import check_resume, prepare_out_dir
from vitres.train.schedule import STREAM_TORCH, lr_at, mix_seed, step_generator

__all__ = [
    "Recipe",
    "StepOutput",
    "StepShape",
    "ThreadChooser",
    "autocast",
    "deterministic_cuda",
    "run_recipe",
]


def _zero_sums() -> dict:
    return {"loss_sum": 0.0, "seen": 0, "correct": 0, "seconds": 0.0, "terms": {}}


def run_recipe(
    config: RunConfig,
    recipe_name: str,
    make_recipe: Callable[[str], Recipe],
    callback: Callable[[dict], None] | None = None,
    until_epoch: int | None = None,
    thread_chooser: ThreadChooser | None = None,
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
        thread_chooser: with ``config.num_threads`` unset, times a training step at 1
            thread and at all cores and sets the faster (the CLI passes
            :func:`vitres.measure.threads.choose_threads`); without it torch's current
            thread count is kept (also on a GPU and under ``torchrun``, where each
            process keeps the threads it was started with).

    Returns:
        A :class:`vitres.train.TrainResult` (its model on ``config.device``).

    Raises:
        ValueError: ``config.device`` is not usable here, or under ``torchrun`` the batch
            size does not divide by the number of processes (before any work).
    """
    rank, world_size, local_rank = launched_ranks()
    device = training_device(config.device, local_rank, world_size)  # refused before any work
    if world_size > 1 and config.batch_size % world_size:
        raise ValueError(
            f"batch_size {config.batch_size} does not split over the {world_size} processes "
            f"torchrun started: the global batch is shared equally; use a multiple of "
            f"{world_size} (e.g. {config.batch_size + world_size - config.batch_size % world_size})"
        )
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if device.type == "cuda":
        deterministic_cuda()
    ranks = join(device)
    try:
        return _run_recipe_on(config, recipe_name, make_recipe, device, ranks,
                              callback, until_epoch, thread_chooser)  # fmt: skip
    finally:
        ranks.close()


def _run_recipe_on(
    config: RunConfig,
    recipe_name: str,
    make_recipe: Callable[[str], Recipe],
    device: torch.device,
    ranks: Ranks,
    callback: Callable[[dict], None] | None,
    until_epoch: int | None,
    thread_chooser: ThreadChooser | None,
) -> TrainResult:
    """:func:`run_recipe` once the device is known and the process group joined."""
    out_dir = Path(config.out_dir)
    # rank 0 guards and cleans the folder; then every rank reads the same checkpoint
    checkpoint = ranks.run_on_main(lambda: prepare_out_dir(config, out_dir))
    if not ranks.is_main and config.resume:
        checkpoint = load_checkpoint(out_dir)
    if checkpoint is None:
        precision = resolve_precision(config.precision, device=device)
    else:
        precision = check_resume(config, checkpoint, recipe_name, out_dir)
    setup_start, setup_cpu_start = time.perf_counter(), time.process_time()
    recipe = make_recipe(precision)
    recipe.model.to(device)
    # building the recipe (loading the data and models) is part of the cost
    setup = (time.perf_counter() - setup_start, time.process_time() - setup_cpu_start)
    thread_choice = None
    alone_on_cpu = device.type == "cpu" and not ranks.distributed
    if not config.num_threads and thread_chooser is not None and alone_on_cpu:
        thread_choice = _choose_training_threads(recipe.model, config, thread_chooser)
    run = _Run(config, recipe_name, recipe, precision, out_dir, ranks)
    run.restore(checkpoint)
    recipe.place(device, ranks.wrap(recipe.model), ranks)
    run.note_device(device)
    if thread_choice is not None:
        run.log.append(
            {"kind": "threads", "global_step": run.global_step, **thread_choice.to_dict()}
        )
    run.train_seconds += setup[0]
    run.cpu_seconds += setup[1]
    last_epoch = config.epochs if until_epoch is None else min(until_epoch, config.epochs)
    run.train(last_epoch, callback)
    result = TrainResult(recipe.model, run.history, out_dir, run.train_seconds, precision,
                         run.global_step, run.cpu_seconds, str(device), ranks.world_size,
                         ranks.rank)  # fmt: skip
    if last_epoch >= config.epochs:  # not stopped early by until_epoch: save the model
        run.save_final_model()
    return result


class _Run:
    """One run of a recipe: its position, its log and its running sums, and the loop
    over epochs and steps that advances them."""

    def __init__(
        self,
        config: RunConfig,
        recipe_name: str,
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        ranks: Ranks,
    ) -> None:
        from vitres.train.optim import build_optimizer

        self.config, self.recipe_name, self.recipe = config, recipe_name, recipe
        self.precision, self.out_dir, self.ranks = precision, out_dir, ranks
        self.model = recipe.model
        self.device = next(self.model.parameters()).device
        self.optimizer = build_optimizer(self.model, config)
        # the config as run: "auto" replaced by what it resolved to on the first start
        self.run_config = dataclasses.replace(config, precision=precision).to_dict()
        self.total_images = recipe.images_per_epoch * config.epochs
        self.start_epoch, self.step_in_epoch, self.images_in_epoch = 0, 0, 0
        self.global_step, self.images_done = 0, 0
        self.train_seconds, self.cpu_seconds = 0.0, 0.0
        self.log: list[dict] = []
        self.history: list[dict] = []
        self.sums = _zero_sums()
        self.bar: Any = None
        self.log_handle: Any = None
        self.segment_start, self.cpu_start = 0.0, 0.0  # of the current timing segment

    def lr(self) -> float:
        """The learning rate of the next step."""
        config = self.config
        steps_done = self.images_done / config.batch_size
        return lr_at(steps_done, self.total_images / config.batch_size, config)

    def restore(self, checkpoint: dict | None) -> None:
        """Continues from ``checkpoint`` (weights, optimiser, random state, position)."""
        if checkpoint is None:
            return
        self.model.load_state_dict(checkpoint["model_state"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        torch.set_rng_state(decode_rng(checkpoint["rng"]["torch"]))
        self.recipe.load_state_dict(checkpoint.get("recipe_state", {}))
        self.start_epoch, self.step_in_epoch = checkpoint["epoch"], checkpoint["step_in_epoch"]
        self.images_in_epoch = checkpoint["images_in_epoch"]
        self.global_step, self.images_done = checkpoint["global_step"], checkpoint["images_done"]
        self.train_seconds, self.log = checkpoint["train_seconds"], checkpoint["log"]
        self.cpu_seconds = checkpoint.get("cpu_seconds", 0.0)
        self.sums = checkpoint.get("epoch_sums") or _zero_sums()
        saved_epochs = checkpoint["train_config"]["epochs"]
        if saved_epochs != self.config.epochs:
            self.log.append(
                {
                    "kind": "resume",
                    "global_step": self.global_step,
                    "epochs_before": saved_epochs,
                    "epochs": self.config.epochs,
                    "lr_next": self.lr(),
                }
            )

    def note_device(self, device: torch.device) -> None:
        """Logs where the run trains when that is not one process on the CPU (the place a
        log without such a record ran), at the start and at a resume that moved it."""
        where = {"device": str(device), **self.ranks.describe()}
        last = {"device": "cpu", "world_size": 1}
        last = next((r for r in reversed(self.log) if r.get("kind") == "device"), last)
        if any(last.get(k) != v for k, v in where.items()):
            entry = {"kind": "device", "global_step": self.global_step, **where}
            self.log.append({**entry, **device_record(device)})

    def record(self, entry: dict) -> None:
        """Appends ``entry`` to the log and to ``log.jsonl``."""
        self.log.append(entry)
        if self.log_handle is not None:  # rank 0 only
            self.log_handle.write(json.dumps(entry) + "\n")
            self.log_handle.flush()

    def position(self, next_epoch: int, next_step: int, next_images: int) -> dict:
        """Where a checkpoint taken now resumes."""
        return {
            "epoch": next_epoch,
            "step_in_epoch": next_step,
            "images_in_epoch": next_images,
            "global_step": self.global_step,
            "images_done": self.images_done,
            "train_seconds": self.train_seconds,
            "cpu_seconds": self.cpu_seconds,
            "epoch_sums": self.sums,
        }

    def checkpoint(self, position: dict) -> None:
        """Writes a checkpoint at ``position`` (rank 0; the others wait for it)."""
        if self.ranks.is_main:
            extra = {"recipe": self.recipe_name, "precision": self.precision}
            extra["recipe_state"] = self.recipe.state_dict()
            save_checkpoint(self.out_dir, self.model, self.optimizer, position,
                            self.run_config, self.log, extra)  # fmt: skip
        self.ranks.barrier()

    def train(self, last_epoch: int, callback: Callable[[dict], None] | None) -> None:
        """Trains epochs ``start_epoch .. last_epoch - 1``, logging and checkpointing."""
        # log.jsonl mirrors the checkpoint's log: records of lost steps are dropped.
        if self.ranks.is_main:
            log_path = self.out_dir / LOG_FILE
            atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in self.log))
            self.log_handle = open(log_path, "a")
        self.history = [r for r in self.log if r.get("kind") == "epoch"]
        if self.config.progress and self.ranks.is_main:
            from vitres.progress import progress_bar

            self.bar = progress_bar(
                total=self.total_images,
                initial=min(self.images_done, self.total_images),
                unit="img",
                unit_scale=True,
                dynamic_ncols=True,
            )
        try:
            for epoch in range(self.start_epoch, last_epoch):
                self.train_epoch(epoch, callback)
        finally:
            if self.log_handle is not None:
                self.log_handle.close()
            if self.bar is not None:
                self.bar.close()
        self.model.eval()

    def train_epoch(self, epoch: int, callback: Callable[[dict], None] | None) -> None:
        """One epoch from the current position: its steps, evaluation, and checkpoint."""
        config, recipe = self.config, self.recipe
        self.model.train()
        self.segment_start, self.cpu_start = time.perf_counter(), time.process_time()
        order = epoch_order(
            len(recipe.train_set),
            shuffle=True,
            seed=config.seed,
            epoch=epoch,
            limit=config.train_limit,
        )
        while True:
            step = self.step_in_epoch
            generator = step_generator(config.seed, epoch, step)
            torch.manual_seed(mix_seed(config.seed, epoch, step, STREAM_TORCH))
            shape = recipe.plan_step(epoch, step, generator)
            if self.ranks.distributed:  # a batch that varies per step, shared equally
                shape = dataclasses.replace(
                    shape, batch_size=self.ranks.fit_batch(shape.batch_size)
                )
            if self.images_in_epoch + shape.batch_size > len(order):
                break  # the last partial batch is dropped
            indices = order[self.images_in_epoch : self.images_in_epoch + shape.batch_size]
            indices = self.ranks.shard(indices)
            generator = self.ranks.own_streams(config.seed, epoch, step, generator)
            images, labels = take_batch(recipe.train_set, indices)
            self.images_in_epoch += shape.batch_size
            self.step_in_epoch += 1
            if not self.ranks_agree(shape, len(labels)):
                continue  # every file of the batch (of a rank's share) was unreadable
            info = self.step(epoch, images, labels, indices, shape, generator)
            if config.log_every_steps and self.global_step % config.log_every_steps == 0:
                self.record(info)
            epoch_continues = len(order) - self.images_in_epoch >= recipe.min_batch_size
            every = config.checkpoint_every_steps
            if every and self.global_step % every == 0 and epoch_continues:
                now, cpu_now = time.perf_counter(), time.process_time()
                self.train_seconds += now - self.segment_start
                self.cpu_seconds += cpu_now - self.cpu_start
                self.sums["seconds"] += now - self.segment_start
                self.segment_start, self.cpu_start = now, cpu_now
                self.checkpoint(self.position(epoch, self.step_in_epoch, self.images_in_epoch))
            if callback is not None:
                callback(info)
        self.finish_epoch(epoch)

    def ranks_agree(self, shape: StepShape, count: int) -> bool:
        """Whether every rank has examples for this step; refuses ranks that planned
        different steps (they would train different models from here on).

        Raises:
            ValueError: the ranks drew different sizes, patch sizes or batch sizes.
        """
        if not self.ranks.distributed:
            return count > 0
        planned = [0 if v is None else v for v in dataclasses.astuple(shape)]
        low, high = self.ranks.bounds([*planned, count])
        if low[:-1] != high[:-1]:
            raise ValueError(
                f"the {self.ranks.world_size} processes planned different steps at global "
                f"step {self.global_step} ({shape} on rank {self.ranks.rank}): every "
                "rank must run the same vitres version with the same config and seed"
            )
        return low[-1] > 0

    def step(
        self,
        epoch: int,
        images: Tensor | list[Tensor],
        labels: Tensor,
        indices: Tensor,
        shape: StepShape,
        generator: torch.Generator,
    ) -> dict:
        """One optimisation step; returns its log record."""
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        labels = labels.to(self.device)
        with autocast(self.precision, self.device.type):
            output = self.recipe.step_loss(images, labels, indices, shape, generator)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.recipe.after_step(shape, output)
        self.global_step += 1
        loss_value, count = float(output.loss.detach()), len(labels)
        correct = int((output.logits.detach().argmax(-1) == labels).sum())
        names = list(output.terms)
        # over every rank's share (the step's own numbers on one process)
        totals = self.ranks.sum([loss_value * count, count, correct,
                                 *(output.terms[name] * count for name in names)])  # fmt: skip
        seen = int(totals[1])
        terms = output.terms
        if self.ranks.distributed:
            loss_value = totals[0] / seen
            terms = {name: total / seen for name, total in zip(names, totals[3:])}
        self.images_done += seen
        sums = self.sums
        sums["loss_sum"] += totals[0]
        sums["seen"] += seen
        sums["correct"] += int(totals[2])
        for name, total in zip(names, totals[3:]):
            sums["terms"][name] = sums["terms"].get(name, 0.0) + total
        if self.bar is not None:
            elapsed = sums["seconds"] + time.perf_counter() - self.segment_start
            self.bar.set_postfix(
                epoch=epoch,
                loss=f"{loss_value:.3f}",
                res=shape.resolution,
                img_s=f"{sums['seen'] / max(elapsed, 1e-9):.0f}",
            )
            self.bar.update(seen)
        return {
            "kind": "step",
            "epoch": epoch,
            "step_in_epoch": self.step_in_epoch - 1,
            "global_step": self.global_step,
            "loss": round(loss_value, 5),
            "lr": lr,
            "resolution": shape.resolution,
            "patch_size": shape.patch_size or self.model.config.patch_size,
            "batch_size": seen,
            **{name: round(value, 5) for name, value in terms.items()},
        }

    def finish_epoch(self, epoch: int) -> None:
        """Evaluates, records the epoch and checkpoints at the start of the next one."""
        segment = time.perf_counter() - self.segment_start
        self.train_seconds += segment
        self.cpu_seconds += time.process_time() - self.cpu_start
        sums = self.sums
        epoch_seconds = sums["seconds"] + segment
        eval_start = time.perf_counter()
        evaluation = self.recipe.evaluate(self.precision)
        seen = max(sums["seen"], 1)
        entry = {
            "kind": "epoch",
            "epoch": epoch,
            "global_step": self.global_step,
            "loss": round(sums["loss_sum"] / seen, 5),
            "train_accuracy": round(sums["correct"] / seen, 5),
            "images": sums["seen"],
            **{name: round(total / seen, 5) for name, total in sums["terms"].items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            **evaluation,
            "eval_limit": self.config.eval_limit,
            "epoch_seconds": round(epoch_seconds, 2),
            "images_per_second": round(sums["seen"] / max(epoch_seconds, 1e-9), 1),
            "eval_seconds": round(time.perf_counter() - eval_start, 2),
            "train_seconds": round(self.train_seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "precision": self.precision,
        }
        self.record(entry)
        self.history.append(entry)
        if self.bar is not None:
            self.bar.write(json.dumps({k: entry[k] for k in ("epoch", "loss", "accuracy")}))
        self.step_in_epoch, self.images_in_epoch, self.sums = 0, 0, _zero_sums()
        self.checkpoint(self.position(epoch + 1, 0, 0))

    def save_final_model(self) -> None:
        """Writes ``model.safetensors`` + ``model.json`` with the run's metadata (rank 0;
        the others wait for it). ``device`` and ``world_size`` are those of the last
        segment of the run (the log's ``device`` records hold every start's)."""
        from vitres.models.checkpoint import save_model

        if self.ranks.is_main:
            metadata = {
                **self.recipe.model_metadata(),
                "recipe": self.recipe_name,
                "train_config": self.run_config,
                "train_seconds": round(self.train_seconds, 1),
                "cpu_seconds": round(self.cpu_seconds, 1),
                "precision": self.precision,
                "device": str(self.device),
                **self.ranks.describe(),
                **device_record(self.device),
                "steps": self.global_step,
                "history": self.history,
            }
            save_model(self.model, self.out_dir / MODEL_FILE, metadata=metadata)
        self.ranks.barrier()


def _choose_training_threads(
    model: torch.nn.Module, config: Any, thread_chooser: ThreadChooser
) -> Any:
    """Sets torch's threads to the faster of 1 and all cores for a training step of this
    model, timed now under the load present by ``thread_chooser``.

    The probe runs forward and backward in eval mode on its own random generator and
    clears the gradients after, so it leaves the run's random state and results alone.
    """
    from vitres.layers.pos_embed import to_grid

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
        choice = thread_chooser(step, rounds=2, calls=2)
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
