"""The ``vitres`` command line: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# subcommand modules under vitres.commands, in the order `vitres --help` lists them
COMMAND_MODULES = (
    "demo_cmd",
    "train_cmd",
    "flexify_cmd",
    "eval_cmd",
    "explain_cmd",
    "ood_cmd",
    "sweep_cmd",
    "recommend_cmd",
    "check_cmd",
    "report_cmd",
    "export_cmd",
    "run_cmd",
    "serve_cmd",
    "models_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitres",
        description="Run Vision Transformers at any resolution, measure every resolution on your "
        "hardware and data, and pick the one that meets your budget.",
    )
    from vitres import __version__

    parser.add_argument("--version", action="version", version=f"vitres {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"vitres.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"vitres.commands.{name}":
                continue  # command not shipped in this build
            raise
        module.register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one plain line, ``vitres: warning: <message>``, without the source line."""
    text = " ".join(str(message).split("\n"))
    try:
        print(f"vitres: warning: {text}", file=file if file is not None else sys.stderr)
    except OSError:
        pass  # stderr gone (closed pipe): warnings are not worth failing over


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"vitres {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitres {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
