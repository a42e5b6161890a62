"""The command line: every command's --help, and the main job end to end on a tiny model."""

import json
import subprocess
import sys
from html import escape as html_escape

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
        "--keep-unstable",
        "--max-attempts",
        "1",
    ]
    assert (
        main([*args, "--eval-limit", "64", "--max-acc-drop", "100", "--min-speedup", "-0.99"]) == 0
    )
    out = capsys.readouterr().out
    assert "report" in out
    lines = (out_dir / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert (out_dir / "report.html").stat().st_size > 1000
    # re-running resumes: nothing is measured again
    assert main([*args, "--eval-limit", "64"]) in (0, 1)
    assert len((out_dir / "results.jsonl").read_text().splitlines()) == 2


def test_demo_recommend_and_report_give_one_answer(tmp_path, capsys):
    """The same results file and flags give the same decision in all three commands."""
    torch.manual_seed(1)
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
    demo = ["demo", "--model", str(path), "--res", "12,20,28", "--backend", "eager"]
    demo += ["--keep-unstable", "--max-attempts", "1"]
    for flags in ([], ["--max-acc-drop", "100", "--min-speedup", "-0.5"], ["--task", "realtime"]):
        code_demo = main([*demo, "--out-dir", str(out_dir), "--limit", "64", *flags])
        answer_demo = capsys.readouterr().out.splitlines()[0]
        results = str(out_dir / "results.jsonl")
        code_rec = main(["recommend", results, *flags])
        answer_rec = capsys.readouterr().out.splitlines()[0]
        assert main(["report", results, "--out", str(tmp_path / "r.html"), *flags]) == 0
        answer_report = capsys.readouterr().out.splitlines()[0]
        assert answer_demo == answer_rec == answer_report
        assert code_demo == 0  # the demo's job ran; recommend's exit code says if one passed
        assert main(["recommend", results, "--json", *flags]) == code_rec
        data = json.loads(capsys.readouterr().out)
        assert data["answer"] == answer_rec
        assert (code_rec == 0) == (data["choice"] is not None)
        html = (tmp_path / "r.html").read_text()
        assert html_escape(answer_rec) in html


def test_version_and_python_m(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"vitres {vitres.__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "vitres", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"vitres {vitres.__version__}"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-latency-ms", "-2"], "--max-latency-ms must be a positive"),
        (["--max-latency-ms", "nan"], "--max-latency-ms must be a positive"),
        (["--min-fps", "0"], "--min-fps must be a positive"),
        (["--max-acc-drop", "-1"], "--max-acc-drop must be a finite number >= 0"),
    ],
)
def test_bad_budget_flags_are_clear_errors(tmp_path, capsys, flags, message):
    results = tmp_path / "r.jsonl"
    results.write_text("")
    assert main(["recommend", str(results), *flags]) == 2
    assert message in capsys.readouterr().err


def test_warnings_are_one_plain_line_and_the_old_handler_comes_back(monkeypatch, capsys):
    import warnings

    import vitres.commands.models_cmd as models_cmd

    def warns(args):
        warnings.warn("only 5 images: the numbers below are noise", UserWarning, stacklevel=1)
        warnings.warn("an old option", DeprecationWarning, stacklevel=1)
        print("listed")
        return 0

    monkeypatch.setattr(models_cmd, "run", warns)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["models"]) == 0
        after = warnings.showwarning
    captured = capsys.readouterr()
    assert captured.out == "listed\n"
    assert captured.err.splitlines() == [
        "vitres: warning: only 5 images: the numbers below are noise",
        "vitres: warning: an old option",
    ]
    assert after is before  # restored when main returns
