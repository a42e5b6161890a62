"""OOD scores and detection metrics against direct computations on small synthetic features."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp as scipy_logsumexp
from scipy.special import softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import roc_auc_score, roc_curve

import vitres
from vitres.data import ArrayDataset, prepare_batch
from vitres.explain import (
    FeatureSet,
    MahalanobisDetector,
    OODDetectors,
    ViMDetector,
    auroc,
    energy,
    energy_score,
    extract_features,
    fpr_at_tpr,
    load_digits_dataset,
    max_logit_score,
    msp_score,
    open_ood_data,
)


def _synthetic(seed=0, n=300, dim=6, classes=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(0, 3, (classes, dim))
    mixing = rng.normal(size=(dim, dim))
    features = centres[labels] + rng.normal(size=(n, dim)) @ mixing
    weight = rng.normal(size=(classes, dim))
    bias = rng.normal(size=classes)
    return features, labels, weight, bias


def test_logit_scores_against_scipy():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, (50, 7))
    np.testing.assert_allclose(energy(logits), -scipy_logsumexp(logits, axis=1))
    np.testing.assert_allclose(energy_score(logits), scipy_logsumexp(logits, axis=1))
    np.testing.assert_allclose(energy(logits, 2.0), -2.0 * scipy_logsumexp(logits / 2.0, axis=1))
    np.testing.assert_allclose(msp_score(logits), softmax(logits, axis=1).max(axis=1))
    np.testing.assert_array_equal(max_logit_score(logits), logits.max(axis=1))
    huge = np.array([[1000.0, 0.0], [-1000.0, -1000.0]])  # stays finite
    np.testing.assert_allclose(energy(huge), [-1000.0, 1000.0 - np.log(2.0)])
    with pytest.raises(ValueError, match="NaN"):
        msp_score(np.array([[np.nan, 1.0]]))


def test_mahalanobis_against_the_formula():
    features, labels, _, _ = _synthetic()
    detector = MahalanobisDetector.fit(features, labels)
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    scatter = sum(np.outer(z - means[y], z - means[y]) for z, y in zip(features, labels)) / len(
        features
    )
    inverse = np.linalg.inv(scatter)
    queries = np.random.default_rng(2).normal(0, 4, (20, 6))
    direct = np.array([[(q - m) @ inverse @ (q - m) for m in means] for q in queries])
    np.testing.assert_allclose(detector.distances(queries), direct, rtol=1e-8)
    np.testing.assert_allclose(detector.score(queries), -direct.min(axis=1), rtol=1e-8)
    # sklearn's covariance of the class-centred features gives the same distances
    reference = EmpiricalCovariance(assume_centered=True).fit(features - means[labels])
    np.testing.assert_allclose(
        detector.distances(queries)[:, 1], reference.mahalanobis(queries - means[1])
    )
    with pytest.raises(ValueError, match="dimensions"):
        detector.score(queries[:, :4])


def test_vim_against_a_direct_computation():
    features, labels, weight, bias = _synthetic(dim=8)
    logits = features @ weight.T + bias
    detector = ViMDetector.fit(features, logits, weight, bias, principal_dim=3)
    origin = -np.linalg.pinv(weight) @ bias
    np.testing.assert_allclose(weight @ detector.origin + bias, 0, atol=1e-10)
    np.testing.assert_allclose(detector.origin, origin)
    # principal subspace from the SVD of the centred features (right singular vectors)
    _, _, vt = np.linalg.svd(features - origin, full_matrices=False)
    principal = vt[:3].T  # (D, 3)
    residual = np.eye(8) - principal @ principal.T
    norms = np.linalg.norm((features - origin) @ residual, axis=1)
    alpha = logits.max(axis=1).mean() / norms.mean()
    assert detector.alpha == pytest.approx(alpha)
    queries = np.random.default_rng(3).normal(0, 3, (25, 8))
    query_logits = queries @ weight.T + bias
    virtual = alpha * np.linalg.norm((queries - origin) @ residual, axis=1)
    np.testing.assert_allclose(detector.virtual_logit(queries), virtual, rtol=1e-8)
    np.testing.assert_allclose(
        detector.score(queries, query_logits),
        scipy_logsumexp(query_logits, axis=1) - virtual,
        rtol=1e-8,
    )
    # a point in the principal subspace has no virtual logit
    inside = origin + principal @ np.array([1.0, -2.0, 0.5])
    assert detector.virtual_logit(inside[None])[0] == pytest.approx(0.0, abs=1e-9)
    assert ViMDetector.fit(features, logits, weight, bias).principal_dim == 4
    with pytest.raises(ValueError, match="principal_dim"):
        ViMDetector.fit(features, logits, weight, bias, principal_dim=8)


def test_detectors_score_every_method():
    features, labels, weight, bias = _synthetic()
    logits = features @ weight.T + bias
    train = FeatureSet(features, logits, labels)
    detectors = OODDetectors.fit("msp,vim,mahalanobis", train, (weight, bias))
    scores = detectors.scores(train)
    assert list(scores) == ["msp", "vim", "mahalanobis"]
    np.testing.assert_allclose(scores["mahalanobis"], detectors.mahalanobis.score(features))
    with pytest.raises(ValueError, match="unknown OOD method"):
        OODDetectors.fit("odin", train)
    with pytest.raises(ValueError, match="training features"):
        OODDetectors.fit("mahalanobis")


def _pairwise_auroc(pos, neg):
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean()


def test_auroc_against_pairs_and_sklearn():
    rng = np.random.default_rng(4)
    pos = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding makes ties
    neg = np.round(rng.normal(0.0, 1.0, 200), 1)
    value = auroc(pos, neg)
    assert value == pytest.approx(_pairwise_auroc(pos, neg), abs=1e-12)
    truth = np.r_[np.ones(300), np.zeros(200)]
    assert value == pytest.approx(roc_auc_score(truth, np.r_[pos, neg]), abs=1e-12)
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5


@pytest.mark.parametrize("n_pos", [100, 301, 20])
def test_fpr_at_95_tpr_against_sklearn_roc(n_pos):
    rng = np.random.default_rng(n_pos)
    pos = np.round(rng.normal(1.5, 1.0, n_pos), 2)
    neg = np.round(rng.normal(0.0, 1.0, 257), 2)
    fpr, tpr, _ = roc_curve(
        np.r_[np.ones(n_pos), np.zeros(257)], np.r_[pos, neg], drop_intermediate=False
    )
    expected = fpr[tpr >= 0.95 - 1e-12].min()
    assert fpr_at_tpr(pos, neg) == pytest.approx(expected, abs=1e-12)
    # direct: the threshold accepts exactly ceil(0.95 n) in-distribution examples here
    threshold = np.sort(pos)[::-1][int(np.ceil(0.95 * n_pos - 1e-9)) - 1]
    assert fpr_at_tpr(pos, neg) == pytest.approx((neg >= threshold).mean())
    assert fpr_at_tpr(np.array([5.0, 6.0]), np.array([1.0, 2.0])) == 0.0


def test_digits_are_real_and_converted():
    from sklearn.datasets import load_digits

    digits = load_digits_dataset()
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.dtype == torch.uint8
    raw = load_digits().images
    np.testing.assert_array_equal(digits.images[:, 0].numpy(), np.rint(raw * 255 / 16))
    ood = open_ood_data("digits", in_chans=3)
    assert "grey repeated to 3 channels" in ood.conversion


def test_features_are_what_the_head_sees():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 12, 12), dtype=torch.uint8)
    data = ArrayDataset(images, torch.arange(10) % 3, ("a", "b", "c"))
    for model in (
        vitres.create_model(
            "vit_tiny_patch4",
            img_size=12,
            in_chans=1,
            num_classes=3,
            embed_dim=16,
            depth=1,
            num_heads=2,
        ),
        vitres.create_model("mixer_tiny4", img_size=12, in_chans=1, num_classes=3, depth=1),
    ):
        model.eval()
        fs = extract_features(model, data, 16, batch_size=4)
        x = prepare_batch(
            images, 16, train=False, mean=model.config.mean, std=model.config.std, in_chans=1
        )
        with torch.no_grad():
            logits = model(x).double().numpy()
        np.testing.assert_allclose(fs.logits, logits, rtol=1e-6, atol=1e-6)
        head = model.head.weight.detach().double().numpy()
        bias = model.head.bias.detach().double().numpy()
        np.testing.assert_allclose(fs.features @ head.T + bias, logits, rtol=1e-5, atol=1e-5)
        assert fs.accuracy == pytest.approx((logits.argmax(1) == np.arange(10) % 3).mean())


def _write_images(folder, count, mode="RGB", corrupt=False):
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"{index}.png"
        if corrupt:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8), mode).save(path)


def test_image_folders_as_ood_data(tmp_path):
    model = vitres.create_model(
        "vit_tiny_patch4",
        img_size=12,
        in_chans=1,
        num_classes=3,
        embed_dim=16,
        depth=1,
        num_heads=2,
    )
    _write_images(tmp_path / "rgb" / "photos", 5)
    ood = open_ood_data(str(tmp_path / "rgb"), in_chans=1)
    assert "BT.601" in ood.conversion and "RGB" in ood.conversion
    assert len(extract_features(model, ood.dataset, 12)) == 5
    _write_images(tmp_path / "broken" / "x", 3, corrupt=True)
    broken = open_ood_data(str(tmp_path / "broken"), in_chans=1)
    with pytest.raises(ValueError, match="no readable images.*3 file"):
        extract_features(model, broken.dataset, 12)
    _write_images(tmp_path / "flat", 2)
    with pytest.raises(ValueError, match="sub-folder names do not matter"):
        open_ood_data(str(tmp_path / "flat"), in_chans=1)
    with pytest.raises(ValueError, match="digits"):
        open_ood_data("no-such-dataset", in_chans=1)
