"""`vitres models`: list the named configurations and bundled reference models."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list model names and bundled reference models")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitres.models.checkpoint import WEIGHTS_DIR
    from vitres.models.registry import list_models

    print("named configs:", ", ".join(list_models()))
    print(
        "  (vit_<size>_patch<P> takes any patch size P; the train command's default is vit_tiny_patch4)"
    )
    bundled = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))
    print("bundled reference models:", ", ".join(bundled) if bundled else "(none)")
    return 0
