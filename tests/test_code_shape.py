"""The shape of the code base (issue 23): small modules, short functions, and no module
importing another's private names (the token pipeline's own checks are in
``test_token_pipeline.py``, the import direction in ``make test``'s import-linter run).

A function may run over the limit only with a comment right above its ``def`` (or its
first decorator) that starts with ``# long:`` and says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitres"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _parse(path: Path) -> tuple[list[str], ast.Module]:
    text = path.read_text()
    return text.splitlines(), ast.parse(text, filename=str(path))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _reason_above(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    above = lines[first - 2].strip() if first >= 2 else ""
    return above.startswith("# long:") and len(above) > len("# long:") + 10


def long_functions(path: Path) -> list[str]:
    lines, tree = _parse(path)
    found = []
    for node in _functions(tree):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES and not _reason_above(lines, node):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length})")
    return found


def test_sources_found():
    assert len(SOURCES) > 50


def test_no_module_over_the_limit():
    big = [
        f"{p.relative_to(PACKAGE.parent)} ({n})"
        for p in SOURCES
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_no_function_over_the_limit_without_a_reason():
    found = [f for p in SOURCES for f in long_functions(p)]
    assert not found, (
        f"functions over {MAX_FUNCTION_LINES} lines without a '# long: <why>' comment: {found}"
    )


def test_the_length_check_catches_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    plain = tmp_path / "plain.py"
    plain.write_text(f"def f():\n{body}\n")
    marked = tmp_path / "marked.py"
    marked.write_text(f"# long: one table of constants, read top to bottom\ndef f():\n{body}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(__import__(__name__), "PACKAGE", tmp_path)
        assert long_functions(plain) == [f"{tmp_path.name}/plain.py:1 f (81)"]
        assert long_functions(marked) == []


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in SOURCES:
        _, tree = _parse(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitres"):
                found += [
                    f"{path.relative_to(PACKAGE.parent)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not found, f"private names imported across modules: {found}"
