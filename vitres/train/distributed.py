"""Training on several processes under ``torchrun``: data parallelism with DDP.

``torchrun --nproc_per_node=N -m vitres train ...`` starts N copies of the command and
tells each its place through ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (the
launcher's own protocol; :func:`launched_ranks` is the one place that reads it). Each
copy, one *rank*:

* joins the process group (``nccl`` on CUDA, ``gloo`` on the CPU) and, on CUDA, runs on
  the GPU of its ``LOCAL_RANK`` (:func:`training_device`);
* trains its copy of the model wrapped in ``DistributedDataParallel`` (Li et al.,
  "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020),
  which averages the gradients over the ranks during every backward pass;
* takes its own contiguous share of every batch (:func:`shard_of`): rank ``r`` of ``W``
  takes examples ``r B/W .. (r+1) B/W - 1`` of the global batch of ``B``. ``B`` is the
  batch the user asked for and must divide by ``W``; with a mean loss over equal shares
  the averaged gradient is that of the whole batch, so a run on ``W`` processes follows
  the same updates as on one (up to the order of float sums) when nothing is random;
* draws the step's size and patch size from the per-step generator every rank seeds
  alike, before the batch is split (checked at every step, :meth:`Ranks.bounds`), and
  its augmentation and dropout from a stream of its own (:meth:`Ranks.own_streams`;
  rank 0's is the single-process stream, so one process runs exactly as before);
* leaves every write (checkpoints, ``log.jsonl``, the final model) and the progress bar
  to rank 0 while the others wait at a barrier: one run folder, as with one process.

``torch.distributed`` is imported only when a run has more than one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from vitres.devices import check_device
from vitres.train.schedule import STREAM_AUGMENT, STREAM_TORCH, mix_seed

__all__ = ["Ranks", "join", "launched_ranks", "shard_of", "training_device"]

T = TypeVar("T")


def launched_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as ``torchrun`` set them; ``(0, 1, 0)`` for a
    process it did not start.

    Raises:
        ValueError: the variables are not integers, or describe no valid rank.
    """
    environ = os.environ if environ is None else environ
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    try:
        rank, world, local = (int(environ.get(name, default)) for name, default in
                              zip(names, ("0", "1", "0")))  # fmt: skip
    except ValueError:
        found = {name: environ.get(name) for name in names}
        raise ValueError(f"torchrun's RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         f"{found}; start vitres with torchrun or without them") from None  # fmt: skip
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} describe no "
                         "process of a run: need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")  # fmt: skip
    return rank, world, local


def training_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device a rank trains on: ``name`` checked (:func:`vitres.devices.check_device`);
    under ``torchrun`` with CUDA, the GPU of the rank's ``local_rank``.

    Raises:
        ValueError: the device is not usable here; ``cuda:N`` is given to several
            processes (each takes its own GPU); or the node has fewer GPUs than processes.
    """
    device = check_device(name)
    if world_size == 1 or device.type == "cpu":
        return device
    if device.index is not None:
        raise ValueError(f"--device {name} under torchrun: each of the {world_size} processes "
                         "uses the GPU of its LOCAL_RANK; pass --device cuda")  # fmt: skip
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: this machine has {count}; "
                         f"start at most {count} processes per node (--nproc_per_node)")  # fmt: skip
    return torch.device("cuda", local_rank)


def shard_of(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous share of a global batch of ``indices`` (equal shares).

    Raises:
        ValueError: the batch does not divide by ``world_size``.
    """
    count = len(indices)
    if count % world_size:
        raise ValueError(f"a batch of {count} examples does not split evenly over "
                         f"{world_size} processes; use a batch size divisible by {world_size}")  # fmt: skip
    share = count // world_size
    return indices[rank * share : (rank + 1) * share]


