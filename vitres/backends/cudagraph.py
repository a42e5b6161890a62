"""``cudagraph`` / ``cudagraph-bf16``: the model replayed as CUDA graphs, one per input shape.

At batch 1 a ViT on a GPU is bound by kernel launches, not by arithmetic: the CPU takes
longer to queue a forward pass's few hundred kernels than the GPU takes to run them. A
CUDA graph records the launches of one call once and replays them with a single launch
(NVIDIA, "CUDA Graphs", CUDA C++ Programming Guide; PyTorch ``torch.cuda.CUDAGraph``).

A graph is fixed to the shapes and addresses it was recorded with, so this backend keeps
one graph per **bucket** ``(batch, channels, height, width)`` in a least-recently-used
cache (:class:`ShapeGraphs`):

- **Resolution is exact.** Each ``(height, width)`` has graphs of its own; a resolution
  never seen is recorded on first use (or refused, with ``allow_new_shapes=False``), and a
  graph is never replayed for a shape other than its own.
- **Batch is bucketed.** A batch of ``b`` images runs in the graph of the smallest bucket
  ``>= b`` (powers of two up to the prepared batch, and the prepared batch itself), its
  rows after ``b`` zeros, and the first ``b`` outputs are returned. The images of a batch
  do not interact in a ViT, so this is the result of running at the bucket's batch size:
  the same up to the rounding differences any change of batch size brings in GPU kernels.
  A batch larger than the prepared one runs in chunks of it.
- **Bounded.** At most ``max_graphs`` graphs are kept, their memory (what the CUDA caching
  allocator reserved while recording, plus the static input) stays under
  ``max_graph_memory_mb``, and a new recording first evicts old graphs while the device's
  free memory is below ``reserve_fraction`` of its total.

``prepare(model, (B, C, H, W))`` records every batch bucket of ``(H, W)`` up to ``B``, so
a server prepared for its resolutions and largest batch, or a run-time controller that
warmed its resolution ladder, switches resolution and batch size by replaying graphs that
already exist: no recompilation and no recording on the request path (``stats()`` counts
both, and the tests check it).

The model runs under ``torch.compile`` (Inductor) before it is recorded, by default: fused
kernels and fewer launches to record. ``compiler="none"`` records the eager kernels.
The ``cudagraph`` backends do not use ``torch.compile(mode="reduce-overhead")``: its graphs
live in Dynamo's own trees, outside any bound this backend could keep or report.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vitres.backends.base import Backend, register_backend
from vitres.layers.pos_embed import to_grid

Shape = tuple[int, ...]
_MIB = 1024 * 1024


@dataclass
class GraphEntry:
    """One recorded graph: its static input and output buffers and how to replay it.

    Attributes:
        input: The buffer the graph reads; a call copies its batch into it.
        output: The buffer the graph writes; overwritten by every replay.
        replay: Runs the recorded work once.
        nbytes: Device memory the graph holds (its pool and the static input).
        handle: The object that owns the recording (a ``torch.cuda.CUDAGraph``).
    """

    input: Tensor
    output: Tensor
    replay: Callable[[], Any]
    nbytes: int = 0
    handle: Any = None


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes graphs are recorded for: powers of two below ``max_batch``, and it."""
    if max_batch < 1:
        raise ValueError(f"the prepared batch must be at least 1, got {max_batch}")
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    return [*buckets, max_batch]


def bucket_for(batch: int, max_batch: int) -> int:
    """The smallest bucket of :func:`batch_buckets` that holds ``batch`` (``<= max_batch``)."""
    if not 1 <= batch <= max_batch:
        raise ValueError(f"batch must be in 1..{max_batch}, got {batch}")
    return next(b for b in batch_buckets(max_batch) if b >= batch)


