"""`vitres run`: classify a stream frame by frame, adapting the resolution to a deadline."""

from __future__ import annotations

import argparse
import os
import sys

from vitres.commands.args import add_device_argument, thread_count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="classify a video, image folder or dataset frame by frame under an FPS or "
        "latency target, choosing each frame's resolution",
        description="Streams frames through the model; a controller (predictive, the "
        "step rule, or fixed:R) chooses each frame's resolution from a ladder. Every ladder "
        "size is warmed up before the first frame. Writes one JSON line per frame to --trace "
        "and prints a summary. Without --records a short speed-only calibration runs first.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model: reference name (fmnist-vit-multires), checkpoint path, registry name "
        "or module:factory",
    )
    parser.add_argument(
        "--source",
        required=True,
        help="video file (decoded with PyAV), image folder (root/<class>/<images> for labels, "
        "or images directly in it), or a dataset name (fashion-mnist)",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-fps", type=float, help="frames per second to keep")
    target.add_argument("--max-latency-ms", type=float, help="deadline per frame, milliseconds")
    parser.add_argument(
        "--controller",
        default="predictive",
        help="predictive (default), step (±step px per frame on FPS feedback) or fixed:R, e.g. fixed:28",
    )
    parser.add_argument(
        "--records", help="sweep results (vitres sweep --out); omit to calibrate first"
    )
    parser.add_argument("--frames", type=int, help="stop after N frames")
    parser.add_argument("--trace", help="per-frame trace, JSON lines (e.g. trace.jsonl)")
    parser.add_argument(
        "--backend",
        default=None,
        help="backend (default: with --records, the backend of the config they recommend; "
        "else eager)",
    )
    parser.add_argument(
        "--ladder",
        help="sizes to choose from, e.g. 16,20,24,28 or 96:224:32 (default: the records' "
        "sizes, else 0.4x..1x the native size)",
    )
    parser.add_argument(
        "--step", type=int, help="step controller: px per change (default: ladder gap)"
    )
    parser.add_argument(
        "--escalate-below",
        type=float,
        help="re-run a frame at the next larger size when its top probability is below this "
        "and the deadline allows (e.g. 0.6)",
    )
    parser.add_argument("--labels", help="video labels: a text file with one class index per frame")
    parser.add_argument("--data-dir", help="folder of the dataset files")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument(
        "--threads", type=thread_count, help="CPU threads (default: torch's default)"
    )
    parser.add_argument(
        "--calibration-out",
        help="where the calibration's records go, kept for --records (default: "
        "TRACE.calibration.jsonl with --trace, else ./vitres-run-calibration.jsonl)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="draw the run: resolution per frame, and latency against the deadline",
    )
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.commands.paths import check_output_file
    from vitres.layers.sizes import parse_resolutions
    from vitres.runtime.session import run_session
    from vitres.runtime.stream import format_summary

    check_output_file(args.plot, "--plot")
    trace = args.trace
    scratch = None
    if args.plot and not trace:  # the plot is drawn from a trace: keep one while running
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix="vitres-run-")
        trace = os.path.join(scratch.name, "trace.jsonl")
    ladder = None
    if args.ladder:
        sizes = parse_resolutions(args.ladder)
        if any(h != w for h, w in sizes):
            raise ValueError(f"--ladder takes square sizes (one number each), got {args.ladder}")
        ladder = [h for h, _ in sizes]
    result = run_session(
        args.model,
        args.source,
        target_fps=args.target_fps,
        max_latency_ms=args.max_latency_ms,
        controller=args.controller,
        records=args.records,
        frames=args.frames,
        trace_path=trace,
        backend=args.backend,
        ladder=ladder,
        escalate_below=args.escalate_below,
        step=args.step,
        labels=args.labels,
        data_dir=args.data_dir,
        split=args.split,
        calibration_path=args.calibration_out,
        threads=args.threads,
        progress=not args.no_progress,
        log=lambda message: print(message, file=sys.stderr),
        device=args.device,
    )
    print(format_summary(result.report, result.deadline_ms))
    if args.plot:
        from vitres.runtime.trace_plot import plot_trace, read_trace

        title = f"{args.model} on {args.source} ({result.report.controller})"
        print(f"wrote {plot_trace(read_trace(trace), args.plot, title)}")
    if scratch is not None:
        scratch.cleanup()
    return 0
