"""`vitres export`: a model to ONNX (one graph for every input size), optionally INT8, or
exactly the configuration a sweep measured (``--from results.jsonl --key K`` or
``--recommended``)."""

from __future__ import annotations

import argparse

from vitres.commands.args import add_budget_arguments, budget_from_args
from vitres.export.spec import CALIBRATION_METHODS, INT8_MODES, ExportSpec

_DEFAULTS = ExportSpec()
FORMATS = ("onnx", "openvino", "tensorrt")
# flags that set the spec; with --from the record sets it, so they are refused there
_SPEC_FLAGS = (
    "opset",
    "size",
    "static",
    "patch_size",
    "fused",
    "int8",
    "calib_method",
    "calib_data",
    "calib_split",
    "calib_images",
    "calib_res",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (dynamic batch, height and width), optionally INT8",
        description="Exports a ViT to one ONNX graph that serves every batch size and input "
        "size (position-table resampling stays in the graph), checks it against eager PyTorch "
        "at several sizes, and optionally quantises it to INT8 with ONNX Runtime. An MLP-Mixer "
        "needs --static (one graph per resolution). With --from RESULTS and --key or "
        "--recommended it exports exactly the configuration a sweep measured. The export "
        "spec, vitres version, model and record key are written into the file's metadata.",
    )
    _add_source_arguments(parser)
    parser.add_argument(
        "--out",
        required=True,
        help="output file: .onnx (the INT8 graph with --int8); with --format openvino the "
        ".xml of the IR (its ONNX graph is written beside it)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="onnx",
        help="onnx; openvino (an IR, .xml + .bin, from the checked ONNX graph, that "
        "OpenVINO and its benchmark_app run without vitres); tensorrt (a .plan, fp16, for "
        "half to twice the native size; needs TensorRT and an NVIDIA GPU)",
    )
    parser.add_argument(
        "--preprocess",
        choices=("nhwc", "nchw"),
        default=None,
        help="put the preprocessing in the graph: uint8 pixels in this layout (nhwc: as "
        "images decode) are scaled, normalised and resized there; logits out",
    )
    _add_spec_arguments(parser)
    parser.add_argument(
        "--atol",
        type=float,
        default=None,
        help=f"parity tolerance vs eager, fp32 (default {_DEFAULTS.atol:g})",
    )
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST files")
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the parity check also runs: cuda or cuda:N checks the graph on ONNX "
        "Runtime's CUDA provider against eager PyTorch on that GPU (the CPU check always runs)",
    )
    add_budget_arguments(parser)
    parser.set_defaults(func=run)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """What to export: ``--model``, or ``--from RESULTS`` with ``--key`` / ``--recommended``."""
    source = parser.add_argument_group("what to export")
    source.add_argument(
        "--model",
        default=None,
        help="bundled name, checkpoint path or registry name (with --from: the record's "
        "model unless given)",
    )
    source.add_argument(
        "--from",
        dest="from_results",
        metavar="RESULTS",
        default=None,
        help="results file of `vitres sweep`: export the configuration of one record",
    )
    pick = source.add_mutually_exclusive_group()
    pick.add_argument("--key", default=None, help="with --from: the record's config key")
    pick.add_argument(
        "--recommended",
        action="store_true",
        help="with --from: the config `vitres recommend` picks under the budget flags",
    )
    source.add_argument(
        "--no-accuracy-ok",
        action="store_true",
        help="with --recommended: export the pick of a results file without measured "
        "accuracy (the fastest config within the limits, not accepted by the rule)",
    )


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The export spec's flags (:data:`_SPEC_FLAGS`; refused with ``--from``)."""
    spec = parser.add_argument_group("export spec (not with --from: the record sets it)")
    spec.add_argument(
        "--opset", type=int, default=None, help=f"ONNX opset (>= 18; default {_DEFAULTS.opset})"
    )
    spec.add_argument(
        "--size",
        default=None,
        help="example size HxW to trace at: non-native and non-square for dynamic export "
        "(default: native + 2 patches tall, + 1 patch wide); the only size with --static",
    )
    spec.add_argument(
        "--static", action="store_true", help="fixed height and width (batch stays dynamic)"
    )
    spec.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="patch size baked into the graph (a positive int; default: the model's own)",
    )
    spec.add_argument(
        "--fused",
        action="store_true",
        help="apply ONNX Runtime's transformer fusions (SkipLayerNormalization, BiasGelu; "
        "attention is fused at opset 23); the file then needs ONNX Runtime",
    )
    spec.add_argument(
        "--int8",
        choices=[m for m in INT8_MODES if m != "none"],
        default=None,
        help="quantise to INT8 (default: float32)",
    )
    spec.add_argument(
        "--calib-method",
        choices=CALIBRATION_METHODS,
        default=None,
        help=f"how static INT8 sets activation ranges (default {_DEFAULTS.calib_method}, "
        f"{_DEFAULTS.calib_percentile:g})",
    )
    spec.add_argument(
        "--calib-data",
        default=None,
        help=f"dataset name or image folder (default {_DEFAULTS.calib_data})",
    )
    spec.add_argument(
        "--calib-split",
        default=None,
        help=f"split the calibration images come from (default {_DEFAULTS.calib_split})",
    )
    spec.add_argument(
        "--calib-images",
        type=int,
        default=None,
        help=f"number of calibration images (default {_DEFAULTS.calib_images})",
    )
    spec.add_argument(
        "--calib-res",
        default=None,
        help="calibration resolutions, e.g. 16,28,28x40 (default: the native one)",
    )


