"""The README is the front page: its headline figures come from the evidence pages, its links resolve, and it stays
short. Each row of its results table links an evidence page, and every figure of the row's result column must
appear on that page: a figure typed into the README alone, or one the page no longer shows (re-measured), fails."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# a figure: a signed or unsigned number with its unit (13.7x, +0.51, -0.16 pt, 94.17%, 1.230 s)
FIGURE = re.compile(r"(?<![\w.])[+-]?\d+(?:\.\d+)?(?:x|%| pt| s)?(?![\w.])")


def _plain(text: str) -> str:
    """Text with the typographic signs the pages use (minus, times, thin spaces) made plain."""
    return text.replace("−", "-").replace("×", "x").replace("\u2009", " ")


def results_rows() -> list[tuple[str, Path]]:
    """(result cell, evidence page) of each row of the README's results table."""
    text = README.read_text()
    table = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("what was measured", "---"):
            continue
        link = re.search(r"\]\(([^)#]+)", cells[2])
        assert link, f"a results row without an evidence link: {line}"
        rows.append((cells[1], ROOT / link.group(1)))
    return rows


def test_every_headline_figure_is_on_its_evidence_page():
    rows = results_rows()
    assert len(rows) >= 4  # speed, quality, the demo, latency
    for result, page in rows:
        shown = _plain(page.read_text())
        figures = FIGURE.findall(_plain(result.replace("`", "")))
        assert figures, f"no figure in {result!r}"
        missing = [f for f in figures if not re.search(rf"(?<![\w.]){re.escape(f)}(?![\w])", shown)]
        assert not missing, f"{page.relative_to(ROOT)} does not show {missing} (README: {result!r})"


def test_the_readme_is_a_front_page_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "arXiv:2007.02491" in text and "make demo" in text and "make test" in text
    assert "fnnp_opt.search(" in text
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if target.startswith("http"):
            continue
        assert (ROOT / target).exists(), f"README links {target}, which does not exist"


def test_the_readme_says_nothing_of_how_it_was_made():
    text = README.read_text().lower()
    for words in (r"this commit", r"issue \d+", r"\bhelpers?\b", r"\blent\b", r"\btasks?\b"):
        assert not re.search(words, text), f"README says {words!r}: name the machine and the command instead"
