"""`vitres explain`: an image with the model's attention over it, at several resolutions."""

from __future__ import annotations

import argparse
import sys

from vitres.commands.args import add_device_argument, add_model_argument, thread_count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="draw a ViT's attention over an image at several resolutions",
        description="Resizes the image to each resolution, computes the attention map on that "
        "input's own token grid (rollout, last layer or raw; class/register tokens dropped, "
        "padding tokens masked) and draws the maps side by side.",
    )
    add_model_argument(parser)
    parser.add_argument(
        "--image", required=True, help="image file (converted to the model's channels)"
    )
    parser.add_argument(
        "--res",
        default="16,28,56",
        help="resolutions: 28 or height x width like 40x24, comma-separated",
    )
    parser.add_argument("--method", choices=("rollout", "last", "raw"), default="rollout")
    parser.add_argument(
        "--layers",
        default=None,
        help="blocks to use, e.g. 0,1,-1 (default: all; raw draws the last)",
    )
    parser.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean")
    parser.add_argument("--patch-size", type=int, default=None, help="patch size for every call")
    parser.add_argument("--threads", type=thread_count, default=None, help="CPU threads")
    add_device_argument(parser)
    parser.add_argument(
        "--out",
        default="attn.png",
        help="PNG to write (default attn.png); an existing folder: IMAGE_attention.png in it",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from vitres.commands.paths import check_output_file
    from vitres.explain import explain_image, load_image, parse_layers
    from vitres.explain.plots import attention_figure
    from vitres.layers.sizes import parse_resolutions
    from vitres.models.resolve import resolve_model as load_model

    if Path(args.out).is_dir():  # a folder: the picture goes inside it, named after the image
        args.out = str(Path(args.out) / f"{Path(args.image).stem}_attention.png")
    check_output_file(args.out, "--out")
    from vitres.devices import check_device

    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    resolutions = parse_resolutions(args.res)
    from vitres.layers.sizes import check_token_count

    check_token_count(resolutions, args.patch_size or model.config.patch_size)
    image = load_image(args.image, model.config.in_chans)
    panels = explain_image(
        model,
        image,
        resolutions,
        method=args.method,
        layers=parse_layers(args.layers),
        head_fusion=args.head_fusion,
        patch_size=args.patch_size,
        device=args.device,
    )
    figure = attention_figure(panels, title=f"{args.model}: attention ({args.method})")
    figure.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"{args.image} ({image.shape[1]}x{image.shape[2]}, {image.shape[0]} channel(s))")
    from vitres.data.decode import small_image_warning

    small = small_image_warning(*image.shape[1:], int(args.patch_size or model.config.patch_size))
    if small is not None:
        print(f"warning: {small}", file=sys.stderr)
    for panel in panels:
        maps = panel.attention
        height, width = maps.image_size
        rows, cols = maps.grid
        name = panel.class_name or f"class {panel.predicted}"
        print(
            f"  {height}x{width} px: grid {rows}x{cols}, {int(maps.valid.sum())} content tokens, "
            f"predicted {name} ({panel.probability:.1%})"
        )
    print(f"wrote {args.out}")
    return 0
