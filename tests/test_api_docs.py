"""docs/api/ holds one page per public name of fnnp_opt, as docs/api/generate.py writes it from the docstrings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import fnnp_opt

PAGES = Path(__file__).resolve().parent.parent / "docs" / "api"


def _generator():
    spec = importlib.util.spec_from_file_location("api_pages", PAGES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_its_page_as_the_docstrings_write_it():
    expected = _generator().pages()
    assert set(expected) == {"index.md"} | {f"{name}.md" for name in fnnp_opt.__all__}
    stale = sorted(p.name for p in PAGES.glob("*.md") if p.name not in expected)
    assert not stale, f"pages of names that are no longer public: {stale}"
    differ = sorted(
        name for name, text in expected.items() if not (PAGES / name).is_file() or (PAGES / name).read_text() != text
    )
    assert not differ, f"{differ} differ from the docstrings: run `python docs/api/generate.py`"


def test_every_public_name_has_a_docstring_and_every_function_typed_arguments():
    import inspect

    for name in fnnp_opt.__all__:
        obj = getattr(fnnp_opt, name)
        assert inspect.getdoc(obj), f"fnnp_opt.{name} has no docstring"
        fn = obj.__init__ if inspect.isclass(obj) and "__init__" in vars(obj) else obj
        if inspect.isfunction(fn):
            untyped = [
                p.name
                for p in inspect.signature(fn).parameters.values()
                if p.name != "self" and p.annotation is p.empty
            ]
            assert not untyped, f"fnnp_opt.{name} has untyped arguments {untyped}"
