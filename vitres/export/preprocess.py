"""Preprocessing inside an exported graph: 8-bit pixels in, logits out.

:func:`add_preprocessing` puts, in front of an exported graph's image input, the steps a
caller would otherwise have to know: ``uint8`` pixels (``NHWC``, as images are decoded,
or ``NCHW``) cast to float, scaled to 0..1, moved to channels-first, normalised with the
model's mean and std. The graph's own size handling (the recorded size policy) stays
where it was, so any height and width the graph accepted are still accepted. The file's
metadata says the new input (``vitres.input_layout``, ``vitres.preprocessing``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["LAYOUTS", "add_preprocessing"]

LAYOUTS = ("nhwc", "nchw")


def add_preprocessing(
    path: str | os.PathLike[str],
    mean: Sequence[float],
    std: Sequence[float],
    layout: str = "nhwc",
) -> Path:
    """Rewrites the graph at ``path`` to take ``uint8`` pixels in ``layout``.

    Raises:
        ValueError: an unknown layout, or a graph without one image input.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vitres.export.metadata import write_export_metadata

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{path} has {len(inputs)} inputs; preprocessing needs one image input")
    original = inputs[0]
    dims = [d.dim_param or d.dim_value for d in original.type.tensor_type.shape.dim]
    channels = len(mean)
    batch, _, height, width = dims if len(dims) == 4 else ("batch", channels, "height", "width")
    shape = (
        [batch, height, width, channels] if layout == "nhwc" else [batch, channels, height, width]
    )
    name = f"pixels_uint8_{layout}"
    pixel_input = helper.make_tensor_value_info(name, TensorProto.UINT8, shape)
    stats = np.array(mean, np.float32).reshape(1, channels, 1, 1)
    spread = np.array(std, np.float32).reshape(1, channels, 1, 1)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(255.0, np.float32), "pre_255"),
            numpy_helper.from_array(stats, "pre_mean"),
            numpy_helper.from_array(spread, "pre_std"),
        ]
    )
    steps = [
        helper.make_node("Cast", [name], ["pre_float"], to=TensorProto.FLOAT, name="/pre/Cast")
    ]
    scaled = "pre_scaled"
    steps.append(helper.make_node("Div", ["pre_float", "pre_255"], [scaled], name="/pre/Scale"))
    if layout == "nhwc":
        steps.append(helper.make_node("Transpose", [scaled], ["pre_nchw"], perm=[0, 3, 1, 2],
                                      name="/pre/Transpose"))  # fmt: skip
        scaled = "pre_nchw"
    steps.append(helper.make_node("Sub", [scaled, "pre_mean"], ["pre_centred"], name="/pre/Sub"))
    steps.append(helper.make_node("Div", ["pre_centred", "pre_std"], [original.name],
                                  name="/pre/Normalise"))  # fmt: skip
    kept = [i for i in graph.input if i.name != original.name]
    del graph.input[:]
    graph.input.extend([pixel_input, *kept])
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*steps, *nodes])
    onnx.checker.check_model(model)
    partial = path.with_name(path.name + ".partial")
    onnx.save(model, str(partial))
    partial.replace(path)
    write_export_metadata(
        path,
        {
            "input_layout": f"{layout.upper()} uint8",
            "input_name": name,
            "preprocessing": "in the graph: 8-bit pixels are scaled to 0..1, made "
            "channels-first and normalised with the mean and std; feed decoded images as they are",
        },
    )
    return path
