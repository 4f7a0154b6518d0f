"""docs/reference/attributes.md lists every user attribute the package writes on a study or a trial."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "attributes.md"


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level and class-level string constants (``BASELINE = "strategy"``), by name."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def written_keys() -> set[str]:
    """The keys of every ``set_user_attr(KEY, ...)`` call in fnnp_opt whose key is a string or a named constant."""
    trees = {path: ast.parse(path.read_text()) for path in (ROOT / "fnnp_opt").rglob("*.py")}
    constants = {k: v for tree in trees.values() for k, v in _constants(tree).items()}
    keys = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "set_user_attr"):
                continue
            key = node.args[0] if node.args else None
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.add(key.value)
            elif isinstance(key, ast.Name) and key.id in constants:
                keys.add(constants[key.id])
            elif isinstance(key, ast.Attribute) and key.attr in constants:
                keys.add(constants[key.attr])
    return keys


def test_every_attribute_the_package_writes_is_documented():
    keys = written_keys()
    assert {"flops", "abn_accuracy", "fingerprint", "slot", "surplus", "artifact_store"} <= keys  # the scan works
    page = PAGE.read_text()
    missing = sorted(k for k in keys if f"`{k}`" not in page and f"`{k}<" not in page)  # abn_ft<steps>
    assert not missing, f"docs/reference/attributes.md does not list {missing}"
