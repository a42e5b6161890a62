"""Models that run at any resolution: ViT, MLP-Mixer, configs, registry, checkpoints,
weight conversion and the one model-reference grammar (:func:`resolve_model`)."""

from vitres.models.checkpoint import load_model, save_model
from vitres.models.config import ConfigBase, MixerConfig, ViTConfig
from vitres.models.mixer import MlpMixer
from vitres.models.registry import create_model, list_models, model_config
from vitres.models.resolve import describe_reference, from_pretrained, resolve_model
from vitres.models.vit import VisionTransformer

__all__ = [
    "ConfigBase",
    "MixerConfig",
    "MlpMixer",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "describe_reference",
    "from_pretrained",
    "list_models",
    "load_model",
    "model_config",
    "resolve_model",
    "save_model",
]
