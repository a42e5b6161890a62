"""Out-of-distribution scores from a classifier's logits and penultimate features.

Every score is "higher = more in-distribution":

* ``msp``: maximum softmax probability (Hendrycks and Gimpel, "A Baseline for Detecting
  Misclassified and Out-of-Distribution Examples in Neural Networks", ICLR 2017);
* ``maxlogit``: the largest logit (Hendrycks et al., "Scaling Out-of-Distribution
  Detection for Real-World Settings", ICML 2022);
* ``energy``: ``-E(x)`` with the free energy ``E(x) = -T logsumexp(f(x) / T)`` (Liu et al.,
  "Energy-based Out-of-distribution Detection", NeurIPS 2020), ``T = 1``;
* ``mahalanobis``: ``-min_c (z - mu_c)^T S^+ (z - mu_c)`` with class means ``mu_c`` and one
  covariance ``S`` shared by all classes, fitted on training features (Lee et al., "A
  Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
  Attacks", NeurIPS 2018; the penultimate layer only, no input perturbation);
* ``vim``: Virtual-logit Matching (Wang et al., "ViM: Out-Of-Distribution with
  Virtual-logit Matching", CVPR 2022): features are moved to the origin
  ``o = -W^+ b`` of the head ``logits = W z + b``; the principal subspace is spanned by the
  ``D`` leading eigenvectors of ``E[(z - o)(z - o)^T]`` on training features; the virtual
  logit is ``alpha ||P_res (z - o)||`` with ``P_res`` the projection onto the rest and
  ``alpha = mean(max logit) / mean(||P_res (z - o)||)`` on training data; the score is
  ``logsumexp(logits) - virtual logit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitres.explain.features import FeatureSet

__all__ = [
    "FEATURE_METHODS",
    "LOGIT_METHODS",
    "OOD_METHODS",
    "MahalanobisDetector",
    "OODDetectors",
    "ViMDetector",
    "energy",
    "energy_score",
    "logsumexp",
    "max_logit_score",
    "msp_score",
    "parse_methods",
]

LOGIT_METHODS = ("msp", "maxlogit", "energy")
FEATURE_METHODS = ("mahalanobis", "vim")
OOD_METHODS = LOGIT_METHODS + FEATURE_METHODS


def _matrix(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, K) array; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return array


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """``log sum_c exp(logits[:, c])`` per row, computed stably."""
    logits = _matrix(logits, "logits")
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]


def msp_score(logits: np.ndarray) -> np.ndarray:
    """Maximum softmax probability per row."""
    logits = _matrix(logits, "logits")
    return np.exp(logits.max(axis=1) - logsumexp(logits))


def max_logit_score(logits: np.ndarray) -> np.ndarray:
    """The largest logit per row."""
    return _matrix(logits, "logits").max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Free energy ``E = -T logsumexp(logits / T)`` per row (low for in-distribution)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    return -temperature * logsumexp(_matrix(logits, "logits") / temperature)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``-energy``: higher for in-distribution inputs."""
    return -energy(logits, temperature)


@dataclass(frozen=True)
class MahalanobisDetector:
    """Class-conditional Gaussians with a shared covariance, on penultimate features.

    Attributes:
        classes: ``(C,)`` the labels the means belong to.
        means: ``(C, D)`` class means.
        precision: ``(D, D)`` pseudo-inverse of the shared covariance.
    """

    classes: np.ndarray
    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> MahalanobisDetector:
        """Fits ``mu_c = mean of class c`` and ``S = (1/N) sum_i (z_i - mu_{y_i})(...)^T``."""
        features = _matrix(features, "features")
        labels = np.asarray(labels)
        if labels.shape != (features.shape[0],):
            raise ValueError(
                f"expected one label per feature row: {features.shape[0]} rows, "
                f"labels of shape {labels.shape}"
            )
        classes = np.unique(labels)
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        covariance = centred.T @ centred / len(features)
        precision = np.linalg.pinv(covariance, hermitian=True)
        return cls(classes=classes, means=means, precision=precision)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances ``(N, C)`` to each class mean."""
        features = _matrix(features, "features")
        if features.shape[1] != self.means.shape[1]:
            raise ValueError(
                f"features have {features.shape[1]} dimensions; the detector was fitted on "
                f"{self.means.shape[1]}"
            )
        diff = features[:, None, :] - self.means[None, :, :]  # (N, C, D)
        return np.einsum("ncd,de,nce->nc", diff, self.precision, diff)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``-min_c d_c^2`` per row."""
        return -self.distances(features).min(axis=1)


