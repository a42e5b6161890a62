"""Energy of a measured window, read from the hardware's own counters.

- **NVIDIA GPUs**: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
  millijoules since the driver loaded; Volta and newer), through ``nvidia-ml-py``.
- **CPUs**: Linux's powercap RAPL counters (``/sys/class/powercap/intel-rapl:N/energy_uj``,
  microjoules of each CPU package, wrapping at ``max_energy_range_uj``; Intel, and AMD
  Zen with the ``amd_energy``/RAPL driver). They are often readable only by root.

A counter covers the whole device or package, so the figure includes whatever else ran
on it during the window; sweeps measure one config at a time for this reason. Where no
counter can be read, :meth:`EnergyMeter.stop` returns ``None`` and :attr:`EnergyMeter.missing`
says why, in one sentence, for the record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

POWERCAP = Path("/sys/class/powercap")

Reader = Callable[[], float]  # joules so far on a monotonic counter


def rapl_packages(root: Path = POWERCAP) -> list[Path]:
    """The package-level RAPL zones under ``root`` (``intel-rapl:0``, ``intel-rapl:1``...;
    sub-zones such as ``intel-rapl:0:0`` are parts of a package and not added again)."""
    if not root.is_dir():
        return []
    zones = [p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1]
    return sorted(zones, key=lambda p: p.name)


class _RaplCounter:
    """Sum of the packages' energy counters, in joules, unwrapped across overflows."""

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        self.ranges = [_read_int(zone / "max_energy_range_uj") for zone in zones]
        self.last = [_read_int(zone / "energy_uj") for zone in zones]
        self.total_uj = 0

    def __call__(self) -> float:
        for i, zone in enumerate(self.zones):
            now = _read_int(zone / "energy_uj")
            step = now - self.last[i]
            if step < 0:  # the counter wrapped
                step += self.ranges[i]
            self.total_uj += step
            self.last[i] = now
        return self.total_uj / 1e6


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def rapl_reader(root: Path = POWERCAP) -> tuple[Reader | None, str]:
    """A reader of the CPU packages' energy, or ``(None, why not)``."""
    zones = rapl_packages(root)
    if not zones:
        return None, f"no RAPL energy counters here ({root} has no intel-rapl zones)"
    try:
        return _RaplCounter(zones), ""
    except PermissionError:
        return None, (
            f"the RAPL energy counters ({zones[0]}/energy_uj) are readable only by root here"
        )
    except (OSError, ValueError) as err:
        return None, f"the RAPL energy counters could not be read: {err}"


def nvml_reader(device: torch.device) -> tuple[Reader | None, str]:
    """A reader of the GPU's total-energy counter through NVML, or ``(None, why not)``."""
    try:
        import pynvml
    except ImportError:
        return None, "GPU energy needs NVML: pip install nvidia-ml-py"
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as err:  # NVML absent, or the GPU has no energy counter (pre-Volta)
        return None, f"the GPU's energy counter could not be read through NVML: {err}"
    return (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0), ""


class EnergyMeter:
    """Joules used between :meth:`start` and :meth:`stop` on ``device``.

    Args:
        device: ``cpu`` (RAPL) or a CUDA device (NVML).
        reader: A counter to use instead of the hardware's (joules, monotonic), for tests.
    """

    def __init__(self, device: str | torch.device = "cpu", reader: Reader | None = None) -> None:
        self.device = torch.device(device)
        if reader is not None:
            self.reader, self.missing, self.method = reader, "", "given"
        elif self.device.type == "cuda":
            self.reader, self.missing = nvml_reader(self.device)
            self.method = "nvml" if self.reader else None
        else:
            self.reader, self.missing = rapl_reader()
            self.method = "rapl" if self.reader else None
        self._start: float | None = None
        self.joules: float | None = None

    def start(self) -> None:
        self._start = self.reader() if self.reader else None
        self.joules = None

    def stop(self) -> float | None:
        """Joules since :meth:`start` (also kept in :attr:`joules`), or ``None`` when no
        counter could be read."""
        if self.reader is None or self._start is None:
            return None
        self.joules = max(0.0, self.reader() - self._start)
        return self.joules


def energy_per_image(joules: float | None, images: int) -> float | None:
    """Joules per image of a window that ran ``images`` images (``None`` passes through)."""
    if joules is None or images <= 0:
        return None
    return joules / images


__all__ = ["EnergyMeter", "energy_per_image", "nvml_reader", "rapl_packages", "rapl_reader"]
