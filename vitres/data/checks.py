"""Problems with a dataset that a user must hear about: unreadable files, and a class
count that differs from the model's."""

from __future__ import annotations

import os
from typing import Any

SHOWN_FILES = 3


def data_problems(dataset: Any, num_classes: int | None = None) -> list[str]:
    """Warnings about ``dataset`` as plain sentences (empty when all is well).

    Args:
        dataset: A dataset; folder datasets record the files they could not decode in
            ``bad_files`` as they are read, so call this after reading.
        num_classes: The model's number of classes, to compare with the dataset's.
    """
    problems = []
    bad = dict(getattr(dataset, "bad_files", {}) or {})
    if bad:
        root = getattr(dataset, "root", None)
        shown = [
            f"{os.path.relpath(path, root) if root else path} ({reason})"
            for path, reason in list(bad.items())[:SHOWN_FILES]
        ]
        more = f" and {len(bad) - SHOWN_FILES} more" if len(bad) > SHOWN_FILES else ""
        total = len(dataset) if hasattr(dataset, "__len__") else None
        of = f" of {total}" if total is not None else ""
        problems.append(
            f"{getattr(dataset, 'name', 'dataset')}: {len(bad)}{of} files unreadable and skipped: "
            + ", ".join(shown)
            + more
        )
    classes = getattr(dataset, "num_classes", None)
    if num_classes is not None and classes is not None and int(classes) != int(num_classes):
        problems.append(
            f"{getattr(dataset, 'name', 'dataset')} has {classes} classes but the model predicts "
            f"{num_classes}: labels and outputs may not correspond (check the folder's class "
            "sub-folders, or the model)"
        )
    return problems
