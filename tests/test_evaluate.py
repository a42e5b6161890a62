"""Evaluation at several resolutions: schema, overrides, and the `vitres eval` command."""

from __future__ import annotations

import json

import pytest
import torch

import vitres
from vitres.cli import main
from vitres.data import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from vitres.evaluate import accuracy_at, evaluate, parse_resolutions
from vitres.models.checkpoint import WEIGHTS_DIR

SCHEMA = {
    "model": str,
    "data": str,
    "n": int,
    "patch_size": int,
    "accuracy": dict,
    "pos_embed_mode": (str, type(None)),
    "size_policy": str,
    "precision": str,
    "merge": (int, float, type(None)),
    "pack": (str, type(None)),
    "pack_used": dict,
    "token_budget": (int, type(None)),
    "warnings": list,
}


def tiny_model(**overrides):
    torch.manual_seed(0)
    settings = dict(
        img_size=16, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2,
        mean=FMNIST_MEAN, std=FMNIST_STD,
    )  # fmt: skip
    settings.update(overrides)
    return vitres.create_model("vit_tiny_patch4", **settings).eval()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "tiny.safetensors"
    vitres.save_model(tiny_model(), path)
    return path


def check_schema(result: dict, resolutions: list[int], n: int) -> None:
    assert set(result) == set(SCHEMA)
    for key, kind in SCHEMA.items():
        assert isinstance(result[key], kind), (key, result[key])
    assert list(result["accuracy"]) == [str(r) for r in resolutions]
    assert all(0.0 <= acc <= 1.0 for acc in result["accuracy"].values())
    assert result["n"] == n
    json.dumps(result)


def test_evaluate_schema_and_values():
    model = tiny_model()
    data = load_fashion_mnist("test")
    result = evaluate(model, data, [12, 16, 22], batch_size=50, limit=100)
    check_schema(result.to_dict(), [12, 16, 22], 100)
    assert result.model == "<in-memory>" and result.data == "fashion-mnist/test"
    assert result.pos_embed_mode == "bicubic" and result.size_policy == "resize"
    assert result.patch_size == 4


def test_accuracy_matches_a_manual_count():
    model = tiny_model()
    data = load_fashion_mnist("test")
    acc, n = accuracy_at(model, data, 16, batch_size=32, limit=70)
    x = torch.stack([data[i][0] for i in range(70)]).float() / 255
    x = (x - FMNIST_MEAN[0]) / FMNIST_STD[0]
    with torch.no_grad():
        manual = (model(x).argmax(-1) == data.labels[:70]).float().mean().item()
    assert n == 70 and acc == pytest.approx(manual)


def test_overrides_on_a_model_object_apply_then_restore():
    model = tiny_model()
    data = load_fashion_mnist("test")
    before = model.config
    nearest = evaluate(model, data, [40], limit=60, pos_embed_mode="nearest", size_policy="crop")
    assert nearest.pos_embed_mode == "nearest" and nearest.size_policy == "crop"
    assert model.config is before
    mixer = vitres.create_model("mixer_tiny16", img_size=16, in_chans=1, num_classes=10)
    with pytest.raises(ValueError, match="no config field"):
        evaluate(mixer, data, [16], limit=10, pos_embed_mode="nearest")


def test_non_learned_position_reports_no_mode():
    result = evaluate(tiny_model(pos_embed="rope"), "fashion-mnist", "16", limit=20)
    assert result.pos_embed_mode is None


def test_evaluate_by_path_with_mode_override(saved_model):
    result = evaluate(str(saved_model), "fashion-mnist", "12,20", limit=40, pos_embed_mode="area")
    check_schema(result.to_dict(), [12, 20], 40)
    assert result.model == str(saved_model) and result.pos_embed_mode == "area"


