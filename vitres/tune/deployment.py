"""What ``vitres run`` and ``vitres serve`` take from a results file: this model's records,
and the backend the decision recommends.

Both commands predict latency from sweep records. Records of another model (another
reference without a shared weights digest, or other weights) would predict another
model's speed, so :func:`records_of_model` refuses them with the models found. Given
records and no ``--backend``, both deploy what :func:`~vitres.tune.recommend.recommend`
recommends under the default budget (its backend carries its precision, e.g.
``eager-bf16``) and say so; :func:`recommended_backend` makes that choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vitres.tune.modelkind import split_by_model
from vitres.tune.recommend import recommend
from vitres.tune.recommendation import short_label
from vitres.tune.records import Measurement

__all__ = ["DEFAULT_BACKEND", "recommended_backend", "records_of_model"]

DEFAULT_BACKEND = "eager"


def records_of_model(
    records: Sequence[Measurement], model_ref: str, digest: str | None, source: str
) -> list[Measurement]:
    """The records of the model being deployed: those whose reference is ``model_ref``
    or whose weights digest is ``digest``.

    Raises:
        ValueError: ``source`` holds no records of this model (the message names the
            models it holds and how to measure this one).
    """
    groups = split_by_model(m for m in records if m.ok)
    mine = [
        g
        for g in groups.values()
        if model_ref in g.references or (digest is not None and g.digest == digest)
    ]
    if len(mine) == 1:
        return list(mine[0].records)
    held = "; ".join(g.describe() for g in groups.values()) or "no successful records"
    weights = f" (weights {digest})" if digest else ""
    if not mine:
        raise ValueError(
            f"{source} holds no records of {model_ref!r}{weights}: it holds {held}. Another "
            f"model's latencies would mispredict this one: run `vitres sweep --model "
            f"{model_ref} --out FILE` and pass that file, or leave --records out to calibrate"
        )
    raise ValueError(
        f"{source} holds several models that match {model_ref!r}: {held}; keep one model's "
        "sweep per results file"
    )


def recommended_backend(
    records: Sequence[Measurement],
    usable: Callable[[str], str | None] = lambda backend: None,
) -> tuple[str, str]:
    """The backend to deploy on and one line saying why.

    Args:
        records: One model's records.
        usable: Says why a backend cannot be used here (``None``: it can), e.g. the
            records cannot predict the batch sizes a server needs.

    Returns:
        ``(backend, reason)``: the recommended config's backend when the decision
        recommends one, else :data:`DEFAULT_BACKEND`.
    """
    try:
        rec = recommend(records)
    except ValueError as error:
        return DEFAULT_BACKEND, f"{DEFAULT_BACKEND} (no recommendation: {error})"
    if rec.choice is None or rec.status not in ("accepted", "limits-only", "unjudged"):
        why = {"no-accuracy": "the records have no accuracy, so nothing was accepted"}.get(
            rec.status, "no config passes the acceptance rule"
        )
        return DEFAULT_BACKEND, f"{DEFAULT_BACKEND} ({why}; pass --backend to choose)"
    backend = rec.choice.config.backend
    problem = usable(backend)
    if problem is not None:
        return DEFAULT_BACKEND, (
            f"{DEFAULT_BACKEND} (the recommended {backend} cannot be used: {problem}; pass "
            "--backend to choose)"
        )
    return backend, (
        f"{backend}, the backend of the recommended config {short_label(rec.choice)} (pass "
        "--backend to choose another)"
    )
