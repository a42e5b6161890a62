"""What the never-stale cache costs: bytes compared per forward and bytes kept as snapshots.

Not a timing. The derived-tensor cache (:mod:`vitres.layers.cache`) compares each source
parameter with a snapshot on every lookup; this script counts those bytes for a forward
at a non-native size (and patch size) and sets them against the bytes of all parameters,
which a forward pass reads anyway. Writes ``benchmarks/results/cache_cost.{json,md}``.

    PYTHONPATH=. python benchmarks/cache_cost.py
"""

from __future__ import annotations

import argparse

import torch

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import vitres
from benchmarks._common import RESULTS_DIR, markdown_table, write_json, write_markdown
from vitres.layers import cache as cache_module

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
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    torch.set_num_threads(1)
    rows = [measure(*case) for case in CASES]
    write_json(RESULTS_DIR / "cache_cost.json", rows)
    header = (
        "model",
        "input",
        "patch",
        "params MB",
        "compared per forward MB (× params)",
        "snapshots MB (× params)",
    )
    cells = [
        (
            r["model"]
            + (f" ({r['overrides']['pos_embed']})" if "pos_embed" in r["overrides"] else ""),
            f"{r['input'][0]}x{r['input'][1]}",
            r["patch_size"],
            f"{r['param_bytes'] / 1e6:.1f}",
            f"{r['compared_bytes_per_forward'] / 1e6:.2f} ({r['compared_fraction_of_params']:.3f})",
            f"{r['snapshot_bytes'] / 1e6:.2f} ({r['snapshot_fraction_of_params']:.3f})",
        )
        for r in rows
    ]
    lines = [
        "# Cache cost: bytes compared per forward and snapshot memory (not a timing)",
        "",
        *markdown_table(header, cells),
    ]
    write_markdown(RESULTS_DIR / "cache_cost.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
