"""Class overlap, silhouette, t-SNE and the seed's advice on clusters of known overlap."""

import numpy as np
import pytest
from scipy.stats import binom

from vitres.explain import class_overlap, resolution_advice, silhouette, tsne_embedding
from vitres.explain.plots import figure_png, tsne_figure


def _clusters(n_per_class, classes, spread, seed=0, dim=5):
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, dim) * spread
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


def test_well_separated_clusters_do_not_overlap():
    features, labels = _clusters(100, 3, spread=50.0, dim=3)
    result = class_overlap(features, labels)
    assert result.overlap == 0.0 and result.disagreement == 0.0 and result.k == 10
    assert silhouette(features, labels) > 0.9


def test_silhouette_against_the_definition():
    features, labels = _clusters(12, 3, spread=2.0, dim=3)
    z = (features - features.mean(0)) / features.std(0)
    distances = np.linalg.norm(z[:, None] - z[None], axis=-1)
    values = []
    for i, label in enumerate(labels):
        same = (labels == label) & (np.arange(len(z)) != i)
        a = distances[i, same].mean()
        b = min(distances[i, labels == other].mean() for other in set(labels) - {label})
        values.append((b - a) / max(a, b))
    assert silhouette(features, labels) == pytest.approx(np.mean(values))


@pytest.mark.parametrize("classes", [2, 3])
def test_identical_clusters_overlap_as_chance_predicts(classes):
    features, labels = _clusters(1500, classes, spread=0.0)
    result = class_overlap(features, labels)
    # each neighbour is of another class with probability ~ (1 - 1/C)
    assert result.disagreement == pytest.approx(1 - 1 / classes, abs=0.02)
    assert result.overlap == pytest.approx(binom.sf(5, 10, 1 - 1 / classes), abs=0.03)
    assert abs(silhouette(features, labels)) < 0.02


def test_known_fraction_of_strays():
    features, labels = _clusters(200, 2, spread=100.0)
    strays = np.random.default_rng(1).choice(200, 10, replace=False)
    labels = labels.copy()
    labels[strays] = 1  # ten points of cluster 0 carry the other label
    result = class_overlap(features, labels)
    assert result.overlap == pytest.approx(10 / 400)


def test_self_is_excluded_and_columns_are_standardised():
    features, labels = _clusters(30, 2, spread=20.0)
    doubled = np.r_[features, features]  # every point has an exact duplicate
    result = class_overlap(doubled, np.r_[labels, labels], k=1)
    assert result.overlap == 0.0
    stretched = features * np.array([1, 1, 1, 1, 1000.0])  # a noise axis made huge
    assert class_overlap(stretched, labels).overlap == 0.0
    assert class_overlap(stretched, labels, standardised=False).overlap > 0.2
    with pytest.raises(ValueError, match="k must be"):
        class_overlap(features, labels, k=60)
    with pytest.raises(ValueError, match="one label per"):
        class_overlap(features, labels[:-1])


def test_resolution_advice_states_the_seed_rule():
    assert resolution_advice({28: 0.12, 56: 0.34, 16: 0.2}) == (
        "overlap 34 % at 56 px > 30 % → consider lowering the resolution (28 px: 12 %)"
    )
    assert resolution_advice({"16": 0.4, "40x24": 0.31}) == (
        "overlap 31 % at 40x24 px > 30 % → consider lowering the resolution"
    )
    assert resolution_advice({28: 0.5, 56: 0.1}) == (
        "overlap 10 % at 56 px ≤ 30 % → no reason to lower the resolution"
    )
    assert resolution_advice({28: 0.08, 56: 0.24}) == (
        "overlap 24 % at 56 px ≤ 30 % → no reason to lower the resolution, "
        "though 28 px overlaps less (8 %)"
    )
    with pytest.raises(ValueError):
        resolution_advice({})


def test_tsne_keeps_separated_clusters_apart():
    features, labels = _clusters(60, 3, spread=30.0, dim=10)
    points, kept = tsne_embedding(features, labels, max_points=150, seed=0)
    assert points.shape == (150, 2) and len(kept) == 150
    assert class_overlap(points, kept).overlap == 0.0
    png = figure_png(tsne_figure({"28": (points, kept)}, ["a", "b", "c"], {"28": 0.0}))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