@dataclass
class Ranks:
    """This process's place in a run: its rank among ``world_size`` processes.

    With ``world_size == 1`` (no ``torchrun``) every method is the identity or does
    nothing, so the training loop reads the same either way.

    Attributes:
        rank: this process's rank (0 writes the run folder).
        world_size: processes in the run.
        local_rank: rank on this machine (the GPU it uses).
        device: where the collectives' tensors live (the rank's GPU under ``nccl``).
        owns_group: this run started the process group (and so ends it in :meth:`close`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Waits until every rank got here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def shard(self, indices: Tensor) -> Tensor:
        """This rank's share of a global batch (:func:`shard_of`)."""
        return shard_of(indices, self.rank, self.world_size) if self.distributed else indices

    def fit_batch(self, batch_size: int) -> int:
        """A step's global batch rounded down to a multiple of ``world_size`` (at least
        one example per rank), for recipes whose batch varies per step."""
        if not self.distributed:
            return batch_size
        return max(self.world_size, batch_size - batch_size % self.world_size)

    def own_streams(self, seed: int, epoch: int, step: int, generator: torch.Generator
                    ) -> torch.Generator:  # fmt: skip
        """The random source of the rest of a step, once the shared draws are done.

        Rank 0 keeps the step's generator and torch seed (a single process's); rank
        ``r > 0`` reseeds both from streams of its own, so its examples get other crops,
        flips and dropout masks than rank 0's.
        """
        if self.rank == 0:
            return generator
        torch.manual_seed(mix_seed(seed, epoch, step, STREAM_TORCH, self.rank))
        return torch.Generator().manual_seed(mix_seed(seed, epoch, step, STREAM_AUGMENT, self.rank))

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks (in float64)."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def mean(self, values: list[float]) -> list[float]:
        """``values`` averaged over the ranks."""
        return [v / self.world_size for v in self.sum(values)] if self.distributed else values

    def bounds(self, values: list[float]) -> tuple[list[float], list[float]]:
        """The smallest and the largest of each of ``values`` over the ranks."""
        if not self.distributed:
            return list(values), list(values)
        import torch.distributed as dist

        both = torch.tensor([*values, *(-v for v in values)], dtype=torch.float64,
                            device=self.device)  # fmt: skip
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high = both[: len(values)].cpu().tolist()
        low = [-v for v in both[len(values) :].cpu().tolist()]
        return low, high

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (``model`` itself on one process).

        With ``static_graph``: every step uses the same parameters whatever its size (an
        imported model's unused ones, such as a mask token, stay unused), which lets DDP
        skip them without searching the graph each step, and reduce once for the two
        forward passes of a flexify step with scale consistency.
        """
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, static_graph=True)

    def run_on_main(self, fn: Callable[[], T]) -> T | None:
        """Runs ``fn`` on rank 0 only, the others waiting; an error there stops every rank
        with its message (rank 0 re-raises it, the others raise ``ValueError``)."""
        if not self.distributed:
            return fn()
        result, failure, message = None, None, ""
        if self.is_main:
            try:
                result = fn()
            except Exception as error:  # handed to every rank below
                failure, message = error, str(error) or type(error).__name__
        message = self._broadcast_text(message)
        if failure is not None:
            raise failure
        if message:
            raise ValueError(f"rank 0 stopped the run: {message}")
        return result

    def _broadcast_text(self, text: str) -> str:
        import torch.distributed as dist

        data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=self.device)
        length = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(length, src=0)
        if not self.is_main:
            data = torch.empty(int(length), dtype=torch.uint8, device=self.device)
        if int(length):
            dist.broadcast(data, src=0)
        return bytes(data.cpu().tolist()).decode()

    def describe(self) -> dict[str, Any]:
        """The run's process layout, for its records."""
        return {"world_size": self.world_size}

    def close(self) -> None:
        """Ends the process group if this run started it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def join(device: torch.device, environ: Mapping[str, str] | None = None) -> Ranks:
    """This process's :class:`Ranks`, joining the process group ``torchrun`` set up
    (``nccl`` on CUDA, ``gloo`` on the CPU); a lone :class:`Ranks` without ``torchrun``.

    A process group already started by the caller is used as it is.

    Raises:
        ValueError: this PyTorch has no ``torch.distributed``, or a group already started
            has another size than ``WORLD_SIZE``.
    """
    rank, world, local = launched_ranks(environ)
    if world == 1:
        return Ranks(device=device)
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; train on one process")
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise ValueError(f"the process group has {dist.get_world_size()} processes but "
                             f"WORLD_SIZE is {world}")  # fmt: skip
        return Ranks(rank, world, local, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return Ranks(rank, world, local, device, owns_group=True)
