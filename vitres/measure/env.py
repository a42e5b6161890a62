"""The environment a measurement depends on: CPU, cores, threads, versions, device."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from typing import Any

import torch

from vitres.devices import device_record

CPU_FLAGS_OF_INTEREST = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def set_threads(n: int | None) -> int:
    """Sets torch's intra-op CPU threads to ``n`` (``None`` keeps the current number);
    returns the number in effect."""
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be at least 1, got {n}")
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def cpu_info() -> dict[str, Any]:
    """CPU model name and the flags that matter for bf16/int8 speed (Linux ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif name == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST}}


def env_fingerprint(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """What a latency number depends on, so results from different machines can be told
    apart: CPU model and flags, logical cores, torch threads, versions, device, and a
    hash of the host name (not the name itself)."""
    info = cpu_info()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    fingerprint = {
        **info,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
    }
    fingerprint.update(device_record(device))  # the GPU's name, capability, driver
    return fingerprint
