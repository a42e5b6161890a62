"""Mixed-resolution tokens: the quadtree against the uniform models it generalises.

References: a tree without splits is the coarse-patch model, a tree with every split the
fine-patch model (equal to 1e-5 for every position-embedding kind, on a non-square
input); the budget, tie-breaking and saliency against direct counts; the sweep, records
and CLI plumbing of ``token_budget``.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

import vitres
from vitres.cli import main
from vitres.layers.pos_embed import (
    ContinuousPositionBias,
    CoordinateMLPPosEmbed,
    grid_coordinates,
    resample_pos_embed,
    rope_2d,
    rope_at,
    sincos_2d,
    sincos_at,
)
from vitres.models.vit import VisionTransformer
from vitres.tokens import TokenMode, quadtree_forward, quadtree_plan
from vitres.tokens.quadtree import (
    QuadtreeTokenizer,
    build_tree,
    cell_means,
    cell_saliency,
    embed_cells,
    quadtree_cells,
    root_count,
)
from vitres.tune.grid import build_grid
from vitres.tune.records import Measurement, SweepConfig, group_key, read_results

KINDS = ("learned", "sincos", "rope", "cpb", "mlp", "none")
TOL = 1e-5


def tiny(pos_embed: str, **overrides) -> VisionTransformer:
    torch.manual_seed(0)
    base = dict(
        img_size=(16, 24),
        patch_size=4,
        in_chans=2,
        num_classes=5,
        embed_dim=32,
        depth=2,
        num_heads=2,
        pos_embed=pos_embed,
        size_policy="pad",
        cpb_hidden_dim=16,
    )
    return VisionTransformer(**{**base, **overrides}).eval()


HEADS = {
    "avg": dict(class_token=False, global_pool="avg"),
    "token+registers": dict(class_token=True, global_pool="token", reg_tokens=2),
}


def images(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the two reference trees


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_split_is_the_fine_model(kind, head):
    model = tiny(kind, **HEADS[head])
    x = images(3, 2, 32, 48)  # non-square: an 8 x 12 fine grid
    with torch.no_grad():
        fine = model(x)
        tree = quadtree_forward(model, x, 8 * 12)
        beyond = quadtree_forward(model, x, 10_000)  # above the fine count: clamped to it
    assert torch.allclose(tree, fine, atol=TOL, rtol=0)
    assert torch.allclose(beyond, fine, atol=TOL, rtol=0)


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "learned"])
@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize("kernel", ["bicubic", "nearest"])
def test_no_split_is_the_coarse_model(kind, head, levels, kernel):
    """With the budget at the root count the tree is the uniform model at patch 2**(L-1) p
    (whose kernel is PI-resized with the model's mode; the tree's follows the model's
    when ``kernel_resize_mode=None``, and is ``nearest`` by default)."""
    model = tiny(kind, kernel_resize_mode=kernel, **HEADS[head])
    x = images(2, 2, 32, 48)
    coarse_patch = 4 * 2 ** (levels - 1)
    budget = (32 // coarse_patch) * (48 // coarse_patch)
    assert budget == root_count((8, 12), levels)
    tokenizers = [QuadtreeTokenizer(levels=levels, kernel_resize_mode=None)]
    if kernel == "nearest":
        tokenizers.append(QuadtreeTokenizer(levels=levels))  # the default
    with torch.no_grad():
        coarse = model(x, patch_size=coarse_patch)
        for tokenizer in tokenizers:
            tree = quadtree_forward(model, x, budget, quadtree=tokenizer)
            assert torch.allclose(tree, coarse, atol=TOL, rtol=0)


@pytest.mark.parametrize("head", list(HEADS))
def test_no_split_learned_table_is_the_region_average(head):
    """A learned table is resampled to the fine grid and averaged over each region: the
    coarse model whose table *is* that average (at its native grid, so it is not
    resampled again) is the reference."""
    model = tiny("learned", **HEADS[head])
    x = images(2, 2, 32, 48)  # fine grid 8 x 12; coarse (patch 8) grid 4 x 6 = native
    prefix = model.num_prefix_tokens
    with torch.no_grad():
        fine = resample_pos_embed(model.pos_embed, (8, 12), (4, 6), prefix)[0]
        averaged = F.avg_pool2d(fine[prefix:].T.reshape(1, -1, 8, 12), 2)[0]
        reference = tiny("learned", **HEADS[head])
        reference.pos_embed.copy_(torch.cat([fine[:prefix], averaged.flatten(1).T])[None])
        expected = reference(x, patch_size=8)
        average = QuadtreeTokenizer(levels=2, table_positions="average", kernel_resize_mode=None)
        tree = quadtree_forward(model, x, 24, quadtree=average)
        plain_coarse = model(x, patch_size=8)  # bicubic at the coarse grid instead
    assert torch.allclose(tree, expected, atol=TOL, rtol=0)
    assert not torch.allclose(tree, plain_coarse, atol=TOL, rtol=0)  # the test can fail


def test_clipped_grid_all_splits_is_the_fine_model():
    """A 7 x 7 grid (28 px, patch 4) has clipped coarse cells; all splits is still exact."""
    model = tiny("learned", img_size=28, in_chans=1)
    x = images(2, 1, 28, 28)
    clip = QuadtreeTokenizer(levels=3, align="clip")
    with torch.no_grad():
        tree = quadtree_forward(model, x, 49, quadtree=clip)
        assert torch.allclose(tree, model(x), atol=TOL, rtol=0)


def test_resize_alignment_is_the_model_at_the_aligned_size():
    """``align="resize"`` resizes 28 px to 32 (a multiple of the 16 px coarsest patch)."""
    model = tiny("sincos", img_size=28, in_chans=1)
    x = images(2, 1, 28, 28)
    aligned = QuadtreeTokenizer(levels=3, align="resize")
    fitted, plan = quadtree_plan(model, x, 10, quadtree=aligned)
    assert fitted.shape[-2:] == (32, 32) and plan.grid == (8, 8)
    resized = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        tree = quadtree_forward(model, x, 64, quadtree=aligned)
        assert torch.allclose(tree, model(resized), atol=TOL, rtol=0)


@pytest.mark.parametrize("head", list(HEADS))
def test_level_table_positions_no_split_is_the_coarse_model(head):
    model = tiny("learned", **HEADS[head])
    x = images(2, 2, 32, 48)
    level = QuadtreeTokenizer(levels=2, table_positions="level", kernel_resize_mode=None)
    with torch.no_grad():
        tree = quadtree_forward(model, x, 24, quadtree=level)
        fine = quadtree_forward(model, x, 96, quadtree=level)
        assert torch.allclose(tree, model(x, patch_size=8), atol=TOL, rtol=0)
        assert torch.allclose(fine, model(x), atol=TOL, rtol=0)


def test_size_weighted_pool_is_the_mean_of_repeated_tokens():
    """A token of size s counts as s copies of itself in the mean."""
    model = tiny("learned", **HEADS["avg"])
    tokens = images(2, 3, 32)
    sizes = torch.tensor([[1.0, 4.0, 2.0], [1.0, 1.0, 16.0]])
    pooled = model.pool(tokens, token_sizes=sizes)
    for b in range(2):
        repeated = tokens[b].repeat_interleave(sizes[b].long(), dim=0)
        assert torch.allclose(pooled[b], repeated.mean(dim=0), atol=1e-6)


def test_proportional_attention_is_attention_over_repeated_keys():
    """``log(s)`` on a key's logit is that key (and value) repeated ``s`` times."""
    torch.manual_seed(0)
    q, k, v = images(1, 2, 3, 8), images(1, 2, 3, 8, seed=2), images(1, 2, 3, 8, seed=3)
    sizes = torch.tensor([1, 4, 2])
    bias = sizes.float().log()[None, None, None, :]
    weighted = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    repeated = F.scaled_dot_product_attention(
        q, k.repeat_interleave(sizes, dim=2), v.repeat_interleave(sizes, dim=2)
    )
    assert torch.allclose(weighted, repeated, atol=1e-6)