class ShapeGraphs:
    """A least-recently-used cache of recorded graphs, keyed by exact input shape.

    Args:
        capture: Records a graph for one input shape.
        max_graphs: Graphs kept at most; recording one more evicts the least recently used.
        max_bytes: Memory of all graphs together at most (``None``: no bound); the graph
            just recorded is always kept.
        free_bytes: ``() -> (free, total)`` device memory, or ``None`` (no check).
        reserve_fraction: Before recording, old graphs are evicted while free memory is
            below this fraction of the total.
        allow_new_shapes: ``False``: a shape with no graph is refused instead of recorded.
        on_evict: Called after each eviction (the CUDA backends return the freed pool to
            the device there, so that the free-memory check sees it).
    """

    def __init__(
        self,
        capture: Callable[[Shape], GraphEntry],
        *,
        max_graphs: int = 64,
        max_bytes: int | None = None,
        free_bytes: Callable[[], tuple[int, int]] | None = None,
        reserve_fraction: float = 0.1,
        allow_new_shapes: bool = True,
        on_evict: Callable[[], Any] | None = None,
    ) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"the graph memory bound must be positive, got {max_bytes} bytes")
        self._capture = capture
        self.max_graphs, self.max_bytes = max_graphs, max_bytes
        self._free_bytes, self.reserve_fraction = free_bytes, reserve_fraction
        self.allow_new_shapes = allow_new_shapes
        self._on_evict = on_evict
        self._graphs: OrderedDict[Shape, GraphEntry] = OrderedDict()
        self.captures = 0
        self.evictions = 0

    def __contains__(self, shape: Shape) -> bool:
        return tuple(shape) in self._graphs

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def shapes(self) -> list[Shape]:
        """Recorded shapes, least recently used first."""
        return list(self._graphs)

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._graphs.values())

    def get(self, shape: Shape) -> GraphEntry:
        """The graph of exactly ``shape``: recorded now if it has none (evicting first to
        stay within the bounds), and marked most recently used.

        Raises:
            ValueError: no graph for ``shape`` and ``allow_new_shapes`` is false.
        """
        shape = tuple(int(s) for s in shape)
        entry = self._graphs.get(shape)
        if entry is not None:
            self._graphs.move_to_end(shape)
            return entry
        if not self.allow_new_shapes:
            known = ", ".join("x".join(map(str, s)) for s in self._graphs) or "none"
            raise ValueError(
                f"no CUDA graph for input shape {'x'.join(map(str, shape))} and recording new "
                f"ones is off; recorded shapes: {known}. Prepare the backend for this "
                "resolution and batch, or allow new shapes"
            )
        self._make_room()
        entry = self._capture(shape)
        if tuple(entry.input.shape) != shape:
            raise RuntimeError(
                f"a graph recorded for {shape} reads an input of shape {tuple(entry.input.shape)}"
            )
        self.captures += 1
        self._graphs[shape] = entry
        self._within_bytes()
        return entry

    def _evict_oldest(self) -> None:
        self._graphs.popitem(last=False)
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict()

    def _make_room(self) -> None:
        while len(self._graphs) >= self.max_graphs:
            self._evict_oldest()
        if self._free_bytes is None:
            return
        while self._graphs:
            free, total = self._free_bytes()
            if free >= self.reserve_fraction * total:
                break
            self._evict_oldest()

    def _within_bytes(self) -> None:
        if self.max_bytes is None:
            return
        while len(self._graphs) > 1 and self.nbytes > self.max_bytes:
            self._evict_oldest()

    def clear(self) -> None:
        self._graphs.clear()


def run_bucketed(graphs: ShapeGraphs, batch: Tensor, max_batch: int) -> Tensor:
    """Float32 outputs of ``batch`` ``(B, C, H, W)`` through the graphs of ``graphs``:
    each chunk of at most ``max_batch`` images replays the graph of its batch bucket.

    ``batch`` must already have the graphs' device and dtype. The outputs are copied out
    of the static buffer, which the next replay overwrites.
    """
    outputs = []
    for chunk in torch.split(batch, max_batch):
        size = chunk.shape[0]
        bucket = bucket_for(size, max_batch)
        entry = graphs.get((bucket, *chunk.shape[1:]))
        if entry.input.dtype != chunk.dtype or entry.input.device != chunk.device:
            raise ValueError(
                f"the batch is {chunk.dtype} on {chunk.device}; the graph reads "
                f"{entry.input.dtype} on {entry.input.device}"
            )
        entry.input[:size].copy_(chunk)
        if size < bucket:
            entry.input[size:].zero_()
        entry.replay()
        outputs.append(entry.output[:size].float().clone())
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


# position kinds whose tables live on the model's device: nothing is computed on the host
# in a forward pass, which a CUDA graph could not record
RECORDABLE_POSITIONS = ("learned", "none")


