"""Deployment backends: registry, accuracy of reduced precision, recompiles, clean skips."""

import copy

import pytest
import torch
import torch.nn.functional as F

import vitres
from vitres.backends import backend_class, get_backend, list_backends
from vitres.backends.compile_backend import CompileBackend
from vitres.backends.tensorrt_backend import TensorRTBackend
from vitres.data import eval_batches, load_fashion_mnist

NEW_BACKENDS = (
    "compile",
    "compile-bf16",
    "onnxruntime",
    "onnxruntime-int8",
    "onnxruntime-int8-static",
    "onnxruntime-fused",
    "onnxruntime-fused-int8-static",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
    "tensorrt",
    "tensorrt-int8",
)


@pytest.fixture(scope="module")
def trained():
    """A tiny ViT trained for a few steps on 1024 Fashion-MNIST images (~65 % accuracy),
    and 500 test images it has not seen."""
    torch.manual_seed(0)
    model = vitres.create_model(
        "vit_tiny_patch7",
        img_size=28,
        in_chans=1,
        num_classes=10,
        embed_dim=32,
        depth=2,
        num_heads=2,
    )
    cfg = model.config
    x, y = next(
        eval_batches(
            load_fashion_mnist("train"),
            28,
            1024,
            mean=cfg.mean,
            std=cfg.std,
            in_chans=1,
            limit=1024,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster on a busy 2-core machine
    try:
        for _ in range(80):
            index = torch.randint(0, len(x), (64,), generator=generator)
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    test = load_fashion_mnist("test")
    x_test, y_test = next(
        eval_batches(test, 28, 500, mean=cfg.mean, std=cfg.std, in_chans=1, limit=500)
    )
    x_other, _ = next(  # another, non-square size for the one-graph-serves-all check
        eval_batches(test, (35, 21), 64, mean=cfg.mean, std=cfg.std, in_chans=1, limit=64)
    )
    with torch.no_grad():
        reference = model(x_test)
    accuracy = (reference.argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.45, f"the tiny model did not learn ({accuracy:.2f}); the test is void"
    return model, x_test, y_test, reference, accuracy, x_other


def test_backends_are_registered_with_their_precision():
    names = list_backends()
    for name in NEW_BACKENDS:
        assert name in names
    precisions = {name: backend_class(name).precision for name in NEW_BACKENDS}
    assert precisions["onnxruntime"] == "fp32" and precisions["compile-bf16"] == "bf16"
    assert precisions["onnxruntime-int8"] == precisions["onnxruntime-int8-static"] == "int8"
    assert precisions["tensorrt"] == "fp16" and precisions["tensorrt-int8"] == "int8"
    assert precisions["onnxruntime-fused"] == "fp32"
    assert precisions["onnxruntime-fused-int8-static"] == precisions["openvino-int8"] == "int8"
    assert precisions["openvino"] == "fp32" and precisions["openvino-bf16"] == "bf16"


def test_auto_backends_lists_what_runs_here_in_order(monkeypatch):
    from vitres.backends import AUTO_ORDER, auto_backends, expand_backend_names
    from vitres.backends.openvino_backend import OpenVinoBackend

    available = list_backends(available_only=True)
    cpu = auto_backends("cpu")
    assert cpu[:2] == ["eager", "eager-bf16"] and sorted(cpu) == sorted(
        n
        for n in available
        if "tensorrt" not in n  # TensorRT is GPU-only
    )
    assert cpu == sorted(cpu, key=AUTO_ORDER.index)  # plain before reduced precision
    assert cpu.index("onnxruntime") < cpu.index("onnxruntime-int8") < cpu.index("openvino")
    # CPU-only runtimes are not offered for a GPU sweep
    assert not any(n.startswith(("onnxruntime", "openvino")) for n in auto_backends("cuda:0"))
    # a backend that cannot run here is left out
    monkeypatch.setattr(OpenVinoBackend, "availability", classmethod(lambda cls: (False, "no")))
    assert "openvino" not in auto_backends() and "openvino" in list_backends()
    assert expand_backend_names(["eager", "auto", "eager"]) == auto_backends()
    with pytest.raises(ValueError, match="unknown backend 'onnx-fp8'"):
        expand_backend_names(["auto", "onnx-fp8"])


def test_sweep_command_expands_auto(monkeypatch, capsys):
    import vitres.tune.sweep
    from vitres.backends import auto_backends
    from vitres.cli import main

    seen = []

    def fake_run_sweep(model, configs, *args, **kwargs):
        seen.extend(configs)
        return []

    monkeypatch.setattr(vitres.tune.sweep, "run_sweep", fake_run_sweep)
    assert main(["sweep", "--model", "vit_tiny_patch16", "--res", "32", "--backend", "auto"]) == 0
    assert [c.backend for c in seen] == auto_backends()
    assert {c.precision for c in seen} >= {"fp32", "bf16", "int8"}
    assert main(["sweep", "--model", "m", "--res", "32", "--backend", "auto,nope"]) == 2
    assert "unknown backend(s) ['nope']" in capsys.readouterr().err


def test_unknown_backend_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown backend 'onnx-fp8'.*onnxruntime-int8"):
        get_backend("onnx-fp8")


def test_tensorrt_skips_cleanly_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the skip path is not reachable here")
    usable, reason = TensorRTBackend.availability()
    assert not usable and ("GPU" in reason or "tensorrt" in reason)
    assert "tensorrt" not in list_backends(available_only=True)
    assert "tensorrt-int8" not in list_backends(available_only=True)
    with pytest.raises(RuntimeError, match="'tensorrt' is not available here"):
        get_backend("tensorrt")


def test_tensorrt_in_a_sweep_is_a_recorded_error_not_a_crash():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from vitres.measure import TimingConfig
    from vitres.tune.sweep import run_sweep

    model = vitres.create_model(
        "vit_tiny_patch7",
        img_size=28,
        in_chans=1,
        num_classes=10,
        embed_dim=16,
        depth=1,
        num_heads=2,
    )
    from vitres.tune.records import SweepConfig

    # a grid that names it skips it (test_sweep_grid_skips_unavailable_backends); a config
    # given explicitly is attempted and recorded as an error, and the sweep goes on
    configs = [
        SweepConfig("m", (28, 28), None, 1, "fp16", "tensorrt", 1, "cpu"),
        SweepConfig("m", (28, 28), None, 1, "fp32", "eager", 1, "cpu"),
    ]
    records = run_sweep(
        model,
        configs,
        isolate=False,
        progress=False,
        timing=TimingConfig(warmup_calls=1, warmup_s=0, min_calls=1, min_s=0),
        max_attempts=1,
    )
    assert [r.status for r in records] == ["error", "ok"]
    assert "not available here" in records[0].error


@pytest.mark.parametrize(
    "name, min_agreement, max_drop",
    [
        ("onnxruntime", 1.0, 0.0),
        ("eager-bf16", 0.97, 0.02),
        ("onnxruntime-int8", 0.95, 0.02),
        ("onnxruntime-int8-static", 0.95, 0.02),
        ("onnxruntime-fused", 1.0, 0.0),
        ("onnxruntime-fused-int8-static", 0.95, 0.02),
    ],
)
def test_reduced_precision_accuracy_on_real_images(
    trained, tmp_path_factory, name, min_agreement, max_drop
):
    """Top-1 agreement with fp32 eager and accuracy drop on 500 unseen test images, at the
    build size and (same graph / session) at another size and batch."""
    model, x_test, y_test, reference, accuracy, x_other = trained
    cache = tmp_path_factory.getbasetemp() / "backend-cache"
    kwargs = {"cache_dir": cache} if name.startswith("onnx") else {}
    backend = get_backend(name, **kwargs)
    backend.prepare(copy.deepcopy(model), (8, 1, 28, 28))
    assert backend.build_time_s is not None and backend.build_time_s >= 0
    logits = backend.run(x_test)
    assert logits.dtype == torch.float32 and logits.shape == (500, 10)
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    drop = accuracy - (logits.argmax(1) == y_test).float().mean().item()
    assert agreement >= min_agreement, (name, agreement)
    assert drop <= max_drop + 1e-9, (name, drop)
    if name in ("onnxruntime", "onnxruntime-fused"):
        torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
    if name.startswith("onnxruntime"):
        # the same graph and session serve another (non-square) size and batch size
        with torch.no_grad():
            expected = model(x_other)
        got = backend.run(x_other)
        if name in ("onnxruntime", "onnxruntime-fused"):
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        else:
            agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
            assert agreement >= 0.9, (name, agreement)
        assert "session_time_s" in backend.build_info


def test_onnxruntime_sessions_and_graphs_are_reused(trained, tmp_path_factory):
    model = trained[0]
    cache = tmp_path_factory.getbasetemp() / "backend-cache"
    first = get_backend("onnxruntime", cache_dir=cache, threads=1)
    first.prepare(copy.deepcopy(model), (1, 1, 28, 28))
    second = get_backend("onnxruntime", cache_dir=cache, threads=1)
    second.prepare(copy.deepcopy(model), (4, 1, 56, 56))  # another size: the same graph
    assert not second.build_info["exported"] and second.export_time_s == 0.0
    assert first.onnx_path == second.onnx_path
    assert first.runner.session is second.runner.session
    options = first.runner.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level.name == "ORT_ENABLE_ALL"
    fp32_graphs = [
        p for p in cache.glob("*.onnx") if "int8" not in p.name and "fused" not in p.name
    ]
    assert fp32_graphs == [first.onnx_path]
    # the backend's graph is what `vitres export` writes by default: same spec, recorded
    from vitres.export import ExportSpec, read_export_spec

    assert read_export_spec(first.onnx_path) == ExportSpec(
        example_size=(42, 35), patch_size=7
    )  # native 28 + two patches tall, + one patch wide


def test_compile_counts_recompiles_on_shape_changes(trained):
    """Dynamo capture with the counting compiler (``compiler="eager"`` skips code
    generation, so this runs in seconds; the recompile logic is the same)."""
    model = copy.deepcopy(trained[0])
    backend = CompileBackend(compiler="eager", dynamic=None)
    backend.prepare(model, (2, 1, 28, 28))
    assert backend.compiles == 1 and backend.recompiles == 0
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(backend.run(x), model(x), atol=1e-5, rtol=0)
        backend.run(x)
        assert backend.recompiles == 0  # same shape: no recompile
        for size in ((21, 35), (35, 21), (42, 42)):
            x = torch.randn(2, 1, *size)
            torch.testing.assert_close(backend.run(x), model(x), atol=1e-5, rtol=0)
    stats = backend.stats()
    # the first new size recompiles with symbolic H, W; the others reuse that graph
    assert stats["recompiles"] == 1, stats
    assert len(stats["shapes_seen"]) == 4
    with pytest.raises(ValueError, match="compiler must be"):
        CompileBackend(compiler="tvm")


def test_tensorrt_optimisation_profile_spans_the_build_shape():
    backend = TensorRTBackend(max_batch=32)  # constructing needs neither GPU nor tensorrt
    profile = backend.optimisation_profile((8, 3, 224, 160), patch=16, dynamic=True)
    assert profile == {
        "min": (1, 3, 112, 80),
        "opt": (8, 3, 224, 160),
        "max": (32, 3, 448, 320),
    }
    static = backend.optimisation_profile((8, 3, 224, 224), patch=16, dynamic=False)
    assert static["min"][2:] == static["max"][2:] == (224, 224)
    narrow = TensorRTBackend(min_size=(256, 256))
    with pytest.raises(ValueError, match="outside the profile"):
        narrow.optimisation_profile((1, 3, 224, 224), patch=16, dynamic=True)


def test_sweep_grid_skips_unavailable_backends():
    from vitres.tune.grid import build_grid

    with pytest.warns(UserWarning, match="skipping backend 'tensorrt'"):
        grid = build_grid("vit_tiny_patch16", "32,48", backends=("eager", "tensorrt"))
    assert {c.backend for c in grid} == {"eager"} and len(grid) == 2
    with pytest.raises(ValueError, match="none of the backends"), pytest.warns(UserWarning):
        build_grid("vit_tiny_patch16", "32", backends=("tensorrt",))


def test_static_int8_in_a_sweep_calibrates_on_the_sweeps_own_data(tmp_path, monkeypatch):
    """A folder dataset's int8-static config is calibrated on that folder (train split),
    not on the Fashion-MNIST default; backends without calibration get only the device."""
    import numpy as np
    from PIL import Image

    import vitres
    import vitres.backends.onnx_backend as onnx_backend
    import vitres.export
    from vitres.measure import TimingConfig
    from vitres.tune.measurement import backend_options, measure_config
    from vitres.tune.records import SweepConfig

    root = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for label in ("dark", "light"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            base = 40 if label == "dark" else 200
            pixels = np.clip(base + rng.integers(-20, 20, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    seen = []
    real = vitres.export.calibration_batches

    def recording(model, data, *args, **kwargs):
        batches = real(model, data, *args, **kwargs)
        seen.append((data, kwargs.get("data_dir"), sum(len(b) for b in batches)))
        return batches

    monkeypatch.setattr(vitres.export, "calibration_batches", recording)
    monkeypatch.setattr(onnx_backend, "DEFAULT_CACHE_DIR", tmp_path / "graphs")
    torch.manual_seed(0)
    model = vitres.create_model(
        "vit_tiny_patch4",
        img_size=16,
        in_chans=1,
        num_classes=2,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )
    config = SweepConfig(
        model="tiny", resolution=(16, 16), backend="onnxruntime-int8-static", precision="int8"
    )
    assert backend_options(SweepConfig(model="tiny", resolution=(16, 16))) == {"device": "cpu"}
    assert backend_options(config, (str(root), None)) == {
        "device": "cpu",
        "calibration_data": str(root),
        "calibration_data_dir": None,
    }
    timing = TimingConfig(warmup_calls=1, warmup_s=0.0, min_calls=2, min_s=0.0)
    record = measure_config(
        lambda: model, config, timing=timing, with_flops=False, calibration=(str(root), None)
    )
    assert record.status == "ok", record.error
    assert seen == [(str(root), None, 8)]  # all 8 folder images, none from Fashion-MNIST


def test_cache_key_changes_with_the_graph_building_code(tmp_path, monkeypatch):
    """An exported graph cached by other vitres code (an edited layer, exporter or
    quantiser) must not be reused: the cache key hashes that code."""
    import shutil

    from vitres.backends import onnx_backend

    real = onnx_backend.Path(vitres.__file__).resolve().parent
    copy_root = tmp_path / "vitres"
    for package in onnx_backend._GRAPH_CODE:
        shutil.copytree(real / package, copy_root / package)
    (copy_root / "runtime").mkdir()
    (copy_root / "runtime" / "server.py").write_text("x = 1\n")
    shutil.copy(real / "__init__.py", copy_root / "__init__.py")
    monkeypatch.setattr(vitres, "__file__", str(copy_root / "__init__.py"))
    model = vitres.create_model("vit_tiny_patch16", img_size=32).eval()

    def keys() -> tuple[str, str]:
        onnx_backend.code_fingerprint.cache_clear()
        return onnx_backend.code_fingerprint(), onnx_backend.model_fingerprint(model, opset=18)

    try:
        code, key = keys()
        assert keys() == (code, key)  # stable for the same code
        (copy_root / "runtime" / "server.py").write_text("x = 2\n")  # not graph code
        assert keys() == (code, key)
        seen = {code}
        for package in onnx_backend._GRAPH_CODE:  # every graph-building package counts
            source = sorted((copy_root / package).rglob("*.py"))[0]
            source.write_text(source.read_text() + "\n# edited\n")
            new_code, new_key = keys()
            assert new_code not in seen and new_key != key, package
            seen.add(new_code)
        assert "data" in onnx_backend._GRAPH_CODE  # calibration images are prepared there
    finally:
        onnx_backend.code_fingerprint.cache_clear()
