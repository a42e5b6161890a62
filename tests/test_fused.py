"""ONNX Runtime's transformer fusions: the fused graph really holds fused attention,
SkipLayerNormalization and BiasGelu, and keeps parity with eager at any size."""

import collections

import onnx
import pytest
import torch

import vitres
from vitres.cli import main
from vitres.export import (
    ExportSpec,
    OnnxModel,
    check_parity,
    export_onnx,
    fuse_onnx,
    read_export_spec,
)
from vitres.tune.export_plan import plan_from_record
from vitres.tune.records import Measurement, SweepConfig

SIZES = [(28, 28), (36, 32), (20, 44), (31, 25), (16, 16), (56, 40)]  # native, non-native,
# non-square, not divisible by the patch, smaller and larger grids


def tiny_vit(global_pool="token", depth=2):
    torch.manual_seed(0)
    return vitres.create_model(
        "vit_tiny_patch4",
        img_size=28,
        in_chans=1,
        num_classes=10,
        embed_dim=32,
        depth=depth,
        num_heads=2,
        global_pool=global_pool,
    ).eval()


def op_counts(path):
    return collections.Counter((n.domain, n.op_type) for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_fused_graph_holds_the_fused_ops_and_keeps_parity(tmp_path, global_pool):
    depth = 2
    model = tiny_vit(global_pool, depth)
    plain = export_onnx(model, tmp_path / "vit.onnx").path
    facts = fuse_onnx(plain, tmp_path / "fused.onnx", num_heads=2, hidden_size=32)
    ops = op_counts(tmp_path / "fused.onnx")
    # one fused attention and one BiasGelu per block; every residual Add + LayerNorm pair
    # (two per block, plus the final norm after the last residual for token pooling) is
    # one SkipLayerNormalization
    skip = 2 * depth + (1 if global_pool == "token" else 0)
    assert ops[("", "Attention")] == depth
    assert ops[("com.microsoft", "BiasGelu")] == depth
    assert ops[("com.microsoft", "SkipLayerNormalization")] == skip
    assert ops[("", "Gelu")] == ops[("", "Erf")] == ops[("", "Softmax")] == 0
    # avg pooling normalises the pooled features: that LayerNorm has no residual to fuse
    assert ops[("", "LayerNormalization")] == (0 if global_pool == "token" else 1)
    assert facts["fused_ops"] == {
        "ai.onnx:Attention": depth,
        "com.microsoft:SkipLayerNormalization": skip,
        "com.microsoft:BiasGelu": depth,
    }
    report = check_parity(model, tmp_path / "fused.onnx", SIZES, batch_size=4)
    assert report.ok and report.worst <= 1e-4, report
    x = torch.randn(2, 1, 24, 40)
    with torch.no_grad():
        expected = model(x)
    assert expected.abs().max() > 1e-2  # real logits, not zeros
    torch.testing.assert_close(OnnxModel(tmp_path / "fused.onnx")(x), expected, atol=1e-4, rtol=0)


def test_at_opset_18_attention_stays_decomposed(tmp_path):
    """The optimizer's ViT attention pattern does not match the dynamo exporter's opset-18
    graph: LayerNorm and GELU fuse, attention does not (use opset 23)."""
    model = tiny_vit()
    plain = export_onnx(model, tmp_path / "vit18.onnx", opset=18).path
    facts = fuse_onnx(plain, tmp_path / "fused18.onnx", num_heads=2, hidden_size=32)
    assert facts["fused_ops"]["ai.onnx:Attention"] == 0
    assert facts["fused_ops"]["com.microsoft:SkipLayerNormalization"] == 5
    assert op_counts(tmp_path / "fused18.onnx")[("", "Softmax")] == 2
    assert check_parity(model, tmp_path / "fused18.onnx", SIZES[:3]).ok


def test_fusing_a_graph_that_is_not_a_transformer_says_so(tmp_path):
    info = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(ValueError, match="fused nothing"):
        fuse_onnx(tmp_path / "relu.onnx", tmp_path / "out.onnx", num_heads=1, hidden_size=4)
    assert not (tmp_path / "out.onnx").exists()


def test_export_fused_writes_the_fused_graph_and_its_spec(tmp_path, capsys):
    model = tiny_vit()
    checkpoint = vitres.save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "fused.onnx"
    assert main(["export", "--model", str(checkpoint), "--out", str(out), "--fused"]) == 0
    printed = capsys.readouterr().out
    assert "fused graph: 2 Attention, 5 SkipLayerNormalization, 2 BiasGelu" in printed
    assert read_export_spec(out) == ExportSpec(fused=True, example_size=(36, 32), patch_size=4)
    assert (tmp_path / "fused.fp32.onnx").exists()  # the plain graph beside it
    assert op_counts(out)[("com.microsoft", "BiasGelu")] == 2
    assert check_parity(model, out, SIZES[:4]).ok


def test_a_fused_record_exports_the_fused_graph():
    config = SweepConfig("m", (28, 28), None, 1, "int8", "onnxruntime-fused-int8-static", threads=1)
    plan = plan_from_record(Measurement(config=config, accuracy=0.8, data="fashion-mnist"))
    assert plan.spec == ExportSpec(
        fused=True, int8="static", calib_data="fashion-mnist", calib_resolutions=((28, 28),)
    )
    fp32 = SweepConfig("m", (28, 28), None, 1, "fp32", "onnxruntime-fused", threads=1)
    assert plan_from_record(Measurement(config=fp32)).spec == ExportSpec(fused=True)
    assert plan_from_record(Measurement(config=fp32)).notes == ()
