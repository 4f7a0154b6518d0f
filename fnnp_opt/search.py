"""The Optuna study: storage, samplers, the per-trial objective, resume and fault tolerance.

A trial suggests one ratio per searchable group, prunes a copy of the base model,
counts its FLOPs with thop and, when the count lies in the budget window, scores it
with adaptive-BN evaluation on the held-out search split. Candidates outside the
window are rejected before any evaluation (``TrialPruned``, no value, so a rejected
trial can never look like the best one). ``n_trials`` counts evaluated candidates.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from fnnp_opt.config import Sampler
from fnnp_opt.data import Batch
from fnnp_opt.errors import StorageError
from fnnp_opt.evaluate import NonFiniteError, accuracy, calibrate_bn
from fnnp_opt.flops import Budget, count, human
from fnnp_opt.progress import NULL, Progress
from fnnp_opt.prune import Pruner
from fnnp_opt.space import SearchSpace

log = logging.getLogger(__name__)

HEARTBEAT_S = 2  # how often a running trial proves it is alive
GRACE_S = 8  # a RUNNING trial silent for longer is failed and retried
MAX_RETRY = 3  # retries of a trial whose worker died


@dataclass
class Evaluator:
    """What every trial needs, prepared once per study."""

    pruner: Pruner
    space: SearchSpace
    budget: Budget
    calibration: list[Batch]  # ABN batches from the train part
    search: list[Batch]  # batches of the held-out search split
    input_shape: tuple[int, ...]  # (1, C, H, W) for FLOPs counting
    device: str = "cpu"
    progress: Progress = NULL

    def __call__(self, trial: optuna.Trial) -> float:
        clock = _Stopwatch()
        with clock("strategy"):
            ratios = self.space.suggest(trial)
        with clock("prune"):
            model = self.pruner.prune(ratios)
        with clock("flops"):
            macs, params = count(model, self.input_shape)
        with clock("storage"):
            trial.set_user_attr("flops", macs)
            feasible = self.budget.contains(macs)
            trial.set_user_attr("feasible", feasible)
            if not feasible:
                trial.set_user_attr(
                    "reject_reason",
                    f"FLOPs {human(macs)} ({macs / self.budget.base:.1%}) outside "
                    f"[{human(self.budget.low)}, {human(self.budget.high)}]",
                )
                raise optuna.TrialPruned(trial.user_attrs["reject_reason"])

        model.to(self.device)
        try:
            with clock("pbn_score"):
                pbn = accuracy(model, self.search, self.device)
            with clock("abn_calibrate"):
                calibrate_bn(model, self.calibration, self.device, progress=self.progress)
            with clock("abn_score"):
                abn = accuracy(model, self.search, self.device)
        except NonFiniteError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        with clock("storage"):
            trial.set_user_attr("flops_ratio", round(macs / self.budget.base, 5))
            trial.set_user_attr("params", params)
            trial.set_user_attr(
                "channels",
                {d.name: d.channels - Pruner.removed_count(ratios[d.root], d.channels) for d in self.space.dims},
            )
            trial.set_user_attr("pbn_accuracy", pbn)
        trial.set_user_attr("timings", {k: round(v, 4) for k, v in clock.items()})
        log.info(
            "trial %d: ABN %.4f  PBN %.4f  FLOPs %s (%.1f%%)",
            trial.number,
            abn,
            pbn,
            human(macs),
            100 * macs / self.budget.base,
        )
        return abn


class _Stopwatch(dict):
    """Seconds per stage, summed over ``with stopwatch(stage):`` blocks."""

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - t


# --------------------------------------------------------------------------- storage


def open_storage(url: str) -> RDBStorage:
    """Open an Optuna RDB storage with heartbeats, so a killed worker's trial is failed and retried."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            if path.parent.exists() and not path.parent.is_dir():
                raise StorageError(f"storage {url}: {path.parent} is not a folder; pass another --storage")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"storage {url} could not be opened: {exc}; pass another --storage") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            )
        except Exception as exc:  # SQLAlchemy raises many types for bad URLs and dead servers
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StorageError(
                f"storage {url!r} could not be opened ({type(exc).__name__}: {msg}); "
                "pass a reachable URL such as sqlite:///studies/fnnp.db or postgresql://user@127.0.0.1/db"
            ) from None


