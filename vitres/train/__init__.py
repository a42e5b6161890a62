"""Training any-resolution classifiers: from scratch at many resolutions, or flexifying
a trained model.

* :mod:`vitres.train.config` the run configs, the result, the precision a run uses;
* :mod:`vitres.train.schedule` the learning-rate schedule and per-step seeds;
* :mod:`vitres.train.sampling` which size and patch size each step uses;
* :mod:`vitres.train.optim` AdamW and its parameter groups;
* :mod:`vitres.train.checkpoint` crash-safe checkpoints and the run folder;
* :mod:`vitres.train.loop` the loop every recipe runs in (resume, logs, progress);
* :mod:`vitres.train.multires` :func:`train`, multi-resolution training from scratch;
* :mod:`vitres.train.losses` distillation and scale-consistency losses;
* :mod:`vitres.train.flexify` :func:`flexify`, a trained model made accurate at every size.
"""

from vitres.train.checkpoint import (
    CHECKPOINT_FILE,
    LOG_FILE,
    MODEL_FILE,
    clear_run,
    flatten_optimizer_state,
    load_checkpoint,
    remove_stale_files,
    save_checkpoint,
    unflatten_optimizer_state,
)
from vitres.train.config import (
    PRECISIONS,
    RunConfig,
    TrainConfig,
    TrainResult,
    cpu_supports_bf16,
    resolve_precision,
)
from vitres.train.flexify import FlexifyConfig, flexify, load_source
from vitres.train.loop import Recipe, StepOutput, StepShape, run_recipe
from vitres.train.losses import distillation_loss, scale_consistency_loss
from vitres.train.multires import build_model, train
from vitres.train.optim import build_optimizer, param_groups
from vitres.train.sampling import GapSampler, sample_step_shape, token_batch_size, token_count
from vitres.train.schedule import lr_at, step_generator

__all__ = [
    "CHECKPOINT_FILE",
    "LOG_FILE",
    "MODEL_FILE",
    "FlexifyConfig",
    "GapSampler",
    "PRECISIONS",
    "Recipe",
    "RunConfig",
    "StepOutput",
    "StepShape",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "build_optimizer",
    "clear_run",
    "cpu_supports_bf16",
    "distillation_loss",
    "flatten_optimizer_state",
    "flexify",
    "load_checkpoint",
    "load_source",
    "lr_at",
    "param_groups",
    "remove_stale_files",
    "resolve_precision",
    "run_recipe",
    "sample_step_shape",
    "save_checkpoint",
    "scale_consistency_loss",
    "step_generator",
    "token_batch_size",
    "token_count",
    "train",
    "unflatten_optimizer_state",
]
