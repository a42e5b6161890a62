"""The one size grammar every command and function shares.

Resolutions: ``"16,20,28"``, ranges ``"96:448:32"`` (start:stop:step, the stop included
when the step reaches it), non-square ``"28x40"`` (height x width), or a list of ints
and ``(height, width)`` pairs. Integer lists: ``"1,8,32"`` (and ``native`` where the
model's own value is allowed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_RANGE = re.compile(r"^(\d+):(\d+)(?::(\d+))?$")
_PAIR = re.compile(r"^(\d+)[x×*](\d+)$")


def parse_resolutions(spec: str | int | Sequence[Any]) -> list[tuple[int, int]]:
    """Parses resolutions: ``"16,20,28"``, ranges ``"96:448:32"`` (start:stop:step, stop
    included when the step reaches it; step defaults to 1), non-square ``"28x40"``
    (height x width), or a list of ints / ``(h, w)`` pairs. Order kept, duplicates dropped.

    Raises:
        ValueError: a part is not a positive size, pair or range.
    """
    items: list[Any]
    if isinstance(spec, str):
        items = [part.strip() for part in spec.split(",") if part.strip()]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)
    out: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, int):
            sizes = [(item, item)]
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            sizes = [(int(item[0]), int(item[1]))]
        elif isinstance(item, str) and item.isdigit():
            sizes = [(int(item), int(item))]
        elif isinstance(item, str) and _PAIR.match(item):
            height, width = _PAIR.match(item).groups()
            sizes = [(int(height), int(width))]
        elif isinstance(item, str) and _RANGE.match(item):
            start, stop, step = _RANGE.match(item).groups()
            step_value = int(step) if step else 1
            if step_value <= 0 or int(stop) < int(start):
                raise ValueError(f"bad resolution range {item!r}: need start <= stop and step > 0")
            sizes = [(r, r) for r in range(int(start), int(stop) + 1, step_value)]
        else:
            raise ValueError(
                f"cannot read resolution {item!r}; use sizes like 28, ranges like 96:448:32 "
                "(start:stop:step) or height x width like 28x40"
            )
        for size in sizes:
            if min(size) <= 0:
                raise ValueError(f"resolution must be positive, got {size}")
            if size not in out:
                out.append(size)
    if not out:
        raise ValueError(f"no resolutions in {spec!r}")
    return out


def parse_int_list(
    spec: str | int | Sequence[int | None] | None, *, allow_native: bool = False
) -> list[int | None]:
    """Parses ``"1,8,32"`` (and ``"native"`` = ``None`` when ``allow_native``)."""
    if spec is None:
        return [None] if allow_native else []
    if isinstance(spec, int):
        return [spec]
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[int | None] = []
    for part in parts:
        text = str(part).strip() if part is not None else "native"
        if allow_native and text.lower() in ("native", "none", ""):
            value = None
        elif text.isdigit() and int(text) > 0:
            value = int(text)
        else:
            raise ValueError(
                f"expected positive integers separated by commas, got {part!r} in {spec!r}"
            )
        if value not in out:
            out.append(value)
    return out


def size_label(size: tuple[int, int]) -> str:
    """``"28"`` for a square size, ``"28x40"`` (height x width) otherwise."""
    height, width = size
    return str(height) if height == width else f"{height}x{width}"


#: Patch tokens per image above which a run is refused unless the user raises the limit:
#: a 128x128 grid. Attention memory and time grow with the square of the token count.
DEFAULT_MAX_TOKENS = 16384


def check_token_count(
    sizes: Sequence[tuple[int, int]],
    patch_size: int | Sequence[int],
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    flag: str = "--max-tokens",
) -> None:
    """Refuses input sizes with more than ``max_tokens`` patch tokens per image (``None``:
    no limit), before anything is allocated.

    Raises:
        ValueError: the size, its token count, the limit, what one attention map of it
            would take, and the flag that raises the limit.
    """
    if max_tokens is None:
        return
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    for height, width in sizes:
        tokens = -(-int(height) // int(ph)) * -(-int(width) // int(pw))
        if tokens > max_tokens:
            gib = tokens * tokens * 4 / 2**30
            raise ValueError(
                f"{height}x{width} px in {ph}x{pw} patches is {tokens:,} tokens per image, "
                f"over the limit of {max_tokens:,}: one attention map alone would take "
                f"{gib:,.1f} GiB and the time grows with the square of the tokens. Use a "
                f"smaller resolution, or raise the limit with {flag} {tokens} if you mean it"
            )
