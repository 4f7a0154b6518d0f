"""``--workers N``: N search processes on this machine, sharing the study through its storage.

The parent spawns the workers, shows their progress from the study, and waits for them; each worker runs the job
it is handed (the app's plain search of its share, :func:`fnnp_opt.pipeline.search_share`) with ``cores // N``
threads, and the study's slots
(:class:`fnnp_opt.storage.Slots`) stop them at exactly ``n_trials`` evaluated candidates. The parent then fine-tunes
the winner as a one-process run does.

Stopping:

* **Ctrl-C** reaches every process of the terminal's group. A worker fails its trial in flight (Optuna marks it
  FAIL) and exits with 130, and so on SIGTERM; the parent forwards its own SIGINT (for a SIGTERM, or a ``kill
  -INT`` of the parent alone), waits up to :data:`STOP_S` for the workers, and kills one that hangs. A resume
  continues the study. A Ctrl-C in the few milliseconds while the parent starts the workers is lost (press it
  again): the workers must start ignoring it, and the parent shares that setting while it starts them.
* A worker is spawned ignoring SIGINT and takes it once its handler is in place, the first thing it does (this
  module imports nothing heavy, and the job arrives pickled, unpickled only then), so a Ctrl-C during its start-up
  cannot print a traceback half-way through an import; the parent repeats its SIGINT until the worker has taken
  it. Later ones are ignored while it stops.
* **kill -9 of the parent**: each worker watches its parent and stops as on Ctrl-C, instead of searching on alone.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the parent imports these anyway; a worker imports them after its SIGINT handler is in place
    import optuna

    from fnnp_opt.config import RunConfig
    from fnnp_opt.progress import Progress
    from fnnp_opt.optimize import SearchReport

log = logging.getLogger(__name__)

STOP_S = 30.0  # after Ctrl-C, how long a worker may take to fail its trial and exit before it is killed
WATCH_S = 1.0  # how often a worker looks whether its parent lives


def search_parallel(
    cfg: RunConfig, study: optuna.Study, job: Callable[[RunConfig], object], progress: Progress | None = None
) -> SearchReport:
    """Run ``cfg.workers`` search processes on this machine against ``study``'s storage, wait for them, and report
    what they did (the trials made while they ran).

    Each process calls ``job(cfg)``: a module-level function (it travels pickled, by name) that searches this
    process's share of the study."""
    import multiprocessing as mp

    from optuna.trial import TrialState

    from fnnp_opt import optimize as S
    from fnnp_opt.progress import NULL

    progress = progress or NULL
    assert cfg.workers is not None  # resolved by the caller (RunConfig.resolved_workers)
    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    work = pickle.dumps(job)  # unpickled in the worker once its SIGINT handler is in place: it imports the app
    before = {t.number for t in study.trials if t.state is not TrialState.WAITING}  # queued ones run now
    level = logging.getLogger("fnnp_opt").getEffectiveLevel()
    failures = ctx.SimpleQueue()  # (worker, exit code, one line) of each worker that stopped on an error
    # not daemons: a worker's image-folder DataLoader starts processes of its own, which a daemon may not
    procs = [
        ctx.Process(target=_worker, args=(cfg, work, threads, level, os.getpid(), k, failures))
        for k in range(cfg.workers)
    ]
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: the workers start ignoring it
        try:
            for proc in procs:
                proc.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        with progress.task(f"search ({cfg.workers} workers)", cfg.n_trials) as advance:
            shown = 0
            while any(proc.is_alive() for proc in procs):
                now = len(S.evaluated(study))
                advance(now - shown)
                shown = now
                time.sleep(1.0)
    finally:
        _stop(procs)
    if any(proc.exitcode == 130 for proc in procs):  # stopped by a signal the parent did not get (started ignoring
        raise KeyboardInterrupt  # SIGINT, as a background job of a script does): the run was interrupted too
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    dead = [i for i, proc in enumerate(procs) if proc.exitcode != 0 and i not in {k for k, _, _ in errors}]
    if dead:  # killed, or died in a way that left no message (out of memory)
        log.warning("search workers %s exited with codes %s", dead, [procs[i].exitcode for i in dead])
    report = S.SearchReport(total_evaluated=len(S.evaluated(study)))
    if errors:
        _report_failures(errors, cfg.workers, report.total_evaluated, cfg.n_trials)
    for t in study.get_trials(deepcopy=False):
        if t.number not in before:
            report.count(t)
    return report


