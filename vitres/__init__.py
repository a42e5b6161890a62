"""vitres: Vision Transformers at any input resolution and patch size, and a tuner for
the resolution, patch size, precision and backend they are deployed at."""

from vitres import sweep  # a callable module: vitres.sweep(...) runs a sweep
from vitres.layers.patch_embed import resample_patch_embed
from vitres.layers.pos_embed import resample_pos_embed
from vitres.models.checkpoint import load_model, save_model
from vitres.models.registry import create_model, list_models, model_config
from vitres.models.resolve import describe_reference, from_pretrained, resolve_model
from vitres.recommend import Budget, recommend
from vitres.report import write_report
from vitres.sweep import run_sweep

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "__version__",
    "create_model",
    "describe_reference",
    "from_pretrained",
    "list_models",
    "load_model",
    "model_config",
    "recommend",
    "resample_patch_embed",
    "resample_pos_embed",
    "resolve_model",
    "run_sweep",
    "save_model",
    "sweep",
    "write_report",
]
