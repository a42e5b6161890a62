"""The command line: every command's --help, and the main job end to end on a tiny model."""

import json

import pytest
import torch

import vitres
from vitres.cli import COMMAND_MODULES, build_parser, main


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_every_command_is_wired():
    names = set(_commands())
    expected = {m.removesuffix("_cmd") for m in COMMAND_MODULES}
    assert {"demo", "train", "eval", "sweep", "recommend", "report", "models"} <= names
    assert names <= expected


@pytest.mark.parametrize("command", _commands())
def test_help_works(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vitres {command}")


def test_models_lists_names(capsys):
    assert main(["models"]) == 0
    assert "vit_small_patch16" in capsys.readouterr().out


def test_errors_are_reported_not_raised(capsys, tmp_path):
    code = main(["recommend", str(tmp_path / "missing.jsonl")])
    assert code == 2
    assert "no results file" in capsys.readouterr().err


def test_demo_pipeline_on_tiny_model(tmp_path, capsys):
    torch.manual_seed(0)
    model = vitres.create_model(
        "vit_tiny_patch4",
        img_size=28,
        in_chans=1,
        num_classes=10,
        embed_dim=16,
        depth=1,
        num_heads=2,
    )
    path = vitres.save_model(model, tmp_path / "tiny.safetensors")
    out_dir = tmp_path / "demo"
    args = [
        "demo",
        "--model",
        str(path),
        "--res",
        "16,28",
        "--backend",
        "eager",
        "--out-dir",
        str(out_dir),
    ]
    assert main([*args, "--eval-limit", "64", "--max-acc-drop", "100", "--min-speedup", "-1"]) == 0
    out = capsys.readouterr().out
    assert "report" in out
    lines = (out_dir / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert (out_dir / "report.html").stat().st_size > 1000
    # without hardware limits the speed-up rule becomes the latency limit
    from vitres.pipeline import speedup_budget
    from vitres.records import read_results

    measured = read_results(out_dir / "results.jsonl")
    base = next(m for m in measured if tuple(m.config.resolution) == (28, 28))
    derived = speedup_budget(measured, vitres.Budget(min_speedup=0.25))
    assert derived.max_latency_ms == pytest.approx(base.latency.median_ms / 1.25)
    assert speedup_budget(measured, vitres.Budget(max_memory_mb=1e6)).max_latency_ms is None
    # re-running resumes: nothing is measured again
    assert main([*args, "--eval-limit", "64"]) in (0, 1)
    assert len((out_dir / "results.jsonl").read_text().splitlines()) == 2
