"""Token merging (ToMe): identity, invariants against direct computations, masks, the
knob's checks, and merging as a sweep dimension."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vitres
from vitres.layers.layout import TokenLayout
from vitres.layers.pos_embed import ContinuousPositionBias, offset_bias_at, rope_2d, rope_at
from vitres.tokens import TokenMode, merged_forward, model_merge_schedule
from vitres.tokens.merge import (
    MergeReduction,
    bipartite_soft_matching,
    merge_schedule,
    parse_merge,
    parse_merge_list,
)
from vitres.tune.records import Measurement, SweepConfig, group_key

POS_KINDS = ["learned", "sincos", "rope", "cpb", "mlp", "none"]
HEADS = [
    dict(),  # class token pool
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


@pytest.mark.parametrize("pos", POS_KINDS)
def test_no_merge_is_exactly_the_plain_forward(pos):
    model = tiny_vit(pos_embed=pos)
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        plain = model(x)
        for merge in (None, 0, 1.0):
            assert torch.equal(merged_forward(model, x, merge), plain)
        # a real setting changes the output (the knob is wired)
        assert not torch.allclose(merged_forward(model, x, 0.5), plain, atol=1e-6)


@pytest.mark.parametrize("pos", POS_KINDS)
@pytest.mark.parametrize("head", range(len(HEADS)))
def test_merging_path_without_merges_equals_plain_forward(pos, head):
    """The merging machinery (sizes, proportional-attention bias, RoPE at token centres,
    the continuous bias read at centre offsets, padding dropped) with nothing merged is
    the plain forward, with and without padding masks."""
    model = tiny_vit(pos_embed=pos, **HEADS[head])
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        for valid in (None, (20, 30)):
            plain = model(x, valid_size=valid)
            path = merged_forward(model, x, 1, valid_size=valid, schedule=[0, 0])
            assert torch.allclose(path, plain, atol=1e-6), (valid, (path - plain).abs().max())


def test_merging_two_identical_tokens_changes_nothing():
    """Two identical patches give identical tokens in every block (no position
    embedding); merging them into one token of size 2 with proportional attention and a
    size-weighted mean must leave the output unchanged."""
    model = tiny_vit(pos_embed="none", class_token=False, global_pool="avg")
    x = torch.randn(1, 3, 32, 32)
    # on the 4 x 4 grid, patches 0 and 4 (even positions: set A) and 1 (odd: set B) are equal
    x[..., 8:16, 0:8] = x[..., 0:8, 0:8]
    x[..., 0:8, 8:16] = x[..., 0:8, 0:8]
    with torch.no_grad():
        plain = model(x)
        merged = merged_forward(model, x, 1, schedule=[1, 1])
        # block 1 merges patch 0 into 1 (size 2); block 2 merges patch 4 into them (size 3)
        assert torch.allclose(merged, plain, atol=1e-5), (merged - plain).abs().max()
        # merging different tokens does change the output
        other = torch.randn(1, 3, 32, 32)
        assert not torch.allclose(
            merged_forward(model, other, 1, schedule=[1, 1]), model(other), atol=1e-4
        )


def test_proportional_attention_equals_duplicated_keys():
    """A key of size s with a log(s) bias draws the weight of s copies of it."""
    model = tiny_vit()
    attn = model.blocks[0].attn
    x = torch.randn(1, 5, 32)
    sizes = torch.tensor([[1.0, 3.0, 1.0, 2.0, 1.0]])
    copies = x.repeat_interleave(sizes[0].long(), dim=1)  # (1, 8, 32)
    with torch.no_grad():
        weighted, _ = attn.forward_with_metric(x, attn_mask=sizes.log()[:, None, None, :])
        duplicated = attn(copies)
    first_copy = torch.tensor([0, 1, 4, 5, 7])
    assert torch.allclose(weighted, duplicated[:, first_copy], atol=1e-6)


def test_size_weighted_pool_is_the_mean_over_patches():
    model = tiny_vit(class_token=False, global_pool="avg")
    tokens = torch.randn(2, 4, 32)
    sizes = torch.tensor([[1.0, 2.0, 4.0, 1.0], [3.0, 1.0, 1.0, 3.0]])
    pooled = model.pool(tokens, token_sizes=sizes)
    for b in range(2):
        expanded = tokens[b].repeat_interleave(sizes[b].long(), dim=0)
        assert torch.allclose(pooled[b], expanded.mean(dim=0), atol=1e-6)


def _reference_matching(metric: torch.Tensor, r: int):
    """ToMe's matching written out with loops, for one sample."""
    unit = [v / v.norm() for v in metric]
    a, b = unit[0::2], unit[1::2]
    best = [max(range(len(b)), key=lambda j: float(a[i] @ b[j])) for i in range(len(a))]
    score = [float(a[i] @ b[best[i]]) for i in range(len(a))]
    order = sorted(range(len(a)), key=lambda i: (-score[i], i))
    return order[r:], order[:r], [best[i] for i in order[:r]]