@dataclass(frozen=True)
class ViMDetector:
    """Virtual-logit Matching fitted on training features (see the module docstring).

    Attributes:
        origin: ``(D,)`` the point ``o = -W^+ b`` features are measured from.
        residual_basis: ``(D, D - principal_dim)`` orthonormal basis of the residual space.
        alpha: scale matching the virtual logit to the real logits.
        principal_dim: dimension of the principal subspace.
    """

    origin: np.ndarray
    residual_basis: np.ndarray
    alpha: float
    principal_dim: int

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        logits: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        principal_dim: int | None = None,
    ) -> ViMDetector:
        """Fits the principal subspace and ``alpha`` on training features and logits.

        Args:
            features: ``(N, D)`` training features.
            logits: ``(N, C)`` their logits.
            weight: ``(C, D)`` head weight.
            bias: ``(C,)`` head bias.
            principal_dim: dimension of the principal subspace, ``1 <= D' < D``; ``D // 2``
                when ``None``.
        """
        features = _matrix(features, "features")
        logits = _matrix(logits, "logits")
        dim = features.shape[1]
        k = dim // 2 if principal_dim is None else int(principal_dim)
        if not 1 <= k < dim:
            raise ValueError(
                f"principal_dim must be between 1 and {dim - 1} for {dim}-dimensional "
                f"features; got {k}"
            )
        origin = -np.linalg.pinv(np.asarray(weight, dtype=np.float64)) @ np.asarray(
            bias, dtype=np.float64
        )
        centred = features - origin
        second_moment = centred.T @ centred / len(centred)
        eigenvalues, eigenvectors = np.linalg.eigh(second_moment)  # ascending
        order = np.argsort(eigenvalues)[::-1]
        residual_basis = eigenvectors[:, order[k:]]  # (D, D - k)
        residual_norm = np.linalg.norm(centred @ residual_basis, axis=1)
        mean_norm = float(residual_norm.mean())
        if mean_norm <= 0:
            raise ValueError("training features have no component outside the principal space")
        alpha = float(logits.max(axis=1).mean()) / mean_norm
        return cls(origin=origin, residual_basis=residual_basis, alpha=alpha, principal_dim=k)

    def virtual_logit(self, features: np.ndarray) -> np.ndarray:
        """``alpha ||P_res (z - o)||`` per row."""
        centred = _matrix(features, "features") - self.origin
        return self.alpha * np.linalg.norm(centred @ self.residual_basis, axis=1)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """``logsumexp(logits) - virtual logit`` per row."""
        return logsumexp(logits) - self.virtual_logit(features)


def parse_methods(methods: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"msp,energy"`` or a list -> validated method names (all of them for ``None``)."""
    if methods is None:
        return OOD_METHODS
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [m.strip().lower() for m in items if m.strip()]
    unknown = [m for m in names if m not in OOD_METHODS]
    if unknown or not names:
        raise ValueError(f"unknown OOD method(s) {unknown or methods!r}; known: {OOD_METHODS}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class OODDetectors:
    """The fitted scores for one model at one resolution.

    Attributes:
        methods: the scores to compute.
        mahalanobis: fitted when ``mahalanobis`` is among the methods.
        vim: fitted when ``vim`` is among the methods.
    """

    methods: tuple[str, ...]
    mahalanobis: MahalanobisDetector | None = None
    vim: ViMDetector | None = None

    @classmethod
    def fit(
        cls,
        methods: Sequence[str],
        train: FeatureSet | None = None,
        head: tuple[np.ndarray, np.ndarray] | None = None,
        principal_dim: int | None = None,
    ) -> OODDetectors:
        """Fits what the feature-space methods need on ``train`` (and the ``head`` for ViM)."""
        methods = parse_methods(methods)
        needs_train = any(m in FEATURE_METHODS for m in methods)
        if needs_train and train is None:
            raise ValueError(f"{FEATURE_METHODS} need training features; pass train=")
        mahalanobis = vim = None
        if "mahalanobis" in methods:
            mahalanobis = MahalanobisDetector.fit(train.features, train.labels)
        if "vim" in methods:
            if head is None:
                raise ValueError("vim needs the classifier head (weight, bias); pass head=")
            vim = ViMDetector.fit(train.features, train.logits, *head, principal_dim)
        return cls(methods=methods, mahalanobis=mahalanobis, vim=vim)

    def scores(self, data: FeatureSet) -> dict[str, np.ndarray]:
        """``method -> (N,)`` scores, higher = more in-distribution."""
        out: dict[str, np.ndarray] = {}
        for method in self.methods:
            if method == "msp":
                out[method] = msp_score(data.logits)
            elif method == "maxlogit":
                out[method] = max_logit_score(data.logits)
            elif method == "energy":
                out[method] = energy_score(data.logits)
            elif method == "mahalanobis":
                out[method] = self.mahalanobis.score(data.features)
            else:
                out[method] = self.vim.score(data.features, data.logits)
        return out
