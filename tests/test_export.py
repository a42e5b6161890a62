"""ONNX export: one graph for every size, parity with eager, INT8 quantisation, the CLI."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import vitres
from vitres.cli import main
from vitres.data import eval_batches, load_fashion_mnist
from vitres.export import (
    DEFAULT_OPSET,
    ExportParityError,
    OnnxModel,
    calibration_batches,
    check_parity,
    export_onnx,
    quantize_onnx,
)


def tiny_vit(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    base = dict(
        img_size=28,
        in_chans=1,
        num_classes=10,
        embed_dim=32,
        depth=2,
        num_heads=2,
        pos_embed_antialias=True,  # exercises ONNX Resize(antialias=1), opset 18
    )
    return vitres.create_model("vit_tiny_patch4", **{**base, **overrides}).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_vit()
    path = tmp_path_factory.mktemp("onnx") / "vit.onnx"
    result = export_onnx(model, path, (36, 32))  # non-native, non-square
    return model, result


def test_dynamic_export_has_symbolic_batch_height_width(exported):
    _, result = exported
    assert result.dynamic and result.opset == DEFAULT_OPSET == 23 and result.patch_size == 4
    graph = onnx.load(str(result.path)).graph
    # opset 23: the exporter emits ONNX's fused Attention, which ONNX Runtime runs fused
    assert sum(n.op_type == "Attention" for n in graph.node) == 2  # one per block
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]
    assert dims[1].dim_value == 1
    # the position table is resampled in the graph, not folded into a constant
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert resizes, "position-table resampling was folded away"
    assert result.antialias_resize
    antialias = [a.i for n in resizes for a in n.attribute if a.name == "antialias"]
    assert 1 in antialias


def test_export_parity_reported_at_default_sizes(exported):
    _, result = exported
    report = result.parity
    assert report is not None and report.ok and report.worst <= 1e-4
    # example, native, a non-square one that shrinks rows and grows columns, and one the
    # patch does not divide
    assert set(report.max_abs_diff) == {"36x32", "28x28", "20x40", "31x25"}


def test_one_graph_serves_many_sizes_and_batches(exported):
    model, result = exported
    sizes = [(16, 20), (28, 28), (40, 56), (56, 40), (17, 23), (64, 12)]
    for batch in (1, 5):
        report = check_parity(model, result.path, sizes, batch_size=batch)
        assert report.ok, report
        assert max(report.max_abs_diff.values()) <= 1e-4
    # and the values are real logits, not zeros
    runner = OnnxModel(result.path)
    x = torch.randn(2, 1, 40, 24)
    with torch.no_grad():
        expected = model(x)
    got = runner(x)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_parity_check_fails_loudly_for_a_wrong_graph(exported):
    _, result = exported
    other = tiny_vit(seed=1)  # different weights: the graph does not compute this model
    with pytest.raises(ExportParityError, match="disagrees with eager"):
        check_parity(other, result.path, [(28, 28), (36, 32)])


def test_onnx_model_validates_inputs(exported):
    _, result = exported
    runner = OnnxModel(result.path, patch_size=4, multiple_of_patch=True)
    with pytest.raises(ValueError, match="multiples of 4"):
        runner(torch.randn(1, 1, 30, 28))
    with pytest.raises(ValueError, match="expected 1 channel"):
        runner(torch.randn(1, 3, 28, 28))
    assert runner(torch.randn(2, 1, 32, 28)).shape == (2, 10)


def test_onnx_model_checks_inputs_as_eager_mode_does(exported):
    """Every input eager mode rejects, the ONNX runner rejects with the same kind of
    message (and eager's own message matches, so both speak the same language)."""
    model, result = exported
    runner = OnnxModel(result.path)  # patch size and policy from the file's metadata
    assert runner.patch_size == 4 and not runner.multiple_of_patch
    good = torch.randn(2, 1, 28, 28)
    bad_inputs = {
        "smaller than one 4x4 patch": torch.randn(1, 1, 3, 28),
        "expected floating-point images, got dtype torch.int64": torch.randint(
            0, 255, (1, 1, 28, 28)
        ),
        "NaN or Inf": good.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))),
        "expected 1 channel": torch.randn(1, 3, 28, 28),
        r"\(B, C, H, W\), got 3-D .*unsqueeze": torch.randn(1, 28, 28),
        r"\(B, C, H, W\), got 5-D": torch.randn(1, 1, 1, 28, 28),
    }
    inf = good.clone()
    inf[1, 0, 5, 5] = float("inf")
    bad_inputs["contain NaN or Inf"] = inf
    for message, x in bad_inputs.items():
        with pytest.raises(ValueError, match=message):
            runner(x)
        with pytest.raises(ValueError, match=message):
            model(x)
    with pytest.raises(ValueError, match="got dtype int64"):
        runner(np.zeros((1, 1, 28, 28), dtype=np.int64))
    with pytest.raises(ValueError, match="got dtype torch.bool"):
        runner(torch.zeros(1, 1, 28, 28, dtype=torch.bool))
    with pytest.raises(ValueError, match="torch.Tensor or numpy array"):
        runner([[[[0.0] * 28] * 28]])


