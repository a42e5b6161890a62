"""The house's layout: importing a lower room never loads a higher one.

Each import runs in a fresh interpreter (this one has long since loaded everything), and
the test reads which heavy modules it left in ``sys.modules``. The full import-direction
contract (every room against every higher one) is ``lint-imports``, run by ``make test``
(``[tool.importlinter]`` in pyproject.toml); these tests pin what the lazy package
``__init__`` files promise at run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vitres

ROOT = Path(__file__).resolve().parents[1]

HIGHER_ROOMS = ("vitres.tune", "vitres.report", "vitres.serve", "matplotlib")


def loaded_after(statement: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has in ``sys.modules`` after ``statement``."""
    code = (
        "import json, sys\n"
        f"{statement}\n"
        f"print(json.dumps([m for m in {list(watched)!r} if m in sys.modules]))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement",
    [
        "import vitres.layers",
        "import vitres.layers.pos_embed",
        "import vitres",
        "import vitres.models",
    ],
)
def test_lower_rooms_load_no_tuner_report_server_or_matplotlib(statement):
    assert loaded_after(statement, HIGHER_ROOMS) == []


def test_the_command_line_settings_load_no_server():
    # the CLI builds `vitres serve --help` from these dataclasses
    assert loaded_after("import vitres.serve.config", ("torch", "fastapi", "vitres.tune")) == []


def test_the_report_package_loads_matplotlib_only_when_drawing():
    assert loaded_after("import vitres.report", ("matplotlib", "torch")) == []
    assert loaded_after("from vitres.report import write_report", ("matplotlib",)) == ["matplotlib"]


def test_every_public_name_is_reachable_and_listed():
    for name in vitres.__all__:
        assert getattr(vitres, name) is not None, name
        assert name in dir(vitres), name
    assert vitres.write_report.__module__ == "vitres.report.writer"
    assert vitres.run_sweep.__module__ == "vitres.tune.sweep"


def test_an_unknown_name_is_a_clear_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        vitres.no_such_name  # noqa: B018
    assert not hasattr(vitres, "no_such_name")


def test_rooms_are_reachable_as_attributes():
    assert loaded_after("import vitres; vitres.tune.recommend", ("vitres.tune",)) == ["vitres.tune"]
