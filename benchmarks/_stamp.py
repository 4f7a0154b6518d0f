"""Where a benchmark's figures were measured: the code's commit, the machine and what else was running on it.

A benchmark that writes rows stamps each one (:func:`append_row`, or ``{**row, "stamp": stamp()}``), and its
report writer prints :func:`provenance` under its tables, so a page never states a commit or a machine by hand.
Rows written before rows carried a stamp are dated by the commits of their results file (``git log``); a
benchmark that prints instead of writing rows prints :func:`line` first.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every figure committed before rows carried a stamp was measured on this machine (without a GPU).
EARLIER_MACHINE = "2-core Intel(R) Xeon(R) Processor, no GPU"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it (``platform.processor()`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for text in cpuinfo.read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    """The first CUDA device's name when torch is already loaded and sees one (a stamp never loads torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def stamp() -> dict:
    """The commit (``git rev-parse --short HEAD``, and whether the tree had uncommitted changes), the machine (CPU
    model, core count, GPU if any), torch's version, the 1-minute load average (what else ran) and the UTC time."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = None
    return {
        "commit": _git("rev-parse", "--short", "HEAD") or None,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": _gpu(),
        "torch": torch,
        "load": round(os.getloadavg()[0], 2),
        "utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }


def append_row(path: Path, row: dict) -> dict:
    """Append ``row`` with its stamp to the JSON-lines file ``path`` (one write: a row lands whole or not at all)."""
    stamped = {**row, "stamp": stamp()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(stamped) + "\n")
    return stamped


def machine(s: dict) -> str:
    """A stamp's machine in words: ``2-core Intel(R) Xeon(R) Processor, no GPU, torch 2.14.1``."""
    gpu = f"GPU {s['gpu']}" if s.get("gpu") else "no GPU"
    return f"{s['cores']}-core {s['cpu']}, {gpu}, torch {s['torch']}"


def _code(s: dict, tick: str = "`") -> str:
    return f"{tick}{s['commit']}{tick}" + (" with uncommitted changes" if s.get("dirty") else "")


def line(s: dict | None = None) -> str:
    """One line for a printed report: ``measured at commit abc1234 on a 2-core ...; load average 0.42 at the
    start, 2026-12-03 10:00 UTC`` (print it before the measurement)."""
    s = s or stamp()
    return f"measured at commit {_code(s, '')} on a {machine(s)}; load average {s['load']} at the start, {s['utc']} UTC"


def committed(path: Path) -> list[str]:
    """The commits that changed ``path``, newest first, as ``abc1234 (2026-12-01)``."""
    rel = Path(path).resolve().relative_to(ROOT) if Path(path).resolve().is_relative_to(ROOT) else Path(path)
    log = _git("log", "--format=%h %ad", "--date=short", "--", str(rel))
    return [f"{h} ({d})" for h, d in (entry.split(" ", 1) for entry in log.splitlines() if " " in entry)]


def provenance(rows: list[dict], results: Path, noun: str = "rows") -> list[str]:
    """Markdown lines saying where ``rows`` (read from ``results``) were measured: per commit and machine, how many
    rows and the load average as they were written (the other work on the machine); the rows without a stamp dated
    by the commits of ``results``."""
    groups: Counter[tuple[str, str]] = Counter()
    loads: dict[tuple[str, str], list[float]] = {}
    bare = 0
    for r in rows:
        s = r.get("stamp")
        if not s:
            bare += 1
            continue
        key = (_code(s), machine(s))
        groups[key] += 1
        loads.setdefault(key, []).append(s["load"])
    where = f"`{Path(results).resolve().relative_to(ROOT)}`" if Path(results).resolve().is_relative_to(ROOT) else ""
    out = []
    for (code, mach), n in groups.items():
        lo, hi = min(loads[(code, mach)]), max(loads[(code, mach)])
        load = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
        out.append(f"- {n} {noun} measured at commit {code} on a {mach}; 1-minute load average {load} when written.")
    if bare:
        commits = committed(results)
        listed = ", ".join(f"`{c.replace(' ', '` ', 1)}" for c in commits)
        dated = ("commit " if len(commits) == 1 else "commits ") + listed if commits else "no commit yet"
        out.append(
            f"- {bare} {noun} from before rows carried their stamp, measured on a {EARLIER_MACHINE}: {where} gained "
            f"its rows in {dated} (newest first, `git log`)."
        )
    return ["**Measured:**", "", *out] if out else []
