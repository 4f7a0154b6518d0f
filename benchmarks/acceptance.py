"""How each sampler meets the FLOPs window on the real default search space, without the cost of ABN.

The objective is the real budget check (analytic FLOPs of the pruned ResNet-20, the 50% +- 2%
window) with a cheap stand-in score for the candidates inside: the kept-FLOPs fraction plus a
fixed random preference over the ratios (a smooth landscape whose best lies near the window's
top edge, as ABN accuracy's does). It answers: what share of each sampler's draws land in the
window, how many draws 60 candidates take, whether CMA-ES fills its generations when rejected
draws are pruned, and what each sampler's ask() costs as the study grows.

    python benchmarks/acceptance.py --candidates 60 --max-draws 3000
    python benchmarks/acceptance.py --flops 0.2 --max-rate 0.8 --candidates 30 --max-draws 1500
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import optuna

from fnnp_opt.config import Constraint, Sampler, resolve
from fnnp_opt.constraints import fit_to_budget, penalized, violation
from fnnp_opt.pipeline import prepare
from fnnp_opt.optimize import make_sampler

CASES = [
    ("random", "reject", False),
    ("qmc", "reject", False),
    ("tpe", "reject", False),
    ("tpe", "constrain", False),
    ("cmaes", "reject", False),
    ("cmaes", "penalize", False),
    ("gp", "constrain", False),
    ("random", "reject", True),
    ("cmaes", "reject", True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=60)
    ap.add_argument("--max-draws", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flops", default="0.5", help="the budget, as for fnnp-opt run")
    ap.add_argument("--max-rate", type=float, default=0.6, help="R, as for fnnp-opt run")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    p = prepare(resolve(device="cpu", flops=args.flops, max_rate=args.max_rate), with_data=False)
    pref = np.random.default_rng(123).normal(size=len(p.space))

    def macs_of(ratios):
        return p.flops.macs(p.pruner.counts(ratios))

    print(f"{'configuration':22s} {'draws':>6s} {'in window':>9s} {'candidates':>10s} {'best':>7s} {'ask ms':>8s}")
    for sampler, mode, fit in CASES:
        start = p.problem.sampler_start(Sampler(sampler))  # CMA-ES starts from uniform L1, as in `fnnp-opt run`
        study = optuna.create_study(
            direction="maximize", sampler=make_sampler(Sampler(sampler), args.seed, start=start)
        )
        mode_ = Constraint(mode)
        asks, feasible = [], 0
        best = -np.inf
        for _ in range(args.max_draws):
            t0 = time.perf_counter()
            trial = study.ask()
            ratios = p.space.suggest(trial)
            asks.append(time.perf_counter() - t0)
            if fit:
                ratios, _ = fit_to_budget(ratios, macs_of, p.budget, p.space.max_rate)
            macs = macs_of(ratios)
            v = violation(p.budget, macs)
            if mode_ is Constraint.constrain:
                trial.set_constraint("flops", v)
            if v > 0:
                if mode_ is Constraint.reject:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    study.tell(trial, penalized(v))
                continue
            score = macs / p.budget.base + 0.01 * float(pref @ np.array([ratios[d.root] for d in p.space.dims]))
            study.tell(trial, score)
            best = max(best, score)
            feasible += 1
            if feasible >= args.candidates:
                break
        draws = len(study.trials)
        late = asks[-20:]
        print(
            f"{sampler + ' + ' + ('fit-budget' if fit else mode):22s} {draws:6d} {feasible / draws:9.0%} "
            f"{feasible:10d} {best:7.4f} {1000 * np.median(late):8.1f}"
        )


if __name__ == "__main__":
    from _stamp import line

    print(line(), flush=True)  # the commit and the machine, above the figures
    main()
