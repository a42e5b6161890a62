"""Durable file writes: a whole file or the previous one, even across a crash or power cut.

Every checkpoint file vitres writes (weights, optimiser state, their JSON) goes through
:func:`durable_write`: the content is written to ``<name>.partial`` next to the target,
that file is fsync-ed, renamed over the target (atomic on POSIX), and the folder is
fsync-ed so the rename itself is on disk. A process killed mid-write leaves at most a
``*.partial`` file, never a torn target; :func:`remove_partials` clears those.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "PARTIAL_SUFFIX",
    "durable_write",
    "durable_write_text",
    "fsync_dir",
    "partial_path",
    "remove_partials",
]

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """The temporary file :func:`durable_write` writes ``path`` through: ``<name>.partial``."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Flushes a folder's entries (a rename into it) to disk; a no-op where folders
    cannot be opened (Windows)."""
    flag = getattr(os, "O_DIRECTORY", None)
    if flag is None:
        return
    fd = os.open(directory, os.O_RDONLY | flag)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Writes ``path`` crash-safely; ``write(tmp)`` puts the content into ``tmp``.

    ``tmp`` is ``<name>.partial``; it is fsync-ed, renamed onto ``path`` and the folder
    fsync-ed. If ``write`` or the rename fails, the partial file is removed and ``path``
    keeps its previous content. Returns ``path``.
    """
    path = Path(path)
    tmp = partial_path(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the write failed
    fsync_dir(path.parent)
    return path


def durable_write_text(path: Path, text: str) -> Path:
    """:func:`durable_write` of a text file."""
    return durable_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def remove_partials(directory: Path, patterns: Iterable[str] = ("*",)) -> list[Path]:
    """Removes the ``<pattern>.partial`` files a killed write left in ``directory``."""
    removed = []
    for pattern in patterns:
        for path in Path(directory).glob(pattern + PARTIAL_SUFFIX):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return sorted(set(removed))
