"""Structure of the token pipeline: one block loop, no private names across modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "vitres"


def _loops_over_blocks(tree: ast.AST) -> int:
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.comprehension)):
            text = ast.unparse(node.iter)
            if text.endswith(".blocks") or "(self.blocks)" in text or ".blocks)" in text:
                count += 1
    return count


def test_only_the_vit_encode_loops_over_blocks():
    found = {}
    for path in ROOT.rglob("*.py"):
        n = _loops_over_blocks(ast.parse(path.read_text()))
        if n:
            found[str(path.relative_to(ROOT))] = n
    found.pop("models/mixer.py", None)  # the Mixer's own blocks (no tokens)
    assert found == {"models/vit.py": 1}


def test_tokens_use_no_private_names_of_other_modules():
    for path in (ROOT / "tokens").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                owner = ast.unparse(node.value)
                assert owner == "self" or node.attr.startswith("__"), (
                    f"{path.name}:{node.lineno} reads {owner}.{node.attr}"
                )


def test_models_import_nothing_from_tokens():
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("vitres.tokens"), path.name
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("vitres.tokens") for a in node.names), path.name
