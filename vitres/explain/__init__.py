"""What changes with resolution: attention maps, OOD scores and feature-space separability.

* :func:`attention_maps`: attention (rollout, last layer, raw) on the input's own token
  grid, prefix tokens handled, padding tokens masked; weights are computed explicitly
  only inside :func:`capture_attention`.
* :func:`analyse_resolutions`: accuracy, OOD detection (MSP, MaxLogit, energy,
  Mahalanobis, ViM; AUROC and FPR at 95 % TPR) and class overlap / silhouette per
  resolution; :func:`ood_auroc_for_config` for one sweep config;
  :meth:`ResolutionAnalysis.rule_check` sets the seed's overlap rule beside the accuracy.
* :func:`class_overlap`, :func:`silhouette`, :func:`tsne_embedding`,
  :func:`resolution_advice`: the feature-space check of the seed.
* :func:`sample_warnings`: which numbers an analysis had too few images for (AUROC's
  Hanley–McNeil 95 % interval, the detectors' fit).
* :mod:`vitres.explain.plots`: the figures.
"""

from vitres.explain.analysis import (
    LOWERING_HELPS_MARGIN,
    OverlapRuleCheck,
    ResolutionAnalysis,
    ResolutionResult,
    analyse_resolutions,
    analysis_table,
    ood_auroc_for_config,
    resolution_label,
    result_cells,
)
from vitres.explain.attention import (
    ATTENTION_METHODS,
    HEAD_FUSIONS,
    AttentionMaps,
    attention_maps,
    attention_rollout,
    capture_attention,
    parse_layers,
)
from vitres.explain.features import FeatureSet, extract_features, linear_head
from vitres.explain.image import AttentionPanel, explain_image, load_image
from vitres.explain.metrics import DetectionMetrics, auroc, detection_metrics, fpr_at_tpr
from vitres.explain.ood import (
    OOD_METHODS,
    MahalanobisDetector,
    OODDetectors,
    ViMDetector,
    energy,
    energy_score,
    max_logit_score,
    msp_score,
)
from vitres.explain.ood_data import OODData, load_digits_dataset, open_ood_data
from vitres.explain.sample import sample_warnings
from vitres.explain.separability import (
    OVERLAP_RULE_THRESHOLD,
    ClassOverlap,
    class_overlap,
    resolution_advice,
    silhouette,
    tsne_embedding,
)

__all__ = [
    "ATTENTION_METHODS",
    "HEAD_FUSIONS",
    "LOWERING_HELPS_MARGIN",
    "OOD_METHODS",
    "OVERLAP_RULE_THRESHOLD",
    "AttentionMaps",
    "AttentionPanel",
    "ClassOverlap",
    "DetectionMetrics",
    "FeatureSet",
    "MahalanobisDetector",
    "OODData",
    "OODDetectors",
    "OverlapRuleCheck",
    "ResolutionAnalysis",
    "ResolutionResult",
    "ViMDetector",
    "analyse_resolutions",
    "analysis_table",
    "attention_maps",
    "attention_rollout",
    "auroc",
    "capture_attention",
    "class_overlap",
    "detection_metrics",
    "sample_warnings",
    "energy",
    "energy_score",
    "explain_image",
    "extract_features",
    "fpr_at_tpr",
    "linear_head",
    "load_digits_dataset",
    "load_image",
    "max_logit_score",
    "msp_score",
    "ood_auroc_for_config",
    "open_ood_data",
    "parse_layers",
    "resolution_advice",
    "resolution_label",
    "result_cells",
    "silhouette",
    "tsne_embedding",
]
