"""Latency: how fast a network runs where it is deployed, and a per-layer table that predicts a candidate's.

Every time here is a quantile of warm forward passes of a network's *deploy form*: eval mode, each
BatchNorm folded into the conv before it (:func:`fold_bn`), at a :class:`Setting` (device, threads,
batch, memory layout). Networks are compared side by side, in turns of a few passes each
(:func:`compare_ms`), so a slow spell of the machine lands on all of them. Reports take the median;
the latency table and every measurement checked against it take the 10th percentile (``QUIET``),
which the time-slices a busy machine steals do not reach.

A study with ``--latency`` cannot time every draw: most draws are rejected within microseconds, and a
direct measurement takes a second and carries noise. It builds a :class:`LatencyTable` once instead:

* each conv and linear layer is timed alone at the channel counts the search space reaches, on a
  grid of at most ``GRID`` values per side, and interpolated bilinearly in between (per-layer tables
  as in NetAdapt, Yang et al., ECCV 2018, and HALP, Shen et al., NeurIPS 2022);
* a candidate's latency is ``a + b * (sum of its layers' times) + c * (its conv outputs, in millions
  of values)``, with a, b, c >= 0 fitted to whole-network measurements of a few calibration plans
  (all timed side by side, as each layer's grid points are, each layer's beside one fixed reference
  layer whose time rescales them: a busy spell of the machine during one layer's grid would otherwise
  make that layer look slow against the others):
  the intercept holds what pruning cannot remove (per-op dispatch, the stem and the head), the last
  term the elementwise work (ReLU, residual additions) that scales with the kept channels.

The base's time, which a relative budget (``0.7x``) is a fraction of, is its time as deployed and as
the run's summary reports it (:func:`deployed_ms`): its deploy form in its faster memory layout,
whatever layout the candidates are timed in.

The table is cached beside the study's storage (:meth:`fnnp_opt.config.RunConfig.timing`), keyed by the processor, torch's
version, the setting and the architecture, so every worker and every resumed session reuses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypedDict, Unpack

import numpy as np
import torch
from torch import nn

from fnnp_opt.errors import BudgetError, UsageError, option
from fnnp_opt.flops import Budget, FlopsModel, make_window
from fnnp_opt.progress import NULL, Progress

log = logging.getLogger(__name__)

GRID = 8  # channel counts timed per side of a layer's table (at most)
CALIBRATION_PLANS = 10  # whole-network measurements the table's fit is made from
QUIET = 0.1  # the quantile of passes the latency table keeps: near the fastest, clear of a busy machine's noise
BLOCK = 5  # consecutive passes of one model before the next takes its turn (compare_ms)
LAYOUTS = ("auto", "nchw", "channels-last")


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Setting:
    """Where a latency is measured."""

    device: str = "cpu"  # torch device
    threads: int = 1  # torch intra-op threads during the measurement
    batch: int = 1  # images per forward pass
    channels_last: bool = False  # 4-D activations in NHWC order instead of NCHW

    @property
    def layout(self) -> str:
        return layout_name(self.channels_last)

    def describe(self) -> str:
        return f"{self.device}, {self.threads} thread{'s' * (self.threads > 1)}, batch {self.batch}, {self.layout}"

    def to_dict(self) -> dict:
        """The setting as stored in a study, with the machine it was measured on."""
        return {"device": self.device, "threads": self.threads, "batch": self.batch, "layout": self.layout} | {
            "machine": machine(self.device),
            "torch": torch.__version__,
        }


def machine(device: str = "cpu") -> str:
    """The processor and its vector ISA (or the GPU's name): what a latency belongs to."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if not name:  # no /proc (macOS, Windows): platform.processor() runs `uname -p` there, once
        name = platform.processor()
    return f"{name or platform.machine()} ({torch.backends.cpu.get_cpu_capability()})"


def vector_width(device: str = "cpu") -> int:
    """The channel multiple a device's kernels want (``--round-to auto``): fp32 lanes of the CPU's widest
    vector unit (16 for AVX-512, 8 for AVX2, 4 otherwise), or 8 on CUDA (tensor-core tiles)."""
    if device.startswith("cuda"):
        return 8
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return 16
    if capability.startswith("AVX2"):
        return 8
    return 4


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _placed(
    model: nn.Module, input_shape: tuple[int, ...], setting: Setting, channels_last: bool
) -> tuple[nn.Module, torch.Tensor]:
    """``model`` (changed in place: pass a copy) and a random input, on the setting's device, in a layout.

    The weights are put in the layout too, either way: a network evaluated in channels-last
    (:func:`fnnp_opt.evaluate.accuracy` leaves it so) would otherwise be timed in NCHW with
    channels-last weights, a slow mixed path.
    """
    model = model.eval().to(setting.device)
    x = torch.randn(setting.batch, *input_shape[1:], device=setting.device)
    if x.dim() == 4:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=layout)
        x = x.contiguous(memory_format=layout)
    return model, x


