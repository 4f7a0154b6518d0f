"""Write docs/reference/cli.md, every command of ``fnnp-opt`` with its options, from the Typer app itself (the same
help ``--help`` prints). ``tests/test_cli_docs.py`` fails when the page differs from what this writes.

    python docs/reference/generate_cli.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import typer  # noqa: E402
import typer.main  # noqa: E402

from fnnp_opt.cli import app  # noqa: E402

PAGE = HERE / "cli.md"


def _text(help_text: str) -> str:
    """Help as Markdown: Rich's escaped brackets restored, angle brackets and stars kept literal outside code."""
    parts = re.split(r"(`[^`]*`)", help_text.replace("\\[", "["))
    return "".join(
        p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*") for p in parts
    )


def _options(command, ctx) -> list[str]:
    lines = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or record[0] == "--help":
            continue
        names, help_text = record
        lines.append(f"- `{names}`: {_text(' '.join(help_text.split()))}")
    return lines


def page() -> str:
    """The Markdown page of every command."""
    group = typer.main.get_command(app)
    root = typer.Context(group, info_name="fnnp-opt")
    names = group.list_commands(root)
    out = [
        "# The command line",
        "",
        "Every command of `fnnp-opt` and its options, as `fnnp-opt COMMAND --help` prints them; written from the "
        "Typer app by `python docs/reference/generate_cli.py`. A TOML recipe (`--recipe`) sets any option of `run`; "
        "flags override the recipe.",
        "",
        "```text",
        "fnnp-opt [--debug] [--verbose | -v] COMMAND [OPTIONS]",
        "```",
        "",
        _text(group.help or ""),
        "",
        *_options(group, root),
        "",
        "| command | what it does |",
        "| --- | --- |",
        *(f"| [`{n}`](#{n}) | {_text(group.get_command(root, n).get_short_help_str(200))} |" for n in names),
    ]
    for name in names:
        command = group.get_command(root, name)
        ctx = typer.Context(command, info_name=name, parent=root)
        usage = command.get_usage(ctx).removeprefix("Usage: ")
        out += ["", f"## {name}", "", "```text", usage, "```", "", _text(command.help or ""), ""]
        out += _options(command, ctx) or ["No options."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    PAGE.write_text(page())
    print(f"wrote {PAGE}")
