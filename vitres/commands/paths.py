"""Checks of the paths a command will write, made before any work, so that a wrong
``--out`` is a clear error at once rather than a traceback after minutes of measuring."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_output_dir", "check_output_file"]


def check_output_file(path: str | os.PathLike[str] | None, flag: str) -> None:
    """Refuses a file ``path`` that cannot be written: a directory, a folder that does
    not exist (for a file in one), or a folder this user cannot write to.

    Raises:
        ValueError: saying which, and what to give instead.
    """
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(
            f"{flag} {path} is a directory; give a file name in it, e.g. {target / 'out'}"
        )
    existing = target.parent  # the command creates the folders it writes into
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"{flag} {path}: no permission to write there; choose another place")


def check_output_dir(path: str | os.PathLike[str] | None, flag: str) -> None:
    """Refuses a folder ``path`` that is an existing file or cannot be created or written.

    Raises:
        ValueError: saying which.
    """
    if path is None:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {existing}")