def check_recordable(model: nn.Module) -> None:
    """Refuses a model whose forward pass computes something on the CPU per call (a CUDA
    graph records only the GPU's work, so a replay would reuse stale host results, and the
    copy to the GPU cannot be captured).

    Recordable: vitres ViTs with a learned position table (or none) and no relative
    position bias tables, at their own patch size or a bound one equal to it.

    Raises:
        ValueError: what the model computes per call, and what to use instead.
    """
    base, bound = model, None
    if getattr(model, "config", None) is None:
        base, bound = getattr(model, "model", None), getattr(model, "patch_size", None)
    config = getattr(base, "config", None)
    if config is None:
        raise ValueError(
            f"CUDA graphs record vitres models (or a model with a bound patch size), got "
            f"{type(model).__name__}; token merging and token budgets run on eager or compile"
        )
    kind = getattr(config, "pos_embed", "learned")
    problems = []
    if kind not in RECORDABLE_POSITIONS:
        problems.append(f"its {kind!r} position embedding is computed per grid")
    if getattr(config, "pos_embed_rope", False):  # RoPE beside the table (EVA-02, RoPE-ViT ape)
        problems.append("its rotary embedding is computed per grid")
    if getattr(config, "rel_pos_bias", False) or getattr(config, "shared_rel_pos_bias", False):
        problems.append("its relative position bias tables are resampled per grid")
    if bound is not None and to_grid(bound) != to_grid(config.patch_size):
        problems.append(f"its patch embedding is resized to {bound} px per call")
    if problems:
        raise ValueError(
            f"this model cannot be recorded as CUDA graphs: {'; '.join(problems)} on the "
            "host in every forward pass. Use compile-bf16 (or eager-bf16) for it"
        )


