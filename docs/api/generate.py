"""Write one page per public name of fnnp_opt (its ``__all__``) into docs/api/, from the signatures and docstrings,
and the index page that lists them. ``tests/test_api_docs.py`` fails when a page differs from what this writes.

    python docs/api/generate.py
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import fnnp_opt  # noqa: E402


def _default(value) -> str:
    """A default as the page shows it: an object's class, not its address (pages must not change between runs)."""
    return re.sub(r"<([\w.]+) object at 0x[0-9a-f]+>", lambda m: m.group(1).rsplit(".", 1)[-1] + "()", repr(value))


def _signature(name: str, fn, cls: bool = False) -> str:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return name
    lines = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        text = p.name if p.kind is not p.VAR_KEYWORD else f"**{p.name}"
        text = f"*{text}" if p.kind is p.VAR_POSITIONAL else text
        if p.annotation is not p.empty:
            text += f": {p.annotation}"
        if p.default is not p.empty:
            text += f" = {_default(p.default)}"
        lines.append(f"    {text},")
    head = f"class {name}" if cls else f"def {name}"
    ret = sig.return_annotation
    tail = "" if cls or ret is inspect.Signature.empty else f" -> {ret}"
    return f"{head}(\n" + "\n".join(lines) + f"\n){tail}" if lines else f"{head}(){tail}"


def _methods(obj) -> list[str]:
    out = []
    for attr, member in vars(obj).items():
        if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
            continue
        doc = inspect.getdoc(member) or ""
        if isinstance(member, property):
            out.append(f"### `{attr}` (property)\n\n{doc}\n")
        else:
            out.append(f"### `{attr}`\n\n```python\n{_signature(attr, member)}\n```\n\n{doc}\n")
    return out


def page(name: str) -> str:
    """The Markdown page of the public name ``name``."""
    obj = getattr(fnnp_opt, name)
    kind = "class" if inspect.isclass(obj) else "function"
    init = obj.__init__ if inspect.isclass(obj) and "__init__" in vars(obj) else obj
    doc = inspect.getdoc(obj) or ""
    init_doc = (
        inspect.getdoc(init) if init is not obj and inspect.getdoc(init) != inspect.getdoc(object.__init__) else ""
    )
    parts = [
        f"# `fnnp_opt.{name}`\n",
        f"A {kind}, defined in `{obj.__module__}`.\n",
        f"```python\n{_signature(name, init, kind == 'class')}\n```\n",
        doc + "\n",
    ]
    if init_doc and init_doc != doc:
        parts.append(init_doc + "\n")
    if kind == "class":
        if issubclass(obj, BaseException):
            parts.append(f"Subclass of `{obj.__mro__[1].__name__}`.\n")
        else:
            parts += _methods(obj)
    parts.append("[All public names](index.md)\n")
    return "\n".join(parts)


def _summary(obj) -> str:
    """The first sentence of ``obj``'s docstring."""
    paragraph = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0].replace("|", "\\|")


def index() -> str:
    rows = [f"| [`{n}`]({n}.md) | {_summary(getattr(fnnp_opt, n))} |" for n in fnnp_opt.__all__]
    return "\n".join(
        [
            "# The Python API",
            "",
            "Every public name of `fnnp_opt` (its `__all__`), each on its own page, written from the docstrings by "
            "`python docs/api/generate.py`. [From Python](../start/python.md) shows them at work; `examples/` has "
            "three scripts to copy.",
            "",
            "| name | what it is |",
            "| --- | --- |",
            *rows,
            "",
        ]
    )


def pages() -> dict[str, str]:
    """Every page, by file name."""
    return {"index.md": index()} | {f"{n}.md": page(n) for n in fnnp_opt.__all__}


if __name__ == "__main__":
    for file, text in pages().items():
        (HERE / file).write_text(text)
    print(f"wrote {len(fnnp_opt.__all__) + 1} pages into {HERE}")
