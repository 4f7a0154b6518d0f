"""The pruning problem of one model: its searchable channel groups, the ratio bounds, the cost model and the
budget window, and the uniform L1 strategies to beat. It needs the model and one example input, no data.

``fnnp-opt run`` builds it from files (:func:`fnnp_opt.pipeline.prepare`); the Python API from the user's own
model (:class:`fnnp_opt.Problem`).
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Literal, Sequence

import optuna

import torch
from torch import nn

from fnnp_opt.constraints import uniform_strategy
from fnnp_opt.errors import BudgetError, ModelError, UsageError, describe, option
from fnnp_opt.flops import Budget, FlopsModel, count, make_budget
from fnnp_opt.latency import LatencyTable, Timing, make_latency_budget, plan_cost, study_table
from fnnp_opt.models import find_classifier
from fnnp_opt.options import Sampler, parse_baselines
from fnnp_opt.plan import Plan
from fnnp_opt.progress import NULL, Progress
from fnnp_opt.prune import Pruner, Shaping, layer_shapes
from fnnp_opt import storage as St
from fnnp_opt.baselines import Allocation, allocations
from fnnp_opt.optimize import enqueue_strategies, strategies_queued
from fnnp_opt.space import SearchSpace, check_max_rate

log = logging.getLogger(__name__)

FLOPS_TOLERANCE, LATENCY_TOLERANCE = 0.02, 0.03  # the windows' default half-widths, as fractions of the base


def is_latency(budget: str) -> bool:
    """Whether ``budget`` is a latency (``0.6x``, ``3ms``, or a range of them) rather than FLOPs (``0.5``, ``2G``)."""
    return all(re.search(r"(x|ms)\s*$", part.strip()) for part in str(budget).split(":"))


def _check_runs(model: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """The shape of ``model``'s output on ``example``; :class:`ModelError` unless it runs and returns one tensor."""
    was = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as exc:  # noqa: BLE001  (any error of the user's forward)
        raise ModelError(
            f"model does not run on example_input of shape {tuple(example.shape)} ({describe(exc)}); pass one "
            "batch shaped as the model's input, e.g. torch.zeros(1, 3, 224, 224)"
        ) from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"model returns a {type(out).__name__}, but fnnp-opt prunes a model whose forward returns one tensor; wrap "
            "it in a module that returns the output to score (the logits)"
        )
    return tuple(out.shape)


