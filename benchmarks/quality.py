"""Is the searched network worth the search? fnnp-opt's methods against their baselines.

For a shipped base (``--model``), at one FLOPs budget, for each seed:

* N random candidates are drawn in the budget window (the same draws as `correlate`'s for
  that seed and budget), each scored on the search split with its stale statistics (PBN), with
  adaptive BN (100 calibration batches) and, for the methods that use it, with ``abn-ft``
  (ABN, then ``--score-steps`` SGD steps on a copy: the score of `fnnp-opt run --score abn-ft`).
  The scores land in ``candidates.jsonl`` as they are computed, so nothing is scored twice;
* every method's network gets the same fine-tune (``--epochs`` over the train part, that seed,
  from ABN statistics, with ``--distill`` when asked) and is tested once on the test set,
  which nothing here chooses with:
  - ``eagleeye``: the best ABN score of the N (the paper: random search + ABN);
  - ``rerank``: the top K by ABN re-scored with abn-ft, the best of those (`--rerank K`);
  - ``abn_ft``: the best abn-ft score of the N (`--score abn-ft`, random search);
  - ``pbn_winner``: the best stale-statistics score of the same N;
  - ``random``: one of the N, picked by the seed without looking at scores;
  - ``uniform``: the same ratio in every group, at the budget's target (uniform L1);
  - ``uniform_top``: uniform L1 at the top of the window (target + tolerance), the most FLOPs any
    candidate may keep: a searched winner that beats it does not owe its margin to FLOPs;
  - ``eagleeye_run``, ``rerank_run`` and ``abn_ft_run``: the same as `fnnp-opt run` does them
    (the default, ``--rerank K``, ``--score abn-ft``), where uniform L1 is trial 0 of every study
    and so one more candidate in the pool (index -1 of ``candidates.jsonl``);
  - ``rerank_u``: a variant tried and not adopted in `run`: the rerank with uniform L1 re-scored
    beside the top K;
  - ``base``: the unpruned base, fine-tuned the same way.

A method whose pick was already fine-tuned under the same seed (the uniform strategy, or a candidate
another method picked) reuses that row's test accuracy, marked ``reused``: a fine-tune is a function
of the network and the seed (single-threaded CPU; rows that picked the same candidate agree to
every digit).

Each row records the method's search cost: the wall seconds of the scores it used and how many
ABN and short fine-tune evaluations it took. Rows land one at a time, so a run resumes.

    python benchmarks/quality.py run --model resnet20 --flops 0.25 --seeds 0,1,2   # appends docs/quality/*.jsonl
    python benchmarks/quality.py report                                          # docs/quality.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

OUT = Path(__file__).parents[1] / "docs" / "quality"
STUDIES = Path(__file__).parents[1] / "runs" / "quality-studies"  # the sampled methods' own studies
METHODS = (
    "eagleeye",
    "eagleeye_run",
    "rerank",
    "rerank_run",
    "abn_ft",
    "abn_ft_run",
    "rerank_u",
    "tpe_ft_run",
    "cmaes_ft_run",
    "pbn_winner",
    "random",
    "uniform",
    "uniform_top",
    "run_abn",
    "run_abn_ug",
    "run_rerank",
    "run_rerank_ug",
    "tp_global",
    "tp_lamp",
    "tp_taylor",
    "sensitivity",
    "uniform_eq",
    "best_baseline",
    "base",
)
UNIFORM = -1  # the uniform strategy's index in candidates.jsonl
UNIFORM_TOP = -2  # the key of uniform L1 at the window's top among a seed's fine-tuned strategies (not scored)
GLOBAL, SENSITIVITY = -3, -4  # the study's other baselines (at the budget's target) in candidates.jsonl
BASELINE_INDEX = {"global": GLOBAL, "sensitivity": SENSITIVITY}
EQUAL = {"tp_global": "magnitude", "tp_lamp": "lamp", "tp_taylor": "taylor", "sensitivity": None, "uniform_eq": None}
DEFAULT_RUN = "run_rerank"  # the method that is `fnnp-opt run` with its defaults; EQUAL rows match its FLOPs
SAMPLERS = {"tpe_ft_run": "tpe", "cmaes_ft_run": "cmaes"}  # methods that search with a sampler of their own
VIRTUAL = ("best_baseline",)  # rows the report derives from others: never run
DEFAULT_METHODS = [m for m in METHODS if m not in SAMPLERS and m not in VIRTUAL]  # sampled ones: with --methods
LABELS = {
    "eagleeye": "EagleEye winner (best ABN of N)",
    "rerank": "rerank: top K by ABN re-scored with abn-ft",
    "abn_ft": "best abn-ft of N (--score abn-ft)",
    "eagleeye_run": "--rerank 0 --baselines uniform (the default before baselines): best ABN of N and uniform L1",
    "rerank_run": "--rerank K as run does it: top K by ABN of N and uniform L1",
    "abn_ft_run": "--score abn-ft as run does it: best abn-ft of N and uniform L1",
    "rerank_u": "tried, not in run: top K by ABN and uniform L1, re-scored with abn-ft",
    "tpe_ft_run": "TPE with --fit-budget and --score abn-ft: best abn-ft of uniform L1 and N",
    "cmaes_ft_run": "CMA-ES with --fit-budget and --score abn-ft: best abn-ft of uniform L1 and N",
    "pbn_winner": "PBN winner (best stale-BN score of N)",
    "random": "random candidate in the window",
    "uniform": "uniform L1 (same ratio everywhere)",
    "uniform_top": "uniform L1 at the window's top (the most FLOPs a candidate may keep)",
    "run_abn": "run with baselines, --rerank 0: best ABN of N, uniform L1, global and sensitivity",
    "run_rerank": "fnnp-opt run, new default: top K by ABN of N, plus uniform L1, global and sensitivity, by abn-ft",
    "run_abn_ug": "run with uniform L1 and global, --rerank 0: best ABN of N, uniform L1 and global",
    "run_rerank_ug": "the same with uniform L1 and global only (no sensitivity curves)",
    "tp_global": "Torch-Pruning global ranking (magnitude), at the default's FLOPs",
    "tp_lamp": "Torch-Pruning global ranking (LAMP), at the default's FLOPs",
    "tp_taylor": "Torch-Pruning global ranking (Taylor, 8 gradient batches), at the default's FLOPs",
    "sensitivity": "per-layer sensitivity (FastNAS-style, ABN), at the default's FLOPs",
    "uniform_eq": "uniform L1 at the default's FLOPs",
    "best_baseline": "the best baseline at the default's FLOPs (per seed: global, LAMP, Taylor, sensitivity, uniform)",
    "base": "unpruned base, same fine-tune",
}


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    for r in rows:
        r.setdefault("model", "resnet20")  # rows written before --model existed
        r.setdefault("distill", False)
    return rows


def _config(args, seed: int, **flags):
    """The run settings every row shares (``flags`` adds to them: a sampled method's search)."""
    from fnnp_opt.config import resolve

    return resolve(
        model=args.model,
        flops=args.flops,
        max_rate=args.max_rate,
        seed=seed,
        score_steps=args.score_steps,
        device="cpu",
        abn_batches=100,  # the paper's calibration, as every row was measured
        **flags,
    )


def _finetune_test(p, cfg, model, args, seed: int) -> float:
    """The one recipe every method gets: from ABN statistics, ``epochs`` over the train part; test accuracy."""
    from fnnp_opt.evaluate import accuracy, calibrate_bn
    from fnnp_opt.training import Distill, FitConfig, fit

    calibrate_bn(model, p.splits.calibration, p.device)
    distill = Distill(cfg.distill_temperature, cfg.distill_weight) if args.distill else None
    fit(
        model,
        p.splits.train,
        FitConfig(args.epochs, cfg.lr, cfg.batch_size, weight_decay=cfg.weight_decay, seed=seed),
        augment=p.splits.augment,
        device=p.device,
        teacher=p.model if distill else None,
        distill=distill,
    )
    return accuracy(model, p.splits.test_batches(cfg.eval_batch_size), p.device)


def _scores(args, p, cfg, seed: int, candidates: list, need_ft: set[int], fixed: dict[int, dict]) -> dict[int, dict]:
    """PBN, ABN (every candidate) and abn-ft (those in ``need_ft``) of the candidates, cached in candidates.jsonl.

    ``fixed`` holds the study's baselines by their negative index: ``UNIFORM`` (-1) is uniform L1, ``GLOBAL`` and
    ``SENSITIVITY`` the other two."""
    from fnnp_opt.evaluate import abn_accuracy, accuracy
    from fnnp_opt.pipeline import make_scorer
    from fnnp_opt.score import abn_ft_key, rescore

    path = Path(args.out) / "candidates.jsonl"
    key = abn_ft_key(args.score_steps)
    ident = {"model": args.model, "flops_budget": args.flops, "seed": seed, "max_rate": args.max_rate}
    cached: dict[int, dict] = {}
    for r in _rows(path):
        if all(r.get(k) == v for k, v in ident.items()) and r["index"] < len(candidates):
            cached.setdefault(r["index"], {}).update(r)
    search = p.splits.search_batches(cfg.eval_batch_size)
    scorer = None
    for i, ratios in [*enumerate(candidates), *fixed.items()]:
        row = cached.setdefault(i, {**ident, "index": i})
        fresh = {}
        if "abn" not in row:
            model = p.pruner.prune(ratios)
            t = time.perf_counter()
            fresh["pbn"] = accuracy(model, search, p.device)
            fresh["pbn_s"] = time.perf_counter() - t
            t = time.perf_counter()
            fresh["abn"] = abn_accuracy(model, p.splits.calibration, search, p.device)
            fresh["abn_s"] = time.perf_counter() - t
        if i in need_ft and key not in row:
            scorer = scorer or make_scorer(p)
            t = time.perf_counter()
            fresh[key] = rescore(p.pruner.prune(ratios), p.splits.calibration, scorer)
            fresh[f"{key}_s"] = time.perf_counter() - t
        if fresh:
            row.update(fresh)
            with open(path, "a") as fh:
                fh.write(json.dumps({**ident, "index": i, **fresh}) + "\n")
    return cached


BASELINES = (UNIFORM, GLOBAL, SENSITIVITY)  # the baselines every study queues first, in queue order


def _rerank_pool(scores: dict[int, dict], drawn: list[int], k: int, baselines: tuple = BASELINES) -> list[int]:
    """What `fnnp-opt run --rerank K` re-scores in a study with ``baselines``: the top K by ABN of every evaluated
    trial, and every baseline."""
    pool = [*baselines, *drawn]
    top = sorted(pool, key=lambda i: (-scores[i]["abn"], baselines.index(i) if i < 0 else 3 + i))[:k]
    return [*baselines, *[i for i in top if i not in baselines]]


def _picks(
    args, seed: int, scores: dict[int, dict], n: int, methods: list[str], found: tuple[float, int] = (0.0, 0)
) -> dict[str, tuple[int, dict]]:
    """Each of ``methods``' candidate index and its search cost (seconds, ABN and short fine-tune evaluations).

    The ``*_run`` methods choose from what `fnnp-opt run` has: the N candidates and uniform L1 (trial 0 of every
    study, index ``UNIFORM``)."""
    import numpy as np

    from fnnp_opt.score import abn_ft_key

    key = abn_ft_key(args.score_steps)
    drawn = list(range(n))
    found_s, found_n = found  # computing the baselines: seconds and evaluations (sensitivity's curves)

    def by(pool, k):  # best first; ties go to the earlier trial, and uniform L1 is trial 0
        return sorted(pool, key=lambda i: (-scores[i][k], i))

    def seconds(pool, k):  # rescore() calibrates too, so an abn-ft's seconds include that candidate's ABN
        return sum(scores[i][f"{k}_s"] for i in pool)

    def cost(search_s, abn_evals, ft_evals):
        return {"search_s": search_s, "abn_evals": abn_evals, "ft_evals": ft_evals}

    out = {}
    for m in methods:
        pool = [UNIFORM, *drawn] if m.endswith("_run") else drawn
        if m.removesuffix("_run") == "eagleeye":
            out[m] = by(pool, "abn")[0], cost(seconds(pool, "abn"), len(pool), 0)
        elif m.removesuffix("_run") == "rerank":
            top = by(pool, "abn")[: args.rerank]
            out[m] = by(top, key)[0], cost(seconds(pool, "abn") + seconds(top, key), len(pool), len(top))
        elif m.removesuffix("_run") == "abn_ft":
            out[m] = by(pool, key)[0], cost(seconds(pool, key), len(pool), len(pool))
        elif m == "rerank_u":
            top = [UNIFORM, *by(drawn, "abn")[: args.rerank]]
            out[m] = by(top, key)[0], cost(seconds(drawn, "abn") + seconds(top, key), n, len(top))
        elif m in ("run_abn", "run_abn_ug"):
            pool = [*BASELINES, *drawn] if m == "run_abn" else [UNIFORM, GLOBAL, *drawn]
            extra_s, extra_n = (found_s, found_n) if m == "run_abn" else (0.0, 0)
            out[m] = by(pool, "abn")[0], cost(seconds(pool, "abn") + extra_s, len(pool) + extra_n, 0)
        elif m in ("run_rerank", "run_rerank_ug"):
            base = BASELINES if m == "run_rerank" else (UNIFORM, GLOBAL)
            pool = [*base, *drawn]
            top = _rerank_pool(scores, drawn, args.rerank, base)
            extra_s, extra_n = (found_s, found_n) if m == "run_rerank" else (0.0, 0)  # sensitivity's curves
            out[m] = by(top, key)[0], cost(seconds(pool, "abn") + seconds(top, key) + extra_s, len(pool) + extra_n, len(top))
        elif m == "pbn_winner":
            out[m] = by(drawn, "pbn")[0], cost(seconds(drawn, "pbn"), 0, 0)
        elif m == "random":
            out[m] = int(np.random.default_rng(seed).integers(n)), cost(0.0, 0, 0)
    return out


def _need_ft(args, scores: dict[int, dict], n: int, methods: list[str]) -> set[int]:
    """The candidates (``UNIFORM`` among them) whose abn-ft ``methods`` read."""
    drawn = list(range(n))
    top = sorted(drawn, key=lambda i: (-scores[i]["abn"], i))[: args.rerank]
    top_run = sorted([UNIFORM, *drawn], key=lambda i: (-scores[i]["abn"], i))[: args.rerank]
    need = {
        "abn_ft": set(drawn),
        "abn_ft_run": {UNIFORM, *drawn},
        "rerank": set(top),
        "rerank_run": set(top_run),
        "rerank_u": {UNIFORM, *top},
    }
    if "run_rerank" in methods:  # (only a seed scored with the baselines has their ABN)
        need["run_rerank"] = set(_rerank_pool(scores, drawn, args.rerank))
    if "run_rerank_ug" in methods:
        need["run_rerank_ug"] = set(_rerank_pool(scores, drawn, args.rerank, (UNIFORM, GLOBAL)))
    return set().union(*(need.get(m, set()) for m in methods))


def _sampled(args, seed: int, method: str) -> tuple[dict | None, dict, dict]:
    """``method``'s search, as `fnnp-opt run --sampler S --fit-budget --score abn-ft --n-trials N+1` does it (uniform
    L1 is trial 0): (the winner's ratios, or None when uniform L1 won; its trial's attributes; the search cost).

    The study lives in ``runs/quality-studies/`` (SQLite), so a killed search resumes; its cost is the evaluated
    trials' wall time, whichever session ran them."""
    import fnnp_opt.optimize as S
    import fnnp_opt.storage as St
    from fnnp_opt.pipeline import check_base, open_study, prepare, search, trial_ratios

    folder = STUDIES
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{args.model}-{args.flops}-seed{seed}-{method}-steps{args.score_steps}"
    cfg = _config(
        args,
        seed,
        score="abn-ft",
        sampler=SAMPLERS[method],
        fit_budget=True,
        n_trials=args.candidates + 1,
        storage=f"sqlite:///{folder / name}.db",
        study_name=name,
    )
    p = prepare(cfg)
    base_accuracy = check_base(p)
    with St.opened(cfg.resolved_storage()) as storage:
        study = open_study(cfg, p, storage, base_accuracy)
        report = search(cfg, p, study)
        trials = S.evaluated(study)
        best = S.best_trial(study)
        seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
        cost = {"search_s": seconds, "abn_evals": len(trials), "ft_evals": len(trials)}
        uniform = best.user_attrs.get("strategy") == "uniform"
        print(f"{method} seed {seed}: {report.total_evaluated} trials, trial {best.number} wins", flush=True)
        return None if uniform else trial_ratios(p.space, best), {"trial": best.number, "abn_ft": best.values[0]}, cost


def _baselines(args, p, cfg, seed: int) -> tuple[dict[int, dict], object, dict]:
    """The study's global and sensitivity baselines at the budget's target ({index: ratios}), the sensitivity
    curves (cached in baselines.jsonl: they cost groups x steps ABN evaluations) and their cost."""
    from fnnp_opt.baselines import GlobalRanking, Sensitivity, sensitivity_allocation, sensitivity_curves
    from fnnp_opt.evaluate import abn_accuracy

    path = Path(args.out) / "baselines.jsonl"
    # the curves are a function of the model, R, the grid and the data (calibration and search batches), the same
    # for every seed while the calibration seed is the default's
    ident = {"model": args.model, "max_rate": args.max_rate, "steps": args.sensitivity_steps}
    data = p.splits.fingerprint  # (the first rows, written before it was kept, were of these data too)
    stored = [r for r in _rows(path) if all(r.get(k) == v for k, v in ident.items()) and r.get("data", data) == data]
    if stored:
        c = stored[-1]
        curves = Sensitivity(c["ratios"], c["drops"], c["base"], c["evaluations"], c["seconds"])
    else:
        search = p.splits.search_batches(cfg.eval_batch_size)
        curves = sensitivity_curves(
            p.problem, lambda m: abn_accuracy(m, p.splits.calibration, search, p.device), args.sensitivity_steps
        )
        with open(path, "a") as fh:
            fh.write(json.dumps({**ident, "data": data, "seed": seed, **curves.__dict__}) + "\n")
    target = p.budget.target
    fixed = {
        GLOBAL: GlobalRanking(p.problem).allocation(target).ratios,
        SENSITIVITY: sensitivity_allocation(p.problem, curves, target).ratios,
    }
    return fixed, curves, {"seconds": curves.seconds, "evaluations": curves.evaluations}


def _equal(args, p, method: str, curves, target: float) -> dict:
    """``method``'s allocation (an ``EQUAL`` row) at ``target`` MACs: the default's FLOPs."""
    from fnnp_opt.baselines import GlobalRanking, sensitivity_allocation
    from fnnp_opt.constraints import uniform_ratio

    if method == "uniform_eq":
        return p.space.uniform(uniform_ratio(p.problem.uniform_cost, target, p.space.max_rate))
    if method == "sensitivity":
        return sensitivity_allocation(p.problem, curves, target).ratios
    grads = [b for _, b in zip(range(8), p.splits.calibration)] if EQUAL[method] == "taylor" else None
    return GlobalRanking(p.problem, EQUAL[method], grads).allocation(target).ratios


def run_seed(args, seed: int, todo: list[str]) -> list[dict]:
    import copy

    from fnnp_opt.correlate import candidate_seed, draw_candidates
    from fnnp_opt.evaluate import accuracy
    from fnnp_opt.flops import count
    from fnnp_opt.constraints import uniform_ratio
    from fnnp_opt.pipeline import prepare

    cfg = _config(args, seed)
    p = prepare(cfg)
    candidates = draw_candidates(p, args.candidates, seed=candidate_seed(seed, args.flops))
    n = len(candidates)
    uniform_strategy = p.uniform[0]
    fixed, curves, found = {UNIFORM: uniform_strategy}, None, {"seconds": 0.0, "evaluations": 0}
    if set(todo) & {"run_abn", "run_abn_ug", "run_rerank", "run_rerank_ug", *EQUAL}:
        more, curves, found = _baselines(args, p, cfg, seed)
        fixed |= more
    scores = _scores(args, p, cfg, seed, candidates, set(), fixed)  # ABN first: it decides the rest
    need_ft = _need_ft(args, scores, n, [*todo, DEFAULT_RUN] if set(todo) & set(EQUAL) else todo)
    if need_ft:
        scores = _scores(args, p, cfg, seed, candidates, need_ft, fixed)
    wanted = [*todo, DEFAULT_RUN] if set(todo) & set(EQUAL) else todo
    picks = _picks(args, seed, scores, n, wanted, (found["seconds"], found["evaluations"]))

    def strategy_of(index: int) -> dict:
        return fixed[index] if index < 0 else candidates[index]

    def network(ratios: dict) -> tuple:  # what a fine-tune is a function of (with the seed)
        return tuple(sorted(p.pruner.counts(ratios).items()))

    target = None
    if DEFAULT_RUN in picks:
        target = p.flops.macs(p.pruner.counts(strategy_of(picks[DEFAULT_RUN][0])))
    key = (args.model, args.flops, args.candidates, args.epochs, args.distill)
    earlier: dict[tuple, dict] = {}  # network -> the first row that fine-tuned it under this seed
    for r in _rows(Path(args.out) / "results.jsonl"):
        if _key(r) != key or r["seed"] != seed or r["method"] == "base":
            continue
        if "removed" in r:
            earlier.setdefault(tuple(sorted(r["removed"].items())), r)
        elif r["method"] == "uniform_top":
            top = round(uniform_ratio(p.problem.uniform_cost, p.budget.high, p.space.max_rate), 6)
            earlier.setdefault(network(p.space.uniform(top)), r)
        elif _strategy(r) is not None and "strategy" not in r:
            earlier.setdefault(network(strategy_of(_strategy(r))), r)
    rows = []
    for method in todo:
        found_trial = {}
        index = None
        if method in SAMPLERS:
            strategy, found_trial, cost = _sampled(args, seed, method)
            strategy = uniform_strategy if strategy is None else strategy
        elif method in picks:
            index, cost = picks[method]
            strategy = strategy_of(index)
        elif method in EQUAL:
            cost = {"search_s": 0.0, "abn_evals": 0, "ft_evals": 0}
            if method == "sensitivity":
                cost = {"search_s": found["seconds"], "abn_evals": found["evaluations"], "ft_evals": 0}
            strategy = _equal(args, p, method, curves, target)
        else:
            index, cost, strategy = None, {"search_s": 0.0, "abn_evals": 0, "ft_evals": 0}, uniform_strategy
            index = UNIFORM if method == "uniform" else None
        if method == "uniform_top":
            top = round(uniform_ratio(p.problem.uniform_cost, p.budget.high, p.space.max_rate), 6)
            strategy = p.space.uniform(top)
        t = time.perf_counter()
        model = copy.deepcopy(p.model) if method == "base" else p.pruner.prune(strategy)
        macs, params = count(model, p.input_shape)
        same = None if method == "base" else earlier.get(network(strategy))
        row = {
            "model": args.model,
            "flops_budget": args.flops,
            "seed": seed,
            "method": method,
            "candidates": args.candidates,
            "epochs": args.epochs,
            "distill": args.distill,
            "flops_ratio": macs / p.budget.base,
            "params": params,
            "test": same["test"] if same else _finetune_test(p, cfg, model, args, seed),
            "seconds": time.perf_counter() - t,
            **cost,
        }
        if method != "base":
            row["removed"] = dict(network(strategy))
        if same:
            row["reused"] = same["method"]
        if index is not None:
            row |= {"index": index, "abn": scores[index]["abn"], "pbn": scores[index].get("pbn")}
        if method in EQUAL and target is not None:
            row["target_flops_ratio"] = target / p.budget.base
        if found_trial:
            row |= {"sampler": SAMPLERS[method], "trial": found_trial["trial"], "abn_ft": found_trial["abn_ft"]}
            row["strategy"] = {k: round(v, 6) for k, v in strategy.items()}
        if method.removesuffix("_run") in ("rerank", "abn_ft") or method in ("rerank_u", "run_rerank", *SAMPLERS):
            row |= {"score_steps": args.score_steps, "rerank": args.rerank if "rerank" in method else None}
        if method == "uniform":
            row["ratio"] = max(uniform_strategy.values())
        if method == "uniform_top":
            row["ratio"] = top
        if method == "base":
            row["test_as_shipped"] = accuracy(p.model, p.splits.test_batches(cfg.eval_batch_size), p.device)
        rows.append(row)
        if "removed" in row:
            earlier.setdefault(tuple(sorted(row["removed"].items())), row)
        from _stamp import append_row

        append_row(Path(args.out) / "results.jsonl", row)  # a row lands whole or not at all, with its stamp
        print(f"{args.model} seed {seed} {method}: test {row['test']:.4f} ({row['flops_ratio']:.3f} FLOPs)", flush=True)
    return rows


def _strategy(r: dict) -> int | None:
    """The index of the strategy a row fine-tuned (``UNIFORM`` for uniform L1, ``UNIFORM_TOP`` at the window's top;
    None for the base)."""
    return {"uniform": UNIFORM, "uniform_top": UNIFORM_TOP}.get(r["method"], r.get("index"))


def _key(r: dict) -> tuple:
    return (r["model"], r["flops_budget"], r["candidates"], r["epochs"], r["distill"])


def cmd_run(args) -> None:
    results = Path(args.out) / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    key = (args.model, args.flops, args.candidates, args.epochs, args.distill)
    done = {(r["seed"], r["method"]) for r in _rows(results) if _key(r) == key}
    for seed in args.seeds:
        todo = [m for m in args.methods if (seed, m) not in done]
        if not todo:
            print(f"seed {seed}: already in {results}", flush=True)
            continue
        run_seed(args, seed, todo)


def best_baseline(rows: list[dict]) -> list[dict]:
    """Per seed, the ``best_baseline`` row: the best test accuracy of the baselines fitted to the default's FLOPs
    (the ``EQUAL`` methods measured under that seed), naming which it is."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed and r["method"] in EQUAL]
        if mine:
            best = max(mine, key=lambda r: r["test"])
            row = {k: v for k, v in best.items() if k not in ("search_s", "abn_evals", "ft_evals")}  # no cost of its own
            out.append({**row, "method": "best_baseline", "of": best["method"], "reused": best["method"]})
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Per method: mean and seed-to-seed standard deviation of the test accuracy, and each seed's value."""
    out = []
    for method in METHODS:
        accs = [r["test"] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == method]
        if accs:
            sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
            out.append({"method": method, "mean": statistics.mean(accs), "sd": sd, "seeds": accs})
    return out


def margins(rows: list[dict], method: str, against: str) -> list[float]:
    """``method`` minus ``against``, seed by seed (both fine-tuned under the same seed)."""
    by = {(r["seed"], r["method"]): r["test"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    return [by[s, method] - by[s, against] for s in seeds if (s, method) in by and (s, against) in by]


def _cost(rs: list[dict], method: str) -> str:
    mine = [r for r in rs if r["method"] == method and "abn_evals" in r]
    if not mine:
        return "| | | |"
    secs = statistics.mean(r["search_s"] for r in mine)
    return f"| {secs:.0f} | {mine[0]['abn_evals']} | {mine[0]['ft_evals']} |"


def summary(groups: dict[tuple, list[dict]], against: str = "uniform") -> list[str]:
    """Markdown: each method's margin over ``against`` (uniform L1, or uniform L1 at the window's top; points;
    mean, then per seed) in every distilled setting with more than one seed."""
    settings = [g for g in sorted(groups) if g[4] and len({r["seed"] for r in groups[g]}) > 1]
    settings = [g for g in settings if any(r["method"] == against for r in groups[g])]
    if not settings:
        return []
    head = " | ".join(f"{model} {float(budget):.0%}" for model, budget, *_ in settings)
    lines = [
        "",
        f"## Summary: minus {LABELS[against].split(' (')[0]}, in points (mean; per seed)",
        "",
        f"| method | {head} |",
        "|---|" + "---|" * len(settings),
    ]
    for method in METHODS:
        if method in (against, "base"):
            continue
        if not any(margins(groups[g], method, against) for g in settings):
            continue  # measured in no setting shown (an opt-in method)
        cells = []
        for g in settings:
            m = margins(groups[g], method, against)
            wins = len(m) > 1 and all(v > 0 for v in m) and statistics.mean(m) > statistics.stdev(m)
            cell = f"{100 * statistics.mean(m):+.2f} ({', '.join(f'{100 * v:+.2f}' for v in m)})" if m else ""
            cells.append(f"**{cell}**" if wins else cell)
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: beats it on every seed, by a mean margin above the margin's sd."]
    return lines


def cmd_report(args) -> None:
    rows = _rows(Path(args.out) / "results.jsonl")
    if not rows:
        raise SystemExit(f"no results in {args.out}/results.jsonl: run `python benchmarks/quality.py run` first")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    for rs in groups.values():
        rs += best_baseline(rs)
    lines = [
        "# fnnp-opt's methods against their baselines",
        "",
        "Test accuracy after the same fine-tune, Fashion-MNIST, the shipped bases. Produced by",
        "",
        "    python benchmarks/quality.py run --model <base> --flops <budget> --seeds 0,1,2",
        "    python benchmarks/quality.py report",
        "",
        "Each seed draws its own N candidates and fine-tunes every model under that seed; the test",
        "set is used once per model, after every choice is made. Raw rows: `docs/quality/results.jsonl`",
        "(and each candidate's scores: `docs/quality/candidates.jsonl`). R is 0.8, as in `correlate`.",
        "*minus uniform*: the method's test accuracy minus uniform L1's under the same seed; a method",
        "*beats uniform* when that margin is positive on every seed and its mean exceeds its sd.",
        "Search cost: the wall seconds of the scores the method used (one single-threaded process; the load",
        "average under *Measured* says what else ran, so compare them as ratios), and its ABN and short",
        "fine-tune (abn-ft) evaluations.",
        "",
        "The one-call alternatives (docs/concepts/baselines.md) are measured at the FLOPs of the default's pick",
        "(`tp_global`, `tp_lamp`, `tp_taylor`: Torch-Pruning's global ranking by its magnitude, LAMP and Taylor",
        "importance; `sensitivity`: per-layer sensitivity curves from ABN, FastNAS-style; `uniform_eq`: uniform L1),",
        "so a margin against them is not a margin of FLOPs (the window is ±2% of the base wide). *The best baseline*",
        "is, per seed, the best of those measured. The default's rows choose from what a study with the baselines",
        "holds: uniform L1, global and sensitivity at the budget's target (queued first), and the N draws; its",
        "search cost counts the sensitivity curves (groups x steps + 1 ABN evaluations, cached per seed in",
        "`docs/quality/baselines.jsonl`).",
        *summary(groups),
        *summary(groups, against="uniform_top"),
        *summary(groups, against="best_baseline"),
    ]
    for (model, budget, n, epochs, distill), rs in sorted(groups.items()):
        seeds = sorted({r["seed"] for r in rs})
        shipped = next((r["test_as_shipped"] for r in rs if r["method"] == "base"), None)
        steps = next((r["score_steps"] for r in rs if "score_steps" in r), None)
        k = next((r["rerank"] for r in rs if r.get("rerank")), None)
        ft = f"{epochs}-epoch fine-tune" + (" with --distill" if distill else "")
        lines += [
            "",
            f"## {model}, FLOPs budget {budget}: N = {n} candidates, {ft}, seeds {seeds}",
            "",
            "| method | FLOPs kept | test accuracy, mean ± sd | per seed | minus uniform, per seed (mean, sd) "
            "| search s | ABN evals | abn-ft evals |",
            "|---|---:|---:|---|---|---:|---:|---:|",
        ]
        verdicts = []
        for s in summarise(rs):
            kept = statistics.mean(r["flops_ratio"] for r in rs if r["method"] == s["method"])
            per = ", ".join(f"{a:.4f}" for a in s["seeds"])
            m = margins(rs, s["method"], "uniform") if s["method"] not in ("uniform", "base") else []
            if len(m) > 1:
                mean, sd = statistics.mean(m), statistics.stdev(m)
                vs = f"{', '.join(f'{v:+.4f}' for v in m)} ({mean:+.4f}, {sd:.4f})"
                if all(v > 0 for v in m) and mean > sd:
                    verdicts.append(LABELS[s["method"]])
            else:
                vs = ", ".join(f"{v:+.4f}" for v in m)
            lines.append(
                f"| {LABELS[s['method']]} | {kept:.3f} | {s['mean']:.4f} ± {s['sd']:.4f} | {per} | {vs} "
                + _cost(rs, s["method"])
            )
        lines.append("")
        lines.append(
            "Beats uniform L1 on every seed, by more than the sd of the margin: "
            + ("; ".join(verdicts) if verdicts else "none")
            + "."
        )
        if steps is not None:
            lines.append(
                f"abn-ft: {steps} SGD steps of 128 images from the ABN state" + (f"; rerank K = {k}." if k else ".")
            )
        reused = sorted({LABELS[r["method"]].split(":")[0] for r in rs if r.get("reused")})
        if reused:
            lines.append(
                f"Reused tests ({'; '.join(reused)}): a pick that another row fine-tuned under the same seed takes "
                "that row's test (the same network, fine-tune and seed; `reused` in results.jsonl names the row)."
            )
        if shipped is not None:
            lines.append(f"The base as shipped, without the extra fine-tune: {shipped:.4f}.")
    from _stamp import provenance

    lines += ["", *provenance(rows, Path(args.out) / "results.jsonl")]
    path = Path(args.doc)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="measure (resumable, row by row)")
    run.add_argument("--model", default="resnet20", help="a shipped base: resnet20 (default) or mobilenet_v1_cifar")
    run.add_argument("--flops", default="0.25", help="the FLOPs budget (default: 0.25)")
    run.add_argument("--max-rate", type=float, default=0.8, help="R, as in `correlate` (default: 0.8)")
    run.add_argument("--candidates", type=int, default=30, help="N random candidates per seed (default: 30)")
    run.add_argument("--epochs", type=int, default=1, help="fine-tune epochs, the same for all (default: 1)")
    run.add_argument("--distill", action="store_true", help="fine-tune every method with --distill")
    run.add_argument("--score-steps", type=int, default=100, help="abn-ft's short fine-tune (default: 100)")
    run.add_argument("--rerank", type=int, default=5, help="K of the rerank method (default: 5)")
    run.add_argument("--sensitivity-steps", type=int, default=4, help="ratios per group of the sensitivity curves")
    run.add_argument(
        "--methods",
        type=lambda s: s.split(","),
        default=DEFAULT_METHODS,
        help=f"comma-separated (default: all but {', '.join(SAMPLERS)}, each a search of its own)",
    )
    run.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    run.add_argument("--out", default=str(OUT))
    rep = sub.add_parser("report", help="write the table")
    rep.add_argument("--out", default=str(OUT))
    rep.add_argument("--doc", default=str(OUT.parent / "quality.md"))
    args = ap.parse_args()
    if args.cmd == "run" and set(args.methods) - set(DEFAULT_METHODS) - set(SAMPLERS):
        unknown = sorted(set(args.methods) - set(DEFAULT_METHODS) - set(SAMPLERS))
        raise SystemExit(f"--methods: unknown {unknown}; choose from {[*DEFAULT_METHODS, *SAMPLERS]}")
    cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    main()