def test_proportional_weighting_changes_only_mixed_trees():
    model = tiny("rope")
    x = images(2, 2, 32, 48)
    plain = QuadtreeTokenizer(levels=3, proportional=False)
    weighted = QuadtreeTokenizer(levels=3, proportional=True)
    with torch.no_grad():
        for uniform in (6, 96):  # no split / every split: all sizes equal
            a = quadtree_forward(model, x, uniform, quadtree=plain)
            assert torch.allclose(
                a, quadtree_forward(model, x, uniform, quadtree=weighted), atol=TOL
            )
        mixed_plain = quadtree_forward(model, x, 30, quadtree=plain)
        mixed_weighted = quadtree_forward(model, x, 30, quadtree=weighted)
    assert not torch.allclose(mixed_plain, mixed_weighted, atol=1e-3)


# ------------------------------------------------------------------ positions at any point


def test_coordinate_forms_match_the_grid_forms():
    grid, base = (3, 5), (4, 4)
    ys, xs = grid_coordinates(grid, base, dtype=torch.float64)
    assert torch.equal(sincos_at(ys, xs, 16), sincos_2d(grid, 16, base))
    cos, sin = rope_2d(grid, 8, base)
    cos_at, sin_at = rope_at(ys, xs, 8)
    assert torch.equal(cos, cos_at) and torch.equal(sin, sin_at)
    torch.manual_seed(0)
    mlp = CoordinateMLPPosEmbed(8, hidden_dim=16)
    ny, nx = grid_coordinates(grid)
    assert torch.allclose(mlp.at(ny, nx), mlp(grid), atol=1e-6)
    cpb = ContinuousPositionBias(2, base, hidden_dim=16)
    bias = cpb.at(ys[None], xs[None], num_prefix_tokens=1)[0]
    assert torch.allclose(bias, cpb(grid, num_prefix_tokens=1), atol=1e-5)


