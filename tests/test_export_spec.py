"""The export spec: validation, shared defaults, metadata in the file, and exporting
exactly what a sweep measured (``vitres export --from ... --key / --recommended``)."""

import argparse
import inspect
import json

import numpy as np
import onnx
import pytest
import torch

import vitres
from vitres.cli import build_parser, main
from vitres.export import (
    DEFAULT_OPSET,
    ExportSpec,
    OnnxModel,
    calibration_batches,
    export_onnx,
    quantize_onnx,
    read_export_metadata,
    read_export_spec,
    write_export_metadata,
)
from vitres.tune.export_plan import find_record, plan_from_record
from vitres.tune.records import LatencyStats, Measurement, SweepConfig, append_result


def tiny_vit(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    base = dict(img_size=28, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2)
    return vitres.create_model("vit_tiny_patch4", **{**base, **overrides}).eval()


def record(backend="onnxruntime", precision="fp32", *, status="ok", data="fashion-mnist", **kw):
    config = SweepConfig(
        model=kw.pop("model", "tiny.safetensors"),
        resolution=kw.pop("resolution", (21, 35)),
        patch_size=kw.pop("patch_size", 7),
        backend=backend,
        precision=precision,
        threads=1,
    )
    latency = LatencyStats(2.0, 0.1, 2.2, 2.3, 2.4, 1.9, 2.0, 10, False)
    return Measurement(
        config=config,
        status=status,
        error="RuntimeError: boom" if status == "error" else None,
        accuracy=None if status != "ok" else kw.pop("accuracy", 0.8),
        data=data,
        latency=latency,
        throughput_ips=500.0,
        model_digest=kw.pop("model_digest", None),
        **kw,
    )


# ----------------------------------------------------------------------------- the spec


def test_spec_round_trips_through_dict_and_json():
    spec = ExportSpec(
        opset=18,
        dynamic=False,
        example_size=[24, 32],
        patch_size=8,
        int8="static",
        calib_method="entropy",
        calib_images=64,
        calib_resolutions=[28, (20, 36)],
        calib_data="/data/folder",
        calib_split="val",
        atol=2e-4,
    )
    assert spec.example_size == (24, 32)
    assert spec.calib_resolutions == ((28, 28), (20, 36))
    data = spec.to_dict()
    assert data["calib_resolutions"] == [[28, 28], [20, 36]] and data["example_size"] == [24, 32]
    assert ExportSpec.from_dict(json.loads(json.dumps(data))) == spec
    assert ExportSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json()) == data
    assert ExportSpec.from_json(ExportSpec().to_json()) == ExportSpec()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"opset": 17}, "opset 17 is not supported.*use opset >= 18"),
        ({"patch_size": 0}, "patch_size must be a positive int, got 0"),
        ({"patch_size": -2}, "patch_size must be a positive int, got -2"),
        ({"patch_size": 2.5}, "patch_size must be a positive int"),
        ({"int8": "fp8"}, r"int8 must be one of \('none', 'dynamic', 'static'\)"),
        ({"calib_method": "kl"}, "calibration method must be one of"),
        ({"calib_images": 0}, "calib_images must be positive"),
        ({"calib_percentile": 120}, r"calib_percentile must lie in \(0, 100\]"),
        ({"calib_resolutions": []}, "calib_resolutions must not be empty"),
        ({"calib_resolutions": [(0, 28)]}, "must be positive, got 0x28"),
        ({"calib_resolutions": "28"}, "must be a list of sizes"),
        ({"example_size": (28, -1)}, "example_size must be positive"),
        ({"atol": float("nan")}, "atol must be a positive finite number"),
        ({"atol": 0}, "atol must be a positive finite number"),
        ({"calib_data": ""}, "calib_data must be a non-empty string"),
        ({"dynamic": "yes"}, "dynamic must be True or False"),
    ],
)
def test_spec_rejects_bad_fields_with_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        ExportSpec(**fields)


def test_spec_from_dict_refuses_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown export spec field\(s\) \['opsett'\]"):
        ExportSpec.from_dict({"opsett": 18})
    with pytest.raises(ValueError, match="not valid JSON"):
        ExportSpec.from_json("{opset: 18")
    with pytest.raises(ValueError, match="is a JSON object"):
        ExportSpec.from_dict([1, 2, 3])


def _export_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["export", "--model", "m", "--out", "m.onnx", *extra])