def test_bipartite_matching_against_a_loop_reference():
    torch.manual_seed(1)
    metric = torch.randn(3, 11, 6)
    for r in (0, 1, 3, 5):
        plan = bipartite_soft_matching(metric, r)
        for s in range(3):
            kept, sources, destinations = _reference_matching(metric[s], r)
            assert plan.kept[s].tolist() == kept
            assert plan.sources[s].tolist() == sources
            assert plan.destinations[s].tolist() == destinations
    x = torch.randn(3, 11, 4)
    plan = bipartite_soft_matching(metric, 3)
    out = plan.apply(x)
    assert out.shape == (3, 8, 4)
    for s in range(3):  # each B token gains exactly the sources merged into it
        expected = x[s, 1::2].clone()
        for src, dst in zip(plan.sources[s].tolist(), plan.destinations[s].tolist()):
            expected[dst] += x[s, 0::2][src]
        assert torch.allclose(out[s, 3:], expected, atol=1e-6)
        assert torch.equal(out[s, :3], x[s, 0::2][plan.kept[s]])
    with pytest.raises(ValueError, match="can merge 0..5"):
        bipartite_soft_matching(metric, 6)


def test_a_merge_keeps_mass_sizes_centres_and_prefix():
    torch.manual_seed(2)
    prefix, n = 2, 9
    x = torch.randn(2, prefix + n, 8)
    sizes = torch.tensor([[1.0, 2, 1, 1, 3, 1, 1, 2, 1]] * 2)
    centres = torch.rand(2, n, 2).double() * 4
    layout = TokenLayout(x, prefix, (3, 3), cells=centres.clone(), sizes=sizes.clone())
    reduction = MergeReduction([3])
    out, state = reduction(0, x, torch.randn(2, prefix + n, 5), layout)
    assert out.shape == (2, prefix + n - 3, 8)
    assert torch.equal(out[:, :prefix], x[:, :prefix])
    assert torch.allclose(state.sizes.sum(1), sizes.sum(1))
    mass = (x[:, prefix:] * sizes[..., None]).sum(1)
    assert torch.allclose((out[:, prefix:] * state.sizes[..., None]).sum(1), mass, atol=1e-5)
    moment = (centres * sizes[..., None].double()).sum(1)
    assert torch.allclose((state.cells * state.sizes[..., None].double()).sum(1), moment)


def test_rope_and_position_bias_at_grid_centres_are_the_tables():
    """The per-token RoPE and continuous bias the merged path uses are the grid tables at
    whole-cell positions (direct reference: rope_2d and the bias module's forward)."""
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(5.0), indexing="ij")
    from vitres.layers.pos_embed import grid_coordinates

    gy, gx = grid_coordinates((3, 5), (4, 4), dtype=torch.float64)
    cos, sin = rope_at(gy, gx, 16, 100.0)
    ref_cos, ref_sin = rope_2d((3, 5), 16, (4, 4), 100.0)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    torch.manual_seed(0)
    cpb = ContinuousPositionBias(2, (4, 4), hidden_dim=16)
    with torch.no_grad():
        centres = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1)[None]
        read = offset_bias_at(cpb.offset_table((3, 5)), centres)
        assert torch.allclose(read[0], cpb((3, 5)), atol=1e-6)
        # halfway between two cells: the mean of the two cells' bias
        half = offset_bias_at(cpb.offset_table((3, 5)), torch.tensor([[[0.0, 0.0], [0.0, 0.5]]]))
        table = cpb.offset_table((3, 5))
        assert torch.allclose(half[0, :, 1, 0], (table[:, 2, 4] + table[:, 2, 5]) / 2, atol=1e-6)


def test_padding_is_never_merged_into_content():
    """Padding-only tokens are dropped before merging: the merged output does not
    depend on what the padding holds."""
    model = tiny_vit(size_policy="pad", class_token=False, global_pool="avg")
    x = torch.randn(2, 3, 48, 48)
    other = x.clone()
    other[..., 24:, :] = torch.randn(2, 3, 24, 48) * 5  # only whole padding tokens change
    other[..., :, 32:] = 7.0
    with torch.no_grad():
        a = merged_forward(model, x, 0.5, valid_size=(20, 30))
        b = merged_forward(model, other, 0.5, valid_size=(20, 30))
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.isfinite(a).all()
        # and the schedule counts content tokens only: 3 x 4 of them
        assert not torch.allclose(a, model(x, valid_size=(20, 30)), atol=1e-6)


def test_schedules():
    assert merge_schedule(8, 9, 4) == (4, 2, 1, 1)  # a fixed r is capped at half
    assert merge_schedule(0, 49, 4) == (0, 0, 0, 0)
    assert merge_schedule(0.5, 49, 4) == (6, 6, 6, 6)  # keeps round(24.5) = 25
    for n in (9, 49, 196):  # a keep ratio keeps that share at every resolution
        kept = n - sum(merge_schedule(0.25, n, 12))
        assert kept == max(1, math.floor(0.25 * n + 0.5))
    with pytest.raises(ValueError, match="smallest keep ratio"):
        merge_schedule(0.01, 196, 2)
    model = tiny_vit()
    assert model_merge_schedule(model, (40, 48), 2) == (2, 2)


