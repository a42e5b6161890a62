"""Packing images of different sizes: every strategy equals running each image alone,
for every position-embedding kind; plans, masks (no NaN), the measured "auto" choice on
a fake clock, bad input, and `vitres eval --pack` on a folder of mixed sizes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import vitres
from vitres.cli import main
from vitres.measure import interleaved_latency
from vitres.tokens.pack import AUTO_CANDIDATES, StrategyChooser, forward_packed
from vitres.tokens.pack_plan import plan_batches

POS_KINDS = ["learned", "sincos", "rope", "cpb", "mlp", "none"]
STRATEGIES = ["loop", "pad", "bucket", "pack"]
HEADS = [
    dict(),
    dict(class_token=False, global_pool="avg", reg_tokens=2),
    dict(global_pool="map"),
    dict(reg_tokens=1, global_pool="avgmax", dist_token=True, head_dist=True),
]


def tiny_vit(**overrides):
    torch.manual_seed(0)
    base = dict(
        img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=2
    )
    return vitres.create_model("vit_tiny_patch8", **{**base, **overrides}).eval()


def random_images(seed: int, count: int = 9, channels: int = 3) -> list[torch.Tensor]:
    """A random mix of sizes and aspect ratios, with 1-token-wide and 1-token-tall images."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [
        tuple(int(v) for v in torch.randint(8, 60, (2,), generator=generator)) for _ in range(count)
    ]
    sizes += [(8, 40), (48, 8), (8, 8)]
    return [torch.randn(channels, h, w, generator=generator) for h, w in sizes]


@pytest.mark.parametrize("pos", POS_KINDS)
def test_every_strategy_equals_each_image_alone(pos):
    for seed, head in enumerate(HEADS):
        model = tiny_vit(pos_embed=pos, **head)
        images = random_images(seed)
        with torch.no_grad():
            alone = torch.cat([model(image[None]) for image in images])
            for strategy in STRATEGIES:
                # small batches: several calls per plan, and several images per row
                out = forward_packed(model, images, strategy=strategy, batch_tokens=160)
                assert out.shape == alone.shape
                assert (out - alone).abs().max() <= 1e-5, (pos, head, strategy)


def test_packing_keeps_patch_size_and_size_policy():
    for policy in ("pad", "crop", "resize"):
        model = tiny_vit(size_policy=policy, pos_embed="rope")
        images = [torch.randn(3, h, w) for h, w in [(19, 33), (40, 17), (8, 9), (30, 30)]]
        with torch.no_grad():
            alone = torch.cat([model(image[None], patch_size=4) for image in images])
            packed = forward_packed(model, images, strategy="pack", patch_size=4)
        assert (packed - alone).abs().max() <= 1e-5, policy


def test_padding_rows_never_produce_nan():
    """Rows with much padding, block-diagonal masks included: every output is finite and
    still equal to the image alone."""
    model = tiny_vit(pos_embed="cpb")
    images = random_images(5, count=4)
    with torch.no_grad():
        alone = torch.cat([model(image[None]) for image in images])
        for strategy, options in [("pad", {}), ("bucket", {}), ("pack", {"max_tokens": 60})]:
            plan = vitres.pack(images, model, strategy, batch_tokens=400, **options)
            assert plan.padding_fraction > 0.05, strategy
            out = forward_packed(model, plan)
            assert torch.isfinite(out).all() and (out - alone).abs().max() <= 1e-5


def test_plans_place_every_image_once_without_overlap():
    generator = torch.Generator().manual_seed(3)
    lengths = [int(v) for v in torch.randint(1, 60, (57,), generator=generator)]
    for strategy in STRATEGIES:
        batches = plan_batches(lengths, strategy, batch_tokens=256)
        placed = sorted(i for b in batches for i in b.images)
        assert placed == list(range(len(lengths))), strategy
        for batch in batches:
            assert [lengths[i] for i in batch.images] == list(batch.lengths)
            assert batch.slots <= 256 or len(set(batch.rows)) == 1
            spans: dict[int, list[tuple[int, int]]] = {}
            for row, offset, n in zip(batch.rows, batch.offsets, batch.lengths):
                assert offset + n <= batch.row_length
                spans.setdefault(row, []).append((offset, offset + n))
            for row_spans in spans.values():
                row_spans.sort()
                assert all(a[1] <= b[0] for a, b in zip(row_spans, row_spans[1:]))
    pad = plan_batches(lengths, "pad", batch_tokens=256)
    assert {b.row_length for b in pad} == {max(lengths)}
    bucket = plan_batches(lengths, "bucket", batch_tokens=256)
    order = [lengths[i] for b in bucket for i in b.images]
    assert order == sorted(lengths)  # buckets hold similar lengths
    pack = plan_batches(lengths, "pack", max_tokens=80)
    assert all(b.row_length <= 80 for b in pack)
    packed_slots = sum(b.slots for b in pack)
    assert packed_slots < sum(b.slots for b in pad)  # packing wastes less than padding
    with pytest.raises(ValueError, match="shorter than the longest image"):
        plan_batches(lengths, "pack", max_tokens=10)


class RotatingClock:
    """A fake clock for interleaved timing: each timed call of candidate ``name`` lasts
    ``durations[name]`` seconds, in the order interleaved rounds run them."""

    def __init__(self, durations: dict[str, float], order: list[str], rounds: int) -> None:
        self.ticks: list[float] = []
        now = 0.0
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                self.ticks += [now, now + durations[name]]
                now += durations[name] + 1.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.ticks[self.reads - 1]