def test_onnx_model_casts_other_float_types_to_float32(exported):
    _, result = exported
    runner = OnnxModel(result.path)
    x = torch.randn(2, 1, 24, 36)
    expected = runner(x)
    assert expected.dtype == torch.float32
    for dtype, atol in ((torch.float64, 1e-6), (torch.float16, 0.05), (torch.bfloat16, 0.2)):
        cast = x.to(dtype)
        got = runner(cast)
        assert got.dtype == torch.float32
        # exactly the float32 result of the cast input (the rounding is the input's)
        torch.testing.assert_close(got, runner(cast.float()), atol=0, rtol=0)
        torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    torch.testing.assert_close(runner(x.numpy().astype(np.float64)), expected, atol=1e-6, rtol=0)


def test_patch_size_zero_or_negative_is_an_error(tmp_path, capsys):
    model = tiny_vit()
    for patch in (0, -4):
        with pytest.raises(ValueError, match="patch_size must be a positive int"):
            export_onnx(model, tmp_path / "p.onnx", patch_size=patch)
    checkpoint = vitres.save_model(model, tmp_path / "tiny.safetensors")
    for patch in ("0", "-1"):
        out = tmp_path / "p0.onnx"
        rc = main(["export", "--model", str(checkpoint), "--out", str(out), "--patch-size", patch])
        assert rc == 2 and not out.exists()
        assert "patch_size must be a positive int" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx"))


def test_unsupported_exports_raise_clear_errors(tmp_path):
    mixer = vitres.create_model(
        "mixer_tiny16", img_size=28, patch_size=4, in_chans=1, num_classes=10, depth=1
    )
    with pytest.raises(ValueError, match="token-mixing weights depend on the token grid"):
        export_onnx(mixer, tmp_path / "m.onnx", (24, 32))
    model = tiny_vit()
    with pytest.raises(ValueError, match="non-native, non-square"):
        export_onnx(model, tmp_path / "a.onnx", (28, 28))
    with pytest.raises(ValueError, match="non-native, non-square"):
        export_onnx(model, tmp_path / "b.onnx", (32, 32))
    with pytest.raises(ValueError, match="opset 17 is not supported"):
        export_onnx(model, tmp_path / "c.onnx", opset=17)
    with pytest.raises(ValueError, match="pos_embed_mode='area'"):
        export_onnx(tiny_vit(pos_embed_mode="area"), tmp_path / "d.onnx")
    with pytest.raises(ValueError, match="pos_embed='cpb'"):
        export_onnx(tiny_vit(pos_embed="cpb"), tmp_path / "e.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_int8_dynamic_and_static_agree_with_fp32_on_real_images(exported, tmp_path):
    model, result = exported
    calibration = calibration_batches(model, "fashion-mnist", [(28, 28), (20, 36)], num_images=64)
    assert calibration[0].shape[1:] == (1, 28, 28) and calibration[-1].shape[1:] == (1, 20, 36)
    facts = {
        "dynamic": quantize_onnx(result.path, tmp_path / "dyn.onnx", "dynamic"),
        "static": quantize_onnx(
            result.path,
            tmp_path / "static.onnx",
            "static",
            calibration=calibration,
            calib_method="minmax",
        ),
    }
    # dynamo graphs need the value_info repair before ORT's quantiser can read them
    assert all(f["preprocess"].startswith("strip_value_info") for f in facts.values())
    # 2 blocks x (qkv, proj, fc1, fc2) + head (+ the patch conv for static); attention is
    # one fused float Attention operator at opset 23, so no attention matmul to exclude
    assert facts["dynamic"]["quantized_candidates"] == 9
    assert facts["static"]["quantized_candidates"] == 10
    assert all(f["excluded_nodes"] == 0 for f in facts.values())
    test = load_fashion_mnist("test")
    cfg = model.config
    for mode in ("dynamic", "static"):
        runner = OnnxModel(tmp_path / ("dyn.onnx" if mode == "dynamic" else "static.onnx"))
        ops = {n.op_type for n in onnx.load(str(runner.path)).graph.node}
        assert ("QuantizeLinear" in ops) if mode == "static" else ("MatMulInteger" in ops)
        assert {"LayerNormalization", "Attention"} <= ops  # sensitive ops left in float
        for size in ((28, 28), (20, 36)):  # the same INT8 graph at two sizes
            x, _ = next(
                eval_batches(test, size, 128, mean=cfg.mean, std=cfg.std, in_chans=1, limit=128)
            )
            with torch.no_grad():
                expected = model(x)
            got = runner(x)
            # random weights, so no accuracy to compare: the INT8 logits must follow the
            # fp32 ones closely (Pearson correlation over all logits of 128 images)
            corr = torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1]
            assert corr > 0.995, (mode, size, float(corr))