def test_cell_means_of_clipped_cells():
    cells = quadtree_cells((5, 3), 2)  # level 1: 3 x 2 cells, the last row/column clipped
    table = torch.arange(15.0)[:, None]
    means = cell_means(table, cells)
    start = cells.offsets[1]
    for i in range(start, len(cells)):
        t, c = int(cells.top[i]), int(cells.left[i])
        h, w = int(cells.height[i]), int(cells.width[i])
        block = table.reshape(5, 3)[t : t + h, c : c + w]
        assert means[i, 0] == pytest.approx(float(block.mean()))


# ------------------------------------------------------------------ the budget


@pytest.mark.parametrize("budget", [6, 7, 9, 10, 20, 40, 95, 96])
def test_budget_is_respected_exactly(budget):
    """On a grid the coarsest cell divides, each split adds 3: the count is the largest
    ``roots + 3 j`` within the budget (capped at the fine count)."""
    x = images(4, 1, 32, 48)
    plan = QuadtreeTokenizer(levels=3).plan(x, 4, budget)
    roots = 2 * 3
    expected = min(96, roots + 3 * ((budget - roots) // 3))
    assert plan.counts == [expected] * 4
    for image in range(4):  # the regions tile the image: every pixel exactly once
        cover = torch.zeros(32, 48)
        for top, left, h, w in plan.boxes(image).tolist():
            cover[top : top + h, left : left + w] += 1
        assert torch.equal(cover, torch.ones(32, 48))


def test_clipped_budget_is_a_ceiling_and_used_greedily():
    cells = quadtree_cells((7, 7), 3)
    scores = torch.rand(len(cells), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for budget in range(4, 50):
        leaves = build_tree(scores, cells, budget).tolist()
        assert len(leaves) <= budget
        gains = [len(cells.children[i]) - 1 for i in leaves if cells.children[i]]
        # nothing left whose split still fits (greedy fills the budget)
        assert all(len(leaves) + g > budget for g in gains)
    assert build_tree(scores, cells, 49).tolist() == list(range(49))  # every split, by the tree


def test_budget_below_the_roots_and_bad_values_are_errors():
    model = tiny("learned")
    x = images(1, 2, 32, 48)
    with pytest.raises(ValueError, match=r"below the 6 tokens of the coarsest tiling"):
        quadtree_forward(model, x, 5, quadtree=QuadtreeTokenizer(levels=3))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="token_budget must be a positive int"):
            quadtree_forward(model, x, bad)
    with pytest.raises(ValueError, match="needs token_budget"):
        quadtree_forward(model, x, None, quadtree=QuadtreeTokenizer())
    with pytest.raises(ValueError, match="levels must be an int >= 1"):
        QuadtreeTokenizer(levels=0)
    with pytest.raises(ValueError, match="unknown saliency"):
        QuadtreeTokenizer(saliency="edges")
    mixer = vitres.create_model("mixer_tiny4", img_size=16, in_chans=1, num_classes=3)
    with pytest.raises(ValueError, match="need attention"):
        quadtree_forward(mixer, torch.randn(1, 1, 16, 16), 8)


def test_flat_image_ties_go_large_then_top_then_left():
    x = torch.zeros(1, 1, 32, 32)  # 8 x 8 fine grid, roots 2 x 2 of 4 x 4 cells
    plan = QuadtreeTokenizer(levels=3).plan(x, 4, 7)  # one split: the top-left root
    boxes = plan.boxes(0).tolist()
    assert boxes == [
        [0, 0, 8, 8],
        [0, 8, 8, 8],
        [0, 16, 16, 16],
        [8, 0, 8, 8],
        [8, 8, 8, 8],
        [16, 0, 16, 16],
        [16, 16, 16, 16],
    ]


@pytest.mark.parametrize("saliency", ["gradient", "variance"])
def test_saliency_splits_the_textured_half(saliency):
    flat = torch.full((1, 1, 32, 16), 0.3)
    texture = images(1, 1, 32, 16, seed=3)
    x = torch.cat([flat, texture], dim=-1)  # left flat, right textured
    plan = QuadtreeTokenizer(levels=3, saliency=saliency).plan(x, 4, 4 + 3 * 6)
    boxes = plan.boxes(0).tolist()
    left = [b for b in boxes if b[1] < 16]
    right = [b for b in boxes if b[1] >= 16]
    assert left == [[0, 0, 16, 16], [16, 0, 16, 16]]  # the flat half stays two coarse tokens
    assert len(right) == 20 and all(b[2] <= 8 for b in right)


def test_saliency_scores_against_direct_sums():
    x = images(2, 3, 8, 12)
    cells = quadtree_cells((2, 3), 2)  # patch 4
    grad = cell_saliency(x, 4, cells, "gradient")
    var = cell_saliency(x, 4, cells, "variance")
    xd = x.double()
    dx = F.pad(xd[..., 1:] - xd[..., :-1], (0, 1))
    dy = F.pad(xd[..., 1:, :] - xd[..., :-1, :], (0, 0, 0, 1))
    energy = (dx**2 + dy**2).sum(1)
    for i in range(len(cells)):
        t, c = int(cells.top[i]) * 4, int(cells.left[i]) * 4
        h, w = int(cells.height[i]) * 4, int(cells.width[i]) * 4
        region = xd[:, :, t : t + h, c : c + w]
        sse = ((region - region.mean(dim=(2, 3), keepdim=True)) ** 2).sum(dim=(1, 2, 3))
        assert torch.allclose(grad[:, i], energy[:, t : t + h, c : c + w].sum(dim=(1, 2)))
        assert torch.allclose(var[:, i], sse)


# ------------------------------------------------------------------ batches and masks


def test_batch_of_different_token_counts_equals_one_at_a_time():
    """On a clipped grid trees of one budget can differ in length; each image's logits
    are those of running it alone, and nothing is NaN."""
    model = tiny("rope", img_size=28, in_chans=1, class_token=True, global_pool="token")
    x = torch.zeros(4, 1, 28, 28)
    x[0, :, :16, :16] = images(1, 1, 16, 16, seed=5)  # detail in the whole top-left root
    x[1, :, 16:, 16:] = images(1, 1, 12, 12, seed=6)  # detail in the clipped corner root
    x[2] = images(1, 1, 28, 28, seed=7)
    budget = 8  # one split (+3) fits; a clipped 2 x 1 cell's split (+1) only in image 1
    clip = QuadtreeTokenizer(levels=3, align="clip")
    _, plan = quadtree_plan(model, x, budget, quadtree=clip)
    assert plan.counts[:2] == [7, 8] and max(plan.counts) <= budget
    with torch.no_grad():
        together = quadtree_forward(model, x, budget, quadtree=clip)
        alone = torch.cat(
            [quadtree_forward(model, x[i : i + 1], budget, quadtree=clip) for i in range(4)]
        )
    assert torch.isfinite(together).all()
    assert torch.allclose(together, alone, atol=TOL, rtol=0)


def test_valid_size_crops_the_padding_before_tokenising():
    model = tiny("cpb")
    content = images(2, 2, 30, 44)
    padded = F.pad(content, (0, 10, 0, 6))
    with torch.no_grad():
        masked = quadtree_forward(model, padded, 30, valid_size=(30, 44))
        cropped = quadtree_forward(model, content, 30)
    assert torch.isfinite(masked).all()
    assert torch.allclose(masked, cropped, atol=TOL, rtol=0)


def test_tree_of_a_batch_is_each_image_alone():
    x = images(5, 1, 28, 40)
    tokenizer = QuadtreeTokenizer(levels=3)
    plan = tokenizer.plan(x, 4, 20)
    for i in range(5):
        assert torch.equal(plan.index[i], tokenizer.plan(x[i : i + 1], 4, 20).index[0])


def test_gradients_flow_in_training_mode():
    model = tiny("learned").train()
    out = quadtree_forward(model, images(2, 2, 32, 48), 30)
    out.sum().backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.pos_embed.grad.abs().sum() > 0


# ------------------------------------------------------------------ sweep, records, CLI


def test_records_without_a_budget_read_back_unchanged(tmp_path):
    old = SweepConfig("m", (28, 28), None, 1, "fp32", "eager", 1, "cpu")
    line = Measurement(old).to_dict()
    del line["config"]["token_budget"]  # a record written before the field existed
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(line) + "\n")
    (record,) = read_results(path)
    assert record.config.token_budget is None
    assert record.key == "m|28x28|pnative|b1|eager|fp32|t1|cpu"
    budgeted = SweepConfig("m", (28, 28), None, 1, "fp32", "eager", 1, "cpu", token_budget=16)
    assert budgeted.key() == record.key + "|k16"
    assert group_key(budgeted) != group_key(old) and group_key(old).token_budget is None
    assert "K16" in group_key(budgeted).label()
    with pytest.raises(ValueError, match="token_budget must be a positive int"):
        SweepConfig("m", (28, 28), token_budget=0)


def test_grid_has_a_budget_axis_for_eager_backends_only():
    with pytest.warns(UserWarning, match="eager backends only"):
        configs = build_grid(
            "m", "16,28", backends=("eager", "onnxruntime"), token_budgets=(None, 16)
        )
    eager = {(c.resolution[0], c.token_budget) for c in configs if c.backend == "eager"}
    assert eager == {(16, None), (28, None), (16, 16), (28, 16)}
    assert all(c.token_budget is None for c in configs if c.backend == "onnxruntime")


def test_sweep_and_recommend_trade_budget_against_resolution(tmp_path):
    from vitres.measure import TimingConfig
    from vitres.tune.recommend import recommend, select_baseline
    from vitres.tune.sweep import run_sweep

    path = vitres.save_model(tiny("learned", img_size=28, in_chans=1), tmp_path / "t.safetensors")
    records = run_sweep(
        str(path),
        out_path=tmp_path / "r.jsonl",
        resolutions="16,28",
        token_budgets=(None, 16),
        isolate=False,
        progress=False,
        timing=TimingConfig(warmup_calls=1, warmup_s=0.0, min_calls=3, min_s=0.0),
        max_attempts=1,
    )
    assert [m.status for m in records] == ["ok"] * 4
    by_key = {(m.config.resolution[0], m.config.token_budget): m for m in records}
    _, plan = quadtree_plan(vitres.load_model(path), torch.zeros(1, 1, 28, 28), 16)
    assert by_key[(28, 16)].tokens == 16 and by_key[(28, 16)].grid == plan.grid
    assert by_key[(28, None)].tokens == 49
    assert by_key[(16, 16)].tokens == 16  # 4 x 4 fine grid: every split, the plain model
    assert select_baseline(records).config.token_budget is None
    rec = recommend(records)
    assert {m.key for m in rec.front} <= {m.key for m in records}
    assert any(m.config.token_budget == 16 for m in rec.feasible)


def test_eval_cli_token_budget(tmp_path, capsys):
    path = vitres.save_model(tiny("sincos", img_size=28, in_chans=1), tmp_path / "t.safetensors")
    pytest.importorskip("vitres.data")
    try:
        vitres.data.load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not present")
    args = ["eval", "--model", str(path), "--res", "32", "--limit", "32", "--json"]
    assert main([*args, "--token-budget", "64"]) == 0  # every split: the plain model
    full = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert full["token_budget"] == 64 and full["accuracy"] == plain["accuracy"]
    assert main([*args, "--token-budget", "2"]) == 2
    assert re.search(r"error: token_budget 2 is below the \d+ tokens", capsys.readouterr().err)
    assert main([*args, "--token-budget", "4", "--quadtree-levels", "3"]) == 0  # 2 x 2 roots
    assert json.loads(capsys.readouterr().out)["token_budget"] == 4
    assert main([*args, "--quadtree-levels", "3"]) == 2
    assert "needs --token-budget" in capsys.readouterr().err


def test_nearest_kernel_is_the_base_kernel_on_the_averaged_cell():
    """PI-resizing with ``B`` = nearest makes a coarse cell's embedding the base kernel
    applied to the cell averaged down to one fine patch."""
    model = tiny("none", **HEADS["avg"])
    x = images(2, 2, 32, 48)
    cells = quadtree_cells((8, 12), 3)
    embed = model.patch_embed

    def kernel(size):
        return embed.kernel(size, "nearest", True)

    table = embed_cells(x, kernel, embed.proj.bias, 4, cells)  # (B, M, D)
    for level in (1, 2):
        side = 2**level
        averaged = F.avg_pool2d(x, side)  # each 4*side px cell -> one 4 px patch
        expected = F.conv2d(averaged, embed.proj.weight, embed.proj.bias, stride=4)
        start = cells.offsets[level]
        count = cells.level_shapes[level][0] * cells.level_shapes[level][1]
        got = table[:, start : start + count]
        assert torch.allclose(got, expected.flatten(2).transpose(1, 2), atol=1e-5)
    with torch.no_grad():  # and the option reaches the model
        a = quadtree_forward(model, x, 30, quadtree=QuadtreeTokenizer(kernel_resize_mode="nearest"))
        b = quadtree_forward(model, x, 30, quadtree=QuadtreeTokenizer(kernel_resize_mode="bicubic"))
    assert not torch.allclose(a, b, atol=1e-4)


def test_merge_and_token_budget_together_are_refused_clearly():
    model = tiny("learned").eval()
    x = images(1, 2, 16, 24)
    with pytest.raises(ValueError, match="merge and token_budget cannot be combined yet"):
        TokenMode(merge=2, token_budget=12).forward(model, x)
    # a merge that merges nothing is no merge: the budgeted forward runs as without it
    torch.testing.assert_close(
        TokenMode(merge=0, token_budget=12).forward(model, x),
        quadtree_forward(model, x, 12),
        rtol=0,
        atol=0,
    )


def test_records_and_groups_keep_merge_and_budget_apart():
    plain = SweepConfig("m", (28, 28), None, 1, "fp32", "eager", 1, "cpu")
    merged = SweepConfig("m", (28, 28), None, 1, "fp32", "eager", 1, "cpu", merge=8)
    budgeted = SweepConfig("m", (28, 28), None, 1, "fp32", "eager", 1, "cpu", token_budget=16)
    both = SweepConfig("m", (28, 28), None, 1, "fp32", "eager", 1, "cpu", 8, 16)
    base = plain.key()
    assert merged.key() == base + "|merge-r8"
    assert budgeted.key() == base + "|k16"
    assert both.key() == base + "|merge-r8|k16"
    assert len({group_key(c) for c in (plain, merged, budgeted, both)}) == 4
    for config in (plain, merged, budgeted, both):
        assert SweepConfig.from_dict(config.to_dict()) == config


def test_grid_never_pairs_merge_with_a_budget():
    with pytest.warns(UserWarning, match="cannot be combined yet"):
        configs = build_grid("m", "28", merges=(None, 8), token_budgets=(None, 16))
    assert {(c.merge, c.token_budget) for c in configs} == {(None, None), (8, None), (None, 16)}


def test_a_bound_token_budget_is_refused_by_export_not_exported_as_a_uniform_grid():
    from vitres.export import unwrap_model
    from vitres.tokens import TokenMode

    model = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3
    )
    assert unwrap_model(TokenMode().bind(model)) is not None
    with pytest.raises(ValueError, match="do not export"):
        unwrap_model(TokenMode(token_budget=8).bind(model))