def test_interleaved_latency_rotates_and_uses_the_clock():
    calls: list[str] = []
    runs = {name: (lambda x, n=name: calls.append(n)) for name in ("a", "b", "c")}
    clock = RotatingClock({"a": 3.0, "b": 1.0, "c": 2.0}, ["a", "b", "c"], rounds=3)
    samples = interleaved_latency(runs, None, rounds=3, calls=1, warmup_calls=1, clock=clock)
    assert samples == {"a": [3.0] * 3, "b": [1.0] * 3, "c": [2.0] * 3}
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # after warm-up


def test_auto_chooses_by_measurement_and_caches_per_mix():
    model = tiny_vit()
    images = random_images(7, count=13)
    durations = {"loop": 0.5, "bucket": 0.2, "pack": 0.3}
    clock = RotatingClock(durations, list(AUTO_CANDIDATES), rounds=3)
    chooser = StrategyChooser(rounds=3, clock=clock)
    with torch.no_grad():
        plan = vitres.pack(images, model, "auto", chooser=chooser)
        assert plan.strategy == "bucket" and plan.choice.strategy == "bucket"
        assert plan.choice.median_ms == pytest.approx({k: v * 1000 for k, v in durations.items()})
        reads = clock.reads
        # the same model and mix of sizes: served from the cache, nothing timed
        same_sizes = [torch.randn_like(image) for image in images]
        again = vitres.pack(same_sizes, model, "auto", chooser=chooser)
        assert again.strategy == "bucket" and clock.reads == reads
        # a different mix (many more, larger images) is measured again
        other_clock = RotatingClock(
            {"loop": 0.1, "bucket": 0.2, "pack": 0.3}, list(AUTO_CANDIDATES), 3
        )
        chooser.clock = other_clock
        big = [torch.randn(3, 64, 64) for _ in range(40)]
        assert vitres.pack(big, model, "auto", chooser=chooser).strategy == "loop"
        assert other_clock.reads > 0
        out = forward_packed(model, plan)
        alone = torch.cat([model(image[None]) for image in images])
    assert (out - alone).abs().max() <= 1e-5


def test_bad_input_says_which_image_and_why():
    model = tiny_vit(size_policy="crop")
    good = torch.randn(3, 16, 16)
    cases = [
        ([], "empty"),
        ([good, "image"], "image 1 is a str"),
        ([good, torch.randn(1, 3, 16, 16)], r"image 1 has shape .*expected \(C, H, W\)"),
        ([good, torch.randn(1, 16, 16)], "image 1: expected 3 channel"),
        ([good, torch.randn(3, 4, 16)], "image 1: image of 4x16 is smaller than one 8x8 patch"),
        ([good, torch.full((3, 16, 16), float("nan"))], "image 1: images contain NaN"),
    ]
    for images, match in cases:
        with pytest.raises(ValueError, match=match):
            vitres.pack(images, model, "pack")
    with pytest.raises(ValueError, match="unknown packing strategy"):
        vitres.pack([good], model, "zip")
    torch.manual_seed(0)
    mixer = vitres.create_model(
        "mixer_s16", img_size=32, patch_size=8, num_classes=3, embed_dim=16, depth=1,
        tokens_mlp_dim=8, channels_mlp_dim=16,
    ).eval()  # fmt: skip
    with pytest.raises(ValueError, match="Use strategy='loop'"):
        vitres.pack([good], mixer, "pack")
    from vitres.tokens.pack import run_plan

    images = [torch.randn(3, 32, 40), torch.randn(3, 24, 24)]
    with torch.no_grad():
        out = run_plan(mixer, vitres.pack(images, mixer, "loop"))
        assert torch.equal(out, torch.cat([mixer(i[None]) for i in images]))


def test_eval_pack_on_a_folder_of_mixed_sizes(tmp_path, capsys):
    from vitres.data import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist, resize, to_float

    torch.manual_seed(0)
    model = vitres.create_model(
        "vit_tiny_patch4", img_size=16, in_chans=1, num_classes=10, embed_dim=16, depth=1,
        num_heads=2, mean=FMNIST_MEAN, std=FMNIST_STD,
    ).eval()  # fmt: skip
    path = tmp_path / "tiny.safetensors"
    vitres.save_model(model, path)
    data = load_fashion_mnist("test")
    generator = torch.Generator().manual_seed(0)
    expected = []
    for index in range(12):
        image, label = data[index]
        h, w = (int(v) for v in torch.randint(12, 40, (2,), generator=generator))
        pixels = resize(to_float(image)[None], (h, w))[0, 0].clamp(0, 1)
        folder = tmp_path / "mixed" / f"{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        stored = (pixels * 255).round().byte()
        Image.fromarray(stored.numpy()).save(folder / f"{index}.png")
        x = (stored.float() / 255 - FMNIST_MEAN[0]) / FMNIST_STD[0]
        with torch.no_grad():
            expected.append((label, int(model(x[None, None]).argmax())))
    accuracies = {}
    for strategy in ("loop", "pack", "auto"):
        code = main(["eval", "--model", str(path), "--data", str(tmp_path / "mixed"),
                     "--pack", strategy, "--json"])  # fmt: skip
        assert code == 0
        result = json.loads(capsys.readouterr().out)
        accuracies[strategy] = result["accuracy"]["native"]
        assert result["n"] == 12 and result["pack"] == strategy
    # a folder's label is the index of its class folder among the sorted ones
    classes = sorted({f"{label:02d}" for label, _ in expected})
    correct = sum(pred == classes.index(f"{label:02d}") for label, pred in expected)
    assert set(accuracies.values()) == {correct / 12}
    assert main(["eval", "--model", str(path), "--data", str(tmp_path / "mixed"),
                 "--pack", "pack", "--res", "28"]) == 2  # fmt: skip
    assert "drop --res" in capsys.readouterr().err
