"""Which model a record measured, so that one decision never mixes two models.

A results file can hold several models: two ``vitres sweep --model`` runs appended to one
file, or one checkpoint retrained in place (the same reference, other weights). Ranking
one model's configs against another's baseline, or calibrating one model's server with
another's latencies, gives an answer that looks right and is not. Records are therefore
grouped by *model identity*: the weights digest when the record has one
(:attr:`~vitres.tune.records.Measurement.model_digest`, so the same weights under two
paths are one model and retrained weights under one path are two), else the model
reference given to the sweep. :func:`split_by_model` groups, :func:`records_for_model`
selects one group by name or digest prefix, and :func:`check_one_model` refuses a mix with
the list of models found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vitres.tune.records import Measurement

__all__ = [
    "ModelGroup",
    "check_one_model",
    "model_identity",
    "records_for_model",
    "split_by_model",
]


def model_identity(m: Measurement) -> str:
    """``digest:<hex>`` when the record knows its weights, else ``ref:<model reference>``."""
    if m.model_digest:
        return f"digest:{m.model_digest}"
    return f"ref:{m.config.model}"


@dataclass(frozen=True)
class ModelGroup:
    """The records of one model identity."""

    identity: str
    records: tuple[Measurement, ...]

    @property
    def references(self) -> list[str]:
        """The model references the records name (one, or several paths of one file)."""
        return list(dict.fromkeys(m.config.model for m in self.records))

    @property
    def digest(self) -> str | None:
        return self.records[0].model_digest

    def describe(self) -> str:
        """``'runs/a' (weights 1f2e3d4c5b6a, 30 records)``."""
        refs = " or ".join(repr(r) for r in self.references)
        weights = f"weights {self.digest}, " if self.digest else ""
        return f"{refs} ({weights}{len(self.records)} records)"

    def matches(self, name: str) -> bool:
        """``name`` is one of the references, or a prefix (≥ 6 digits) of the digest."""
        name = name.strip()
        if name in self.references:
            return True
        return bool(self.digest) and len(name) >= 6 and self.digest.startswith(name)


def split_by_model(records: Iterable[Measurement]) -> dict[str, ModelGroup]:
    """The records grouped by :func:`model_identity`, in first-seen order. A record
    without a digest joins its reference's digest group when that reference was measured
    with exactly one digest (an older record of the same weights)."""
    records = list(records)
    digests: dict[str, set[str]] = {}
    for m in records:
        if m.model_digest:
            digests.setdefault(m.config.model, set()).add(m.model_digest)
    groups: dict[str, list[Measurement]] = {}
    for m in records:
        known = digests.get(m.config.model, set())
        identity = f"digest:{next(iter(known))}" if not m.model_digest and len(known) == 1 else None
        groups.setdefault(identity or model_identity(m), []).append(m)
    return {key: ModelGroup(key, tuple(ms)) for key, ms in groups.items()}


def _listing(groups: dict[str, ModelGroup]) -> str:
    return "; ".join(g.describe() for g in groups.values()) or "no records"


def records_for_model(records: Iterable[Measurement], name: str) -> list[Measurement]:
    """The records of the model named ``name`` (a reference as given to ``vitres sweep
    --model``, or a prefix of at least 6 digits of its weights digest).

    Raises:
        ValueError: no model, or several, match; the message lists the models found.
    """
    groups = split_by_model(records)
    matches = [g for g in groups.values() if g.matches(name)]
    if len(matches) == 1:
        return list(matches[0].records)
    problem = "matches several models" if matches else "matches no model"
    raise ValueError(
        f"--for-model {name!r} {problem}; the records hold: {_listing(groups)}. "
        "Name a model by its reference or by the first 6+ digits of its weights digest"
    )


def check_one_model(records: Iterable[Measurement], what: str = "a decision") -> None:
    """Refuses records of several models (several references without digests, or
    several weights digests) for ``what``.

    Raises:
        ValueError: naming each model found and how to pick one.
    """
    groups = split_by_model(m for m in records if m.ok)
    if len(groups) > 1:
        raise ValueError(
            f"the records hold {len(groups)} models, and {what} is made for one model at a "
            f"time: {_listing(groups)}. Choose one with --for-model NAME (a reference or a "
            "weights digest prefix), or keep each model's sweep in its own results file"
        )
