"""Where a command runs: the one ``--device`` grammar (``cpu``, ``cuda``, ``cuda:N``) and
its checks, so every command refuses a device it cannot use before any work, in one
sentence, instead of a PyTorch traceback on the first tensor moved there.
"""

from __future__ import annotations

import re

import torch

DEVICE_HELP = "where the model runs: cpu, cuda or cuda:N (an NVIDIA GPU)"


def check_device_name(name: str) -> str:
    """``name`` once it is spelled ``cpu``, ``cuda`` or ``cuda:N`` (usable or not here:
    for work that runs on other machines, such as Ray nodes).

    Raises:
        ValueError: any other spelling.
    """
    text = str(name).strip()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise ValueError(f"--device must be cpu, cuda or cuda:N (N a GPU index), got {name!r}")
    return text


def check_device(name: str) -> torch.device:
    """The ``torch.device`` for ``name``, once it is known to be usable here.

    Raises:
        ValueError: ``name`` is not ``cpu``, ``cuda`` or ``cuda:N``; CUDA is asked for on
            a machine (or a PyTorch build) without it; or ``N`` is not a GPU of this machine.
    """
    text = check_device_name(name)
    device = torch.device(text)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        build = "a CPU-only PyTorch build" if torch.version.cuda is None else "no usable GPU"
        raise ValueError(
            f"--device {text}: this machine has {build}; use --device cpu, or run on a "
            "machine with an NVIDIA GPU and a CUDA build of PyTorch"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"--device {text}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}"
        )
    return device


def device_record(device: str | torch.device) -> dict[str, object]:
    """What a measurement on ``device`` depends on beyond the CPU: for a GPU its name,
    compute capability, memory, CUDA and driver versions; nothing for the CPU."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(device)
    record: dict[str, object] = {
        "gpu": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gb": round(props.total_memory / 1e9, 1),
        "cuda": torch.version.cuda,
    }
    driver = _driver_version()
    if driver:
        record["gpu_driver"] = driver
    return record


def _driver_version() -> str | None:
    """The NVIDIA driver version through NVML, when ``pynvml`` (nvidia-ml-py) is present."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # NVML missing or refusing: the record simply lacks the field
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


__all__ = ["DEVICE_HELP", "check_device", "check_device_name", "device_record"]