def test_cli_eval_json(saved_model, capsys):
    code = main(
        ["eval", "--model", str(saved_model), "--data", "fashion-mnist", "--res", "16,20,28",
         "--mode", "bilinear", "--size-policy", "pad", "--limit", "50", "--json"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    check_schema(result, [16, 20, 28], 50)
    assert result["pos_embed_mode"] == "bilinear"


def test_cli_eval_table(saved_model, capsys):
    assert main(["eval", "--model", str(saved_model), "--res", "16", "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert "16 px" in out and "%" in out and "n=20" in out


def test_cli_eval_reports_bad_input(capsys):
    assert main(["eval", "--model", "no-such-model", "--res", "16", "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitres eval: error: cannot resolve model 'no-such-model'")
    assert "fmnist-vit-multires" in err and "Hugging Face" in err  # lists the accepted forms
    with pytest.raises(ValueError, match="cannot read resolution"):
        parse_resolutions("16,abc")
    with pytest.raises(ValueError, match="positive"):
        parse_resolutions([16, 0])


@pytest.mark.skipif(
    not (WEIGHTS_DIR / "fmnist-vit-multires.safetensors").exists(),
    reason="reference model not bundled yet",
)
def test_bundled_reference_model_scores_well(capsys):
    assert main(["eval", "--model", "fmnist-vit-multires", "--res", "16,56", "--limit", "200",
                 "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert min(result["accuracy"].values()) > 0.7


def test_unreadable_files_and_class_mismatch_are_reported(tmp_path, capsys):
    """A folder with corrupt files and fewer classes than the model: eval says so, with
    the count and the first names, and still scores the readable images."""
    from PIL import Image

    test = load_fashion_mnist("test")
    images, labels = test.images, test.labels
    root = tmp_path / "folder"
    for k in range(3):  # 3 classes, the model has 10
        (root / f"class{k}").mkdir(parents=True)
    kept = 0
    for i in range(60):
        label = int(labels[i])
        if label >= 3:
            continue
        Image.fromarray(images[i, 0].numpy()).save(root / f"class{label}" / f"img{i}.png")
        kept += 1
    for j in range(5):
        (root / "class0" / f"broken{j}.png").write_bytes(b"not a png at all")
    model = vitres.load_model("fmnist-vit-single")
    result = evaluate(model, str(root), "28")
    assert result.n == kept
    unreadable, mismatch = result.warnings
    assert "5 of" in unreadable and "files unreadable" in unreadable
    assert "broken0.png" in unreadable and "and 2 more" in unreadable
    assert "has 3 classes but the model predicts 10" in mismatch
    saved = vitres.save_model(model, tmp_path / "m.safetensors")
    assert main(["eval", "--model", str(saved), "--data", str(root), "--res", "28"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "files unreadable" in err and "predicts 10" in err


def test_merge_or_pack_with_a_token_budget_is_refused(saved_model, capsys):
    data = load_fashion_mnist("test")
    for resolutions, extra in (([16], {"merge": 2}), (None, {"pack": "loop"})):
        with pytest.raises(ValueError, match="merge and token_budget cannot be combined yet"):
            evaluate(tiny_model(), data, resolutions, limit=5, token_budget=8, **extra)
    args = ["eval", "--model", str(saved_model), "--res", "16", "--limit", "5"]
    assert main([*args, "--merge", "2", "--token-budget", "8"]) == 2
    assert "cannot be combined yet" in capsys.readouterr().err


def test_evaluate_returns_a_typed_frozen_result():
    from dataclasses import FrozenInstanceError

    from vitres.evaluate import EvaluationResult, ResolutionAccuracy
    from vitres.tokens import TokenMode

    result = evaluate(tiny_model(), load_fashion_mnist("test"), "12,16x20", limit=20, merge=2)
    assert isinstance(result, EvaluationResult) and result.token_mode == TokenMode(merge=2)
    assert all(isinstance(row, ResolutionAccuracy) for row in result.rows)
    assert [(row.label, row.n) for row in result.rows] == [("12", 20), ("16x20", 20)]
    assert result.accuracy == {row.label: row.accuracy for row in result.rows}
    check_schema(result.to_dict(), ["12", "16x20"], 20)
    assert result.to_dict()["merge"] == 2 and result.to_dict()["token_budget"] is None
    with pytest.raises(FrozenInstanceError):
        result.model = "other"  # type: ignore[misc]
