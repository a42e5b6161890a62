"""Measurement: timing rules on a fake clock, statistics, FLOPs (counted vs closed form),
peak memory, environment."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitres.measure import (
    PeakMemoryTracker,
    analytic_flops,
    attention_flops,
    count_flops,
    env_fingerprint,
    latency_stats,
    percentile,
    set_threads,
    time_calls,
)
from vitres.tune.measurement import evaluate_accuracy


class FakeClock:
    """Time advances only when the timed function runs, by the next given duration."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0
        self.syncs = 0

    def clock(self) -> float:
        return self.now

    def fn(self) -> None:
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1

    def sync(self) -> None:
        self.syncs += 1


def test_time_calls_counts_warmup_and_samples_exactly():
    clock = FakeClock([0.001 * (i + 1) for i in range(20)])  # call i takes (i+1) ms
    samples = time_calls(
        clock.fn,
        warmup_calls=3,
        warmup_s=0.0,
        min_calls=5,
        min_s=0.0,
        clock=clock.clock,
        sync=clock.sync,
    )
    # 3 warm-up calls (1, 2, 3 ms) are dropped; the next 5 are the samples
    assert clock.calls == 8
    assert clock.syncs == 8
    assert samples == pytest.approx([0.004, 0.005, 0.006, 0.007, 0.008])


def test_time_calls_time_rules_extend_both_phases():
    clock = FakeClock([0.3])
    samples = time_calls(
        clock.fn, warmup_calls=1, warmup_s=1.0, min_calls=2, min_s=1.0, clock=clock.clock
    )
    # warm-up needs >= 1.0 s: 4 calls (1.2 s); measuring needs >= 1.0 s: 4 calls
    assert clock.calls == 8
    assert len(samples) == 4
    # the call-count rule wins when it is the longer one
    clock = FakeClock([0.3])
    samples = time_calls(
        clock.fn, warmup_calls=6, warmup_s=1.0, min_calls=7, min_s=1.0, clock=clock.clock
    )
    assert clock.calls == 13 and len(samples) == 7


def test_latency_stats_exact_values_match_numpy():
    samples = [v / 1000 for v in [7, 1, 9, 3, 5, 2, 10, 4, 8, 6]]  # 1..10 ms, shuffled
    stats = latency_stats(samples)
    assert stats.median_ms == pytest.approx(5.5)
    assert stats.iqr_ms == pytest.approx(7.75 - 3.25)
    assert stats.p90_ms == pytest.approx(9.1)
    assert stats.p95_ms == pytest.approx(9.55)
    assert stats.p99_ms == pytest.approx(9.91)
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.mean_ms == pytest.approx(5.5)
    assert stats.count == 10
    assert stats.unstable  # IQR / median = 0.82
    values = sorted(np.random.default_rng(0).random(37))
    for q in (5, 25, 50, 75, 90, 99):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_unstable_flag_threshold():
    steady = latency_stats([0.010] * 8 + [0.0104, 0.0104])  # IQR 0
    assert not steady.unstable
    # median 10 ms, IQR 1.2 ms -> 0.12 > 0.10
    noisy = latency_stats([v / 1000 for v in [9.4, 9.4, 9.4, 10.0, 10.0, 10.6, 10.6, 10.6, 10.6]])
    assert noisy.iqr_ms / noisy.median_ms > 0.10 and noisy.unstable
    calm = latency_stats([v / 1000 for v in [9.8, 9.8, 10.0, 10.0, 10.2, 10.2]])
    assert not calm.unstable


def test_time_calls_from_fake_clock_to_stats():
    clock = FakeClock([0.002, 0.004])  # alternating 2 ms / 4 ms
    stats = latency_stats(
        time_calls(clock.fn, warmup_calls=2, warmup_s=0, min_calls=4, min_s=0, clock=clock.clock)
    )
    assert stats.count == 4
    assert stats.median_ms == pytest.approx(3.0)
    assert stats.min_ms == pytest.approx(2.0)


# ---------------------------------------------------------------- FLOPs


@dataclass
class TinyConfig:
    img_size: tuple = (16, 16)
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10
    embed_dim: int = 32
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    class_token: bool = True
    reg_tokens: int = 1


class HandBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, int(dim * ratio)), nn.Linear(int(dim * ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .reshape(b, t, 3, self.heads, d // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class HandViT(nn.Module):
    """A hand-built ViT with the layer shapes the closed form assumes."""

    def __init__(self, cfg: TinyConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TinyConfig()
        self.config = cfg
        self.embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.prefix = nn.Parameter(torch.zeros(1, 1 + cfg.reg_tokens, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            HandBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])


def test_attention_flops_by_hand():
    assert attention_flops((2, 3, 10, 8), (2, 3, 12, 8), (2, 3, 12, 8)) == 4 * 2 * 3 * 10 * 12 * 8
    # (B, N, heads, E) layout of the flash kernels gives the same count
    assert (
        attention_flops((2, 10, 3, 8), (2, 12, 3, 8), (2, 12, 3, 8), "bnhe")
        == 4 * 2 * 3 * 10 * 12 * 8
    )


def test_count_flops_adds_attention_and_matches_closed_form():
    model = HandViT().eval()
    for resolution in [(16, 16), (20, 28)]:
        x = torch.randn(2, 1, *resolution)
        counted = count_flops(model, x)
        expected = analytic_flops(model.config, resolution, batch=2)
        assert counted == expected
        with FlopCounterMode(display=False) as raw:  # the plain counter misses CPU attention
            model(x)
        t = (resolution[0] // 4) * (resolution[1] // 4) + 2
        assert counted - raw.get_total_flops() == 2 * 4 * 2 * t * t * 32  # depth · 4·B·T²·D


def test_count_flops_does_not_double_count_math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = HandViT().eval()
    x = torch.randn(1, 1, 16, 16)
    with sdpa_kernel(SDPBackend.MATH):
        assert count_flops(model, x) == analytic_flops(model.config, (16, 16))


def test_count_flops_matches_closed_form_on_vitres_models():
    vitres = pytest.importorskip("vitres")
    if not hasattr(vitres, "create_model"):
        pytest.skip("vitres.create_model not available yet")
    kw = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10)
    models = [
        vitres.create_model(
            "vit_tiny_patch16", depth=2, embed_dim=64, num_heads=4, reg_tokens=2, **kw
        ),
        vitres.create_model("mixer_tiny16", depth=2, **kw),
    ]
    for model in models:
        model.eval()
        for resolution, patch in [((28, 28), None), ((30, 42), None), ((28, 28), 7)]:
            x = torch.randn(1, 1, *resolution)
            with torch.inference_mode():
                model(x, patch_size=patch)  # fill run-time caches (resampled weights)
            counted = count_flops(model, x, patch_size=patch)
            grid = model.grid_size(resolution, patch_size=patch)
            expected = analytic_flops(model.config, resolution, patch, grid=grid)
            assert abs(counted - expected) <= 0.01 * expected, (
                type(model).__name__,
                resolution,
                patch,
            )


def test_analytic_flops_grows_quadratically_in_tokens_for_vit():
    cfg = TinyConfig(depth=1, reg_tokens=0, class_token=False, num_classes=0)
    f = [analytic_flops(cfg, (4 * s, 4 * s)) for s in (2, 4, 8)]  # N = 4, 16, 64
    # second differences in N: only the 4·N²·D attention term is quadratic
    per_n = [(f[1] - f[0]) / 12, (f[2] - f[1]) / 48]
    # slope between (N0, N1) is α + 4·D·(N0 + N1); between (N1, N2) it is α + 4·D·(N1 + N2)
    assert per_n[1] - per_n[0] == pytest.approx(4 * 32 * ((16 + 64) - (4 + 16)))


# ---------------------------------------------------------------- memory, accuracy, env


def test_peak_memory_tracker_sees_a_large_allocation():
    tracker = PeakMemoryTracker("cpu")
    tracker.start()
    block = torch.ones(48 * 2**20 // 4)  # 48 MiB, touched
    del block
    peak = tracker.peak_mb()
    assert tracker.method in ("rss_hwm_inproc", "rss_maxrss")
    if tracker.method == "rss_hwm_inproc":
        assert 40 <= peak <= 200


def test_evaluate_accuracy_with_padding_to_a_fixed_batch():
    calls = []

    def run(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        logits = torch.zeros(x.shape[0], 3)
        logits[:, 1] = x[:, 0, 0, 0]  # class 1 iff the pixel is positive
        return logits

    x = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0]).reshape(5, 1, 1, 1)
    y = torch.tensor([1, 0, 0, 1, 0])
    accuracy, n = evaluate_accuracy(run, [(x, y)], pad_to=2)
    assert (accuracy, n) == (0.8, 5)
    assert calls == [2, 2, 2]  # the last chunk of one image is padded to two


def test_env_fingerprint_and_threads():
    previous = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        env = env_fingerprint(1)
    finally:
        torch.set_num_threads(previous)
    assert env["torch_threads"] == 1
    assert env["torch"] == torch.__version__
    assert set(env["cpu_flags"]) == {
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "amx_tile",
        "amx_bf16",
    }
    assert len(env["hostname_hash"]) == 12 and env["logical_cores"] >= 1
    with pytest.raises(ValueError):
        set_threads(0)
    assert not math.isnan(float(env["logical_cores"]))
