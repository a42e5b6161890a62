"""Weight conversion: checkpoints of other libraries to vitres, as pure mappings.

Every function here is pure: a ``state_dict -> state_dict`` mapping (as timm's
``checkpoint_filter_fn``) or a config reader (``dict -> ViTConfig fields``), exact or
refused with the reason. Nothing reads files or builds models; :mod:`vitres.models.resolve`
does that. One module per source:

- :mod:`~vitres.models.convert.hf`: Hugging Face ViT, DeiT, DINOv2 (with registers),
  SigLIP, SigLIP-2 and CLIP vision towers;
- :mod:`~vitres.models.convert.timm`: timm's ``VisionTransformer`` (and distilled DeiT),
  with timm's architecture table (``timm_archs.json``: each name's own ``model_args``), and
  :mod:`~vitres.models.convert.timm_eva` for timm's ``eva.py`` (EVA, EVA-02, DINOv3, the
  RoPE ViTs, PE);
- :mod:`~vitres.models.convert.beit`: BEiT and Data2Vec-vision (Hugging Face's key
  names and config fields, and timm's ``beit.py`` models with their architecture table);
- :mod:`~vitres.models.convert.big_vision`: big_vision / Google ViT ``.npz`` arrays to
  timm's layout (then read as timm weights);
- :mod:`~vitres.models.convert.common`: what they share, and :func:`adapt_state_dict`
  (resampling a converted state dict to another patch size or grid).
"""

from vitres.models.convert.big_vision import big_vision_heads, convert_big_vision_npz
from vitres.models.convert.common import adapt_state_dict
from vitres.models.convert.hf import (
    HF_FAMILIES,
    convert_hf_state_dict,
    convert_hf_vit_state_dict,
    hf_config_fields,
    hf_family,
    hf_vision_config,
    supported_hf_model_types,
)
from vitres.models.convert.timm import (
    convert_timm_state_dict,
    convert_timm_vit_state_dict,
    timm_architectures,
    timm_config_fields,
)

__all__ = [
    "HF_FAMILIES",
    "adapt_state_dict",
    "big_vision_heads",
    "convert_big_vision_npz",
    "convert_hf_state_dict",
    "convert_hf_vit_state_dict",
    "convert_timm_state_dict",
    "convert_timm_vit_state_dict",
    "hf_config_fields",
    "hf_family",
    "hf_vision_config",
    "supported_hf_model_types",
    "timm_architectures",
    "timm_config_fields",
]
