"""`vitres export`: a model to ONNX (one graph for every input size), optionally INT8."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (dynamic batch, height and width), optionally INT8",
        description="Exports a ViT to one ONNX graph that serves every batch size and input "
        "size (position-table resampling stays in the graph), checks it against eager PyTorch "
        "at several sizes, and optionally quantises it to INT8 with ONNX Runtime. An MLP-Mixer "
        "needs --static (one graph per resolution).",
    )
    parser.add_argument(
        "--model", required=True, help="bundled name, checkpoint path or registry name"
    )
    parser.add_argument(
        "--out", required=True, help="output .onnx file (the INT8 graph with --int8)"
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 18; default 18)")
    parser.add_argument(
        "--size",
        default=None,
        help="example size HxW to trace at: non-native and non-square for dynamic export "
        "(default: native + 2 patches tall, + 1 patch wide); the only size with --static",
    )
    parser.add_argument(
        "--static", action="store_true", help="fixed height and width (batch stays dynamic)"
    )
    parser.add_argument(
        "--patch-size", type=int, default=None, help="patch size baked into the graph"
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="parity tolerance vs eager (fp32)")
    parser.add_argument(
        "--int8", choices=("dynamic", "static"), default=None, help="quantise to INT8"
    )
    parser.add_argument(
        "--calib-method",
        choices=("minmax", "entropy", "percentile"),
        default="percentile",
        help="how static INT8 sets activation ranges (default percentile, 99.999)",
    )
    parser.add_argument(
        "--calib-data", default="fashion-mnist", help="dataset name or image folder"
    )
    parser.add_argument(
        "--calib-split", default="train", help="split the calibration images come from"
    )
    parser.add_argument(
        "--calib-images", type=int, default=256, help="number of calibration images"
    )
    parser.add_argument(
        "--calib-res",
        default=None,
        help="comma-separated calibration resolutions (default: the native one)",
    )
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST files")
    parser.set_defaults(func=run)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"sizes must look like 28 or 36x32 (height x width), got {text!r}")
    return values[0], values[1]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitres.export import (
        DEFAULT_OPSET,
        calibration_batches,
        export_onnx,
        quantize_onnx,
        unwrap_model,
    )
    from vitres.models.resolve import resolve_model

    model = resolve_model(args.model).eval()
    out = Path(args.out)
    fp32_path = out if args.int8 is None else out.with_name(out.stem + ".fp32.onnx")
    result = export_onnx(
        model,
        fp32_path,
        _size(args.size) if args.size else None,
        dynamic=not args.static,
        patch_size=args.patch_size,
        opset=args.opset or DEFAULT_OPSET,
        atol=args.atol,
    )
    print(f"wrote {result.path} in {result.export_time_s:.1f} s (opset {result.opset})")
    print(f"  inputs: {result.size_rule}; any batch size")
    print(f"  parity: {result.parity}")
    if args.int8 is None:
        return 0
    calibration = None
    if args.int8 == "static":
        base, _ = unwrap_model(model)
        resolutions = (
            [_size(r) for r in args.calib_res.split(",") if r.strip()]
            if args.calib_res
            else [tuple(base.config.img_size)]
        )
        if not result.dynamic:
            resolutions = [result.example_size]
        calibration = calibration_batches(
            model,
            args.calib_data,
            resolutions,
            num_images=args.calib_images,
            split=args.calib_split,
            data_dir=args.data_dir,
        )
    facts = quantize_onnx(
        fp32_path, out, args.int8, calibration=calibration, calib_method=args.calib_method
    )
    method = f", {facts['calib_method']} calibration" if facts["calib_method"] else ""
    print(
        f"wrote {out} ({args.int8} INT8{method}; {facts['quantized_candidates']} weight "
        f"matmuls/convs quantised, {facts['excluded_nodes']} attention matmuls kept float) in "
        f"{facts['seconds']:.1f} s"
    )
    return 0
