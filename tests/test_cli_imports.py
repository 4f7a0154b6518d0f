"""The CLI is one client of the public API: it imports the package ``fnnp_opt``, ``fnnp_opt.commands`` and its own
modules, nothing else of fnnp-opt; and importing it, or showing a command's help, loads neither torch nor Optuna."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fnnp_opt"
CLI = "fnnp_opt.cli"
PUBLIC = {"fnnp_opt", "fnnp_opt.commands"}  # what the CLI may import of fnnp-opt, besides its own modules


def cli_modules() -> dict[str, Path]:
    """The CLI's modules by dotted name: ``fnnp_opt/cli.py``, or each module of the package ``fnnp_opt/cli/``."""
    single = PACKAGE / "cli.py"
    if single.exists():
        return {CLI: single}
    found = {}
    for path in sorted((PACKAGE / "cli").rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_module(dotted: str) -> bool:
    """Whether ``dotted`` (``fnnp_opt.x.y``) names a module or package of fnnp-opt, not a name inside one."""
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def fnnp_imports(name: str, path: Path) -> set[tuple[int, str]]:
    """Every fnnp-opt module that module ``name`` (file ``path``) imports, with its line: ``import`` statements at
    any depth (inside functions too), relative ones resolved, and ``importlib.import_module("...")`` calls."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..commands import y
                parts = package.split(".")
                here = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{here}.{base}" if base else here
            # `from fnnp_opt import pipeline` imports a module; `from fnnp_opt import FnnpError` a name of the package
            targets = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            targets = [str(node.args[0].value)]
        else:
            continue
        found |= {(node.lineno, t) for t in targets if t == "fnnp_opt" or t.startswith("fnnp_opt.")}
    return found


def test_the_cli_imports_only_the_public_api_and_its_own_modules():
    modules = cli_modules()
    seen, outside = [], []
    for name, path in modules.items():
        for line, target in sorted(fnnp_imports(name, path)):
            seen.append(target)
            if target not in PUBLIC and target != CLI and not target.startswith(f"{CLI}."):
                outside.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert seen, "the scan found no import of fnnp-opt at all: it reads nothing"
    assert not outside, "the CLI imports fnnp-opt's internals; reach them through fnnp_opt.commands:\n" + "\n".join(
        outside
    )


@pytest.mark.system
def test_importing_the_cli_and_showing_help_loads_neither_torch_nor_optuna():
    code = (
        "import sys\n"
        "import fnnp_opt.cli as cli\n"
        "loaded = {'import': sorted(m for m in ('torch', 'optuna') if m in sys.modules)}\n"
        "for args in (['--help'], ['run', '--help'], ['correlate', '--help']):\n"
        "    try:\n"
        "        cli.app(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "loaded['help'] = sorted(m for m in ('torch', 'optuna') if m in sys.modules)\n"
        "print(repr(loaded), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == repr({"import": [], "help": []})
    assert "--n-trials" in proc.stdout  # the help was shown


def test_every_public_name_of_commands_resolves_and_says_what_it_is():
    from fnnp_opt import commands

    for name in commands.__all__:
        value = getattr(commands, name)  # the names loaded on first use included
        assert isinstance(value, (str, tuple)) or (value.__doc__ or "").strip(), f"commands.{name} has no docstring"
    assert set(commands.__all__) <= set(dir(commands))
