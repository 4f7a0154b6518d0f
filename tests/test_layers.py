"""The package's import structure, read from its source with ``ast``: no import cycle among its modules (imports
inside functions and under ``TYPE_CHECKING`` count), and each module imports only its own layer or lower ones.

A new module of ``fnnp_opt`` needs a line in :data:`LAYERS` (a module of a sub-package, such as ``cli.render``, takes
its package's layer); a module named there that does not exist is fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fnnp_opt"

# Bottom to top: a module may import modules of its own layer and of the layers before it.
LAYERS = {
    "leaves": ("errors", "progress", "redact", "options", "kernels", "paths"),
    "data": ("data", "datasets", "batches"),
    "core": (
        "models",
        "prune",
        "probe",
        "space",
        "flops",
        "evaluate",
        "training",
        "score",
        "export",
        "latency",
        "plan",
        # the torchrun process group: fine-tuning (training.fit) runs its collectives; it imports only errors
        "distributed",
    ),
    "study": (
        "optimize",
        "problem",  # a pruning problem queues its baselines into a study (optimize.enqueue_strategies)
        "baselines",  # the global and sensitivity allocations of a problem, fitted to its window (constraints)
        "storage",
        "journal",
        "artifacts",
        "dashboard",
        "constraints",
        "early_stop",
        "rerank",
        "pareto",
        "correlation",
        "optuna_private",
    ),
    "app": ("config", "pipeline", "workers", "report", "correlate", "recipes", "commands"),
    "api": ("api", "__init__"),
    "cli": ("cli",),  # which modules the CLI may import is the CLI's own test (it uses the public API)
}
API_MAY_IMPORT_FROM_APP = {"config"}  # the public API stands beside the app, not on it
NO_OPTUNA_BELOW = "study"  # the layers under it do not import optuna (or optuna-dashboard)

_RANK = {module: rank for rank, names in enumerate(LAYERS.values()) for module in names}
_LAYER = {module: layer for layer, names in LAYERS.items() for module in names}


def _placed(module: str) -> str | None:
    """The name :data:`LAYERS` places ``module`` by: itself, else its top package (``cli`` for ``cli.render``)."""
    for name in (module, module.split(".")[0]):
        if name in _RANK:
            return name
    return None


def rank(module: str) -> int | None:
    placed = _placed(module)
    return None if placed is None else _RANK[placed]


def layer(module: str) -> str | None:
    placed = _placed(module)
    return None if placed is None else _LAYER[placed]


def modules(package: Path) -> dict[str, Path]:
    """The package's modules by dotted name within it (``__init__`` for the package itself)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if len(parts) > 1 and parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _targets(name: str, path: Path, node: ast.AST, package: str) -> list[str]:
    """The absolute names an import statement of module ``name`` (file ``path``) reaches."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1 packages
        here = [package, *name.split(".")] if name != "__init__" else [package]
        if path.name != "__init__.py":
            here = here[:-1]
        here = here[: len(here) - (node.level - 1)]
        base = ".".join([*here, base] if base else here)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def imports(package: Path) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``, from every import statement anywhere in its file."""
    mods, pkg = modules(package), package.name
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = _targets(name, path, node, pkg)
            hits = set()
            for target in targets:
                if target != pkg and not target.startswith(pkg + "."):
                    continue
                inner = target[len(pkg) + 1 :]
                while inner and inner not in mods:  # a name inside a module: the module
                    inner = inner.rpartition(".")[0]
                hits.add(inner or "__init__")
            if len(hits) > 1:  # `from fnnp_opt import search` reaches search, not the package's own names
                hits.discard("__init__")
            edges[name] |= hits - {name}
    return edges


def third_party(package: Path) -> dict[str, set[str]]:
    """``{module: the top-level names of the other packages it imports}``."""
    out: dict[str, set[str]] = {}
    for name, path in modules(package).items():
        out[name] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out[name] |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                out[name].add(node.module.split(".")[0])
        out[name].discard(package.name)
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each strongly connected set of two or more modules, sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def unlayered(package: Path) -> list[str]:
    """The modules that :data:`LAYERS` does not place."""
    return sorted(m for m in modules(package) if rank(m) is None)


def violations(edges: dict[str, set[str]]) -> list[str]:
    """One line per import that breaks the layer rule (modules without a layer are :func:`unlayered`'s)."""
    out = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            here, there = rank(module), rank(target)
            if here is None or there is None:
                continue
            if there > here:
                out.append(f"{module} ({layer(module)}) imports {target} ({layer(target)}), a higher layer")
            elif layer(module) == "api" and layer(target) == "app" and target not in API_MAY_IMPORT_FROM_APP:
                out.append(f"{module} imports {target}: the API may use only {sorted(API_MAY_IMPORT_FROM_APP)} of app")
    return out


def optuna_below_study(package: Path) -> list[str]:
    """One line per module under the study layer that imports optuna or one of its packages."""
    floor = list(LAYERS).index(NO_OPTUNA_BELOW)
    return [
        f"{module} ({layer(module)}) imports {name}"
        for module, names in sorted(third_party(package).items())
        if (rank(module) if rank(module) is not None else floor) < floor
        for name in sorted(names)
        if name == "optuna" or name.startswith("optuna_")
    ]


def test_no_import_cycle():
    found = cycles(imports(PACKAGE))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_module_has_a_layer():
    missing = unlayered(PACKAGE)
    assert not missing, f"give each module a layer in tests/test_layers.py LAYERS: {missing}"


def test_each_module_imports_only_its_layer_or_lower():
    found = violations(imports(PACKAGE))
    assert not found, "\n".join(found)


def test_no_module_below_the_study_layer_imports_optuna():
    found = optuna_below_study(PACKAGE)
    assert not found, "\n".join(found)


def test_the_checks_find_lazy_cycles_upward_imports_and_unplaced_modules(tmp_path):
    """The checks themselves, on a small package of their own: each finds what it is there to find."""
    pkg = tmp_path / "fnnp_opt"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "errors.py": "def f():\n    from fnnp_opt import models  # lazy, and upward\n",
        "models.py": "import optuna.trial\nfrom fnnp_opt.errors import f\n",
        "stray.py": "from . import errors\n",
        "api.py": "from fnnp_opt.pipeline import run\nfrom fnnp_opt.config import RunConfig\nimport fnnp_opt\n",
        "pipeline.py": "",
        "config.py": "",
        "cli/__init__.py": "from .render import show\n",
        "cli/render.py": "from fnnp_opt.api import x\n",
    }
    (pkg / "cli").mkdir()
    for name, text in files.items():
        (pkg / name).write_text(text)
    edges = imports(pkg)
    assert edges["stray"] == {"errors"}  # a relative import
    assert edges["cli"] == {"cli.render"} and edges["cli.render"] == {"api"}
    assert edges["api"] == {"pipeline", "config", "__init__"}
    assert cycles(edges) == [["errors", "models"]]
    assert unlayered(pkg) == ["stray"]
    found = violations(edges)
    assert found == [
        "api imports pipeline: the API may use only ['config'] of app",
        "errors (leaves) imports models (core), a higher layer",
    ]
    assert optuna_below_study(pkg) == ["models (core) imports optuna"]
