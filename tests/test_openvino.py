"""OpenVINO backends: direct PyTorch conversion with dynamic sizes, the ONNX fallback,
fp32 parity, and bf16 / INT8 accuracy on real Fashion-MNIST images with the bundled model."""

import copy
import importlib.util

import numpy as np
import pytest
import torch

import vitres
from vitres.backends import auto_backends, get_backend, list_backends
from vitres.backends.openvino_backend import OpenVinoBackend, OpenVinoInt8Backend
from vitres.data import eval_batches, load_fashion_mnist

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed"
)

N_TEST = 400  # Fashion-MNIST test images per size for the accuracy checks


def tiny_vit(**overrides):
    torch.manual_seed(0)
    # pad: OpenVINO's antialiased Resize differs from torch's, so the resize policy at a
    # size the patch does not divide is refused by the parity check (tested below)
    base = dict(
        img_size=28,
        in_chans=1,
        num_classes=10,
        embed_dim=16,
        depth=1,
        num_heads=2,
        size_policy="pad",
    )
    return vitres.create_model("vit_tiny_patch4", **{**base, **overrides}).eval()


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The bundled reference model, its eager logits and labels on unseen test images at
    the native size and a non-native, non-square one, and a shared model cache."""
    model = vitres.load_model("fmnist-vit-multires").eval()
    cfg = model.config
    test = load_fashion_mnist("test")
    data = {}
    for size in ((28, 28), (20, 36)):
        x, y = next(
            eval_batches(test, size, N_TEST, mean=cfg.mean, std=cfg.std, in_chans=1, limit=N_TEST)
        )
        with torch.no_grad():
            data[size] = (x, y, model(x))
    return model, data, tmp_path_factory.mktemp("openvino-cache")


def accuracy(logits, labels):
    return (logits.argmax(1) == labels).float().mean().item()


def test_openvino_backends_are_registered_and_available_here():
    for name, precision in (
        ("openvino", "fp32"),
        ("openvino-bf16", "bf16"),
        ("openvino-int8", "int8"),
    ):
        assert name in list_backends(available_only=True)
        assert get_backend(name).precision == precision
    assert OpenVinoInt8Backend.calibrated and not OpenVinoBackend.calibrated
    with pytest.raises(ValueError, match="CPU only"):
        OpenVinoBackend(device="cuda")
    with pytest.raises(ValueError, match="converter must be one of"):
        OpenVinoBackend(converter="tflite")


def test_openvino_skips_cleanly_without_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("openvino", "nncf") else real(name, *a),
    )
    usable, reason = OpenVinoBackend.availability()
    assert not usable and "pip install 'vitres[openvino]'" in reason
    assert not OpenVinoInt8Backend.availability()[0]
    assert not any(n.startswith("openvino") for n in auto_backends())
    with pytest.raises(RuntimeError, match="'openvino' is not available here"):
        get_backend("openvino")


def test_fp32_openvino_matches_eager_at_several_sizes_with_one_compiled_model(bundled):
    model, data, cache = bundled
    backend = get_backend("openvino", cache_dir=cache, threads=1)
    backend.prepare(copy.deepcopy(model), (8, 1, 28, 28))
    info = backend.build_info
    # converted from PyTorch directly, dynamic H x W, threads set explicitly, build timed apart
    assert info["converter"] == "pytorch" and info["fallback_reason"] is None
    assert info["dynamic"] and info["threads"] == 1 and info["inference_precision"] == "f32"
    assert backend.compile_time_s > 0 and backend.convert_time_s > 0
    assert backend.build_time_s >= backend.compile_time_s + backend.convert_time_s
    compiled = backend.compiled
    for x, _, expected in data.values():  # native and non-square, batch 400
        got = backend.run(x)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    x = torch.randn(3, 1, 31, 25)  # a size the patch does not divide, another batch
    with torch.no_grad():
        torch.testing.assert_close(backend.run(x), model(x), atol=1e-4, rtol=0)
    assert backend.compiled is compiled  # the same compiled model served every size
    # a second backend reuses the converted model from the cache
    again = get_backend("openvino", cache_dir=cache, threads=1)
    again.prepare(copy.deepcopy(model), (1, 1, 40, 40))
    assert not again.build_info["converted"] and again.convert_time_s == 0.0
    assert again.model_path == backend.model_path


def test_static_copies_compute_what_the_dynamic_model_does_and_stay_bounded(bundled):
    model, data, cache = bundled
    backend = get_backend("openvino", cache_dir=cache, threads=1, max_static_shapes=2)
    backend.prepare(copy.deepcopy(model), (4, 1, 28, 28))
    # the build shape got its static copy at build time
    assert backend.build_info["static_shapes"] == [[4, 1, 28, 28]]
    dynamic = get_backend("openvino", cache_dir=cache, threads=1, specialise=False)
    dynamic.prepare(copy.deepcopy(model), (4, 1, 28, 28))
    assert dynamic.build_info["static_shapes"] == []
    x_native = data[(28, 28)][0][:4]
    x_other = data[(20, 36)][0][:3]
    x_third = torch.randn(2, 1, 40, 24)
    for x in (x_native, x_other, x_third, x_other):
        with torch.no_grad():
            expected = model(x)
        got = backend.run(x)
        torch.testing.assert_close(got, dynamic.run(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # two copies at most: the third shape runs on the dynamic model, the second is reused
    assert backend.build_info["static_shapes"] == [[4, 1, 28, 28], [3, 1, 20, 36]]
    assert backend.request_for((2, 1, 40, 24)) is backend.request
    assert backend.request_for((3, 1, 20, 36)) is not backend.request
    with pytest.raises(ValueError, match="max_static_shapes"):
        get_backend("openvino", max_static_shapes=-1)


def test_openvino_rejects_bad_input_with_eager_messages(bundled):
    model, _, cache = bundled
    backend = get_backend("openvino", cache_dir=cache, threads=1)
    backend.prepare(copy.deepcopy(model), (2, 1, 28, 28))
    with pytest.raises(ValueError, match="expected 1 channel"):
        backend.run(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="expected floating-point images"):
        backend.run(torch.zeros(1, 1, 28, 28, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        backend.run(torch.full((1, 1, 28, 28), float("nan")))
    # the direct graph is traced for sides of two tokens or more (torch specialises one)
    with pytest.raises(ValueError, match=r"serves sides of at least [58] px; got 4x28"):
        backend.run(torch.randn(1, 1, 4, 28))
    # float64 is cast, not rejected
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(backend.run(x.double()), backend.run(x), atol=1e-6, rtol=0)


def test_bf16_openvino_accuracy_on_real_images(bundled):
    """Stated tolerance: top-1 agreement with fp32 eager >= 97 %, accuracy drop <= 1 point
    on 400 unseen test images at each of two sizes, |logit diff| <= 0.25."""
    model, data, cache = bundled
    backend = get_backend("openvino-bf16", cache_dir=cache, threads=1)
    backend.prepare(copy.deepcopy(model), (8, 1, 28, 28))
    ran = backend.build_info["inference_precision"]
    for x, y, expected in data.values():
        got = backend.run(x)
        if ran != "bf16":  # this CPU has no bf16: OpenVINO ran f32, so fp32 parity holds
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
            continue
        assert not torch.equal(got, expected)  # it really ran in reduced precision
        assert (got - expected).abs().max() <= 0.25
        assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.97
        assert accuracy(expected, y) - accuracy(got, y) <= 0.01 + 1e-9


def test_int8_openvino_calibrates_on_real_images_and_keeps_accuracy(bundled, monkeypatch):
    """NNCF INT8 (FakeQuantize in the model); stated tolerance: agreement >= 95 % and an
    accuracy drop <= 1 point on 400 unseen test images at each of two sizes."""
    import vitres.export

    model, data, cache = bundled
    seen = []
    real = vitres.export.calibration_batches

    def recording(m, dataset, resolutions, **kwargs):
        seen.append((dataset, list(resolutions), kwargs["num_images"], kwargs["split"]))
        return real(m, dataset, resolutions, **kwargs)

    monkeypatch.setattr(vitres.export, "calibration_batches", recording)
    backend = get_backend(
        "openvino-int8",
        cache_dir=cache,
        threads=1,
        calib_images=128,
        calibration_data="fashion-mnist",
    )
    backend.prepare(copy.deepcopy(model), (8, 1, 28, 28))
    assert seen == [("fashion-mnist", [(28, 28)], 128, "train")]  # train split, build size
    facts = backend.build_info["quantization"]
    assert facts["method"] == "nncf" and facts["images"] == 128 and facts["fake_quantize_ops"] > 0
    assert backend.quantize_time_s > 0 and backend.build_info["inference_precision"] == "f32"
    for x, y, expected in data.values():
        got = backend.run(x)
        assert not torch.allclose(got, expected, atol=1e-3)  # it really is quantised
        assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.95
        assert accuracy(expected, y) - accuracy(got, y) <= 0.01 + 1e-9


def test_openvino_falls_back_to_onnx_when_the_direct_conversion_fails(tmp_path, monkeypatch):
    """A frontend failure (scripted here) sends the conversion through the checked ONNX
    graph; the reason is recorded and the model is as exact as the direct one."""
    import vitres.export.openvino as ov_export

    def failing(*args, **kwargs):
        raise RuntimeError("No conversion rule found for operations: aten.some_new_op")

    monkeypatch.setattr(ov_export, "_from_pytorch", failing)
    model = tiny_vit()
    backend = get_backend("openvino", cache_dir=tmp_path, threads=1)
    backend.prepare(copy.deepcopy(model), (2, 1, 28, 28))
    info = backend.build_info
    assert info["converter"] == "onnx" and info["dynamic"] and info["min_side"] is None
    assert "direct conversion failed: RuntimeError: No conversion rule" in info["fallback_reason"]
    assert info["onnx_export_time_s"] > 0
    for size in ((28, 28), (20, 36), (4, 9)):  # the ONNX graph also serves one-token sides
        x = torch.randn(3, 1, *size)
        with torch.no_grad():
            torch.testing.assert_close(backend.run(x), model(x), atol=1e-4, rtol=0)
    strict = get_backend("openvino", cache_dir=tmp_path / "strict", converter="pytorch")
    with pytest.raises(RuntimeError, match="PyTorch conversion of VisionTransformer.*did not work"):
        strict.prepare(copy.deepcopy(model), (2, 1, 28, 28))


def test_openvino_refuses_a_model_it_cannot_compute_exactly(tmp_path):
    """Antialiased bicubic resampling: the PyTorch frontend has no rule for it, and
    OpenVINO's antialiased Resize (ONNX route) filters differently when it shrinks the
    position table, so the backend raises instead of running with wrong logits."""
    from vitres.export import ExportParityError

    model = tiny_vit(pos_embed_antialias=True)
    backend = get_backend("openvino", cache_dir=tmp_path, threads=1)
    with pytest.raises(ExportParityError, match="disagrees with eager PyTorch.*14x14"):
        backend.prepare(copy.deepcopy(model), (2, 1, 28, 28))
    assert not list(tmp_path.glob("openvino-*.xml"))  # nothing unchecked is cached


def test_openvino_converts_a_mixer_for_its_one_size(tmp_path):
    torch.manual_seed(0)
    mixer = vitres.create_model(
        "mixer_tiny16", img_size=28, patch_size=4, in_chans=1, num_classes=10, depth=1
    ).eval()
    backend = get_backend("openvino", cache_dir=tmp_path, threads=1)
    backend.prepare(copy.deepcopy(mixer), (2, 1, 24, 32))
    assert not backend.build_info["dynamic"]
    x = torch.randn(5, 1, 24, 32)  # batch stays dynamic
    with torch.no_grad():
        np.testing.assert_allclose(backend.run(x).numpy(), mixer(x).numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="static graph: height must be 24"):
        backend.run(torch.randn(1, 1, 28, 32))


def test_openvino_keeps_a_bound_patch_size(tmp_path):
    from vitres.models.common import FixedPatchSize

    model = tiny_vit()
    backend = get_backend("openvino", cache_dir=tmp_path, threads=1)
    backend.prepare(FixedPatchSize(copy.deepcopy(model), 7), (2, 1, 35, 42))
    x = torch.randn(2, 1, 28, 49)
    with torch.no_grad():
        torch.testing.assert_close(backend.run(x), model(x, patch_size=7), atol=1e-4, rtol=0)


def test_openvino_int8_in_a_sweep_gets_the_sweeps_data():
    from vitres.tune.measurement import backend_options
    from vitres.tune.records import SweepConfig

    config = SweepConfig(model="m", resolution=(28, 28), backend="openvino-int8", precision="int8")
    assert backend_options(config, ("/data/folder", None)) == {
        "device": "cpu",
        "calibration_data": "/data/folder",
        "calibration_data_dir": None,
    }
    assert get_backend("openvino-int8", calibration_data="/data/folder").spec.calib_data == (
        "/data/folder"
    )


def test_resize_policy_resamples_in_pytorch_so_every_size_matches_eager():
    """OpenVINO's antialiased Resize differs from torch's; with size_policy="resize" the
    backend resamples sizes the patch does not divide in PyTorch, so the graph only sees
    multiples of the patch and every size matches eager."""
    from vitres.backends import get_backend

    model = tiny_vit(size_policy="resize")
    backend = get_backend("openvino", threads=1)
    backend.prepare(copy.deepcopy(model), (1, 1, 28, 28))
    for size in ((31, 25), (28, 28), (17, 42)):
        x = torch.randn(2, 1, *size)
        with torch.no_grad():
            torch.testing.assert_close(backend.run(x), model(x), atol=1e-4, rtol=0)