def test_one_set_of_defaults_for_the_backends_and_the_command():
    """The ONNX backends, the export command and the library functions all default to
    the same spec (they used to differ: opset 23 vs 18, percentile vs minmax)."""
    from vitres.backends import get_backend
    from vitres.backends.tensorrt_backend import TensorRTBackend, TensorRTInt8Backend
    from vitres.commands.export_cmd import spec_from_args

    defaults = ExportSpec()
    assert DEFAULT_OPSET == defaults.opset == 23 and defaults.calib_method == "percentile"
    assert spec_from_args(_export_args()) == defaults
    assert get_backend("onnxruntime").spec == defaults
    assert get_backend("onnxruntime-int8").spec == ExportSpec(int8="dynamic")
    assert get_backend("onnxruntime-int8-static").spec == ExportSpec(int8="static")
    assert TensorRTBackend().spec == defaults  # constructing needs neither GPU nor tensorrt
    assert TensorRTInt8Backend().spec == ExportSpec(int8="static")

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    assert default(export_onnx, "opset") == defaults.opset
    assert default(export_onnx, "atol") == defaults.atol
    assert default(quantize_onnx, "calib_method") == defaults.calib_method
    assert default(quantize_onnx, "percentile") == defaults.calib_percentile
    assert default(calibration_batches, "data") == defaults.calib_data
    assert default(calibration_batches, "num_images") == defaults.calib_images
    assert default(calibration_batches, "split") == defaults.calib_split
    # flags override one field each, and the backends' keyword arguments too
    assert spec_from_args(_export_args("--opset", "18", "--calib-res", "16,28x40")) == ExportSpec(
        opset=18, calib_resolutions=((16, 16), (28, 40))
    )
    static = get_backend("onnxruntime-int8-static", calib_method="minmax", calib_images=32)
    assert static.spec == ExportSpec(int8="static", calib_method="minmax", calib_images=32)
    assert get_backend("onnxruntime", opset=18).opset == 18


# ----------------------------------------------------------------------------- metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_vit()
    path = tmp_path_factory.mktemp("spec") / "vit.onnx"
    result = export_onnx(model, path, metadata={"model": "tiny", "record_key": "k|1"})
    return model, result


def test_export_writes_its_spec_and_provenance_into_the_file(exported):
    _, result = exported
    spec = read_export_spec(result.path)
    # resolved: the patch and example size used, not "None = default"
    assert spec == ExportSpec(example_size=(36, 32), patch_size=4) == result.spec
    meta = read_export_metadata(result.path)
    assert meta["version"] == vitres.__version__
    assert meta["patch_size"] == "4" and meta["size_policy"] == "resize" and meta["in_chans"] == "1"
    assert meta["model"] == "tiny" and meta["record_key"] == "k|1"
    assert meta["size_rule"] == result.size_rule
    # what a user needs without vitres: layout, normalisation, native size, outputs
    model = exported[0]
    assert json.loads(meta["mean"]) == pytest.approx(list(model.config.mean))
    assert json.loads(meta["std"]) == pytest.approx(list(model.config.std))
    assert meta["input_layout"] == "NCHW float32" and meta["native_size"] == "28x28"
    assert meta["num_classes"] == "10" and meta["output"] == "logits"
    assert "(x - mean) / std" in meta["preprocessing"]
    # ONNX Runtime sees the same entries (that is where OnnxModel reads the patch size)
    runner = OnnxModel(result.path)
    assert runner.metadata["vitres.export_spec"] == spec.to_json()


def test_metadata_writes_replace_vitres_entries_and_keep_others(exported, tmp_path):
    _, result = exported
    copy = tmp_path / "copy.onnx"
    proto = onnx.load(str(result.path))
    proto.metadata_props.add(key="author", value="someone")
    onnx.save(proto, str(copy))
    write_export_metadata(copy, {"record_key": "k|2", "notes": "a note", "model_digest": None})
    meta = read_export_metadata(copy)
    assert meta["record_key"] == "k|2" and meta["notes"] == "a note" and "model_digest" not in meta
    props = {p.key: p.value for p in onnx.load(str(copy)).metadata_props}
    assert props["author"] == "someone"
    assert sum(p.key == "vitres.record_key" for p in onnx.load(str(copy)).metadata_props) == 1
    # the graph itself is untouched
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(OnnxModel(copy)(x), OnnxModel(result.path)(x), atol=0, rtol=0)


