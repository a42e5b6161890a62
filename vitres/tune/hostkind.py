"""The kind of machine a measurement was taken on, as a short stable fingerprint.

A latency number belongs to a machine *kind*, not to one box: two edge boxes with the
same CPU model, core count, instruction-set flags and GPU give the same numbers (within
noise), while any of these changing can move latency by integer factors (AVX-512 or AMX
for bf16/int8, a different GPU). :func:`host_fingerprint` hashes exactly these fields of a
record's ``env`` (:func:`vitres.measure.env_fingerprint`) -- never the host name, software
versions or the thread count (threads are part of the config key; a torch upgrade on the
same hardware is precisely what a CI gate should compare across). Records of different
kinds must never share one cost-model fit or one recommendation: :func:`split_by_host`
groups them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from vitres.tune.records import Measurement

UNKNOWN_HOST = "unknown"
HOST_KIND_KEY = "host_kind"  # where a record's env stores its fingerprint
_KIND_FIELDS = ("cpu", "logical_cores", "cpu_flags", "gpu")


def host_kind_fields(env: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``env`` that define the machine kind (absent ones left out)."""
    fields = {name: env[name] for name in _KIND_FIELDS if env.get(name) is not None}
    if isinstance(fields.get("cpu_flags"), dict):
        fields["cpu_flags"] = dict(sorted(fields["cpu_flags"].items()))
    return fields


def host_fingerprint(env: dict[str, Any]) -> str:
    """A short stable hash of the machine kind in an environment fingerprint.

    The hash covers the CPU model, the logical core count, the CPU flags of interest
    (AVX-512, VNNI, AMX...) and the GPU name; not the host name, the torch or Python
    version, or the threads. Two boxes of one kind get the same value on every run.

    Args:
        env: A record's ``env`` (:func:`vitres.measure.env_fingerprint`).

    Returns:
        12 hexadecimal digits; ``env["host_kind"]`` when ``env`` holds no kind fields but
        was already fingerprinted; ``"unknown"`` for an empty environment.

    Example:
        >>> host_fingerprint({"cpu": "AMD EPYC", "logical_cores": 2, "hostname_hash": "a"}) == (
        ...     host_fingerprint({"cpu": "AMD EPYC", "logical_cores": 2, "hostname_hash": "b"}))
        True
    """
    fields = host_kind_fields(env)
    if not fields:
        return str(env.get(HOST_KIND_KEY) or UNKNOWN_HOST)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def describe_host(env: dict[str, Any]) -> str:
    """A human-readable name of the machine kind, e.g. ``"AMD EPYC, 2 cores"``."""
    fields = host_kind_fields(env)
    if not fields:
        return UNKNOWN_HOST
    parts = [str(fields.get("cpu", "unknown CPU"))]
    if "logical_cores" in fields:
        parts.append(f"{fields['logical_cores']} cores")
    flags = [name for name, present in (fields.get("cpu_flags") or {}).items() if present]
    if flags:
        parts.append("+".join(flags))
    if "gpu" in fields:
        parts.append(str(fields["gpu"]))
    return ", ".join(parts)


def split_by_host(records: Iterable[Measurement]) -> dict[str, list[Measurement]]:
    """Groups records by :func:`host_fingerprint` of their ``env``, first-seen order.

    Fit cost models and recommend per group, so machines of different kinds are never
    mixed (``vitres recommend --host KIND`` picks one group; without it, one
    recommendation per group).
    """
    groups: dict[str, list[Measurement]] = {}
    for m in records:
        groups.setdefault(host_fingerprint(m.env), []).append(m)
    return groups


def records_for_host(records: Iterable[Measurement], host: str) -> list[Measurement]:
    """The records of one machine kind, named by its fingerprint or a unique prefix of it
    (what ``vitres recommend --host KIND`` selects).

    Raises:
        ValueError: no kind, or several kinds, match ``host``; the message lists the kinds
            in the records with their descriptions.
    """
    groups = split_by_host(records)
    matches = [kind for kind in groups if kind.startswith(host.strip())]
    if len(matches) == 1:
        return groups[matches[0]]
    listing = "; ".join(f"{kind} ({describe_host(g[0].env)})" for kind, g in groups.items())
    problem = "matches several machine kinds" if matches else "matches no machine kind"
    raise ValueError(f"--host {host!r} {problem}; the records hold: {listing or 'no records'}")