@register_backend
class CudaGraphBackend(Backend):
    """``torch.compile`` (or the eager model) recorded as CUDA graphs per shape, float32.

    Args:
        device: A CUDA device.
        compiler: ``"inductor"`` (compile, then record) or ``"none"`` (record the eager
            kernels).
        max_graphs: Graphs kept at most (least recently used evicted first).
        max_graph_memory_mb: Memory of all graphs together at most (``None``: bounded
            only by ``reserve_fraction``).
        reserve_fraction: Graphs are evicted before recording a new one while free device
            memory is below this fraction of the total.
        allow_new_shapes: ``False``: after ``prepare``, a shape it did not record is
            refused instead of recorded on the request path.
        warmup_calls: Calls before recording (compilation, cuDNN/cuBLAS autotuning and
            lazy initialisation must not happen inside the recording).
        dynamic: ``torch.compile``'s ``dynamic``. ``None`` (default): the first shape is
            compiled static, the next one once with symbolic sizes that later shapes reuse,
            so a server with many resolutions and batch buckets compiles a few times, not
            once per graph. ``False``: one static compile per shape (fastest kernels,
            longest start).
    """

    name = "cudagraph"
    precision = "fp32"
    dynamic_batch = True
    devices = ("cuda",)
    dtype = torch.float32

    def __init__(
        self,
        device: str = "cuda",
        compiler: str = "inductor",
        max_graphs: int = 64,
        max_graph_memory_mb: float | None = None,
        reserve_fraction: float = 0.1,
        allow_new_shapes: bool = True,
        warmup_calls: int = 3,
        dynamic: bool | None = None,
    ) -> None:
        super().__init__(device)
        if compiler not in ("inductor", "none"):
            raise ValueError(f"compiler must be 'inductor' or 'none', got {compiler!r}")
        self.compiler, self.dynamic = compiler, dynamic
        self.warmup_calls = int(warmup_calls)
        self.max_batch = 1
        self.record_time_s = 0.0
        free = self._free_memory if self.device.type == "cuda" else None
        max_bytes = None if max_graph_memory_mb is None else int(max_graph_memory_mb * _MIB)
        self.graphs = ShapeGraphs(
            self._record,
            max_graphs=max_graphs,
            max_bytes=max_bytes,
            free_bytes=free,
            reserve_fraction=reserve_fraction,
            allow_new_shapes=True,  # prepare records; the setting applies after it
            on_evict=self._evicted,
        )
        self._allow_new_shapes = allow_new_shapes
        self._compiles = 0

    def _free_memory(self) -> tuple[int, int]:
        return torch.cuda.mem_get_info(self.device)

    def _transform(self, model: nn.Module) -> nn.Module:
        """The model as it is recorded: cast to the backend's dtype (subclasses quantise)."""
        return model.to(device=self.device, dtype=self.dtype)

    def _counting_compiler(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        from torch._inductor.compile_fx import compile_fx

        self._compiles += 1
        return compile_fx(gm, example_inputs)

    def _compiled(self, model: nn.Module) -> Any:
        """``model`` under ``torch.compile``. Dynamo stops compiling a function after a few
        shapes (its recompile limit) and runs the rest eagerly; the limit is raised to the
        number of graphs this backend may keep."""
        import torch._dynamo

        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), self.graphs.max_graphs + 8))
        return torch.compile(model, backend=self._counting_compiler, dynamic=self.dynamic)

    def _check_device(self) -> None:
        if self.device.type != "cuda":
            raise ValueError(
                f"backend {self.name!r} records CUDA graphs and needs a CUDA device, got "
                f"{self.device}; on a CPU use compile or eager"
            )

    def build(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self._check_device()
        check_recordable(model)
        model = self._transform(model.eval())
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model = model
        self.fn = model if self.compiler == "none" else self._compiled(model)
        self.max_batch = int(input_shape[0])
        self.graphs.clear()
        self.record([input_shape])

    def record(self, shapes: list[tuple[int, ...]]) -> None:
        """Records the graphs of every batch bucket of each ``(B, C, H, W)`` in ``shapes``
        now (``B`` at most the prepared batch), so that switching to those resolutions
        later replays graphs instead of recording them on the request path."""
        allowed, self.graphs.allow_new_shapes = self._allow_new_shapes, True
        try:
            for batch, *rest in shapes:
                for bucket in batch_buckets(min(int(batch), self.max_batch)):
                    self.graphs.get((bucket_for(bucket, self.max_batch), *rest))
        finally:
            self.graphs.allow_new_shapes = allowed

    def _record(self, shape: Shape) -> GraphEntry:
        """Records one graph for ``shape``: warm-up calls on a side stream, then the capture,
        all with ``self.device`` current (a capture records the current device's work)."""
        with torch.cuda.device(self.device):
            start = time.perf_counter()
            static_input = torch.zeros(shape, device=self.device, dtype=self.dtype)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(self.warmup_calls):
                    self.fn(static_input)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            # the capture empties the allocator's cache first: empty it before the baseline
            # too, so that the difference is the graph's own pool
            torch.cuda.empty_cache()
            reserved = torch.cuda.memory_reserved(self.device)
            graph = torch.cuda.CUDAGraph()
            capture = torch.cuda.Stream(self.device)
            with torch.inference_mode(), torch.cuda.graph(graph, stream=capture):
                static_output = self.fn(static_input)
            torch.cuda.synchronize(self.device)
            held = torch.cuda.memory_reserved(self.device) - reserved
            self.record_time_s += time.perf_counter() - start
        held += static_input.nbytes  # allocated before the baseline, held as long as the graph
        return GraphEntry(static_input, static_output, graph.replay, max(0, held), graph)

    def _evicted(self) -> None:
        """Hands an evicted graph's private memory pool back to the device (the allocator
        keeps it cached until told)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Drops every graph and the compiled model, and returns their memory."""
        self.graphs.clear()
        self.fn = self.model = None
        self._evicted()

    def run(self, batch: Tensor) -> Tensor:
        x = batch.to(device=self.device, dtype=self.dtype)
        return run_bucketed(self.graphs, x, self.max_batch)

    def stats(self) -> dict[str, Any]:
        """Graphs recorded, evicted and held, their memory, compiles and recording seconds."""
        return {
            "graphs": len(self.graphs),
            "captures": self.graphs.captures,
            "evictions": self.graphs.evictions,
            "graph_memory_mb": self.graphs.nbytes / _MIB,
            "compiles": self._compiles,
            "record_time_s": self.record_time_s,
            "shapes": [list(s) for s in self.graphs.shapes],
        }

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if not torch.cuda.is_available():
            return False, "CUDA graphs need an NVIDIA GPU and a CUDA build of PyTorch"
        return True, ""


@register_backend
class CudaGraphBF16Backend(CudaGraphBackend):
    """:class:`CudaGraphBackend` with the model cast to bfloat16 (float32 logits)."""

    name = "cudagraph-bf16"
    precision = "bf16"
    dtype = torch.bfloat16


__all__ = [
    "CudaGraphBF16Backend",
    "CudaGraphBackend",
    "GraphEntry",
    "ShapeGraphs",
    "batch_buckets",
    "bucket_for",
    "run_bucketed",
]
