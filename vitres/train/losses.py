"""Losses for flexifying: knowledge distillation and cross-scale consistency.

* :func:`distillation_loss`: Hinton et al., "Distilling the Knowledge in a Neural
  Network" (2015): ``T^2 * KL(softmax(t / T) || softmax(s / T))``, the ``T^2`` keeping
  the gradient's size independent of the temperature. FlexiViT (Beyer et al., CVPR 2023)
  distils a flexible student from a teacher run at its native size this way.
* :func:`scale_consistency_loss`: ResFormer (Tian et al., "ResFormer: Scaling ViTs with
  Multi-Resolution Training", CVPR 2023) ties a model's predictions for the same images
  at two scales; here the larger scale's prediction, detached, is the target of the
  smaller's, with the same tempered KL.

Both are computed in float32 whatever the autocast, and averaged over the batch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["distillation_loss", "scale_consistency_loss"]


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """``T^2 * mean_b KL(softmax(teacher / T) || softmax(student / T))``.

    Args:
        student_logits: ``(B, K)``, with gradients.
        teacher_logits: ``(B, K)``, the targets (gradients are not taken through them).
        temperature: ``T > 0``.

    Returns:
        A scalar tensor.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (do the models have the same classes?)"
        )
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def scale_consistency_loss(
    small_logits: Tensor, large_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """The smaller scale's prediction distilled from the larger scale's (detached)."""
    return distillation_loss(small_logits, large_logits.detach(), temperature)
