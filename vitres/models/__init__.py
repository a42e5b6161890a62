"""Models that run at any resolution: ViT, MLP-Mixer, registry and checkpoints."""

from vitres.models.mixer import MixerConfig, MlpMixer
from vitres.models.registry import create_model, list_models, model_config
from vitres.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "MixerConfig",
    "MlpMixer",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "list_models",
    "model_config",
]