def _synced(model: nn.Module, x: torch.Tensor, device: str) -> Callable[[], None]:
    """One pass of ``model`` on ``x`` that returns when the device has run it."""

    def run() -> None:
        model(x)
        _sync(device)

    return run


@torch.no_grad()
def compare_ms(
    models: list[nn.Module],
    input_shape: tuple[int, ...] | list[tuple[int, ...]],
    setting: Setting = Setting(),
    runs: int = 50,
    warmup: int = 10,
    budget_s: float = 2.0,
    layouts: list[bool] | None = None,
    quantile: float = 0.5,
) -> list[float]:
    """Wall time of one forward pass of each model (the median, or ``quantile``), in ms, timed side by side.

    The models take turns in blocks of ``BLOCK`` consecutive passes (the first of each block, which
    pays for the switch, is not counted), so a slow spell of the machine hits all of them while
    each is timed warm, as it runs when deployed alone. ``input_shape`` is (1, C, H, W) or any
    shape with a batch axis first (replaced by ``setting.batch``), or a list of such shapes, one per
    model. At most ``runs`` timed passes each after ``warmup`` untimed ones, fewer (at least 5) when
    they would take over ``budget_s``.
    The models are timed as given: pass deploy forms (:func:`deploy_form`), which this leaves
    unchanged. ``layouts`` (channels-last or not, one per model) overrides the setting's layout
    model by model. ``quantile`` picks another quantile of the passes than the median (0.5): the
    latency table takes a low one, which a busy machine's stolen time-slices do not reach.
    """
    layouts = layouts or [setting.channels_last] * len(models)
    shapes = input_shape if isinstance(input_shape, list) else [input_shape] * len(models)
    with threads(setting.threads):
        placed = [_placed(copy.deepcopy(m), x, setting, cl) for m, x, cl in zip(models, shapes, layouts)]
        calls = [_synced(m, x, setting.device) for m, x in placed]
        return _in_blocks(calls, runs, warmup, budget_s, quantile)


