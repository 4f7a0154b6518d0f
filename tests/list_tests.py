"""List the suite's tests, or compare two lists: no test may go missing when the suite is reorganised.

    python tests/list_tests.py write tests.txt [REPO]   # every test's node id and tier, one a line, sorted
    python tests/list_tests.py compare before.txt after.txt

``write`` collects every tier of the suite in ``REPO/tests`` (default: this checkout's; run it with ``PYTHONPATH`` at
that repository, from its root); nothing is run. ``compare`` reads the node id of each line (a tier
after a tab is ignored, so a list written before the tiers existed compares too), prints the tests only one list
holds, and exits 1 when a test of the first list is missing from the second.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Recorder:
    """A pytest plugin that keeps each collected test's node id and tier marks."""

    def __init__(self, tiers: tuple[str, ...]) -> None:
        self.tiers = tiers
        self.rows: list[str] = []

    def pytest_collection_finish(self, session) -> None:
        for item in session.items:
            marks = sorted({m.name for m in item.iter_markers() if m.name in self.tiers})
            self.rows.append("\t".join([item.nodeid, *marks]))


def write(path: Path, repo: Path = ROOT) -> int:
    """Write every collected test of every tier of ``repo``'s suite to ``path``; return pytest's exit code."""
    import pytest

    sys.path.insert(0, str(repo / "tests"))
    try:
        from conftest import TIERS  # the suite's tiers; a suite without them collects every test anyway

        tiers, select = tuple(TIERS), ["-m", " or ".join(TIERS)]
    except ImportError:
        tiers, select = (), []
    recorder = _Recorder(tiers)
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *select, str(repo / "tests")], [recorder])
    path.write_text("".join(f"{row}\n" for row in sorted(recorder.rows)))
    print(f"{len(recorder.rows)} tests written to {path}")
    return int(code)


def read(path: Path) -> dict[str, str]:
    """The node ids of a list, each with its tier ('' where the list has none)."""
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return {row[0]: ",".join(row[1:]) for row in rows}


def compare(before: Path, after: Path) -> int:
    """Print what one list holds and the other does not, and the count per tier of ``after``; 1 if a test of
    ``before`` is missing from ``after``."""
    old, new = read(before), read(after)
    gone, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    for title, ids in (("missing from " + after.name, gone), ("new in " + after.name, added)):
        print(f"{len(ids)} {title}")
        for node in ids:
            print(f"  {node}")
    tiers: dict[str, int] = {}
    for tier in new.values():
        tiers[tier or "(none)"] = tiers.get(tier or "(none)", 0) + 1
    print(f"{len(old)} tests before, {len(new)} after; per tier: {dict(sorted(tiers.items()))}")
    return 1 if gone else 0


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "write":
        return write(Path(argv[1]), *(Path(a).resolve() for a in argv[2:]))
    if len(argv) == 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