def test_int8_at_opset_18_keeps_the_attention_matmuls_float(tmp_path):
    """At opset 18 attention is decomposed (MatMul, Softmax, MatMul): the two
    activation-by-activation matmuls per block are excluded from quantisation."""
    model = tiny_vit()
    result = export_onnx(model, tmp_path / "vit18.onnx", (36, 32), opset=18)
    assert result.opset == 18 and result.parity.ok
    facts = quantize_onnx(result.path, tmp_path / "dyn18.onnx", "dynamic")
    assert facts["quantized_candidates"] == 9 and facts["excluded_nodes"] == 4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "dyn18.onnx")).graph.node}
    assert "Attention" not in ops and {"Softmax", "MatMulInteger", "MatMul"} <= ops
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    corr = torch.corrcoef(
        torch.stack([OnnxModel(tmp_path / "dyn18.onnx")(x).flatten(), expected.flatten()])
    )
    assert corr[0, 1] > 0.995


def test_quantize_rejects_bad_arguments(exported, tmp_path):
    _, result = exported
    with pytest.raises(ValueError, match="needs calibration images"):
        quantize_onnx(result.path, tmp_path / "q.onnx", "static")
    with pytest.raises(ValueError, match="calibration method"):
        quantize_onnx(result.path, tmp_path / "q.onnx", "static", calibration=[], calib_method="kl")
    with pytest.raises(ValueError, match="INT8 mode"):
        quantize_onnx(result.path, tmp_path / "q.onnx", "fp8")


def test_cli_exports_a_static_mixer_and_rejects_a_dynamic_one(tmp_path, capsys):
    torch.manual_seed(0)
    mixer = vitres.create_model(
        "mixer_tiny16", img_size=28, patch_size=4, in_chans=1, num_classes=10, depth=1
    ).eval()
    checkpoint = vitres.save_model(mixer, tmp_path / "mixer.safetensors")
    out = tmp_path / "mixer.onnx"
    assert main(["export", "--model", str(checkpoint), "--out", str(out)]) == 2
    assert "token-mixing weights depend on the token grid" in capsys.readouterr().err
    rc = main(
        ["export", "--model", str(checkpoint), "--out", str(out), "--static", "--size", "24x32"]
    )
    assert rc == 0 and out.exists()
    printed = capsys.readouterr().out
    assert "exactly 24x32" in printed and "parity" in printed
    runner = OnnxModel(out)
    x = torch.randn(3, 1, 24, 32)
    with torch.no_grad():
        np.testing.assert_allclose(runner(x).numpy(), mixer(x).numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="static graph"):
        runner(torch.randn(1, 1, 28, 28))


def test_export_keeps_a_bound_patch_size(tmp_path):
    from vitres.models.common import FixedPatchSize

    model = tiny_vit(pos_embed_antialias=False)
    result = export_onnx(FixedPatchSize(model, 7), Path(tmp_path) / "p7.onnx", (42, 35))
    assert result.patch_size == 7 and result.parity.ok
    x = torch.randn(2, 1, 35, 49)
    with torch.no_grad():
        expected = model(x, patch_size=7)
    torch.testing.assert_close(OnnxModel(result.path)(x), expected, atol=1e-4, rtol=0)
