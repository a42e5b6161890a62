"""Progress on long work: a tqdm bar on a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns, which floods a log file or a CI console
with one unreadable line. :func:`progress_bar` gives tqdm's bar when the output is a
terminal, and otherwise :class:`PlainProgress`: one line per ``interval_s`` seconds
(and at 0 % and the end), ``desc: n/total (pct) [elapsed, rate] postfix``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["PlainProgress", "progress_bar"]


class PlainProgress:
    """The part of tqdm's interface vitres uses, printed as whole lines.

    Args:
        iterable: Iterated over (``for x in bar``), counting one per item.
        total: Expected count (``len(iterable)`` when it has one).
        desc: What is counted, the line's prefix.
        unit: Unit of the count.
        disable: Print nothing.
        file: Where lines go (stderr by default).
        interval_s: Least seconds between two lines.
        clock: Time source (a fake in tests).
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: float | None = None,
        desc: str | None = None,
        unit: str = "it",
        disable: bool = False,
        file: TextIO | None = None,
        interval_s: float = 10.0,
        clock: Any = time.monotonic,
        **_: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc or ""
        self.unit = unit
        self.disable = disable
        self.fp = file or sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.n = 0
        self.postfix = ""
        self.start = clock()
        self._last: float | None = None
        self._closed = False
        self._line(force=True)

    def _text(self) -> str:
        elapsed = self.clock() - self.start
        count = f"{self.n:g}" + (f"/{self.total:g}" if self.total else "")
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 and self.n else ""
        post = f" {self.postfix}" if self.postfix else ""
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{count} {self.unit}{pct} [{elapsed:.0f} s{rate}]{post}"

    def _line(self, force: bool = False) -> None:
        if self.disable:
            return
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.interval_s:
            return
        self._last = now
        print(self._text(), file=self.fp, flush=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.total is None or self.n < self.total:  # the last line is close()'s
            self._line()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(
        self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    set_description = set_description_str

    def write(self, text: str, file: TextIO | None = None, **_: Any) -> None:
        print(text, file=file or self.fp, flush=True)

    def refresh(self) -> None:
        self._line(force=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line(force=True)

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """tqdm's bar on a terminal, :class:`PlainProgress` lines otherwise (same arguments)."""
    stream = kwargs.get("file") or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return PlainProgress(iterable, **kwargs)