class Problem:
    """What is pruned and under which budget: the search space and the cost of any point of it.

    Args:
        model: the trained network (any ``nn.Module`` whose forward returns one tensor); it is put in eval mode
            and its weights are left as they are: pruned copies are made from it.
        example_input: one input, shape (1, C, H, W) for an image model (of a larger batch, the first item): it
            traces the channel groups and sets the input size at which FLOPs (MACs, per image) are counted.
        budget: a fraction of the base's FLOPs (``"0.5"``), a count (``"2G"``, ``"62.23M"``), a fraction of the
            base's measured latency (``"0.6x"``) or milliseconds (``"3ms"``); a range ``"0.2:0.8"`` for a Pareto
            search.
        tolerance: half-width of the window around the budget, as a fraction of the base's cost (None: 0.02 of
            the FLOPs, 0.03 of the latency).
        max_rate: R, the largest share of a group's channels a candidate removes, in (0, 1).
        round_to: kept channel counts are multiples of this.
        min_channels: no group keeps fewer channels.
        exclude: glob patterns of layer names never pruned.
        ignored_layers: modules whose outputs keep all their channels (heads), as Torch-Pruning takes them. None:
            the classifier, the last conv or linear layer a forward pass runs, is found and kept whole.
        num_classes: the classes the classifier must output when ``ignored_layers`` is None (None: whatever the
            model's output has).
        latency: True for a latency budget, False for FLOPs; None reads it from ``budget`` (``x`` or ``ms``).
        timing: how a latency budget is timed (:class:`fnnp_opt.latency.Timing`).
        device: where a latency budget is timed.
        timed: False leaves a latency budget untimed and its window open, [0, base] (a process that only
            fine-tunes a chosen candidate needs no window).

    Raises:
        UsageError: a bad argument (the message names it).
        ModelError: the model cannot be traced or pruned.
        BudgetError: the budget is unparsable or no candidate with ratios in [0, R] reaches its window.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        budget: str = "0.5",
        tolerance: float | None = None,
        max_rate: float = 0.6,
        round_to: int = 1,
        min_channels: int = 1,
        exclude: Sequence[str] = (),
        ignored_layers: Sequence[nn.Module] | None = None,
        num_classes: int | None = None,
        latency: bool | None = None,
        timing: Timing = Timing(),
        device: str = "cpu",
        progress: Progress = NULL,
        timed: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"model must be a torch.nn.Module, got a {type(model).__name__}")
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
            raise UsageError(
                "example_input must be a tensor batch like torch.zeros(1, 3, 224, 224), got "
                + (
                    f"shape {tuple(example_input.shape)}"
                    if isinstance(example_input, torch.Tensor)
                    else f"a {type(example_input).__name__}"
                )
            )
        check_max_rate(max_rate)
        if isinstance(exclude, str):  # one pattern
            exclude = [exclude]
        if not all(isinstance(p, str) for p in exclude):
            raise UsageError(f"exclude must be glob patterns of layer names (strings), got {list(exclude)!r}")
        if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))):
            raise UsageError(f"tolerance must be a fraction of the base like 0.02 (or None), got {tolerance!r}")
        example_input = example_input[:1]  # FLOPs (MACs) and latencies are counted per image
        out_shape = _check_runs(model, example_input)
        self.model = model.eval()
        self.example = example_input
        self.input_shape = tuple(example_input.shape)
        self.device = device
        self.budget_text = str(budget)
        self.latency_budget = is_latency(self.budget_text) if latency is None else latency
        default = LATENCY_TOLERANCE if self.latency_budget else FLOPS_TOLERANCE
        self.tolerance = default if tolerance is None else tolerance
        self.timing = timing
        self.shaping = Shaping(round_to, min_channels, tuple(exclude))
        self.pruner = Pruner(model, example_input, self._kept_whole(ignored_layers, num_classes, out_shape), self.shaping)
        self.space = SearchSpace.from_groups(self.pruner.groups, max_rate)
        base_macs, self.base_params = count(model, self.input_shape)
        units = {g.root: g.multiple for g in self.pruner.groups}
        self.flops = FlopsModel(model, self.input_shape, self.pruner.prune_counts, units)
        if not self.flops.exact:
            log.warning("the analytic FLOPs count differs from thop's; every draw is counted by thop")
        self.latency: LatencyTable | None = None  # with a latency budget: predicts a plan's ms
        if not self.latency_budget:
            self.budget = make_budget(self.budget_text, self.tolerance, base_macs)
        elif not timed:
            self.budget = Budget(base_macs, base_macs, 0, base_macs)
        else:
            if not 0.0 < self.tolerance < 1.0:
                raise UsageError(
                    f"{option('latency_tolerance')} must be in (0, 1) (a fraction of the base's latency), "
                    f"got {self.tolerance}"
                )
            self.latency = study_table(timing, model, self.flops, self.pruner, self.space, device, progress)
            self.budget = make_latency_budget(self.budget_text, self.tolerance, self.latency.base_ms)
        self.check_reachable()
        self.uniform, self.no_uniform = self.uniform_strategies()
        if self.latency is not None:
            self.latency.save()

    def _kept_whole(
        self, ignored: Sequence[nn.Module] | None, num_classes: int | None, out_shape: tuple[int, ...]
    ) -> list[str] | str:
        """The names of the layers whose outputs keep every channel: ``ignored``'s, or the classifier's (the model's
        output on the example has ``out_shape``)."""
        names = {m: n for n, m in self.model.named_modules()}
        if ignored is not None:
            if isinstance(ignored, nn.Module):
                ignored = [ignored]
            strays = [type(m).__name__ for m in ignored if m not in names]
            if strays:
                raise UsageError(
                    f"ignored_layers holds {strays[0]} modules that are not modules of model; pass its own layers, "
                    "e.g. ignored_layers=[model.fc]"
                )
            return [names[m] for m in ignored]
        if num_classes is None:
            if len(out_shape) != 2:
                raise ModelError(
                    f"the model's output ({out_shape}) is not a batch of logits (N, classes), so its head cannot be "
                    "found: pass ignored_layers=[<the head's layers>] to keep their outputs whole"
                )
            num_classes = out_shape[1]
        return find_classifier(self.model, self.example, num_classes)

    def ratios_of(self, ratios: dict[str, float]) -> dict[str, float]:
        """``ratios`` keyed by group root, from keys that are the groups' names (as :class:`Plan` and the study's
        parameters name them) or their roots.

        Raises:
            UsageError: a key names no searched group, or a ratio lies outside [0, 1].
        """
        names = {d.name: d.root for d in self.space.dims} | {d.param: d.root for d in self.space.dims}
        roots = {d.root for d in self.space.dims}
        unknown = [k for k in ratios if k not in names and k not in roots]
        if unknown:
            raise UsageError(
                f"ratios name groups that are not searched: {unknown[:3]}; the groups are "
                f"{[d.name for d in self.space.dims][:6]}{' ...' if len(self.space) > 6 else ''} (Plan.ratios' keys)"
            )
        out = {names.get(k, k): v for k, v in ratios.items()}
        for root, r in out.items():
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
                raise UsageError(f"ratio {r!r} of group {root!r} is not a share of its channels, in [0, 1]")
        return {d.root: float(out.get(d.root, 0.0)) for d in self.space.dims}

    # ------------------------------------------------------------------ costs

    def cost(self, removed: dict[str, int]) -> float:
        """What the budget limits for a plan ({group root: channels removed}): predicted ms under a latency
        budget, else MACs."""
        return plan_cost(removed, self.flops, self.latency)

    def uniform_cost(self, ratio: float) -> float:
        """The budget's cost with ``ratio`` in every group."""
        return self.cost(self.pruner.counts(self.space.uniform(ratio)))

    def check_reachable(self) -> None:
        """Raise :class:`BudgetError` when no ratio vector in [0, R] lands in the window (the message gives the
        reachable range and what to change)."""
        budget, space, f = self.budget, self.space, self.budget.fmt
        lowest = self.uniform_cost(space.max_rate)  # FLOPs (and, nearly, latency) fall in every ratio
        if lowest <= budget.high:
            return
        if self.latency is not None and lowest >= budget.base:
            raise BudgetError(
                f"the budget window [{f(budget.low)}, {f(budget.high)}] cannot be reached: the latency table "
                f"predicts the network pruned by {space.max_rate} everywhere at {f(lowest)}, no faster than the "
                f"base's {f(budget.base)}: either pruning does not pay at this setting (try a larger "
                f"{option('latency_batch')}), or timing on {self.latency.setting.describe()} is unreliable here (a "
                f"busy machine? retry with {option('latency_threads', 1)}, or when the machine is idle)"
            )
        lo, hi = space.max_rate, 0.99
        if self.uniform_cost(hi) > budget.high:
            s = self.shaping
            rules = [option("min_channels", s.min_channels)] if s.min_channels > 1 else []
            rules += [option("round_to", s.round_to)] if s.round_to > 1 else []
            rules += [option("exclude", ",".join(s.exclude))] if s.exclude else []
            verb = "keeps" if len(rules) == 1 else "keep"
            them = "it" if len(rules) == 1 else "them"
            kept = f"{' and '.join(rules)} {verb} too many channels: relax {them}, or " if rules else ""
            hint = f"no {option('max_rate')} below 1 reaches it; {kept}raise {budget.option}"
        else:
            for _ in range(20):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if self.uniform_cost(mid) <= budget.high else (mid, hi)
            hint = f"raise {option('max_rate')} to at least {hi:.3f}, or raise {budget.option}"
        raise BudgetError(
            f"the budget window [{f(budget.low)}, {f(budget.high)}] cannot be reached with ratios in "
            f"[0, {space.max_rate}]: they reach [{f(lowest)}, {f(budget.base)}] = "
            f"[{lowest / budget.base:.2f}x, 1x] of the base; {hint}"
        )

    def targets(self) -> list[float]:
        """The costs the baselines are made for: the budget's target, or five spread over a range."""
        b = self.budget
        return [b.low + (b.high - b.low) * (k + 0.5) / 5 for k in range(5)] if b.ranged else [b.target]

    def uniform_strategies(self) -> tuple[list[dict[str, float]], list[str]]:
        """The uniform L1 strategies queued first ({root: ratio}): one at the budget's target, or five spread over
        a range, each inside the window (:func:`fnnp_opt.constraints.uniform_strategy`); and, for a target where
        none lands in the window, why, in one line."""
        b = self.budget
        targets = self.targets()
        roots = [d.root for d in self.space.dims]
        found, missing = [], []
        for t in targets:
            plan, (above, below) = uniform_strategy(
                lambda r: self.cost(self.pruner.counts(r)), roots, t, (b.low, b.high), self.space.max_rate
            )
            if plan is not None:
                found.append(self._legible(plan))
            else:
                at = lambda cost: f"{b.fmt(cost)} ({cost / b.base:.2%})"  # noqa: E731
                missing.append(
                    f"no uniform L1 strategy lands in the window [{at(b.low)}, {at(b.high)}]: one ratio everywhere "
                    f"gives {at(above)} or {at(below)} (kept channels are whole numbers), and cutting the groups one "
                    f"at a time between the two skips the window too; the study has no uniform baseline (widen "
                    f"{option('flops_tolerance' if self.latency is None else 'latency_tolerance')} to hold one)"
                )
        return found, missing

    def _legible(self, plan: dict[str, float]) -> dict[str, float]:
        """``plan`` as read in a study: where its groups' ratios differ by a hair (a uniform strategy whose groups
        were cut one at a time at one ratio), each group's own share of channels removed, the same plan."""
        if len(set(plan.values())) == 1:
            return plan
        removed = self.pruner.counts(plan)
        shares = {d.root: round(removed[d.root] / d.channels, 6) for d in self.space.dims}
        legible = self.pruner.counts(shares) == removed and max(shares.values()) <= self.space.max_rate
        return shares if legible else plan  # a rounded group's share can exceed R (48 of 64 channels at R 0.7)

    # ------------------------------------------------------------------ trials and plans

    def ratios(self, trial) -> dict[str, float]:
        """The ratios a trial (live or frozen) applied, as {group root: ratio}: its parameters, or the projected
        ratios a ``fit_budget`` search records in the user attribute ``ratios``."""
        if "ratios" in trial.user_attrs:
            return self.space.from_named(trial.user_attrs["ratios"])
        return self.space.from_params(trial.params)

    def plan(self, trial_or_ratios) -> Plan:
        """The :class:`Plan` of a trial, or of ratios ({group name or root: ratio})."""
        ratios = self._ratios(trial_or_ratios)
        removed = self.pruner.counts(ratios)
        return Plan(
            {d.name: float(ratios[d.root]) for d in self.space.dims},
            {d.name: d.channels - removed[d.root] for d in self.space.dims},
            layer_shapes(self.pruner.prune_counts(removed)),
            layer_shapes(self.model),
        )

    def prune(self, trial_or_ratios) -> nn.Module:
        """A pruned copy of the model for a trial, or for ratios ({group name or root: ratio}; a group left out
        keeps all its channels); its BN statistics are the base's (re-estimate them before use)."""
        return self.pruner.prune(self._ratios(trial_or_ratios))

    def _ratios(self, trial_or_ratios) -> dict[str, float]:
        if isinstance(trial_or_ratios, dict):
            return self.ratios_of(trial_or_ratios)
        if not hasattr(trial_or_ratios, "user_attrs") or not hasattr(trial_or_ratios, "params"):
            raise UsageError(
                f"pass an Optuna trial of this problem's study, or ratios {{group name: ratio}}, got a "
                f"{type(trial_or_ratios).__name__}"
            )
        return self.ratios(trial_or_ratios)

    def sampler_start(self, kind: Sampler) -> dict[str, float] | None:
        """Where CMA-ES starts: the uniform L1 strategy (the middle one of a ranged budget), as Optuna parameters;
        None for the other samplers, which do not take a start, and where no uniform strategy lands in the
        window."""
        if kind is not Sampler.cmaes or not self.uniform:
            return None
        plan = self.uniform[len(self.uniform) // 2]
        return {d.param: plan[d.root] for d in self.space.dims}

    def enqueue_uniform(self, study) -> None:
        """Queue the uniform L1 strategies in ``study`` (an Optuna study): the baseline to beat, evaluated first and
        marked with the user attribute ``strategy = "uniform"``. Queuing twice adds nothing; where no uniform
        strategy lands in the window, a warning says why and the study goes without one."""
        for why in self.no_uniform:
            log.warning("%s", why)
        enqueue_strategies(study, self.space, self.uniform, "uniform")

    def enqueue_baselines(
        self,
        study,
        baselines: Sequence[str] = ("global", "sensitivity"),
        *,
        score: Callable[[nn.Module], float] | None = None,
        importance: str | None = None,
        steps: int | None = None,
        gradient_batches: Sequence | None = None,
        progress: Progress = NULL,
    ) -> list[Allocation]:
        """Compute and queue the ``global`` and ``sensitivity`` baselines (:mod:`fnnp_opt.baselines`) in ``study``,
        after uniform L1 (:meth:`enqueue_uniform`): each marked with the user attribute ``strategy`` and what it cost
        (``baseline_cost``). A strategy the study already holds a trial of is neither computed nor queued again, so
        a resumed study queues each once; where processes share the study, call it under the study's lock.

        Args:
            score: ``score(model) -> float`` of a pruned copy (its BN statistics re-estimated inside), higher is
                better: the sensitivity curves' score; ``objective.evaluator.score_model`` is the study's.
            importance: the global ranking's criterion: ``magnitude``, ``lamp`` or ``taylor`` (None: ``magnitude``,
                and a stored global baseline made otherwise is kept without a warning).
            steps: ratios per group of the sensitivity curves (None: 4, likewise).
            gradient_batches: labelled ``(x, y)`` training batches: ``taylor``'s gradients.

        Returns:
            The allocations queued now (none on a resume; one that no plan in the window matches is logged and
            left out).
        """
        wanted = parse_baselines(baselines) if len(baselines) else ()  # (none beyond uniform L1: a resume's check)
        queued = strategies_queued(study)
        settings = (("global", "global_importance", importance), ("sensitivity", "sensitivity_steps", steps))
        for strategy, name, value in settings:
            if value is not None and strategy not in wanted:
                log.warning(
                    "%s has no effect: the %s baseline is not queued (add it to %s)",
                    option(name, value),
                    strategy,
                    option("baselines"),
                )
        self._warn_other_settings(study, [b for b in wanted if b in queued], importance, steps)
        todo = [b for b in wanted if b != "uniform" and b not in queued]
        if not todo:
            return []
        made = allocations(self, todo, self.targets(), score, importance, steps, gradient_batches, progress)
        for a in made:
            if not self.budget.contains(a.cost):
                b = self.budget
                log.warning(
                    "the %s baseline cannot land in the window [%s, %s]: its nearest plan costs %s (kept channels are "
                    "whole numbers); the study has no %s baseline (widen %s to hold one)",
                    a.strategy,
                    b.fmt(b.low),
                    b.fmt(b.high),
                    b.fmt(a.cost),
                    a.strategy,
                    option("flops_tolerance" if self.latency is None else "latency_tolerance"),
                )
                continue
            plan = {root: min(r, self.space.max_rate) for root, r in a.ratios.items()}  # (never past R)
            # queued even where the plan equals another trial's (sensitivity at uniform L1's ratios): the study then
            # holds the baseline, which a resume does not compute again (under the study lock: queued once)
            attrs = {"baseline_cost": a.attrs() | a.detail}
            enqueue_strategies(study, self.space, [plan], a.strategy, attrs, skip_if_exists=False)
            log.info(
                "%s baseline queued: %s of the base's %s, %d evaluations, %.1f s",
                a.strategy,
                f"{a.cost / self.budget.base:.3f}",
                "FLOPs" if self.latency is None else "latency",
                a.evaluations,
                a.seconds,
            )
        return [a for a in made if self.budget.contains(a.cost)]

    @staticmethod
    def _warn_other_settings(study, held: list[str], importance: str | None, steps: int | None) -> None:
        """Log each baseline of ``held`` that ``study`` holds made with another criterion or grid than asked now (None:
        none asked, nothing to say): a resume keeps the stored one (a strategy is never queued twice)."""
        asked = {
            "global": ("importance", "global_importance", importance),
            "sensitivity": ("steps", "sensitivity_steps", steps),
        }
        for strategy in held:
            if strategy not in asked:
                continue
            key, name, value = asked[strategy]
            if value is None:
                continue
            trial = next(t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(St.BASELINE) == strategy)
            stored = trial.user_attrs.get("baseline_cost", {}).get(key)
            if stored is not None and stored != value:
                log.warning(
                    "the study's %s baseline (trial %d) was made with %s, not %s: the resumed study keeps it; a new "
                    "study (%s) queues one with %s",
                    strategy,
                    trial.number,
                    option(name, stored),
                    option(name, value),
                    option("study_name"),
                    option(name, value),
                )

    def resume_or_create(
        self, storage, url: str, name: str, fingerprint: dict, config: dict, compare: dict | None, other: str
    ) -> tuple[optuna.Study, bool]:
        """Study ``name`` in ``storage`` (opened; ``url`` names it in messages) and whether it was created now: a
        stored one must match ``fingerprint`` (:func:`fnnp_opt.storage.check_fingerprint`, naming the settings of
        ``compare`` that differ and ``other`` as the way to another study); a new one records ``config``. Either way
        its uniform strategies are queued (once: a process killed before it queued them left none), under the
        study's name lock, since several processes may start at once."""
        with St.name_lock(storage, name):
            study = St.existing_study(storage, name)
            created = study is None
            if study is None:
                directions: tuple[Literal["maximize", "minimize"], ...] = (
                    ("maximize", "minimize") if self.budget.ranged else ("maximize",)
                )
                study = St.create_study(storage, name, fingerprint, config, self.space, self.budget, directions)
            else:
                St.check_fingerprint(study, fingerprint, url, compare, other=other)
            self.enqueue_uniform(study)
        return study, created

    def fingerprint(self) -> dict[str, str]:
        """What a stored study must match to be resumed with this problem: the space, its shaping and the
        budget."""
        s = self.pruner.shaping
        shaping = "" if (s.round_to, s.min_channels) == (1, 1) else f"|round{s.round_to}|min{s.min_channels}"
        if self.latency is None:
            budget = f"{self.budget.low}-{self.budget.high}"
        else:
            t = self.latency.setting  # the measured window moves a little between sessions; its recipe does not
            budget = (
                f"latency{self.budget_text}+-{self.tolerance}|{t.device}|{t.threads}|{t.batch}|{t.layout}"
                "|base deployed"  # of the base in its faster layout (studies made before were of the base in t.layout)
            )
        return {"space": self.space.fingerprint() + shaping, "budget": budget}


WIDE = 8  # the default --round-to rounds a network whose median conv has at least this many vector widths


def is_wide(model: torch.nn.Module, step: int) -> bool:
    """Whether ``model``'s median conv has at least :data:`WIDE` steps of ``step`` output channels (> 1): a network
    whose channel counts a rounding to ``step`` can change without keeping whole groups or halving them."""
    if not isinstance(model, nn.Module):  # (Problem refuses it, naming the argument)
        return False
    widths = sorted(m.out_channels for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd))
    return step > 1 and bool(widths) and widths[len(widths) // 2] >= WIDE * step


def default_rounding(problem_at: Callable[[int], Problem], step: int, model: torch.nn.Module) -> Problem:
    """The problem of the default ``--round-to``: kept channels in multiples of ``step`` (the device's vector width)
    in a wide network, one whose median conv has at least :data:`WIDE` steps of channels (ResNet-50's 256,
    MobileNetV2's 192; not ResNet-20's 32, whose 16-channel groups could only be kept whole), where the budget and a
    uniform L1 strategy stay within reach with it; else unrounded."""
    if not is_wide(model, step):
        return problem_at(1)
    try:
        problem = problem_at(step)
    except BudgetError as exc:
        why = str(exc)
    else:
        if problem.uniform:
            log.info(
                "kept channels are rounded to multiples of %d, the device's vector width, in this wide network (the "
                "default %s; %s keeps every count)",
                step,
                option("round_to"),
                option("round_to", 1),
            )
            return problem
        why = problem.no_uniform[0]
    log.info(
        "kept channels are not rounded to %d, the device's vector width (the default %s): %s",
        step,
        option("round_to"),
        why,
    )
    return problem_at(1)
