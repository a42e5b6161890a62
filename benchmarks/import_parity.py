"""Imported families against their source: max |diff| per family and size, and the cost of
running them at any resolution in vitres against the source's own interpolating forward.

Parity (default, not a timing): each Hugging Face family (ViT, DeiT with and without
teacher, DINOv2 with and without registers and its classifier, SigLIP vision, CLIP vision
and its projection, BEiT and Data2Vec-vision with their relative position bias tables) is a random ``transformers`` model, saved with ``save_pretrained``
and loaded with ``vitres.from_pretrained``; its outputs are compared with the source's
(``interpolate_pos_encoding=True`` where the source has it) at the native size and at
non-square sizes, one not divisible by the patch and one smaller than native. timm is
not installed here; its variants are checked by ``tests/test_timm_import.py`` against
timm's forward written out, and are not in this table.

Timing (``--timing``, off by default): the same families at ViT-B/16 width and 224 px,
median latency of the source's interpolating forward and of vitres's forward, side by
side, at the sizes of ``--timing-sizes``. Run it on an otherwise idle machine::

    PYTHONPATH=. python benchmarks/import_parity.py                 # parity only
    PYTHONPATH=. python benchmarks/import_parity.py --timing --threads 4

Writes ``benchmarks/results/import_parity.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers as T
from tqdm.auto import tqdm

if not __package__:  # run as `python benchmarks/x.py`: this checkout first on sys.path
    import _common  # noqa: F401

import vitres
from benchmarks._common import RESULTS_DIR, markdown_table, write_json, write_markdown
from vitres.layers.pos_embed import to_grid

PARITY_SIZES = [(56, 56), (84, 56), (75, 101), (34, 46)]  # native, non-square, indivisible, smaller


def _families(
    width: dict, labels: int
) -> dict[str, tuple[Callable[[], torch.nn.Module], str, bool]]:
    """name -> (build source, output compared, whether the source takes interpolate_pos_encoding)."""
    vit = dict(width, intermediate_size=4 * width["hidden_size"])
    dino = dict(width, mlp_ratio=4)
    return {
        "vit (classifier)": (
            lambda: T.ViTForImageClassification(T.ViTConfig(**vit, num_labels=labels)),
            "logits",
            True,
        ),
        "vit (ViTModel pooler)": (lambda: T.ViTModel(T.ViTConfig(**vit)), "pooler_output", True),
        "deit (with teacher)": (
            lambda: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**vit, num_labels=labels)),
            "logits",
            True,
        ),
        "deit (classifier)": (
            lambda: T.DeiTForImageClassification(T.DeiTConfig(**vit, num_labels=labels)),
            "logits",
            True,
        ),
        "dinov2 (pooler)": (lambda: T.Dinov2Model(T.Dinov2Config(**dino)), "pooler_output", False),
        "dinov2 (tokens)": (
            lambda: T.Dinov2Model(T.Dinov2Config(**dino)),
            "last_hidden_state",
            False,
        ),
        "dinov2 (classifier)": (
            lambda: T.Dinov2ForImageClassification(T.Dinov2Config(**dino, num_labels=labels)),
            "logits",
            False,
        ),
        "dinov2 + registers (pooler)": (
            lambda: T.Dinov2WithRegistersModel(
                T.Dinov2WithRegistersConfig(**dino, num_register_tokens=4)
            ),
            "pooler_output",
            False,
        ),
        "siglip vision (pooler)": (
            lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**vit)),
            "pooler_output",
            True,
        ),
        "clip vision (pooler)": (
            lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**vit)),
            "pooler_output",
            True,
        ),
        "clip vision (image_embeds)": (
            lambda: T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(**vit, projection_dim=32)),
            "image_embeds",
            True,
        ),
        "beit (classifier, per-block bias)": (
            lambda: T.BeitForImageClassification(
                T.BeitConfig(**vit, num_labels=labels, use_relative_position_bias=True)
            ),
            "logits",
            True,
        ),
        "beit (pooler, shared bias + abs pos)": (
            lambda: T.BeitModel(
                T.BeitConfig(
                    **vit,
                    use_shared_relative_position_bias=True,
                    use_absolute_position_embeddings=True,
                    use_mean_pooling=False,
                )
            ),
            "pooler_output",
            True,
        ),
        "data2vec-vision (classifier)": (
            lambda: T.Data2VecVisionForImageClassification(
                T.Data2VecVisionConfig(**vit, num_labels=labels, use_relative_position_bias=True)
            ),
            "logits",
            True,
        ),
    }


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random tokens, tables and layer scales (init leaves them at constants)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("position", "cls_token", "distillation_token", "class_embedding",
                                       "register_tokens", "probe", "lambda1", "lambda_")):  # fmt: skip
                param.normal_(0, 1.0)
    return model.eval()


def _load(source: torch.nn.Module) -> torch.nn.Module:
    with tempfile.TemporaryDirectory() as folder:
        source.save_pretrained(folder)
        return vitres.from_pretrained(folder)


def _ours(model: torch.nn.Module, output: str, x: torch.Tensor) -> torch.Tensor:
    return model.forward_features(x) if output == "last_hidden_state" else model(x)


def parity(seed: int = 0) -> list[dict]:
    width = dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56, patch_size=14
    )
    rows = []
    for name, (build, output, interpolates) in tqdm(_families(width, 10).items(), desc="parity"):
        torch.manual_seed(seed)
        source = _randomise(build())
        ours = _load(source)
        kwargs = {"interpolate_pos_encoding": True} if interpolates else {}
        diffs = {}
        for size in PARITY_SIZES:
            x = torch.randn(2, 3, *size)
            with torch.no_grad():
                reference = getattr(source(pixel_values=x, **kwargs), output)
                diffs[f"{size[0]}x{size[1]}"] = float(
                    (_ours(ours, output, x) - reference).abs().max()
                )
        rows.append({"family": name, "output": output, "max_abs_diff": diffs})
    return rows


def _median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def timing(sizes: list[tuple[int, int]], warmup: int, repeats: int) -> list[dict]:
    width = dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16
    )
    rows = []
    families = {k: v for k, v in _families(width, 1000).items() if k != "dinov2 (tokens)"}
    for name, (build, _output, interpolates) in tqdm(families.items(), desc="timing"):
        torch.manual_seed(0)
        source = _randomise(build())
        ours = _load(source)
        kwargs = {"interpolate_pos_encoding": True} if interpolates else {}
        for size in sizes:
            x = torch.randn(1, 3, *size)
            with torch.inference_mode():
                t_source = _median_ms(
                    lambda m=source, x=x, kw=kwargs: m(pixel_values=x, **kw), warmup, repeats
                )
                t_ours = _median_ms(lambda m=ours, x=x: m(x), warmup, repeats)
            rows.append({
                "family": name,
                "size": list(size),
                "source_ms": t_source,
                "vitres_ms": t_ours,
                "overhead": t_ours / t_source - 1,
            })  # fmt: skip
    return rows


def write(parity_rows: list[dict], timing_rows: list[dict] | None, env: dict) -> None:
    document = {"env": env, "parity": parity_rows, "timing": timing_rows}
    write_json(RESULTS_DIR / "import_parity.json", document)
    sizes = list(parity_rows[0]["max_abs_diff"])
    lines = [
        "# Imported families: vitres against the source (transformers)",
        "",
        f"Environment: torch {env['torch']}, transformers {env['transformers']}, {env['cpu']}.",
        "",
        "## Parity: max |diff| (random tiny models, width 64, 4 layers, 56 px native, patch 14)",
        "",
        *markdown_table(
            ["family", "output", *sizes],
            (
                [row["family"], f"`{row['output']}`"]
                + [f"{row['max_abs_diff'][s]:.1e}" for s in sizes]
                for row in parity_rows
            ),
        ),
    ]
    lines += ["", "## Any-resolution overhead against the source's own interpolating forward", ""]
    if not timing_rows:
        lines.append("Not measured in this run (pass `--timing` on an idle machine).")
    else:
        lines += [
            f"ViT-B/16 width, batch 1, {env['threads']} thread(s), median of {env['repeats']} runs.",
            "",
            *markdown_table(
                ["family", "size", "source ms", "vitres ms", "overhead"],
                (
                    (
                        row["family"],
                        f"{row['size'][0]}x{row['size'][1]}",
                        f"{row['source_ms']:.2f}",
                        f"{row['vitres_ms']:.2f}",
                        f"{row['overhead'] * 100:+.1f} %",
                    )
                    for row in timing_rows
                ),
            ),
        ]
    write_markdown(RESULTS_DIR / "import_parity.md", lines)
    print("\n".join(lines))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timing", action="store_true", help="also time source vs vitres")
    parser.add_argument("--timing-sizes", default="224,288x192,320", help="sizes for --timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {
        "torch": torch.__version__,
        "transformers": T.__version__,
        "cpu": _cpu_name(),
        "threads": args.threads,
        "repeats": args.repeats,
    }
    parity_rows = parity()
    timing_rows = None
    if args.timing:
        sizes = [
            to_grid(tuple(int(v) for v in s.split("x")) if "x" in s else int(s))
            for s in args.timing_sizes.split(",")
        ]
        timing_rows = timing(sizes, args.warmup, args.repeats)
    write(parity_rows, timing_rows, env)


if __name__ == "__main__":
    main()
