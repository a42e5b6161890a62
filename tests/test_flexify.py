"""Flexify: losses against direct computations, the size sampler against its definition,
learning on real data, exact resume, every model format and position-embedding kind."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vitres
from vitres.cli import main
from vitres.evaluate import accuracy_at
from vitres.train import (
    FlexifyConfig,
    GapSampler,
    distillation_loss,
    flexify,
    load_checkpoint,
    scale_consistency_loss,
    token_batch_size,
    token_count,
)
from vitres.train.flexify import FlexifyRecipe


def tiny_source(path, pos_embed="learned", **overrides):
    """A 1-block width-16 ViT for 16 px greyscale images, saved as a vitres checkpoint."""
    torch.manual_seed(3)
    settings = dict(
        img_size=16,
        embed_dim=16,
        depth=1,
        num_heads=2,
        in_chans=1,
        num_classes=10,
        pos_embed=pos_embed,
        mean=(0.286,),
        std=(0.353,),
    )
    settings.update(overrides)
    model = vitres.create_model("vit_tiny_patch4", **settings)
    vitres.save_model(model, path)
    return model


def tiny(tmp_path, source, name="run", **overrides) -> FlexifyConfig:
    settings = dict(
        model=str(source),
        train_limit=128,
        batch_size=32,
        min_batch_size=8,
        max_batch_size=64,
        epochs=2,
        lr=3e-3,
        warmup_steps=2,
        resolutions=(8, 12, 16),
        eval_resolutions=(12,),
        eval_limit=64,
        eval_batch_size=64,
        num_threads=1,
        progress=False,
        log_every_steps=1,
        seed=5,
        precision="fp32",
        out_dir=str(tmp_path / name),
    )
    settings.update(overrides)
    return FlexifyConfig(**settings)


class Crash(RuntimeError):
    pass


def crash_at(global_step: int):
    def callback(info: dict) -> None:
        if info["global_step"] == global_step:
            raise Crash(f"simulated crash after step {global_step}")

    return callback


def assert_same_state(dir_a, dir_b) -> None:
    a, b = load_checkpoint(dir_a), load_checkpoint(dir_b)
    assert a["global_step"] == b["global_step"] and a["images_done"] == b["images_done"]
    for key, value in a["model_state"].items():
        torch.testing.assert_close(value, b["model_state"][key], rtol=0, atol=0)
    state_a, state_b = a["optimizer_state"]["state"], b["optimizer_state"]["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) > 0
    for index, slots in state_a.items():
        for key, value in slots.items():
            torch.testing.assert_close(value, state_b[index][key], rtol=0, atol=0)
    assert a["recipe_state"]["sampler"] == b["recipe_state"]["sampler"]
    assert a["recipe_state"]["work"]["student"] == b["recipe_state"]["work"]["student"]


# ----------------------------------------------------------------------------- losses
def test_distillation_loss_equals_the_direct_computation():
    torch.manual_seed(0)
    student = torch.randn(5, 7, requires_grad=True)
    teacher = torch.randn(5, 7)
    T = 2.5
    p_t = torch.softmax(teacher / T, -1)
    log_p_s = torch.log_softmax(student / T, -1)
    direct = T**2 * (p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean()
    loss = distillation_loss(student, teacher, T)
    torch.testing.assert_close(loss, direct, rtol=1e-6, atol=1e-7)
    loss.backward()
    # d/ds of T^2 KL(p_t || p_s) is T (p_s - p_t) / B
    expected = T * (torch.softmax(student.detach() / T, -1) - p_t) / 5
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-7)
    assert float(distillation_loss(teacher, teacher, T)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, 0.0)
    with pytest.raises(ValueError, match="same classes"):
        distillation_loss(student, teacher[:, :5], 1.0)


def test_scale_consistency_targets_the_larger_scale_without_its_gradient():
    torch.manual_seed(1)
    small = torch.randn(4, 3, requires_grad=True)
    large = torch.randn(4, 3, requires_grad=True)
    loss = scale_consistency_loss(small, large, 1.0)
    torch.testing.assert_close(loss, distillation_loss(small, large.detach(), 1.0))
    loss.backward()
    assert large.grad is None and small.grad is not None


# ----------------------------------------------------------------------------- sizes
def test_token_count_and_token_normalised_batch():
    assert token_count(28, 4) == 49 and token_count(56, 4) == 196 and token_count(12, 4) == 9
    assert token_count(9, 4) == 9  # padded to 12 px: 3 x 3
    assert token_count((20, 40), 4) == 50
    assert token_batch_size(49, 49, 128, 16, 512) == 128
    assert token_batch_size(196, 49, 128, 16, 512) == 32  # 4x the tokens, 1/4 of the batch
    assert token_batch_size(100, 49, 128, 16, 512) == round(128 * 49 / 100)
    assert token_batch_size(9, 49, 128, 16, 512) == 512  # 697 clamped
    assert token_batch_size(784, 49, 128, 16, 512) == 16  # 8 clamped up
    with pytest.raises(ValueError, match="min_batch_size"):
        token_batch_size(49, 49, 128, 64, 32)


def test_gap_sampler_distribution_matches_its_definition():
    arms = [(12, None), (28, None), (40, None), (56, None)]
    sampler = GapSampler(arms, floor=0.2, momentum=0.5)
    assert sampler.probabilities() == [0.25] * 4  # nothing measured: uniform
    sampler.update((12, None), 0.4)
    sampler.update((28, None), 0.1)
    sampler.update((56, None), 0.0)
    # unmeasured 40 px counts with the largest gap measured (0.4)
    gaps = [0.4, 0.1, 0.4, 0.0]
    expected = [0.8 * g / sum(gaps) + 0.2 / 4 for g in gaps]
    assert sampler.probabilities() == pytest.approx(expected, abs=1e-12)
    sampler.update((12, None), 0.2)  # moving average: 0.5 * 0.4 + 0.5 * 0.2
    assert sampler.gaps[0] == pytest.approx(0.3)
    sampler.update((12, None), float("nan"))  # ignored
    assert sampler.gaps[0] == pytest.approx(0.3)
    probabilities = sampler.probabilities()
    assert sum(probabilities) == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    n = 40000
    counts = {arm: 0 for arm in arms}
    for _ in range(n):
        counts[sampler.draw(generator)] += 1
    for arm, p in zip(arms, probabilities):
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[arm] - n * p) < 5 * sigma, (arm, counts[arm], n * p)
    uniform = GapSampler(arms, kind="uniform")
    uniform.load_state_dict(sampler.state_dict())
    assert uniform.probabilities() == [0.25] * 4
    restored = GapSampler(arms, floor=0.2, momentum=0.5)
    restored.load_state_dict(json.loads(json.dumps(sampler.state_dict())))
    assert restored.probabilities() == probabilities
    with pytest.raises(ValueError, match="sampler must be one of"):
        GapSampler(arms, kind="greedy")


# ----------------------------------------------------------------------------- learning
def test_flexify_lowers_the_loss_and_lifts_accuracy_at_new_sizes_on_real_data(tmp_path):
    source = vitres.load_model("fmnist-vit-single")
    test_set = vitres.data.get_dataset("fashion-mnist", "test", in_chans=1)
    before, _ = accuracy_at(source, test_set, 12, 500, 500)
    config = FlexifyConfig(
        model="fmnist-vit-single",
        resolutions=(12, 16),
        train_limit=768,
        batch_size=32,
        max_batch_size=128,
        epochs=3,
        lr=1e-3,
        warmup_steps=2,
        eval_resolutions=(12,),
        eval_limit=500,
        num_threads=1,
        progress=False,
        precision="fp32",
        out_dir=str(tmp_path / "real"),
    )
    result = flexify(config)
    losses = [epoch["loss"] for epoch in result.history]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    kd = [epoch["kd"] for epoch in result.history]
    assert kd[-1] < kd[0], kd  # closer to the teacher
    after = result.final_accuracy["12"]
    assert after > before + 0.05, (before, after)


def test_teacher_runs_at_its_native_size_in_inference_mode(tmp_path):
    tiny_source(tmp_path / "src.safetensors", drop_path_rate=0.5)  # train mode would differ
    config = tiny(tmp_path, tmp_path / "src.safetensors", train_limit=40)
    recipe = FlexifyRecipe(config, "fp32")
    recipe.cache = recipe._teacher_cache()  # built at the first step
    teacher = vitres.load_model(tmp_path / "src.safetensors")
    assert not recipe.teacher.training
    assert not any(p.requires_grad for p in recipe.teacher.parameters())
    images = recipe.train_set.images[:40].float() / 255
    x = (images - 0.286) / 0.353  # 28 px data resized to the teacher's 16 px
    x = vitres.data.resize(x, 16)
    with torch.no_grad():
        plain, flipped = teacher(x), teacher(x.flip(-1))
    torch.testing.assert_close(recipe.cache[0], plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(recipe.cache[1], flipped, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [
        {},  # cached teacher, gap sampler
        {"teacher_cache": False, "random_crop": True, "scale_consistency": True},
        {"patch_sizes": (2, 4), "sampler": "uniform", "distill": "none"},
    ],
    ids=["cached", "crop-consistency", "patches-no-teacher"],
)
def test_crash_then_resume_is_bit_exact(tmp_path, variant):
    source = tmp_path / "src.safetensors"
    tiny_source(source)
    full = flexify(tiny(tmp_path, source, "full", checkpoint_every_steps=2, **variant))
    with pytest.raises(Crash):
        config = tiny(tmp_path, source, "crash", checkpoint_every_steps=2, **variant)
        flexify(config, callback=crash_at(full.steps - 1))
    resumed = flexify(
        tiny(tmp_path, source, "crash", checkpoint_every_steps=2, resume=True, **variant)
    )
    assert resumed.steps == full.steps
    assert_same_state(tmp_path / "full", tmp_path / "crash")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert [h["accuracy"] for h in resumed.history] == [h["accuracy"] for h in full.history]
    # the cost counts the teacher's cached outputs once per start: twice after a resume
    work_full = load_checkpoint(tmp_path / "full")["recipe_state"]["work"]["teacher"]
    work_resumed = load_checkpoint(tmp_path / "crash")["recipe_state"]["work"]["teacher"]
    if variant.get("distill") == "none":
        assert work_full == work_resumed == [0, 0]
    elif variant.get("teacher_cache", True):
        cache = 128 * 2 * 16  # 128 images, as is and flipped, 4 x 4 tokens
        assert work_full == [cache, cache * 16] and work_resumed == [2 * cache, 2 * cache * 16]
    else:
        assert work_full == work_resumed
    steps = [json.loads(line) for line in (tmp_path / "crash" / "log.jsonl").open()]
    batches = {r["batch_size"] for r in steps if r["kind"] == "step"}
    assert len(batches) > 1  # token-normalised: different sizes, different batches


# ----------------------------------------------------------------------------- formats
def _starts_from(result, source_model) -> None:
    """With a vanishing learning rate the student ends where it started: at the source."""
    trained = result.model.state_dict()
    for key, value in source_model.state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-6)


def test_flexify_loads_a_vitres_checkpoint_a_registry_name_hf_and_timm(tmp_path):
    fixed = dict(epochs=1, lr=1e-12, min_lr=0.0, train_limit=64)
    path = tmp_path / "src.safetensors"
    source = tiny_source(path)
    result = flexify(tiny(tmp_path, path, "vitres", **fixed))
    _starts_from(result, source)
    saved = vitres.load_model(tmp_path / "vitres" / "model.safetensors")
    assert saved.metadata["source"] == str(path) and saved.metadata["recipe"] == "flexify"
    # the output folder of a run is a source too (model.safetensors + model.json)
    result = flexify(tiny(tmp_path, tmp_path / "vitres", "from-run", **fixed))
    _starts_from(result, saved)
    registry = dict(img_size=16, embed_dim=16, depth=1, num_heads=2, in_chans=1, num_classes=10)
    result = flexify(
        tiny(tmp_path, "vit_tiny_patch4", "registry", model_overrides=registry, **fixed)
    )
    torch.manual_seed(5)  # the config's seed: the same random start
    _starts_from(result, vitres.create_model("vit_tiny_patch4", **registry))
    # timm: a folder with timm's config.json and a state dict with timm's names
    timm_dir = tmp_path / "timm"
    timm_dir.mkdir()
    timm_config = {"architecture": "vit_custom", "num_classes": 10, "model_args": {"num_heads": 2}}
    (timm_dir / "config.json").write_text(json.dumps(timm_config))
    torch.save(dict(source.state_dict()), timm_dir / "pytorch_model.bin")
    assert vitres.models.checkpoint.detect_format(timm_dir) == "timm"
    result = flexify(tiny(tmp_path, timm_dir, "timm-run", **fixed))
    _starts_from(result, vitres.from_pretrained(timm_dir))
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=4,
        num_channels=1,
        num_labels=10,
    )
    transformers.ViTForImageClassification(hf_config).save_pretrained(tmp_path / "hf")
    result = flexify(tiny(tmp_path, tmp_path / "hf", "hf-run", **fixed))
    _starts_from(result, vitres.from_pretrained(tmp_path / "hf"))


@pytest.mark.parametrize("pos_embed", ["learned", "sincos", "rope", "cpb", "mlp", "none"])
def test_flexify_works_with_every_pos_embed(tmp_path, pos_embed):
    path = tmp_path / "src.safetensors"
    source = tiny_source(path, pos_embed=pos_embed)
    config = tiny(tmp_path, path, epochs=1, train_limit=96, resolutions=(9, 16), patch_sizes=(2, 4))
    result = flexify(config)
    assert result.steps >= 2
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert all(math.isfinite(r["kd"]) and r["kd"] >= 0 for r in steps if r["kind"] == "step")
    assert {(r["resolution"], r["patch_size"]) for r in steps if r["kind"] == "step"} != {(16, 4)}
    changed = result.model.state_dict()
    assert any(not torch.equal(changed[k], v) for k, v in source.state_dict().items())
    assert set(result.history[-1]["sampler"]) == {"9/p2", "9/p4", "16/p2", "16/p4"}


# ----------------------------------------------------------------------------- CLI, errors
def test_cli_flexify_then_refuse_then_extend(tmp_path, capsys):
    tiny_source(tmp_path / "src.safetensors")
    args = [
        "flexify", "--model", str(tmp_path / "src.safetensors"), "--out", str(tmp_path / "cli"),
        "--res", "8:16:4", "--patch-size", "2,4", "--epochs", "1", "--train-limit", "64",
        "--batch-size", "16", "--min-batch-size", "4", "--max-batch-size", "32",
        "--eval-resolutions", "12", "--eval-limit", "32", "--no-progress", "--num-threads", "1",
        "--distill", "kl", "--temperature", "2", "--scale-consistency", "--json",
    ]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] >= 1 and set(summary["accuracy"]) == {"12"}
    saved = load_checkpoint(tmp_path / "cli")["train_config"]
    assert saved["resolutions"] == [8, 12, 16] and saved["patch_sizes"] == [2, 4]
    assert saved["temperature"] == 2.0 and saved["scale_consistency"] is True
    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(args + ["--resume", "--epochs", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"]) == 1
    assert main(args[:-1] + ["--temperature", "3", "--resume", "--epochs", "2"]) == 2
    assert "temperature: 2.0 -> 3.0" in capsys.readouterr().err


def test_bad_flexify_input_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="distill must be one of"):
        FlexifyConfig(distill="mse")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        FlexifyConfig(temperature=0)
    with pytest.raises(ValueError, match="scale_consistency needs at least two"):
        FlexifyConfig(resolutions=(28,), scale_consistency=True)
    with pytest.raises(ValueError, match="distill is 'none'"):
        FlexifyConfig(teacher="fmnist-vit-single", distill="none")
    with pytest.raises(ValueError, match="cannot load model 'no-such-model'.*bundled"):
        flexify(tiny(tmp_path, "no-such-model"))
    tiny_source(tmp_path / "five.safetensors", num_classes=5)
    with pytest.raises(ValueError, match="has 5 classes, fashion-mnist has 10"):
        flexify(tiny(tmp_path, tmp_path / "five.safetensors", "five"))
    tiny_source(tmp_path / "src.safetensors")
    train_run = tmp_path / "train-run"
    vitres.train.train(
        vitres.train.TrainConfig(
            embed_dim=8, depth=1, num_heads=2, img_size=8, train_limit=32, batch_size=32,
            epochs=1, resolutions=(8,), eval_resolutions=(8,), eval_limit=16,
            progress=False, out_dir=str(train_run),
        )
    )  # fmt: skip
    with pytest.raises(ValueError, match="holds a 'train' run, not 'flexify'"):
        flexify(tiny(tmp_path, tmp_path / "src.safetensors", "train-run", resume=True))