@pytest.mark.parametrize(
    "bad, match",
    [(-1, "negative"), (1.5, r"\(0, 1\]"), (0.0, r"\(0, 1\]"), (float("nan"), r"\(0, 1\]"),
     (True, "must be a number"), ("0.5", "parse_merge")],
)  # fmt: skip
def test_bad_merge_values_are_refused(bad, match):
    model = tiny_vit()
    with pytest.raises(ValueError, match=match):
        merged_forward(model, torch.randn(1, 3, 32, 32), bad)


def test_parsing_and_the_mixer_refusal():
    assert parse_merge("8") == 8 and isinstance(parse_merge("8"), int)
    assert parse_merge("0.5") == 0.5 and parse_merge("1.0") == 1.0 and parse_merge("none") is None
    with pytest.raises(ValueError, match="cannot read"):
        parse_merge("lots")
    assert parse_merge_list("0,8,0.5,1.0,8") == [None, 8, 0.5]
    torch.manual_seed(0)
    mixer = vitres.create_model(
        "mixer_s16", img_size=32, patch_size=8, num_classes=3, embed_dim=16, depth=1,
        tokens_mlp_dim=8, channels_mlp_dim=16,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="no attention"):
        merged_forward(mixer, x, 4)
    assert torch.equal(merged_forward(mixer, x, 0), mixer(x))


def test_merging_runs_in_bf16_and_under_compile_shapes():
    model = tiny_vit(pos_embed="rope").to(torch.bfloat16)
    with torch.no_grad():
        out = merged_forward(model, torch.randn(2, 3, 40, 40, dtype=torch.bfloat16), 0.5)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_merge_as_a_sweep_dimension(tmp_path):
    plain = SweepConfig("m", (28, 28))
    merged = SweepConfig("m", (28, 28), merge=8)
    assert merged.key() == plain.key() + "|merge-r8"
    assert SweepConfig("m", (28, 28), merge=0.5).key().endswith("|merge-keep0.5")
    assert SweepConfig("m", (28, 28), merge=0) == plain  # merging nothing is no merging
    assert group_key(merged) != group_key(plain) and group_key(plain).merge is None
    # a record written before the field existed reads back as unmerged, same key
    old = Measurement(plain).to_dict()
    del old["config"]["merge"]
    restored = Measurement.from_dict(json.loads(json.dumps(old)))
    assert restored.config.merge is None and restored.key == plain.key()
    again = Measurement.from_json(Measurement(merged).to_json())
    assert again.config.merge == 8 and again.key == merged.key()
    from vitres.tune.grid import build_grid

    with pytest.warns(UserWarning, match="token merging does not run on"):
        grid = build_grid("m", "20,28", backends=("eager", "onnxruntime"), merges=[None, 8])
    assert {(c.backend, c.merge) for c in grid} == {
        ("eager", None),
        ("eager", 8),
        ("onnxruntime", None),
    }
    from vitres.export import unwrap_model

    with pytest.raises(ValueError, match="does not export"):
        unwrap_model(TokenMode(merge=8).bind(tiny_vit()))


def test_baseline_is_never_a_merged_config():
    from vitres.measure import LatencyStats
    from vitres.tune.recommend import select_baseline

    def record(merge, ms):
        stats = LatencyStats(ms, 0.0, ms, ms, ms, ms, ms, 5, False)
        config = SweepConfig("m", (28, 28), merge=merge)
        return Measurement(config, accuracy=0.9, latency=stats, native_resolution=(28, 28))

    chosen = select_baseline([record(8, 1.0), record(None, 2.0)])
    assert chosen.config.merge is None


def test_evaluate_with_merge():
    from vitres.data import load_fashion_mnist
    from vitres.evaluate import evaluate

    torch.manual_seed(0)
    model = vitres.create_model(
        "vit_tiny_patch4", img_size=16, in_chans=1, num_classes=10, embed_dim=16, depth=2,
        num_heads=2,
    ).eval()  # fmt: skip
    data = load_fashion_mnist("test")
    plain = evaluate(model, data, [16], batch_size=50, limit=100)
    none = evaluate(model, data, [16], batch_size=50, limit=100, merge=1.0)
    merged = evaluate(model, data, [16], batch_size=50, limit=100, merge=4)
    assert none.accuracy == plain.accuracy and merged.token_mode.merge == 4
    with torch.no_grad():
        from vitres.data import eval_batches

        correct = sum(
            int((merged_forward(model, x, 4).argmax(-1) == y).sum())
            for x, y in eval_batches(
                data, 16, 50, mean=model.config.mean, std=model.config.std, in_chans=1, limit=100
            )
        )
    assert merged.accuracy["16"] == correct / 100
