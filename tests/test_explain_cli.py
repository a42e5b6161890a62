"""`vitres explain` and `vitres ood` end to end on Fashion-MNIST and the bundled models."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitres
from vitres.cli import main
from vitres.data import load_fashion_mnist, prepare_batch
from vitres.evaluate import accuracy_at
from vitres.explain import auroc, load_digits_dataset, ood_auroc_for_config

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    return vitres.load_model("fmnist-vit-single")


@pytest.fixture()
def boot_png(tmp_path):
    test = load_fashion_mnist("test")
    path = tmp_path / "boot.png"
    Image.fromarray(test.images[0, 0].numpy()).save(path)
    return path


def test_explain_draws_every_resolution(single, boot_png, tmp_path, capsys):
    out = tmp_path / "attn.png"
    args = ["explain", "--model", "fmnist-vit-single", "--image", str(boot_png)]
    assert main([*args, "--res", "40x24,28", "--out", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "40x24 px: grid 10x6, 60 content tokens" in text
    assert "28x28 px: grid 7x7, 49 content tokens" in text
    image = torch.from_numpy(np.asarray(Image.open(boot_png)))[None, None]
    x = prepare_batch(
        image, 28, train=False, mean=single.config.mean, std=single.config.std, in_chans=1
    )
    with torch.no_grad():
        probabilities = single(x).softmax(-1)[0]
    name = vitres.data.FASHION_MNIST_CLASSES[int(probabilities.argmax())]
    assert f"predicted {name} ({float(probabilities.max()):.1%})" in text.splitlines()[2]
    assert out.read_bytes()[:8] == PNG


def test_ood_reports_every_method_and_resolution(single, tmp_path, capsys):
    plot, tsne = tmp_path / "ood.png", tmp_path / "tsne.png"
    args = ["ood", "--model", "fmnist-vit-single", "--res", "16,28", "--limit", "300"]
    args += ["--train-limit", "1000", "--ood-limit", "300", "--threads", "1", "--json"]
    assert main([*args, "--plot", str(plot), "--tsne", str(tsne), "--tsne-points", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_id"], result["n_ood"], result["n_train"]) == (300, 300, 1000)
    assert "kept as 1 grey channel" in result["ood_conversion"]
    by_res = {r["label"]: r for r in result["results"]}
    assert set(by_res) == {"16", "28"}
    test = load_fashion_mnist("test")
    for label, entry in by_res.items():
        assert set(entry["ood"]) == {"msp", "maxlogit", "energy", "mahalanobis", "vim"}
        expected, _ = accuracy_at(single, test, int(label), limit=300)
        assert entry["accuracy"] == pytest.approx(expected)
        assert 0 <= entry["overlap"] <= 1 and -1 <= entry["silhouette"] <= 1
    # the bundled model at its native 28 px separates digits from clothes well
    assert by_res["28"]["best_auroc"] > 0.85
    assert by_res["28"]["best_auroc"] > by_res["16"]["best_auroc"]
    assert result["advice"].startswith("overlap ")
    assert plot.read_bytes()[:8] == PNG and tsne.read_bytes()[:8] == PNG


def test_ood_auroc_for_config_against_a_direct_computation(single):
    best = ood_auroc_for_config(
        single, 28, methods="energy", limit=200, ood_limit=200, batch_size=100
    )
    cfg = single.config

    def energy_scores(images):
        x = prepare_batch(images, 28, train=False, mean=cfg.mean, std=cfg.std, in_chans=1)
        with torch.no_grad():
            return torch.logsumexp(single(x).double(), dim=-1).numpy()

    id_scores = energy_scores(load_fashion_mnist("test").images[:200])
    ood_scores = energy_scores(load_digits_dataset().images[:200])
    assert best == pytest.approx(auroc(id_scores, ood_scores), abs=1e-6)


def test_bad_input_gets_a_clear_error(boot_png, tmp_path, capsys):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    base = ["explain", "--model", "fmnist-vit-single", "--out", str(tmp_path / "a.png")]
    assert main([*base, "--image", str(text_file)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([*base, "--image", str(boot_png), "--res", "2"]) == 2
    assert "smaller than one 4x4 patch" in capsys.readouterr().err
    mixer = vitres.create_model("mixer_tiny4", img_size=28, in_chans=1, num_classes=10, depth=1)
    path = vitres.save_model(mixer, tmp_path / "mixer.safetensors")
    assert main(["explain", "--model", str(path), "--image", str(boot_png)]) == 2
    assert "no attention" in capsys.readouterr().err
    broken = tmp_path / "broken" / "files"
    broken.mkdir(parents=True)
    (broken / "a.png").write_bytes(b"\x89PNG broken")
    args = ["ood", "--model", "fmnist-vit-single", "--ood", str(broken.parent), "--res", "28"]
    assert main([*args, "--limit", "50", "--methods", "energy", "--no-progress"]) == 2
    assert "no readable images" in capsys.readouterr().err
