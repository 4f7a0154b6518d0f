"""mkdocs.yml's navigation: every page it names exists, and every hand-written page is in it (the strict build in
CI checks the links; this runs without MkDocs installed)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# pages reached from a page in the navigation rather than from the navigation itself
LINKED_ONLY = {"report/report.md"} | {str(p.relative_to(DOCS)) for p in (DOCS / "api").glob("*.md")} - {"api/index.md"}


def _pages(nav) -> list[str]:
    found = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found += _pages(value) if isinstance(value, list) else [value]
    return found


def test_the_navigation_names_existing_pages_and_every_hand_written_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _pages(config["nav"])
    assert len(pages) == len(set(pages)), "a page is in the navigation twice"
    assert not [p for p in pages if not (DOCS / p).is_file()], "the navigation names pages that do not exist"
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk - set(pages) - LINKED_ONLY == set(), "pages missing from mkdocs.yml's nav"


def test_make_docs_serves_on_the_loopback_only():
    makefile = (ROOT / "Makefile").read_text()
    serve = next(line for line in makefile.splitlines() if "mkdocs serve" in line)
    assert "127.0.0.1" in serve and "0.0.0.0" not in makefile
