"""A cache for tensors derived from parameters (resampled tables, resized kernels).

A cached tensor must never outlive the weights it was computed from, however those
weights were written. Version counters are not enough: ``param.data.mul_()``,
``param.data.copy_()``, fused optimisers (``AdamW(fused=True)``) and edits through
``param.detach().numpy()`` all change a parameter without bumping its ``_version``.
So every entry keeps a *snapshot* (a copy) of its source tensors, and a lookup serves
the entry only when each source still equals its snapshot exactly (``torch.equal``),
and has the same shape, dtype and device. Nothing that writes the weights can get past
that check, and there is no hash to collide.

Cost: one comparison pass over the source tensors per lookup (two reads of their bytes:
the parameter and its snapshot) and one copy of them in memory. The sources are the
small tensors a resampling starts from (a position table, a patch kernel, a bias MLP,
Mixer token weights), not the whole model; the comparison replaces a recomputation
that costs more (a pseudo-inverse product for a kernel, an interpolation for a table).
Snapshots are shared by the entries of the same source (one copy per parameter, however
many grids are cached).

Caching is off while autograd needs the result, and while tracing or compiling, where
the computation must stay in the graph.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor


def is_tracing() -> bool:
    """True under torch.jit tracing, torch.compile/export, or ONNX export."""
    return bool(
        torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
    )


class _Snapshot:
    """A copy of one source tensor and a generation number bumped whenever it changes."""

    __slots__ = ("copy", "generation")

    def __init__(self) -> None:
        self.copy: Tensor | None = None
        self.generation = 0

    def refresh(self, source: Tensor) -> int:
        """Returns the generation of ``source``'s current content (a new one if it changed)."""
        copy = self.copy
        same = (
            copy is not None
            and copy.shape == source.shape
            and copy.dtype == source.dtype
            and copy.device == source.device
            and torch.equal(copy, source)
        )
        if not same:
            self.copy = source.detach().clone()
            self.generation += 1
        return self.generation


class VersionedCache:
    """Least-recently-used cache of tensors computed from source tensors.

    An entry is served only while every source still holds exactly the values it held
    when the entry was computed (see the module docstring for why and what it costs).
    """

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[Hashable, Tensor] = OrderedDict()
        self._snapshots: dict[int, _Snapshot] = {}
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._store.clear()
        self._snapshots.clear()

    def __len__(self) -> int:
        return len(self._store)

    def get(
        self,
        key: Hashable,
        sources: Sequence[Tensor],
        compute: Callable[[], Tensor],
        enabled: bool = True,
    ) -> Tensor:
        """Returns ``compute()``, cached under ``key`` while the sources are unchanged."""
        if not enabled or is_tracing():
            return compute()
        if torch.is_grad_enabled() and any(src.requires_grad for src in sources):
            return compute()
        with torch.inference_mode(False), torch.no_grad():
            generations = tuple(
                (id(src), self._snapshots.setdefault(id(src), _Snapshot()).refresh(src))
                for src in sources
            )
            full_key = (key, generations)
            hit = self._store.get(full_key)
            if hit is not None:
                self._store.move_to_end(full_key)
                self.hits += 1
                return hit
            self.misses += 1
            value = compute()
        # drop entries computed from older contents of the same sources
        for stale in [k for k in self._store if k[0] == key]:
            del self._store[stale]
        self._store[full_key] = value
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return value

    # caches are derived state: never copied with the module, never pickled
    def __deepcopy__(self, memo: dict) -> VersionedCache:
        return VersionedCache(self.max_entries)

    def __getstate__(self) -> dict:
        return {"max_entries": self.max_entries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_entries"])
