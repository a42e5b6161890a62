"""The flags every command shares, so one name means one thing everywhere.

- ``--model``: the one model-reference grammar (:func:`vitres.models.resolve.resolve_model`);
- ``--res``: the one size grammar (:mod:`vitres.layers.sizes`);
- ``--patch-size``, ``--batch-size``, ``--limit``, ``--threads``, ``--merge``;
- the analysis flags of ``ood`` and ``report`` (data, OOD limits, overlap neighbours);
- the budget flags, generated from :class:`vitres.tune.budget.Budget` with its docstring
  as help and its defaults shown, plus ``--task`` presets.

Dataclass-generated flags come from the one generator, :mod:`vitres.commands.flags`
(help from the dataclass's Google-style ``Attributes:`` section).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from vitres.commands.flags import DefaultsFormatter as DefaultsFormatter  # re-exported
from vitres.commands.flags import add_dataclass_arguments

MODEL_HELP = (
    "model: a bundled name (fmnist-vit-multires), a vitres checkpoint, a Hugging Face "
    "directory, a timm file or directory, a registry name (random weights) or module:factory"
)
RES_HELP = "resolutions: 16,20,28 | ranges 12:56:4 (start:stop:step) | height x width 28x40"


def add_model_argument(
    parser: argparse.ArgumentParser, *, required: bool = True, **kw: Any
) -> None:
    parser.add_argument("--model", required=required, help=MODEL_HELP, **kw)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: cpu, cuda or cuda:N, checked by :func:`vitres.devices.check_device`."""
    from vitres.devices import DEVICE_HELP

    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)


def add_res_argument(
    parser: argparse.ArgumentParser, *, default: str | None = None, required: bool = False
) -> None:
    parser.add_argument("--res", default=default, required=required, help=RES_HELP)


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    patch_list: bool = False,
    batch_list: bool = False,
    batch_default: str | int | None = None,
) -> None:
    """``--patch-size``, ``--batch-size``, ``--limit`` and ``--threads``.

    Args:
        parser: The command's parser.
        patch_list: ``--patch-size`` takes a list (``4,7``; ``native`` = the model's own).
        batch_list: ``--batch-size`` takes a list (a sweep axis) rather than one size.
        batch_default: Default of ``--batch-size``.
    """
    parser.add_argument(
        "--patch-size",
        "--patch",
        dest="patch_size",
        default=None,
        type=None if patch_list else int,
        help="patch sizes, e.g. 4,7 (native = the model's own; default: the model's own)"
        if patch_list
        else "patch size for every call (default: the model's own)",
    )
    parser.add_argument(
        "--batch-size",
        "--batch",
        dest="batch_size",
        default=batch_default,
        type=None if batch_list else int,
        help="batch sizes, e.g. 1,8" if batch_list else "images per forward call",
    )
    parser.add_argument(
        "--limit",
        "--eval-limit",
        dest="limit",
        type=positive_int,
        default=None,
        help="use the first N evaluation examples only (all when omitted)",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="torch CPU threads, at most the usable cores (torch's choice when omitted)",
    )


def add_merge_argument(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """``--merge``: token merging inside the blocks (:mod:`vitres.tokens.merge`)."""
    what = (
        "token-merging settings to sweep, e.g. 0,8,0.5 (0 = none)"
        if many
        else "token merging (ToMe) inside the blocks"
    )
    parser.add_argument(
        "--merge",
        default=None,
        type=None if many else _merge_value,
        help=f"{what}: an int r merges r patch tokens per block (8), a decimal keeps that "
        "fraction of the patch tokens by the last block (0.5; 1.0 = keep all); ViT only",
    )


def _merge_value(text: str) -> Any:
    from vitres.tokens.merge import parse_merge

    try:
        return parse_merge(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_measurement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--keep-unstable`` and ``--max-attempts``: how a sweep treats disturbed timings."""
    parser.add_argument(
        "--keep-unstable",
        action="store_true",
        help="on resume, keep records flagged unstable or disturbed (default: measure again)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="measurements of a config whose timing window shows interference, at most",
    )


# --------------------------------------------------------------------------- analysis


def add_analysis_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
) -> None:
    """The flags of :func:`vitres.explain.analyse_resolutions` shared by ``ood`` and
    ``report``: data, OOD methods and limits, batch and patch size, overlap neighbours,
    t-SNE points, threads and progress."""
    parser.add_argument("--data", default="fashion-mnist", help="in-distribution dataset or folder")
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST files")
    parser.add_argument(
        "--methods",
        default=None,
        help="subset of msp,maxlogit,energy,mahalanobis,vim (default all)",
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="first N test images only")
    parser.add_argument(
        "--train-limit",
        type=positive_int,
        default=10_000,
        help="training images for the Mahalanobis/ViM fit (default: 10000)",
    )
    parser.add_argument(
        "--ood-limit", type=positive_int, default=None, help="first N OOD images only"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--patch-size", type=int, default=None, help="patch size for every call")
    parser.add_argument("--threads", type=thread_count, default=None, help="CPU threads")
    parser.add_argument("--k", type=int, default=10, help="neighbours of the overlap measure")
    parser.add_argument(
        "--tsne-points", type=int, default=2000, help="points per t-SNE (default: 2000)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- budget


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """The budget flags shared by ``recommend``, ``report``, ``demo`` and ``sweep``."""
    from vitres.tune.budget import TASK_TEXT, Budget

    group = parser.add_argument_group(
        "budget and acceptance rule",
        "Limits a config must meet, and the rule it is judged by against the baseline. "
        "Without limits the answer is the most accurate config the rule accepts.",
    )
    group.add_argument(
        "--task",
        choices=sorted(TASK_TEXT),
        help="start from a preset: "
        + "; ".join(f"{name}: {text}" for name, text in TASK_TEXT.items()),
    )
    add_dataclass_arguments(group, Budget, skip=("task", "source"), defaults=Budget())
    group.add_argument(
        "--host",
        metavar="KIND",
        help="machine kind (host fingerprint or a prefix) whose records to use, when a "
        "results file holds several",
    )
    group.add_argument(
        "--for-model",
        metavar="NAME",
        help="the model whose records to decide on, when a results file holds several: "
        "its --model as given to `vitres sweep`, or the first 6+ digits of its weights digest",
    )
    group.add_argument(
        "--baseline",
        metavar="CONFIGKEY",
        help="config key to compare against (default: native resolution, fp32 eager, "
        "smallest batch)",
    )


def budget_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~vitres.tune.budget.Budget` the flags describe; ``ValueError`` with the
    flag's name when a value is out of range."""
    from vitres.tune.budget import Budget

    names = [f.name for f in dataclasses.fields(Budget) if f.name not in ("task", "source")]
    values = {name: getattr(args, name) for name in names}
    try:
        if getattr(args, "task", None):
            defaults = Budget()
            overrides = {k: v for k, v in values.items() if v != getattr(defaults, k)}
            return Budget.for_task(args.task, **overrides)
        return Budget(**values)
    except ValueError as error:
        flag = re.sub(r"^(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(error))
        raise ValueError(flag) from None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_count(text: str) -> int:
    """``--threads``: a positive count no larger than the cores this process may use."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of threads, got {text!r}"
        ) from None
    cores = usable_cores()
    if value < 1:
        raise argparse.ArgumentTypeError(f"threads must be at least 1, got {value}")
    if value > cores:
        raise argparse.ArgumentTypeError(
            f"{value} threads, but this process may use {cores} core(s); more threads than "
            "cores only slow each other down (give at most {cores})".replace("{cores}", str(cores))
        )
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--limit``, counts of images)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value} (omit it for all)")
    return value