def _report_failures(errors: list[tuple[int, int, str]], workers: int, evaluated: int, n_trials: int) -> None:
    """Raise the first worker error when the search stopped short of ``n_trials`` (the others' are logged); log them
    all when the other workers finished the search anyway."""
    from fnnp_opt.errors import FnnpError

    errors = sorted(errors)
    for k, _, line in errors[1:] if evaluated < n_trials else errors:
        log.warning("search worker %d of %d stopped: %s", k + 1, workers, line)
    if evaluated >= n_trials:
        return
    k, code, line = errors[0]
    also = f"; {len(errors) - 1} more stopped on errors, logged above" if len(errors) > 1 else ""
    error = FnnpError(
        f"search worker {k + 1} of {workers} stopped ({evaluated} of {n_trials} candidates evaluated{also}): {line}"
    )
    error.exit_code = code
    raise error


def _ignore(signum, frame) -> None:
    """A handler that does nothing. Setting SIG_IGN instead would make Python raise OSError ("Signal 15 ignored due
    to race condition") for a signal that arrived just before and was not yet handled."""


def _stop(procs: list) -> None:
    """Stop the workers still alive as Ctrl-C does (each fails its trial and exits), killing one that takes more
    than :data:`STOP_S`; then reap them all. Another Ctrl-C or SIGTERM meanwhile is ignored: it would cut this short
    and leave the workers to be killed mid-clean-up."""
    procs = [proc for proc in procs if proc.pid is not None]  # a Ctrl-C may come before the last one started
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        end = time.monotonic() + STOP_S
        while any(proc.is_alive() for proc in procs) and time.monotonic() < end:
            for proc in procs:  # again and again: a worker still starting up ignores it until its handler is in
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGINT)
            time.sleep(0.2)
        for proc in procs:
            if proc.is_alive():
                log.warning("search worker %d did not stop in %.0f s; killing it", proc.pid, STOP_S)
                proc.kill()
            proc.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(cfg: RunConfig, job: bytes, threads: int, log_level: int, parent: int, index: int, failures) -> None:
    """One search process (see the module docstring): runs ``job`` (a pickled function of ``cfg``); logs its trials
    as plain lines at the parent's ``log_level``; exits with 130 when stopped. An error ends it with exit code 1 (or
    the error's), after putting ``(index, exit code, the error in one line)`` on ``failures`` for the parent to
    report."""

    def stop(signum, frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # one is enough: more would cut the trial's clean-up short
            signal.signal(sig, _ignore)  # not SIG_IGN: Python raises on one already caught but not yet handled
        raise KeyboardInterrupt

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        os.kill(os.getpid(), signal.SIGINT)

    try:
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)  # `timeout`, Slurm or `docker stop` signal the whole group
        threading.Thread(target=watch_parent, name="fnnp-watch-parent", daemon=True).start()
        import optuna
        import torch

        from fnnp_opt.progress import LOG_LINE
        from fnnp_opt.redact import RedactingFilter

        handler = logging.StreamHandler()
        handler.addFilter(RedactingFilter())
        logging.basicConfig(level=logging.WARNING, format=LOG_LINE, handlers=[handler], force=True)
        logging.getLogger("fnnp_opt").setLevel(log_level)
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        pickle.loads(job)(cfg)  # a function of this package, pickled by the parent
    except KeyboardInterrupt:  # the parent reports it
        raise SystemExit(130) from None
    except Exception as exc:  # the parent reports it, as the error it is
        from fnnp_opt.errors import FnnpError, describe

        log.debug("search worker %d stopped", index + 1, exc_info=True)
        code = exc.exit_code if isinstance(exc, FnnpError) else 1
        failures.put((index, code, describe(exc)))
        raise SystemExit(code) from None