def spec_from_args(args: argparse.Namespace) -> ExportSpec:
    """The :class:`ExportSpec` the spec flags ask for (shared defaults elsewhere)."""
    from vitres.layers.sizes import parse_resolutions

    example = None
    if args.size:
        sizes = parse_resolutions(args.size)
        if len(sizes) != 1:
            raise ValueError(f"--size takes one size like 36x32, got {args.size!r}")
        example = sizes[0]
    return _DEFAULTS.with_overrides(
        opset=args.opset,
        dynamic=False if args.static else None,
        example_size=example,
        patch_size=args.patch_size,
        fused=True if args.fused else None,
        int8=args.int8,
        calib_method=args.calib_method,
        calib_data=args.calib_data,
        calib_split=args.calib_split,
        calib_images=args.calib_images,
        calib_resolutions=parse_resolutions(args.calib_res) if args.calib_res else None,
        atol=args.atol,
    )


def _record(args: argparse.Namespace):  # noqa: ANN202 - a Measurement, imported lazily
    import os

    from vitres.tune.export_plan import find_record
    from vitres.tune.recommend import recommend
    from vitres.tune.records import read_results

    if not os.path.exists(args.from_results):
        raise FileNotFoundError(
            f"no results file at {args.from_results}; run `vitres sweep --out "
            f"{args.from_results}` first"
        )
    records = read_results(args.from_results)
    if args.key:
        return find_record(records, args.key)
    rec = recommend(records, budget_from_args(args), args.baseline, args.host, args.for_model)
    if rec.choice is None:
        raise ValueError(f"nothing to export from {args.from_results}: {rec.sentence()}")
    if rec.choice.accuracy is None and not args.no_accuracy_ok:
        raise ValueError(
            f"{args.from_results} has no measured accuracy, so the acceptance rule accepted "
            f"nothing ({rec.sentence()}); sweep with --data DIR to measure it, or pass "
            "--no-accuracy-ok to export the pick anyway"
        )
    return rec.choice


