"""What optuna-dashboard shows of a study: its objectives' names, a note on how it was made, and its artifacts.

* Metric names (``Study.set_metric_names``): the score, e.g. "ABN accuracy", and in the Pareto mode the cost
  ("FLOPs ratio" or "latency ratio"), instead of "Objective 0".
* The study note (optuna-dashboard's notes, Markdown): the budget, the search space and the data it was made with.
* Serving: `fnnp-opt dashboard` serves the storage and the study's artifact store (``fnnp_opt.artifacts``),
  so the delivered files and figures download from the dashboard.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable

import optuna

from fnnp_opt import optuna_private as P
from fnnp_opt import storage as St
from fnnp_opt.errors import StorageError

log = logging.getLogger(__name__)


def metric_names(score: str, pareto: bool, latency: bool) -> list[str]:
    """The study's objective names: ``score`` (e.g. "ABN accuracy"), then the cost in the Pareto mode."""
    if not pareto:
        return [score]
    return [score, "latency ratio (of the base)" if latency else "FLOPs ratio (of the base)"]


def describe(study: optuna.Study, names: list[str], note: str) -> None:
    """Name ``study``'s objectives and write its note, where they differ from what is stored."""
    if study.metric_names != names:
        with warnings.catch_warnings():  # experimental in Optuna, and stable in use since 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    from optuna_dashboard import save_note

    if P.stored_note(study) != note:
        save_note(study, note)


def study_note(
    *,
    model: str,
    dataset: str,
    budget: str,
    score: str,
    dims: list[dict],
    max_rate: float,
    search_images: int,
    calibration: str,
    sampler: str,
    n_trials: int,
    base_accuracy: float | None,
) -> str:
    """The study note, in Markdown: what the study searches, within which budget, scored how, on which data.

    ``dims``: the search space's dimensions as :meth:`SearchSpace.describe` gives them.
    """
    base = f" (the unpruned base: {base_accuracy:.4f})" if base_accuracy is not None else ""
    rows = "\n".join(f"| {d['param']} | {d['channels']} | {len(d['convs'])} |" for d in dims)
    return (
        f"## {model} on {dataset}\n\n"
        f"- **Budget**: {budget}\n"
        f"- **Score**: {score} on {search_images} held-out training images{base}; ABN calibrates on {calibration}\n"
        f"- **Search**: {sampler}, {n_trials} evaluated candidates; each ratio in [0, {max_rate}] "
        "(filters ranked by L1 norm)\n"
        f"- **Space**: {len(dims)} dimensions (channel groups)\n\n"
        "| dimension | channels | convs |\n|---|---|---|\n"
        f"{rows}\n\n"
        "The first trials are the baselines, marked by the user attribute `strategy`: uniform L1 (trial 0), then "
        "Torch-Pruning's global ranking (`global`) and per-layer sensitivity (`sensitivity`) where the study queues "
        "them. Delivered files and figures: the winning trial's artifacts.\n"
    )


def find_store(url: str, storage, artifact_dir: str | Path | None) -> Path | None:
    """The artifact store to serve for ``storage``: ``artifact_dir``, else the one its studies recorded (where it
    is now, :func:`fnnp_opt.artifacts.served_dir`), else the default beside the storage when it exists; None when
    there is none yet."""
    from fnnp_opt import artifacts as A

    if artifact_dir is not None:
        return Path(artifact_dir)
    recorded: list[Path] = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.user_attrs.get(A.STORE_ATTR):
            where = A.served_dir(url, optuna.load_study(study_name=summary.study_name, storage=storage))
            if where not in recorded:
                recorded.append(where)
    if len(recorded) > 1:
        log.warning(
            "studies in this storage keep artifacts in %s; serving %s (pass --artifact-dir)",
            [str(r) for r in recorded],
            recorded[0],
        )
    if recorded:
        return recorded[0]
    default = A.default_dir(url)
    return default if default.is_dir() else None


def serve_dashboard(
    url: str,
    host: str,
    port: int,
    announce: Callable[[str], None] = lambda u: None,
    artifact_dir: str | Path | None = None,
) -> None:
    """Serve optuna-dashboard for an existing storage and its artifact store; blocks until interrupted (the storage
    is closed then)."""
    St.check_exists(url)
    with St.opened(url) as storage:
        _serve(url, storage, host, port, announce, artifact_dir)


def _serve(
    url: str, storage, host: str, port: int, announce: Callable[[str], None], artifact_dir: str | Path | None
) -> None:
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    folder = find_store(url, storage, artifact_dir)
    if folder is not None and folder.exists() and not folder.is_dir():
        raise StorageError(f"artifact store {folder} is a file, not a folder; pass another --artifact-dir")
    if folder is not None and not folder.exists():
        if artifact_dir is not None:
            raise StorageError(
                f"artifact store {folder} does not exist; pass the --artifact-dir the run used, or leave "
                "--artifact-dir out (the studies record theirs)"
            )
        log.warning("the artifact store %s that the studies recorded is gone; serving them without artifacts", folder)
        folder = None
    store = FileSystemArtifactStore(folder) if folder is not None else None
    try:
        server = optuna_dashboard.wsgi(storage, artifact_store=store)
        from wsgiref.simple_server import make_server

        httpd = make_server(host, port, server)
    except OSError as exc:
        raise StorageError(f"cannot serve on {host}:{port} ({exc.strerror}); pass another --port or --host") from None
    announce(f"http://{host}:{port}/" + (f" (artifacts: {folder})" if folder is not None else ""))
    with httpd:
        httpd.serve_forever()
