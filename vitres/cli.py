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
    "probe_cmd",
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
    from vitres.commands.config_file import add_config_arguments

    for command in sub.choices.values():
        add_config_arguments(command)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _config_path(argv: list[str]) -> str | None:
    for index, token in enumerate(argv):
        if token == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one plain line, ``vitres: warning: <message>``, without the source line."""
    text = " ".join(str(message).split("\n"))
    try:
        print(f"vitres: warning: {text}", file=file if file is not None else sys.stderr)
    except OSError:
        pass  # stderr gone (closed pipe): warnings are not worth failing over


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((t for t in argv if not t.startswith("-")), None)
    config = _config_path(argv)
    subparser = _subparser(parser, command) if command else None
    if config is not None and subparser is not None:
        from vitres.commands.config_file import apply_config_file

        try:
            apply_config_file(subparser, config)
        except (ValueError, FileNotFoundError) as err:
            print(f"vitres {command}: error: {err}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "print_config", False):
        from vitres.commands.config_file import config_text

        print(config_text(args, subparser), end="")
        return 0
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # `vitres ... | head`: the reader is gone; end quietly
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a process the pipe ended
    except (ValueError, FileNotFoundError) as err:
        if isinstance(err, OSError) and err.strerror:  # raised by the OS: its words and path
            err = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
        print(f"vitres {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written: say which, no traceback
        where = f": {err.filename}" if err.filename else ""
        print(f"vitres {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitres {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so that Python's own flush at exit cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured output)
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