def _in_blocks(
    calls: Sequence[Callable[[], object]], runs: int, warmup: int, budget_s: float, quantile: float
) -> list[float]:
    """Time each of ``calls`` (a synchronous pass) side by side in turns of ``BLOCK`` passes, after a warm-up:
    the ``quantile`` of each one's ms. The first pass of each turn pays for the switch and is not counted."""
    first = time.perf_counter()
    for run in calls:
        run()
    runs = max(5, min(runs, int(budget_s / max(time.perf_counter() - first, 1e-9))))
    for run in calls:
        for _ in range(min(warmup, max(1, runs // 5))):
            run()
    times: list[list[float]] = [[] for _ in calls]
    while len(times[0]) < runs:
        for i, run in enumerate(calls):
            run()  # the switch
            for _ in range(min(BLOCK, runs - len(times[i]))):
                t = time.perf_counter()
                run()
                times[i].append((time.perf_counter() - t) * 1e3)
    return [float(np.quantile(t, quantile)) for t in times]


def onnx_ms(
    sessions: list, input_shape: tuple[int, ...], batch: int, runs: int = 50, budget_s: float = 2.0
) -> list[float]:
    """Median ms of one run of each onnxruntime ``InferenceSession`` (input ``images``), timed side by side in
    blocks like :func:`compare_ms`, on the threads each session was made with."""
    x = np.random.default_rng(0).standard_normal((batch, *input_shape[1:])).astype(np.float32)
    feed = {"images": x}
    return _in_blocks([partial(s.run, None, feed) for s in sessions], runs, 0, budget_s, 0.5)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a conv folded into it.

    The pairs come from a torch.fx trace: a BatchNorm called on the output of a conv that nothing
    else reads, each module called once. The outputs are unchanged up to float rounding. A model fx
    cannot trace comes back as an unfolded eval copy.
    """
    from torch.fx import symbolic_trace
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    try:
        graph = symbolic_trace(folded).graph
    except Exception as exc:  # fx cannot trace data-dependent control flow; the model still runs
        log.debug("BatchNorm not folded: torch.fx cannot trace %s (%s)", type(model).__name__, exc)
        return folded
    modules = dict(folded.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(node.target, str):  # a call_module's target is its name
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        assert isinstance(src.target, str) and isinstance(node.target, str)  # call_module targets: module names
        conv = modules.get(src.target)
        if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed:
            continue
        if calls[src.target] != 1 or calls[node.target] != 1:
            continue
        _set_module(folded, src.target, fuse_conv_bn_eval(conv, bn))
        _set_module(folded, node.target, nn.Identity())
    return folded


def deploy_form(model: nn.Module) -> nn.Module:
    """What is timed: an eval-mode copy with BatchNorm folded into the convs (:func:`fold_bn`)."""
    return fold_bn(model)


def best_layout(models: list[nn.Module], input_shape: tuple[int, ...], setting: Setting) -> Setting:
    """``setting`` in the memory layout in which ``models`` (deploy forms) take less time in total (4-D
    inputs only). A study passes a typical candidate, not the base: pruned channel counts that are not
    multiples of the vector width can make channels-last slower than NCHW where the base is faster."""
    if len(input_shape) != 4:
        return setting
    both = compare_ms(models * 2, input_shape, setting, runs=20, layouts=[False] * len(models) + [True] * len(models))
    nchw, nhwc = sum(both[: len(models)]), sum(both[len(models) :])
    return Setting(setting.device, setting.threads, setting.batch, nhwc < nchw)


def layout_name(channels_last: bool) -> str:
    """A memory layout as settings, studies and exports name it."""
    return "channels-last" if channels_last else "nchw"


def layouts_of(input_shape: tuple[int, ...]) -> list[bool]:
    """The memory layouts a network taking ``input_shape`` can run in (channels-last or not): both for 4-D inputs."""
    return [False, True] if len(input_shape) == 4 else [False]


class CompareTiming(TypedDict, total=False):
    """The timing arguments of :func:`compare_ms` that :func:`deployed_ms` passes on."""

    runs: int
    warmup: int
    budget_s: float
    quantile: float


def deployed_ms(
    models: list[nn.Module],
    input_shape: tuple[int, ...],
    setting: Setting,
    fixed: list[nn.Module] | None = None,
    **timing: Unpack[CompareTiming],
) -> tuple[list[tuple[float, bool]], list[float]]:
    """Each of ``models`` (deploy forms) as deployed: (its ms in its faster layout, whether that is channels-last).

    This is what "a network's time" means in the run's summary and for the base of a latency budget.
    Every model is timed in each of :func:`layouts_of` side by side in one :func:`compare_ms` run (``timing``:
    its ``runs``, ``warmup``, ``budget_s``, ``quantile``), with each of ``fixed`` in the setting's own layout,
    whose ms come second.
    """
    layouts, fixed = layouts_of(input_shape), fixed or []
    pairs = [(m, cl) for m in models for cl in layouts] + [(m, setting.channels_last) for m in fixed]
    times = compare_ms([m for m, _ in pairs], input_shape, setting, layouts=[cl for _, cl in pairs], **timing)
    n = len(layouts)
    best = [min(zip(times[i : i + n], layouts)) for i in range(0, n * len(models), n)]
    return best, times[n * len(models) :]


def profile(
    base: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], batches: Iterable[int], device: str = "cpu"
) -> list[dict]:
    """Base and pruned latency side by side at each batch size, each network as deployed (:func:`deployed_ms`).

    Both are timed in their deploy form (BN folded), with torch's current thread count, NCHW and
    channels-last round-robin in one run. One dict per batch: ``batch``, ``threads``, ``base_ms``,
    ``pruned_ms`` (ms), ``base_layout``, ``pruned_layout`` and ``speedup`` (base / pruned).
    """
    models = [deploy_form(base), deploy_form(pruned)]
    rows = []
    for batch in dict.fromkeys(batches):
        setting = Setting(device, torch.get_num_threads(), batch)
        (b_ms, b_cl), (p_ms, p_cl) = deployed_ms(models, input_shape, setting)[0]
        rows.append(
            {
                "batch": batch,
                "threads": setting.threads,
                "base_ms": b_ms,
                "pruned_ms": p_ms,
                "base_layout": layout_name(b_cl),
                "pruned_layout": layout_name(p_cl),
                "speedup": b_ms / p_ms,
            }
        )
    return rows


def plan_cost(removed: dict[str, int], flops: FlopsModel, table: LatencyTable | None) -> float:
    """What a budget limits for a plan ({root: channels removed}): its predicted ms under a latency budget (the
    ``table``), else its MACs."""
    return table.predict(removed) if table is not None else flops.macs(removed)


@dataclass(frozen=True)
class Measurement:
    """A network as a run's summary reports it (the base, or the delivered network): what its export and its study
    record under ``metrics`` and ``result`` (:meth:`to_dict`)."""

    test_accuracy: float
    flops: int  # MACs, thop's count
    params: int
    latency_ms: float  # median CPU time of one image, in its faster layout (:func:`profile`)
    latency_layout: str  # that layout: nchw or channels-last
    batch_ms: float  # median CPU time of a batch of batch_images, in its faster layout
    batch_layout: str
    batch_images: int
    threads: int  # torch threads while timing

    def to_dict(self) -> dict:
        return asdict(self)


SPEED_SHARE = 0.6  # warn when the latency gain is below this share of the MACs gain


def speed_warnings(
    base: Measurement, pruned: Measurement, latency_budget: bool = False, can_round: bool = True
) -> list[str]:
    """Where the pruned network's measured speed-up falls short of its MACs speed-up.

    Compares the ``flops`` and the times ``latency_ms`` (batch 1) and ``batch_ms`` (``batch_images``) of
    ``base`` and ``pruned``. A gain is a speed-up minus 1; a warning is given when the latency gain is
    less than ``SPEED_SHARE`` of the MACs gain. ``latency_budget``: the run searched under a ``--latency``
    budget already; ``can_round`` False: ``--round-to auto`` would not change its channel counts (rounded already,
    or too narrow a network); the remedies then leave them out.
    """
    macs = base.flops / pruned.flops
    levers = ["--round-to auto"] if can_round else []
    levers += ["a larger batch"] + ([] if latency_budget else ["a --latency budget"])
    remedies = levers[-1] if len(levers) == 1 else f"{', '.join(levers[:-1])}{',' * (len(levers) > 2)} or {levers[-1]}"
    warnings = []
    for speed, label in (
        (base.latency_ms / pruned.latency_ms, "1 image"),
        (base.batch_ms / pruned.batch_ms, f"{base.batch_images} images"),
    ):
        if speed - 1 < SPEED_SHARE * (macs - 1):
            warnings.append(
                f"at {label} the pruned network runs {speed:.2f}x the base's speed for {macs:.2f}x fewer MACs: "
                f"less than {SPEED_SHARE:.0%} of the MACs gain (per-layer overhead, or channel counts the kernels "
                f"pad; try {remedies})"
            )
    return warnings


# --------------------------------------------------------------------------- the --latency budget


def parse_latency(text: str, base_ms: float | None = None) -> float:
    """``--latency``: a fraction of the base's measured latency (``0.5x``) or milliseconds (``3ms``).

    Returns milliseconds; with ``base_ms`` None only the syntax is checked (and 0.0 returned).
    Raises :class:`UsageError` for anything else.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(x|ms)\s*", str(text))
    if not m or not float(m.group(1)) > 0:
        raise UsageError(
            f"{option('latency')} must be a positive fraction of the base's latency like 0.5x, or milliseconds like 3ms, "
            f"got {text!r}"
        )
    value, unit = float(m.group(1)), m.group(2)
    if unit == "x" and value > 1:
        raise UsageError(f"{option('latency')} {text}: a fraction of the base's latency must be at most 1x; try 0.5x")
    if base_ms is None:
        return 0.0
    return value * base_ms if unit == "x" else value


def check_latency(text: str) -> None:
    """Check the syntax of ``--latency`` (a target, or a range ``LOW:HIGH`` for ``--objective pareto``)."""
    for part in str(text).split(":", 1):
        parse_latency(part)


def make_latency_budget(text: str, tolerance: float, base_ms: float) -> Budget:
    """The latency window target ± tolerance x base latency (ms); ``LOW:HIGH`` gives that range.

    Raises :class:`BudgetError` for a target above the base's latency.
    """

    def target(part: str, base: float) -> float:
        ms = parse_latency(part, base)
        if ms > base:
            raise BudgetError(
                f"{option('latency')} {part} ({ms:.3g} ms) is above the base's measured {base:.3g} ms; ask for less"
            )
        return ms

    return make_window(text, tolerance, base_ms, target, "0.3x:0.9x", unit="ms")


# --------------------------------------------------------------------------- the per-layer table


@dataclass(frozen=True)
class _Layer:
    """A conv or linear layer up to its channel counts: one table of times per distinct one."""

    kind: str  # the torch.nn class name: Conv1d/2d/3d or Linear
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1  # the conv's groups when fixed; 0 for depthwise (groups = channels)
    bias: bool = False
    shape: tuple[int, ...] = ()  # the input without batch and channel axes (H, W), or linear's leading axes

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def build(self, c_in: int, c_out: int) -> tuple[nn.Module, tuple[int, ...]]:
        """The layer at ``c_in`` -> ``c_out`` channels, and its input shape with batch 1."""
        if self.kind == "Linear":
            return nn.Linear(c_in, c_out, bias=self.bias), (1, *self.shape, c_in)
        groups = c_in if self.groups == 0 else self.groups
        cls = getattr(nn, self.kind)
        conv = cls(c_in, c_out, self.kernel, self.stride, self.padding, self.dilation, groups, self.bias)
        return conv, (1, c_in, *self.shape)


# every layer's grid is timed beside this one (a 3x3 conv, 64 to 64 channels, at 28x28), whose time rescales them
REFERENCE = _Layer("Conv2d", (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (28, 28))
REFERENCE_CHANNELS = (64, 64)


def _layer_of(module: nn.Module, x: tuple, x_base: tuple) -> _Layer | None:
    if isinstance(module, nn.Linear):
        return _Layer("Linear", bias=module.bias is not None, shape=tuple(x[1:-1]))
    if (
        isinstance(module, nn.modules.conv._ConvNd)
        and not module.transposed
        and type(module).__name__
        in (
            "Conv1d",
            "Conv2d",
            "Conv3d",
        )
    ):
        depthwise = module.groups > 1 and module.groups == x_base[1]
        padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
        return _Layer(
            type(module).__name__,
            tuple(module.kernel_size),
            tuple(module.stride),
            padding,
            tuple(module.dilation),
            0 if depthwise else module.groups,
            module.bias is not None,
            tuple(x[2:]),
        )
    return None


def _channels(layer: _Layer, x: tuple, y: tuple) -> tuple[int, int]:
    return (x[-1], y[-1]) if layer.kind == "Linear" else (x[1], y[1])


def _grid(low: int, high: int, multiple: int, most: int = GRID) -> list[int]:
    """At most ``most`` channel counts from ``low`` to ``high``: both ends, and multiples of a step in
    between (the step a multiple of ``multiple`` and of 8, the common vector width)."""
    step = np.lcm(max(multiple, 1), 8)
    step = int(step * max(1, -(-(high - low) // (step * max(most - 1, 1)))))
    inner = range((low // step + 1) * step, high, step)
    return sorted({low, high, *inner})


def _bracket(grid: list[int], v: float) -> tuple[int, int, float]:
    """Indices (i, j) around ``v`` in ``grid`` and the weight of ``j``; clamped at the ends."""
    j = int(np.searchsorted(grid, v))
    if j <= 0:
        return 0, 0, 0.0
    if j >= len(grid):
        return len(grid) - 1, len(grid) - 1, 0.0
    i = j - 1
    return i, j, (v - grid[i]) / (grid[j] - grid[i])


class LatencyTable:
    """Predicted latency (ms) of a pruned network from its channel plan, for one :class:`Setting`.

    Build it with :meth:`build`; :meth:`predict` takes ``{group root: channels removed}`` as
    :meth:`fnnp_opt.prune.Pruner.counts` gives it, and costs no forward pass.
    """

    def __init__(self, flops: FlopsModel, setting: Setting, entries: dict[str, float], fit: dict) -> None:
        self.flops = flops
        self.setting = setting
        self.entries = entries  # "<layer key>|<c_in>|<c_out>" -> ms of that layer alone, on the reference's scale
        self.reference_ms: float | None = None  # :data:`REFERENCE`'s ms when the first entries were timed
        self.fit = fit  # intercept, per_layer, per_melem (the fit's coefficients), base_ms, base_layout, calibration
        self._grids: dict[_Layer, tuple[list[int], list[int]]] = {}
        self.cache: Path | None = None  # where :meth:`save` writes it
        self.layout_choice: Path | None = None  # where :meth:`save` records an automatic layout choice
        self.base: nn.Module | None = None  # the base's deploy form, timed beside each network :meth:`measure` times
        self._fits: dict[str, dict] = {}

    @property
    def base_ms(self) -> float:
        """The unpruned network's measured latency (ms) as deployed (:func:`deployed_ms`): in its deploy form and
        in its faster layout (:attr:`base_layout`), which need not be the layout the candidates are timed in."""
        return self.fit["base_ms"]

    @property
    def base_layout(self) -> str:
        """The layout :attr:`base_ms` was timed in: the base's faster one."""
        return self.fit["base_layout"]

    def measure(self, model: nn.Module, runs: int = 30) -> tuple[float, float]:
        """``model`` (a pruned base, not yet in deploy form) timed directly in the table's layout, side by side
        with the base as deployed (in :attr:`base_layout`): (its latency in the table's ms, i.e. ``base_ms``
        times the measured ratio; that ratio). A machine busier or idler than when the table was built moves
        both networks, not the comparison."""
        assert self.base is not None  # set where the table is built
        base_now, model_now = compare_ms(
            [self.base, deploy_form(model)],
            self.flops.input_shape,
            self.setting,
            runs=runs,
            layouts=[self.base_layout == "channels-last", self.setting.channels_last],
            quantile=QUIET,
        )
        return self.base_ms * model_now / base_now, model_now / base_now

    def _layers(self, removed: dict[str, int]) -> Iterator[tuple[_Layer, int, int, int]]:
        for _, module, x, y, x_base in self.flops.layers(removed):
            layer = _layer_of(module, x, x_base)
            if layer is not None:
                c_in, c_out = _channels(layer, x, y)
                yield layer, c_in, c_out, int(np.prod(y[1:])) * self.setting.batch

    def _time(self, layer: _Layer, c_in: int, c_out: int) -> float:
        key = f"{layer.key()}|{c_in}|{c_out}"
        if key not in self.entries:
            self._time_side_by_side(layer, [(c_in, c_out)])
        return self.entries[key]

    def _time_side_by_side(self, layer: _Layer, points: list[tuple[int, int]]) -> None:
        """Time a layer at each (c_in, c_out) of ``points`` in one :func:`compare_ms` run: a slow spell of
        the machine then shifts all of them, not some, and the grid stays monotone in the channels."""
        built = [REFERENCE.build(*REFERENCE_CHANNELS)] + [layer.build(a, b) for a, b in points]
        reference, *times = compare_ms(
            [m for m, _ in built],
            [shape for _, shape in built],
            self.setting,
            runs=15,
            warmup=3,
            budget_s=0.3 * len(built),
            quantile=QUIET,
        )
        if self.reference_ms is None:
            self.reference_ms = reference
        scale = self.reference_ms / reference  # the machine as busy as when the first entries were timed
        for (a, b), t in zip(points, times):
            self.entries[f"{layer.key()}|{a}|{b}"] = t * scale

    def features(self, removed: dict[str, int]) -> tuple[float, float]:
        """(sum of the layers' interpolated times in ms, conv and linear outputs in millions of values)."""
        layer_ms, melems = 0.0, 0.0
        for layer, c_in, c_out, elems in self._layers(removed):
            ins, outs = self._grids[layer]
            if layer.groups == 0:  # depthwise: one axis, c_in == c_out
                i, j, w = _bracket(outs, c_out)
                layer_ms += (1 - w) * self._time(layer, outs[i], outs[i]) + w * self._time(layer, outs[j], outs[j])
            else:
                i0, i1, wi = _bracket(ins, c_in)
                o0, o1, wo = _bracket(outs, c_out)
                t = lambda a, b: self._time(layer, ins[a], outs[b])  # noqa: E731
                layer_ms += (1 - wi) * ((1 - wo) * t(i0, o0) + wo * t(i0, o1)) + wi * (
                    (1 - wo) * t(i1, o0) + wo * t(i1, o1)
                )
            melems += elems / 1e6
        return layer_ms, melems

    def predict(self, removed: dict[str, int]) -> float:
        """Predicted latency in ms of the base pruned by ``removed`` ({root: channels removed})."""
        layer_ms, melems = self.features(removed)
        f = self.fit
        return f["intercept"] + f["per_layer"] * layer_ms + f["per_melem"] * melems

    @classmethod
    def build(
        cls,
        base: nn.Module,
        flops: FlopsModel,
        prune_counts: Callable[[dict[str, int]], nn.Module],
        plans: list[dict[str, int]],
        setting: Setting,
        cache: Path | None = None,
        progress: Progress = NULL,
    ) -> "LatencyTable":
        """Time every layer on its grid and fit the whole-network model; reuse ``cache`` when it holds them.

        Nothing is written here: :meth:`save` writes the cache once the caller accepts the table (a
        refused budget leaves no file behind).

        ``plans`` are calibration plans ({root: channels removed}): the base (``{}``) first, then
        plans that span the space (the uniform ratios up to R, and a few random ones). The first
        two reachable extremes of every layer's channels come from the base and the last plan,
        which should be the most pruned (every ratio at R).
        """
        stored = _read_cache(cache)
        if "reference_ms" not in stored:  # entries timed without the reference are on no common scale
            stored = {}
        table = cls(flops, setting, stored.get("entries", {}), {})
        table.reference_ms = stored.get("reference_ms")
        table._grids = table._make_grids(plans)
        fit_key = hashlib.sha256(json.dumps(plans, sort_keys=True).encode()).hexdigest()[:16]
        needed = {
            f"{layer.key()}|{a}|{b}"
            for layer, (ins, outs) in table._grids.items()
            for a, b in _points(layer, ins, outs)
        }
        missing = sorted(needed - set(table.entries))
        fits = dict(stored.get("fits", {}))
        fitted = "base_layout" in fits.get(fit_key, {})  # a fit stored without it timed the base in one layout only
        if missing or not fitted:
            log.info(
                "latency table (%s): timing %d layer shapes and %d whole networks",
                setting.describe(),
                len(missing),
                len(plans),
            )
        by_layer: dict[str, list[tuple[int, int]]] = {}
        for key in missing:
            layer_key, a, b = key.rsplit("|", 2)
            by_layer.setdefault(layer_key, []).append((int(a), int(b)))
        with progress.task("latency table", len(missing)) as advance:
            for layer_key, points in by_layer.items():
                table._time_side_by_side(_Layer(**_tuples(json.loads(layer_key))), points)
                advance(len(points))
        if fitted:
            table.fit = fits[fit_key]
        else:
            table.fit = table._fit(base, prune_counts, plans, progress)
            fits[fit_key] = table.fit
        table.cache, table._fits, table.base = cache, fits, deploy_form(base)
        return table

    def save(self) -> None:
        """Write the table to its cache file (atomically), for the next study, worker or session."""
        doc = {"setting": self.setting.to_dict(), "reference_ms": self.reference_ms, "entries": self.entries}
        _write_cache(self.cache, doc | {"fits": self._fits})
        _write_cache(self.layout_choice, {"layout": self.setting.layout})

    def _make_grids(self, plans: list[dict[str, int]]) -> dict[_Layer, tuple[list[int], list[int]]]:
        spans: dict[_Layer, list[int]] = {}
        for plan in plans:
            for layer, c_in, c_out, _ in self._layers(plan):
                lo_in, hi_in, lo_out, hi_out = spans.setdefault(layer, [c_in, c_in, c_out, c_out])
                spans[layer] = [min(lo_in, c_in), max(hi_in, c_in), min(lo_out, c_out), max(hi_out, c_out)]
        grids = {}
        for layer, (lo_in, hi_in, lo_out, hi_out) in spans.items():
            multiple = max(layer.groups, 1)
            grids[layer] = (_grid(lo_in, hi_in, multiple), _grid(lo_out, hi_out, multiple))
        return grids

    def _fit(self, base: nn.Module, prune_counts, plans: list[dict[str, int]], progress: Progress) -> dict:
        from scipy.optimize import nnls

        input_shape = self.flops.input_shape
        with progress.task("latency fit", len(plans)) as advance:
            models = []
            for plan in plans:
                models.append(deploy_form(base if not plan else prune_counts(plan)))
                advance(1)
        # side by side, so that the fit sees the networks' differences, not the machine's drift between them (in
        # several turns each: one turn caught in a busy spell is outvoted); the base also as deployed, the budget's
        # reference, which the candidates' layout may not be
        [(base_ms, base_cl)], measured = deployed_ms(  # models[0]: the base (plans[0] is {})
            [models[0]], input_shape, self.setting, fixed=models, runs=60, budget_s=30.0, quantile=QUIET
        )
        rows = [[1.0, *self.features(plan)] for plan in plans]
        coef, _ = nnls(np.array(rows), np.array(measured))
        fit = {
            "intercept": float(coef[0]),
            "per_layer": float(coef[1]),
            "per_melem": float(coef[2]),
            "base_ms": base_ms,
            "base_layout": layout_name(base_cl),
        }
        predicted = np.array(rows) @ coef
        fit["calibration_error"] = float(np.median(np.abs(predicted - measured) / measured))
        return fit

    def describe(self) -> dict:
        """What a study stores about its table: the setting, the fit and its size."""
        fit = {k: round(v, 6) if isinstance(v, float) else v for k, v in self.fit.items()}
        return {**self.setting.to_dict(), **fit, "entries": len(self.entries)}


def _points(layer: _Layer, ins: list[int], outs: list[int]) -> Iterator[tuple[int, int]]:
    """The (c_in, c_out) a layer's table times: the grid, or its diagonal for a depthwise conv."""
    if layer.groups == 0:
        yield from ((c, c) for c in outs)
    else:
        yield from ((a, b) for a in ins for b in outs)


def _tuples(d: dict) -> dict:
    return {k: tuple(_tuples_item(x) for x in v) if isinstance(v, list) else v for k, v in d.items()}


def _tuples_item(v):
    return tuple(v) if isinstance(v, list) else v


def cache_file(folder: Path, setting: Setting, architecture: str) -> Path:
    """The cache file of one setting and architecture (``architecture``: a string that names its layers)."""
    key = json.dumps({"setting": setting.to_dict(), "architecture": architecture}, sort_keys=True)
    return folder / f"latency-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _read_cache(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("latency cache %s is unreadable (%s); timing the table again", path, exc)
        return {}


def _write_cache(path: Path | None, doc: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("latency table not cached at %s (%s); the next study times it again", path, exc)


def calibration_plans(pruner, space, seed: int, n: int = CALIBRATION_PLANS) -> list[dict[str, int]]:
    """Plans that span the space for the table's fit: the base, uniform ratios up to R (last: all at R),
    and random vectors in [0, R] between them."""
    rng = np.random.default_rng(seed)
    rates = [space.max_rate * k / 4 for k in (1, 2, 3)]
    random = [
        {d.root: float(r) for d, r in zip(space.dims, rng.uniform(0, space.max_rate, len(space)))}
        for _ in range(max(0, n - 5))
    ]
    uniform = [space.uniform(r) for r in rates]
    return [{}] + [pruner.counts(r) for r in uniform + random] + [pruner.counts(space.uniform(space.max_rate))]


@dataclass(frozen=True)
class Timing:
    """How a latency budget's networks are timed, and where its table is cached."""

    batch: int = 1  # images per forward pass
    threads: int | None = None  # torch threads; None: this process's count
    layout: str = "auto"  # nchw, channels-last, or auto: the faster for a typical candidate (ratios R/2)
    cache: Path | None = None  # folder of the table cache; None: timed afresh, not kept
    seed: int = 0  # draws the random plans the table is fitted on


def study_table(
    timing: Timing, model: nn.Module, flops: FlopsModel, pruner, space, device: str, progress: Progress = NULL
):
    """The latency table of a latency budget (built, or read from ``timing.cache``)."""
    from fnnp_opt.prune import layer_shapes

    cores = os.cpu_count() or 1
    if timing.threads is not None and timing.threads > cores:  # torch would crash or crawl
        raise UsageError(
            f"{option('latency_threads', timing.threads)} is more than this machine's {cores} CPU cores; time with "
            f"{option('latency_threads', cores)} or less (the threads the deployed network will have)"
        )
    setting = Setting(device, timing.threads or torch.get_num_threads(), timing.batch)
    architecture = json.dumps([type(model).__name__, list(flops.input_shape), layer_shapes(model)], sort_keys=True)
    folder = timing.cache
    choice = None
    if timing.layout == "auto":  # what a typical candidate (every ratio at R/2) runs faster in
        # decided once per setting and architecture: a second guess in a later session could flip on a close
        # call, and the study (whose fingerprint names the layout) would no longer resume
        key = cache_file(folder, setting, architecture) if folder is not None else None
        choice = key.with_name(key.name.replace("latency-", "layout-")) if key is not None else None
        layout = _read_cache(choice).get("layout")
        if layout in LAYOUTS[1:]:
            setting = replace(setting, channels_last=layout == "channels-last")
        else:
            typical = pruner.prune(space.uniform(space.max_rate / 2))
            setting = best_layout([deploy_form(typical)], flops.input_shape, setting)
    else:
        setting = replace(setting, channels_last=timing.layout == "channels-last")
    cache = cache_file(folder, setting, architecture) if folder is not None else None
    plans = calibration_plans(pruner, space, timing.seed)
    table = LatencyTable.build(model, flops, pruner.prune_counts, plans, setting, cache, progress)
    table.layout_choice = choice
    log.info(
        "latency (%s): base %.3f ms measured (%s, its faster layout); the table's fit misses its %d calibration "
        "networks by %.1f%% (median)",
        setting.describe(),
        table.base_ms,
        table.base_layout,
        len(plans),
        100 * table.fit["calibration_error"],
    )
    return table
