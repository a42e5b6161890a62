"""What the never-stale cache costs: bytes compared per forward and bytes kept as snapshots.

Not a timing. The derived-tensor cache (:mod:`vitres.layers.cache`) compares each source
parameter with a snapshot on every lookup; this script counts those bytes for a forward
at a non-native size (and patch size) and sets them against the bytes of all parameters,
which a forward pass reads anyway. Writes ``benchmarks/results/cache_cost.{json,md}``.

    PYTHONPATH=. python benchmarks/cache_cost.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import vitres
from vitres.layers import cache as cache_module

RESULTS = Path(__file__).resolve().parent / "results"

CASES = [
    ("vit_base_patch16", {"num_classes": 1000}, (320, 240), None),
    ("vit_base_patch16", {"num_classes": 1000}, (320, 240), 20),
    ("vit_small_patch16", {"pos_embed": "cpb", "num_classes": 1000}, (320, 240), None),
    ("mixer_b16", {"num_classes": 1000}, (320, 240), None),
]


def measure(name: str, overrides: dict, size: tuple[int, int], patch: int | None) -> dict:
    torch.manual_seed(0)
    model = vitres.create_model(name, **overrides).eval()
    compared = {"bytes": 0}
    original = cache_module._Snapshot.refresh

    def counting(self, source):
        compared["bytes"] += 2 * source.numel() * source.element_size()  # source + snapshot
        return original(self, source)

    x = torch.randn(1, model.config.in_chans, *size)
    cache_module._Snapshot.refresh = counting
    try:
        with torch.no_grad():
            model(x, patch_size=patch)  # fills the caches
            compared["bytes"] = 0
            model(x, patch_size=patch)  # a steady-state forward
    finally:
        cache_module._Snapshot.refresh = original
    caches = [
        cache
        for module in model.modules()
        for cache in (getattr(module, "_cache", None), getattr(module, "_kernels", None))
        if cache is not None
    ]
    kept = sum(
        snap.copy.numel() * snap.copy.element_size()
        for cache in caches
        for snap in cache._snapshots.values()
        if snap.copy is not None
    )
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "model": name,
        "overrides": overrides,
        "input": list(size),
        "patch_size": patch or model.config.patch_size,
        "param_bytes": params,
        "compared_bytes_per_forward": compared["bytes"],
        "compared_fraction_of_params": compared["bytes"] / params,
        "snapshot_bytes": kept,
        "snapshot_fraction_of_params": kept / params,
    }


def main() -> None:
    torch.set_num_threads(1)
    rows = [measure(*case) for case in CASES]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache_cost.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Cache cost: bytes compared per forward and snapshot memory (not a timing)",
        "",
        "| model | input | patch | params MB | compared per forward MB (× params) | snapshots MB (× params) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = f" ({r['overrides']['pos_embed']})" if "pos_embed" in r["overrides"] else ""
        lines.append(
            f"| {r['model']}{extra} | {r['input'][0]}x{r['input'][1]} | {r['patch_size']} | "
            f"{r['param_bytes'] / 1e6:.1f} | {r['compared_bytes_per_forward'] / 1e6:.2f} "
            f"({r['compared_fraction_of_params']:.3f}) | {r['snapshot_bytes'] / 1e6:.2f} "
            f"({r['snapshot_fraction_of_params']:.3f}) |"
        )
    (RESULTS / "cache_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