def existing_study(storage: RDBStorage, name: str) -> optuna.Study | None:
    """Load study ``name`` when it exists in ``storage``, else None (creates nothing)."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())


def check_fingerprint(study: optuna.Study, fingerprint: dict[str, str], storage_url: str) -> None:
    """Raise :class:`StorageError` when a stored study was made with another model, data or space."""
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        raise StorageError(
            f"study {study.study_name!r} in {storage_url} was not created by fnnp-opt; pass another --study-name"
        )
    diff = [f"{k}: stored {stored.get(k)!r}, now {v!r}" for k, v in fingerprint.items() if stored.get(k) != v]
    if diff:
        raise StorageError(
            f"study {study.study_name!r} in {storage_url} was created with different settings ("
            + "; ".join(diff)
            + "); pass a new --study-name, or the original options to resume it"
        )


def create_study(
    storage: RDBStorage, name: str, fingerprint: dict, config: dict, space: SearchSpace, budget: Budget
) -> optuna.Study:
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler()
    )
    study.set_user_attr("fingerprint", fingerprint)
    study.set_user_attr("config", config)
    study.set_user_attr("space", space.describe())
    study.set_user_attr(
        "budget", {"base": budget.base, "target": budget.target, "low": budget.low, "high": budget.high}
    )
    return study


# --------------------------------------------------------------------------- sampling


def session_seed(seed: int, trials_so_far: int) -> int:
    """A sampler seed for this session: a resumed study continues with fresh draws."""
    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def make_sampler(kind: Sampler, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind is Sampler.random:
            return optuna.samplers.RandomSampler(seed=seed)
        if kind is Sampler.tpe:
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if kind is Sampler.cmaes:
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if kind is Sampler.qmc:
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False
            )
        if kind is Sampler.gp:
            return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(kind)


def recover_dead_trials(study: optuna.Study) -> int:
    """Fail the RUNNING trials that never sent a heartbeat, and queue them again; return how many.

    Optuna's own check (run before every trial) finds a trial whose heartbeat went
    stale. A worker killed between creating a trial and its first heartbeat leaves a
    trial with no heartbeat at all, which that check never sees; such a trial older
    than the grace period is dead too (a live one records its first heartbeat at once).
    """
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    if not isinstance(storage, RDBStorage):
        return 0
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    old = [t for t in running if t.datetime_start and (datetime.now() - t.datetime_start).total_seconds() > GRACE_S]
    if not old:
        return 0
    from optuna.storages._rdb.models import TrialHeartbeatModel
    from sqlalchemy import select

    with storage.engine.connect() as conn:
        beating = set(conn.execute(select(TrialHeartbeatModel.trial_id)).scalars())
    retry = storage.get_heartbeat_stale_trial_callback()
    failed = 0
    for t in old:
        if t._trial_id in beating:
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished after all
        failed += 1
        log.warning("trial %d never sent a heartbeat; marked failed", t.number)
        if retry is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry(study, study._storage.get_trial(t._trial_id))
    return failed


def _fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's check for trials whose heartbeat went stale (it also runs before each trial)."""
    if isinstance(getattr(study._storage, "_backend", study._storage), RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


@dataclass
class SearchReport:
    """What one session of the search did."""

    evaluated: int = 0  # candidates scored in this session
    rejected: int = 0  # candidates outside the window in this session
    failed: int = 0  # trials that failed (NaN/inf) in this session
    total_evaluated: int = 0  # COMPLETE trials in the study after this session
    stopped_early: bool = False  # max_draws was hit before n_trials


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    max_draws: int,
    progress: Progress = NULL,
) -> SearchReport:
    """Run trials until the study holds ``n_trials`` evaluated candidates."""
    report = SearchReport()
    _fail_stale_trials(study)  # also when no trial runs in this session
    recover_dead_trials(study)
    last_check = time.monotonic()
    done = len(completed(study))
    if done >= n_trials:
        report.total_evaluated = done
        return report

    with progress.task("search", n_trials) as advance:
        advance(done)

        def callback(study: optuna.Study, trial: FrozenTrial) -> None:
            nonlocal done, last_check
            if trial.state is TrialState.COMPLETE:
                report.evaluated += 1
                done += 1
                advance(1)
            elif trial.state is TrialState.PRUNED:
                report.rejected += 1
            elif trial.state is TrialState.FAIL:
                report.failed += 1
                log.warning("trial %d failed: %s", trial.number, trial.user_attrs.get("fail_reason", "see --debug"))
            if time.monotonic() - last_check > GRACE_S:  # a heartbeat-less trial can only age into death
                recover_dead_trials(study)
                last_check = time.monotonic()
            if done >= n_trials:
                study.stop()
            elif report.rejected >= max_draws:
                report.stopped_early = True
                study.stop()

        study.optimize(objective, callbacks=[callback], catch=(NonFiniteError,), gc_after_trial=False)
    report.total_evaluated = len(completed(study))
    return report


def serve_dashboard(url: str, host: str, port: int, announce: Callable[[str], None] = lambda u: None) -> None:
    """Serve optuna-dashboard for an existing storage; blocks until interrupted."""
    import optuna_dashboard

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise StorageError(f"storage {url} does not exist yet; run `fnnp-opt run` first or pass --storage")
    storage = open_storage(url)
    try:
        server = optuna_dashboard.wsgi(storage)
        from wsgiref.simple_server import make_server

        httpd = make_server(host, port, server)
    except OSError as exc:
        raise StorageError(f"cannot serve on {host}:{port} ({exc.strerror}); pass another --port or --host") from None
    announce(f"http://{host}:{port}/")
    with httpd:
        httpd.serve_forever()
