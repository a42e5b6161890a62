"""``--config FILE`` and ``--print-config`` on every command."""

import json

import pytest

from vitres.cli import build_parser, main


def test_every_command_prints_its_config_and_reads_it_back(tmp_path, capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    values = {"model": "fmnist-vit-single", "res": "16", "image": "x.png", "out": "m.onnx",
              "source": "fashion-mnist", "results": "r.jsonl", "baseline": "a.jsonl",
              "current": "b.jsonl"}  # fmt: skip
    for name, command in sub.choices.items():
        argv = [name]
        for action in command._actions:
            if not action.required:
                continue
            value = values[action.dest]
            argv += [value] if not action.option_strings else [action.option_strings[0], value]
        for group in command._mutually_exclusive_groups:
            if group.required:
                argv += [group._group_actions[0].option_strings[0], "30"]
        positional = [
            a for a in argv[1:] if not a.startswith("-") and argv[argv.index(a) - 1][0] != "-"
        ]
        assert main([*argv, "--print-config"]) == 0, (name, capsys.readouterr().err)
        text = capsys.readouterr().out
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        assert main([name, *positional, "--config", str(path), "--print-config"]) == 0, name
        assert capsys.readouterr().out == text, name  # the file gives back the same settings


def test_file_values_are_defaults_flags_win_and_required_flags_can_come_from_the_file(
    tmp_path, capsys
):
    config = tmp_path / "sweep.yaml"
    config.write_text("model: fmnist-vit-single\nres: [16, 28]\nmax-latency-ms: 2.5\n"
                      "no-progress: true\nbackend: eager\n")  # fmt: skip
    assert main(["sweep", "--config", str(config), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "res: 16,28" in printed and "max-latency-ms: 2.5" in printed
    assert "model: fmnist-vit-single" in printed
    assert main(["sweep", "--config", str(config), "--res", "20", "--print-config"]) == 0
    assert "res: '20'" in capsys.readouterr().out
    as_json = tmp_path / "eval.json"
    as_json.write_text(json.dumps({"model": "fmnist-vit-single", "res": 16, "limit": 32}))
    assert main(["eval", "--config", str(as_json)]) == 0  # --model comes from the file
    assert "16" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command,text,words",
    [
        ("sweep", "modle: x\n", "unknown setting 'modle'"),
        ("export", "int8: fourbit\n", "int8 must be one of"),
        ("sweep", "adaptive: 3\n", "is a switch"),
        ("sweep", "- a\n- b\n", "expected a mapping"),
        ("sweep", "res: [16\n", "not valid yaml"),
    ],
)
def test_bad_config_files_are_clear_errors(tmp_path, capsys, command, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main([command, "--config", str(path), "--print-config"]) == 2
    assert words in capsys.readouterr().err
    assert main(["sweep", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no config file" in capsys.readouterr().err