def _check_format(args: argparse.Namespace) -> None:
    """Refuses what the output format cannot do, before any work."""
    from pathlib import Path

    out = Path(args.out)
    if args.format == "tensorrt":
        from vitres.backends.tensorrt_backend import tensorrt_availability

        usable, reason = tensorrt_availability()
        if not usable:
            raise ValueError(
                f"--format tensorrt needs TensorRT and an NVIDIA GPU: {reason}. Export ONNX "
                "(the default) and build the engine on the GPU machine (trtexec --onnx=FILE)"
            )
        if out.suffix not in (".plan", ".engine"):
            raise ValueError(f"--format tensorrt writes a plan: --out must end in .plan, got {out}")
    if args.format == "onnx" and out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx for an ONNX file, got {out}")
    if args.format == "openvino":
        if out.suffix != ".xml":
            raise ValueError(f"--format openvino writes an IR: --out must end in .xml, got {out}")
        if getattr(args, "int8", None) or getattr(args, "fused", False):
            raise ValueError(
                "--format openvino writes the float32 IR; OpenVINO INT8 is the openvino-int8 "
                "backend's (NNCF); drop --int8/--fused, or export ONNX with them"
            )


def _write_tensorrt(args: argparse.Namespace) -> int:
    """A TensorRT plan (fp16, one profile: half to twice the native size, batch 1..64),
    built by the tensorrt backend from the checked ONNX graph and checked against eager."""
    import shutil

    import torch

    from vitres.backends import get_backend
    from vitres.models.resolve import resolve_model

    model = resolve_model(args.model).eval()
    height, width = (int(v) for v in model.config.img_size)
    backend = get_backend("tensorrt", device=args.device if args.device != "cpu" else "cuda")
    backend.prepare(model, (1, model.config.in_chans, height, width))
    x = torch.randn(2, model.config.in_chans, height, width)
    with torch.inference_mode():
        worst = float((backend.run(x).cpu() - model(x)).abs().max())
    shutil.copyfile(backend.engine_path, args.out)
    print(
        f"wrote {args.out} (TensorRT fp16 plan, profile {backend.profile}; max |diff| vs eager {worst:.2e})"
    )
    return 0


def _check_gpu_check(args: argparse.Namespace) -> None:
    """Refuses a GPU parity check this machine (or the format) cannot run, before any work."""
    from vitres.devices import check_device

    if check_device(args.device).type == "cpu":
        return
    if args.format == "openvino":
        raise ValueError(
            "--format openvino: OpenVINO runs on Intel CPUs and GPUs, and its IR is checked on "
            "the CPU; drop --device"
        )
    from vitres.export.parity import parity_providers

    parity_providers(check_device(args.device))


def _gpu_parity(model, artifact, args: argparse.Namespace) -> None:  # noqa: ANN001
    """The float32 graph checked again on the GPU, at the sizes of the CPU check."""
    from vitres.export.parity import check_parity

    result = artifact.fp32
    sizes = [tuple(int(v) for v in key.split("x")) for key in result.parity.max_abs_diff]
    report = check_parity(
        model, result.path, sizes, patch_size=result.patch_size, atol=args.atol or result.parity.atol,
        device=args.device,
    )  # fmt: skip
    print(f"  parity on {args.device}: {report}")


def _write_openvino(model, artifact, out: str) -> str:  # noqa: ANN001 - nn.Module, ExportArtifact
    """The IR of the checked ONNX graph, with the ONNX file's vitres metadata in its
    ``rt_info`` (``vitres/<key>``), checked against eager."""
    from pathlib import Path

    import openvino as ov

    from vitres.export.openvino import convert_to_openvino

    onnx_path = artifact.fp32.path
    conversion = convert_to_openvino(
        model,
        patch_size=artifact.fp32.patch_size,
        converter="onnx",
        onnx_graph=lambda: onnx_path,
    )
    ir = conversion.model
    for key, value in artifact.metadata.items():
        ir.set_rt_info(str(value), ["vitres", key])
    ov.save_model(ir, str(Path(out)), compress_to_fp16=False)
    return f"parity {conversion.parity}"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitres.commands.paths import check_output_file

    check_output_file(args.out, "--out")
    _check_format(args)
    _check_gpu_check(args)
    if args.format == "tensorrt":
        return _write_tensorrt(args)
    xml = args.out if args.format == "openvino" else None
    if xml is not None:  # the checked ONNX graph goes beside the IR
        args.out = str(Path(xml).with_suffix(".onnx"))
    model, artifact = _export(args)
    _print_artifact(artifact)
    if args.device != "cpu":
        _gpu_parity(model, artifact, args)
    if args.preprocess:
        from vitres.export.preprocess import add_preprocessing

        cfg = model.config
        add_preprocessing(artifact.path, cfg.mean, cfg.std, args.preprocess)
        print(
            f"  input: uint8 pixels, {args.preprocess.upper()}, any size; preprocessing in the graph"
        )
    if xml is not None:
        parity = _write_openvino(model, artifact, xml)
        size = artifact.metadata.get("recommended_size") or artifact.metadata["native_size"]
        shape = f"[1,{model.config.in_chans},{size.replace('x', ',')}]"
        print(f"wrote {xml} and {Path(xml).with_suffix('.bin')} (OpenVINO IR; {parity})")
        print(f"  benchmark it: benchmark_app -m {xml} -data_shape {shape} (any size works)")
    return 0