def test_reading_a_spec_from_a_foreign_file_says_so(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    info = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [info("x", onnx.TensorProto.FLOAT, [1])],
        [info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="holds no vitres export spec"):
        read_export_spec(tmp_path / "foreign.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_export_spec(tmp_path / "missing.onnx")


# ----------------------------------------------------------------------------- record -> spec


def test_plan_maps_each_backend_to_the_graph_it_measured():
    defaults = ExportSpec()
    fp32 = plan_from_record(record("onnxruntime"))
    assert fp32.spec == ExportSpec(patch_size=7) and fp32.notes == ()
    assert fp32.resolution == (21, 35) and fp32.record_key == record("onnxruntime").key
    dynamic = plan_from_record(record("onnxruntime-int8", "int8"))
    assert dynamic.spec == ExportSpec(patch_size=7, int8="dynamic")
    static = plan_from_record(
        record("onnxruntime-int8-static", "int8", data="/my/folder", model_digest="abc")
    )
    # calibrated as the sweep calibrated: the sweep's data, at the record's resolution
    assert static.spec == ExportSpec(
        patch_size=7, int8="static", calib_data="/my/folder", calib_resolutions=((21, 35),)
    )
    assert static.model == "tiny.safetensors" and static.model_digest == "abc"
    no_data = plan_from_record(record("onnxruntime-int8-static", "int8", data=None))
    assert no_data.spec.calib_data == defaults.calib_data  # what the backend defaulted to
    native = plan_from_record(record("onnxruntime", patch_size=None))
    assert native.spec.patch_size is None
    for backend, precision, word in (
        ("eager", "fp32", "eager PyTorch"),
        ("eager-bf16", "bf16", "bf16"),
        ("compile", "fp32", "torch.compile"),
        ("tensorrt", "fp16", "TensorRT"),
        ("openvino-int8", "int8", "OpenVINO"),
        ("my-runtime", "fp32", "not an ONNX backend"),
    ):
        plan = plan_from_record(record(backend, precision))
        assert plan.spec == ExportSpec(patch_size=7), backend
        assert len(plan.notes) == 1 and word in plan.notes[0], (backend, plan.notes)
    # the defaults a caller passes carry over where the record says nothing
    assert plan_from_record(record("onnxruntime"), ExportSpec(opset=18)).spec.opset == 18


def test_plan_refuses_failed_and_predicted_records():
    with pytest.raises(ValueError, match="failed.*cannot be exported"):
        plan_from_record(record(status="error"))
    with pytest.raises(ValueError, match="predicted by the cost model, not measured"):
        plan_from_record(record(status="predicted"))


def test_unknown_key_lists_keys_that_exist():
    records = [record(resolution=(r, r)) for r in (14, 21, 28, 35, 42, 49, 56)]
    assert find_record(records, records[2].key) is records[2]
    with pytest.raises(ValueError, match="no record has key 'nope'") as error:
        find_record(records, "nope")
    text = str(error.value)
    assert records[0].key in text and records[4].key in text and records[5].key not in text
    assert "and 2 more" in text
    with pytest.raises(ValueError, match="the results hold no records"):
        find_record([], "nope")


# ----------------------------------------------------------------------------- export --from


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real sweep of a tiny checkpoint (patch 7, 21x35) through both INT8 backends."""
    from vitres.measure import TimingConfig
    from vitres.tune.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("swept")
    checkpoint = vitres.save_model(tiny_vit(), tmp / "tiny.safetensors")
    results = tmp / "results.jsonl"
    cache = tmp / "graphs"
    monkeypatch = pytest.MonkeyPatch()
    import vitres.backends.onnx_backend as onnx_backend

    monkeypatch.setattr(onnx_backend, "DEFAULT_CACHE_DIR", cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = run_sweep(
            str(checkpoint),
            out_path=results,
            data="fashion-mnist",
            resolutions="21x35",
            patch_sizes=(7,),
            backends=("onnxruntime-int8", "onnxruntime-int8-static"),
            isolate=False,
            progress=False,
            eval_limit=64,
            timing=TimingConfig(warmup_calls=1, warmup_s=0, min_calls=2, min_s=0),
        )
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
    assert [r.status for r in records] == ["ok", "ok"], [r.error for r in records]
    return tmp, checkpoint, results, records, cache


def _measured_graph(cache, tag):
    (path,) = [p for p in cache.glob(f"*{tag}*.onnx") if "partial" not in p.name]
    return path


@pytest.mark.parametrize("backend", ["onnxruntime-int8", "onnxruntime-int8-static"])
def test_export_from_key_is_the_measured_graph(swept, backend, capsys):
    tmp, checkpoint, results, records, cache = swept
    (rec,) = [r for r in records if r.config.backend == backend]
    out = tmp / f"{backend}.onnx"
    rc = main(["export", "--from", str(results), "--key", rec.key, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert rec.key in printed and "parity" in printed
    meta = read_export_metadata(out)
    assert meta["record_key"] == rec.key and meta["model"] == str(checkpoint)
    assert meta["model_digest"] == rec.model_digest is not None
    spec = read_export_spec(out)
    mode = "dynamic" if backend == "onnxruntime-int8" else "static"
    assert spec.int8 == mode and spec.patch_size == 7 and spec.opset == DEFAULT_OPSET
    if mode == "static":
        assert spec.calib_data == "fashion-mnist" and spec.calib_resolutions == ((21, 35),)
    model = vitres.load_model(checkpoint)
    x = torch.randn(3, 1, 21, 35, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(x, patch_size=7)
    # the float graph matches eager at the record's resolution and patch size
    fp32 = OnnxModel(tmp / f"{backend}.fp32.onnx")
    torch.testing.assert_close(fp32(x), eager, atol=1e-4, rtol=0)
    assert "21x35" in str(read_export_metadata(tmp / f"{backend}.fp32.onnx")["record_key"])
    # and the INT8 file computes what the sweep's backend computed, to the bit
    tag = "int8-dynamic" if mode == "dynamic" else "int8-static"
    measured = OnnxModel(_measured_graph(cache, tag))
    np.testing.assert_array_equal(OnnxModel(out)(x).numpy(), measured(x).numpy())


def test_export_recommended_exports_the_recommendation(swept, capsys):
    from vitres.tune.recommend import Budget, recommend
    from vitres.tune.records import read_results

    tmp, _, results, _, _ = swept
    choice = recommend(read_results(results), Budget(max_latency_ms=1e6)).choice
    out = tmp / "recommended.onnx"
    rc = main(
        ["export", "--from", str(results), "--recommended", "--max-latency-ms", "1e6"]
        + ["--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    assert read_export_metadata(out)["record_key"] == choice.key
    rc = main(
        ["export", "--from", str(results), "--recommended", "--max-latency-ms", "1e-6"]
        + ["--out", str(tmp / "none.onnx")]
    )
    assert rc == 2 and "Nothing meets latency ≤ 1e-06 ms" in capsys.readouterr().err


def test_export_from_refuses_what_would_not_be_the_measured_graph(swept, tmp_path, capsys):
    _, checkpoint, results, records, _ = swept
    out = str(tmp_path / "x.onnx")
    cases = [
        (["--key", "nope"], "no record has key 'nope'; keys in the results include"),
        (["--key", records[0].key, "--opset", "18"], "--from exports what the record measured"),
        (["--key", records[0].key, "--patch-size", "4"], "--patch-size cannot change it"),
        ([], "--from needs --key CONFIGKEY or --recommended"),
    ]
    for extra, message in cases:
        assert main(["export", "--from", str(results), *extra, "--out", out]) == 2
        assert message in capsys.readouterr().err, extra
    assert main(["export", "--key", records[0].key, "--out", out]) == 2
    assert "give --from" in capsys.readouterr().err
    missing = str(tmp_path / "missing.jsonl")
    assert main(["export", "--from", missing, "--key", "k", "--out", out]) == 2
    assert "no results file" in capsys.readouterr().err
    # a record measured with other weights than the checkpoint's current file
    stale = tmp_path / "stale.jsonl"
    append_result(stale, record(model=str(checkpoint), model_digest="0123456789abcdef"))
    key = record(model=str(checkpoint)).key
    assert main(["export", "--from", str(stale), "--key", key, "--out", out]) == 2
    assert "the weights changed since the sweep" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_export_from_a_float_backend_record_notes_the_difference(tmp_path, capsys):
    checkpoint = vitres.save_model(tiny_vit(), tmp_path / "tiny.safetensors")
    results = tmp_path / "r.jsonl"
    rec = record("eager-bf16", "bf16", model=str(checkpoint), resolution=(20, 24), patch_size=None)
    append_result(results, rec)
    out = tmp_path / "bf16.onnx"
    assert main(["export", "--from", str(results), "--key", rec.key, "--out", str(out)]) == 0
    assert "note: measured with eager PyTorch in bf16" in capsys.readouterr().out
    meta = read_export_metadata(out)
    assert "bf16" in meta["notes"] and meta["record_key"] == rec.key
    assert read_export_spec(out).int8 == "none" and read_export_spec(out).patch_size == 4
    x = torch.randn(2, 1, 20, 24)
    with torch.no_grad():
        expected = vitres.load_model(checkpoint)(x)
    torch.testing.assert_close(OnnxModel(out)(x), expected, atol=1e-4, rtol=0)
