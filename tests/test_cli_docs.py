"""docs/reference/cli.md holds every command of ``fnnp-opt`` and its options, as docs/reference/generate_cli.py
writes them from the Typer app."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference"


def _generator():
    spec = importlib.util.spec_from_file_location("cli_page", REFERENCE / "generate_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_what_the_app_writes():
    page = (REFERENCE / "cli.md").read_text()
    stale = "docs/reference/cli.md differs from the app: run `python docs/reference/generate_cli.py`"
    assert page == _generator().page(), stale


def test_the_cli_reference_has_every_command_and_option():
    import typer.main

    from fnnp_opt.cli import app

    page = (REFERENCE / "cli.md").read_text()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"\n## {name}\n" in page
        section = page.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            assert all(opt in section for opt in param.opts if opt.startswith("-")), (name, param.opts)
