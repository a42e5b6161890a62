"""A small cache for tensors derived from parameters (resampled tables, resized kernels).

Entries are keyed by the caller's key plus the identity, storage, dtype, device and
in-place version counter of every source tensor. An optimiser step or
``load_state_dict`` bumps the version counter, and ``module.to(...)`` changes storage,
so a stale entry can never be served. Caching is off while autograd needs the result,
and while tracing or compiling, where the computation must stay in the graph.
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


def _fingerprint(sources: Sequence[Tensor]) -> tuple | None:
    parts = []
    for src in sources:
        try:
            version = src._version
        except RuntimeError:  # inference tensors carry no version counter
            return None
        parts.append((id(src), src.data_ptr(), version, src.dtype, str(src.device)))
    return tuple(parts)


class VersionedCache:
    """Least-recently-used cache of tensors computed from source tensors."""

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[Hashable, Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._store.clear()

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
        fingerprint = _fingerprint(sources)
        if fingerprint is None:
            return compute()
        full_key = (key, fingerprint)
        hit = self._store.get(full_key)
        if hit is not None:
            self._store.move_to_end(full_key)
            self.hits += 1
            return hit
        self.misses += 1
        with torch.no_grad():
            value = compute()
        # drop entries computed from older versions of the same sources
        stale = [k for k in self._store if k[0] == key]
        for k in stale:
            del self._store[k]
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
