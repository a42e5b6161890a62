"""vitres: Vision Transformers at any input resolution and patch size, and a tuner for
the resolution, patch size, precision and backend they are deployed at."""

from vitres.layers.patch_embed import resample_patch_embed
from vitres.layers.pos_embed import resample_pos_embed
from vitres.models.checkpoint import load_model, save_model
from vitres.models.registry import create_model, list_models, model_config
from vitres.models.resolve import describe_reference, from_pretrained, resolve_model
from vitres.report.writer import write_report
from vitres.tokens.pack import pack
from vitres.tune.budget import Budget
from vitres.tune.recommend import Recommendation, recommend
from vitres.tune.records import read_results
from vitres.tune.sweep import run_sweep

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "Recommendation",
    "__version__",
    "create_model",
    "describe_reference",
    "from_pretrained",
    "list_models",
    "load_model",
    "model_config",
    "pack",
    "read_results",
    "recommend",
    "resample_patch_embed",
    "resample_pos_embed",
    "resolve_model",
    "run_sweep",
    "save_model",
    "write_report",
]