def _export(args: argparse.Namespace):  # noqa: ANN202 - (nn.Module, ExportArtifact)
    """Exports as the flags say; returns the model and the artifact."""
    from vitres.export import export_from_spec
    from vitres.export.plan import export_from_plan
    from vitres.models.checkpoint import checkpoint_digest
    from vitres.models.resolve import resolve_model
    from vitres.tune.export_plan import plan_from_record

    if args.from_results is None:
        if args.key or args.recommended:
            raise ValueError("--key and --recommended pick a record of --from RESULTS; give --from")
        if args.model is None:
            raise ValueError(
                "give --model (what to export) or --from RESULTS with --key/--recommended"
            )
        spec = spec_from_args(args)
        model = resolve_model(args.model).eval()
        artifact = export_from_spec(
            model,
            args.out,
            spec,
            provenance={"model": args.model, "model_digest": checkpoint_digest(args.model)},
            calib_data_dir=args.data_dir,
        )
    else:
        if not (args.key or args.recommended):
            raise ValueError("--from needs --key CONFIGKEY or --recommended")
        given = [
            f"--{f.replace('_', '-')}" for f in _SPEC_FLAGS if getattr(args, f) not in (None, False)
        ]
        if given:
            raise ValueError(
                f"--from exports what the record measured, so {', '.join(given)} cannot change "
                "it; drop them (or export with --model and your own flags)"
            )
        record = _record(args)
        plan = plan_from_record(record)
        model = resolve_model(args.model or plan.model).eval()
        print(f"record {plan.record_key}")
        artifact = export_from_plan(
            model,
            args.out,
            plan,
            model_ref=args.model,
            calib_data_dir=args.data_dir,
            atol=args.atol,
        )
    return model, artifact


def _print_artifact(artifact) -> None:  # noqa: ANN001 - an ExportArtifact
    result = artifact.fp32
    print(f"wrote {result.path} in {result.export_time_s:.1f} s (opset {result.opset})")
    print(f"  inputs: {result.size_rule}; any batch size")
    print(f"  parity: {result.parity}")
    if artifact.fusion is not None:
        counts = ", ".join(
            f"{n} {k.split(':')[1]}" for k, n in artifact.fusion["fused_ops"].items()
        )
        print(f"  fused graph: {counts}; parity: {artifact.fusion['parity']}")
    if artifact.quantization is not None:
        facts = artifact.quantization
        method = f", {facts['calib_method']} calibration" if facts["calib_method"] else ""
        print(
            f"wrote {artifact.path} ({artifact.spec.int8} INT8{method}; "
            f"{facts['quantized_candidates']} weight matmuls/convs quantised, "
            f"{facts['excluded_nodes']} attention matmuls kept float) in {facts['seconds']:.1f} s"
        )
    if artifact.metadata.get("notes"):
        print(f"  note: {artifact.metadata['notes']}")
    print(f"  spec (in the file's metadata): {artifact.spec.to_json()}")
