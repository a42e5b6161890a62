"""`vitres probe`: linear and k-NN probes on frozen features, checked against direct
computations: the linear head is at the optimum of its objective (zero gradient), the
k-NN vote matches a brute-force loop, and the written classifier scores what the probe
reported when `vitres eval` runs it."""

import json

import pytest
import torch

from vitres.cli import main
from vitres.train.probe import fit_linear, knn_accuracy


def test_the_linear_head_is_the_optimum_of_its_objective():
    torch.manual_seed(0)
    features = torch.randn(300, 8) * torch.tensor([1.0, 5, 0.1, 2, 1, 1, 3, 0.5]) + 2.0
    labels = ((features - 2.0) @ torch.randn(8, 3)).argmax(1)  # linearly separable
    head = fit_linear(features, labels, 3, weight_decay=1e-3, steps=300)
    # the folded head computes on raw features what the standardised one fitted:
    # re-standardise, unfold, and the objective's gradient there is ~0
    mean, std = features.mean(0), features.std(0)
    z = (features - mean) / std
    w = (head.weight * std).detach().requires_grad_(True)
    b = (head.bias + head.weight @ mean).detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(z @ w.T + b, labels) + 0.5e-3 * w.pow(2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4
    assert (head(features).argmax(1) == labels).float().mean() > 0.9


def test_knn_matches_a_brute_force_vote():
    torch.manual_seed(1)
    train, test = torch.randn(60, 5), torch.randn(25, 5)
    train_labels, test_labels = torch.randint(0, 3, (60,)), torch.randint(0, 3, (25,))
    correct = 0
    for x, truth in zip(test, test_labels):
        sims = [float(torch.nn.functional.cosine_similarity(x, t, dim=0)) for t in train]
        order = sorted(range(60), key=lambda i: -sims[i])[:7]
        votes = [int(train_labels[i]) for i in order]
        best = max(votes.count(v) for v in votes)
        winner = next(v for v in votes if votes.count(v) == best)
        correct += winner == int(truth)
    assert knn_accuracy(train, train_labels, test, test_labels, 7) == pytest.approx(correct / 25)


def test_probe_writes_a_classifier_that_scores_what_it_reported(tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["probe", "--model", "fmnist-vit-single", "--res", "16,28", "--train-limit", "300",
            "--limit", "200", "--out-dir", str(out), "--no-progress", "--csv", str(tmp_path / "p.csv")]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    best = max(results["rows"], key=lambda r: r["linear_accuracy"])
    assert results["best_resolution"] == best["resolution"] == 28
    assert best["linear_low95"] < best["linear_accuracy"] < best["linear_high95"]
    capsys.readouterr()
    assert main(["eval", "--model", str(out / "model.safetensors"), "--res", "28",
                 "--limit", "200", "--json"]) == 0  # fmt: skip
    scored = json.loads(capsys.readouterr().out)["accuracy"]["28"]
    assert scored == pytest.approx(best["linear_accuracy"])
    # features are cached by resolution: a second run reads them (no model call needed)
    cached = sorted(p.name for p in out.glob("features-*.safetensors"))
    assert cached == ["features-16px-test-200.safetensors", "features-16px-train-300.safetensors",
                      "features-28px-test-200.safetensors", "features-28px-train-300.safetensors"]  # fmt: skip
    assert main(argv) == 0


def test_probe_refusals(tmp_path, capsys):
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    from PIL import Image

    Image.new("L", (28, 28), 100).save(one / "a.png")
    assert main(["probe", "--model", "fmnist-vit-single", "--data", str(tmp_path / "one"),
                 "--res", "28", "--out-dir", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "needs at least two" in capsys.readouterr().err
    assert main(["probe", "--model", "fmnist-vit-single", "--res", "28x40",
                 "--out-dir", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "square sizes" in capsys.readouterr().err
