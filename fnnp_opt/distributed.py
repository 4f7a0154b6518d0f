"""Fine-tuning in several processes under torchrun: the environment, the process groups, rank roles and sharding.

``torchrun --nproc-per-node N -m fnnp_opt.cli run|finetune ...`` starts N copies of the command. Rank 0 does
everything a plain run does (the search, the study, the checkpoints, the test, the export, the summary); the
other ranks (*followers*) touch no storage and write nothing: they wait for rank 0's winner, build and load the
same pruned network, and fine-tune it with rank 0 under DistributedDataParallel.

* **Joining.** Every process joins the job within :data:`JOIN_TIMEOUT` (5 min; torchrun starts them together), and
  waits for it in a side thread, so Ctrl-C and SIGTERM stop a join that cannot succeed (variables set by hand with no
  peer, a port that answers something else); torch's C++ retry log of the join goes to the debug log.
* **Waiting.** The winner travels over a gloo process group whose timeout is :data:`WAIT_TIMEOUT` (7 days), so a
  search of hours is waited out; followers poll the pending receive (no CPU spent, Ctrl-C and SIGTERM honoured).
  If rank 0 fails, torchrun stops the others at once, so the long timeout never decides a failure.
* **Training collectives** (gradients, the epoch's loss, BN statistics) run over a second group, gloo on CPU and
  NCCL on CUDA, whose timeout is :data:`TRAIN_TIMEOUT` (30 min): a hang in the fine-tune fails, it does not wait.
* **Batches.** Every process draws the same global batch of ``--batch-size`` images from the same seeded
  generator (the same shuffle and the same random crops and flips) and keeps its rows (:func:`rows`). Each
  process's loss is weighted by its share (:meth:`Group.share`), so DDP's averaged gradient is the gradient of the
  global batch's mean loss, as in one process.
* **BatchNorm.** Each process normalises with its own rows' statistics (per-rank BN: SyncBatchNorm does not run on
  CPU). The running statistics are averaged over the processes after every epoch (:meth:`Group.average_buffers`),
  so every rank, the checkpoint and the export hold the same ones.
* **Unused parameters.** Before wrapping, one forward and backward of the first batch (:func:`unused_parameters`)
  finds the parameters the loss gives no gradient (an auxiliary head, a branch ``forward`` skips); when any process
  finds some, DDP looks for unused parameters at every step (``find_unused_parameters``), and rank 0 names them.
* **Threads.** torchrun sets ``OMP_NUM_THREADS=1`` for every process when it starts more than one; fnnp-opt reads a
  ``1`` as that default and fine-tunes with ``cores // processes on this node`` threads per process (any other
  ``OMP_NUM_THREADS`` is kept). Rank 0 searches and reports with all the node's cores, which are otherwise idle.

Outside torchrun, or under torchrun with one process, :func:`session` yields None and nothing changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

from fnnp_opt.errors import FnnpError, UsageError, few

if TYPE_CHECKING:  # torch is imported where it is used: `fnnp-opt --help` and a plain run do not load it here
    import torch
    import torch.distributed

log = logging.getLogger(__name__)

JOIN_TIMEOUT = timedelta(minutes=5)  # every process of the job joins within this (torchrun starts them together)
WAIT_TIMEOUT = timedelta(days=7)  # followers wait this long for rank 0's winner (the search may take hours)
TRAIN_TIMEOUT = timedelta(minutes=30)  # a collective of the fine-tune that takes longer has hung
POLL_SECONDS = 0.5  # how often a waiting follower looks at its pending receive
QUIET_JOIN_S = 3.0  # a join that takes longer says what it waits for
COMMANDS = ("run", "finetune")  # the commands that run under torchrun with several processes


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job, as torchrun's environment variables give it."""

    rank: int  # RANK, in [0, world_size): rank 0 searches, writes and prints
    world_size: int  # WORLD_SIZE: processes in the job (every node)
    local_rank: int  # LOCAL_RANK: this process's index on its node (its GPU on CUDA)
    local_world_size: int  # LOCAL_WORLD_SIZE: processes on this node (they share its cores)

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched(environ: Mapping[str, str] = os.environ) -> Launch | None:
    """This process's :class:`Launch` under torchrun with two or more processes; None otherwise (a plain run).

    Raises :class:`UsageError` when torchrun's variables are half there (some of RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE set, or MASTER_ADDR and MASTER_PORT missing for two or more processes), not integers, or
    inconsistent: a job that could not be joined would otherwise end in a traceback, or run alone unnoticed.
    """
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    present = [n for n in names if n in environ]
    if not present:
        return None
    if len(present) < len(names):
        unset = ", ".join(n for n in names if n not in environ)
        raise UsageError(
            f"torchrun sets {', '.join(names)} together, but {unset} is unset (set: {', '.join(present)}); "
            "start fnnp-opt with torchrun, or unset them for a plain run"
        )
    try:
        rank, world, local, local_world = (int(environ[n]) for n in names)
    except ValueError:
        got = ", ".join(f"{n}={environ[n]!r}" for n in names)
        raise UsageError(f"torchrun's variables must be integers, got {got}; start fnnp-opt with torchrun") from None
    if not (0 <= rank < world and 0 <= local < local_world <= world):
        raise UsageError(
            f"torchrun's variables must satisfy 0 <= RANK < WORLD_SIZE and 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= "
            f"WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}, LOCAL_WORLD_SIZE={local_world}; "
            "start fnnp-opt with torchrun"
        )
    if world < 2:
        return None
    missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(n)]
    if missing or not environ["MASTER_PORT"].isdigit():
        got = f"{' and '.join(missing)} unset" if missing else f"MASTER_PORT={environ['MASTER_PORT']!r}"
        raise UsageError(
            f"torchrun's {world} processes meet at MASTER_ADDR:MASTER_PORT (a host and a port number), got {got}; "
            "start fnnp-opt with torchrun"
        )
    return Launch(rank, world, local, local_world)


def check_batch_size(batch_size: int, environ: Mapping[str, str] = os.environ) -> None:
    """Raise :class:`UsageError` when torchrun started more processes than a global batch of ``batch_size`` has
    images (some process would get none). ``run`` checks it before its search, which would otherwise end in it."""
    launch = launched(environ)
    if launch is not None:
        _check_batch(batch_size, launch.world_size)


def _check_batch(batch_size: int, world_size: int) -> None:
    if batch_size < world_size:
        raise UsageError(
            f"--batch-size {batch_size} is split over {world_size} processes (torchrun), so some process would get "
            f"no image of a batch; pass --batch-size {world_size} or more, or start fewer processes"
        )


def node_cores() -> int:
    """CPU cores this process may run on (its affinity mask: taskset and cpusets narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(launch: Launch, environ: Mapping[str, str], cores: int) -> tuple[int, int, str]:
    """Torch threads per process: ``(fine-tune threads, rank 0's search and report threads, why)``.

    A user's ``OMP_NUM_THREADS`` other than 1 is kept for both. A 1 is what torchrun sets for every process when it
    starts more than one (fnnp-opt cannot tell it from the user's), so the fine-tune gets ``cores //`` the processes
    on the node, and rank 0's search (while the others wait) every core.
    """
    given = environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 1:
        return int(given), int(given), f"OMP_NUM_THREADS={given}"
    share = max(1, cores // launch.local_world_size)
    why = f"{cores} cores // {launch.local_world_size} processes on this node"
    return share, cores, why + ("; torchrun's OMP_NUM_THREADS=1 replaced" if given == "1" else "")


def rows(n: int, rank: int, world: int) -> slice:
    """The rows of a global batch of ``n`` images that process ``rank`` of ``world`` takes: consecutive, in rank
    order, sizes within one of each other (``n // world`` or one more); together they cover the batch once."""
    return slice(rank * n // world, (rank + 1) * n // world)


class Group:
    """The job's process groups as this process sees them: rank roles, the winner's hand-over, sharding, and the
    collectives of the fine-tune. Made by :func:`session`."""

    def __init__(self, launch: Launch, train_threads: int, search_threads: int) -> None:
        self.launch = launch
        self.train_threads, self.search_threads = train_threads, search_threads
        self._sent = False
        # the hand-over's group (timeout WAIT_TIMEOUT), made by session
        self._wait_group: torch.distributed.ProcessGroup | None = None
        # the training collectives' group, made by the first fine-tune
        self._train_group: torch.distributed.ProcessGroup | None = None
        self._device: torch.device | None = None  # the fine-tune's device, where the collectives' tensors live

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def main(self) -> bool:
        return self.launch.main

    # ------------------------------------------------------------------ the hand-over from rank 0

    def send(self, payload: object) -> None:
        """Rank 0: send ``payload`` (anything picklable; None: nothing to fine-tune) to every other process.
        Once per session."""
        import torch
        import torch.distributed as dist

        if not self.main or self._sent:
            raise FnnpError(f"only rank 0 sends, once (rank {self.rank}, sent: {self._sent})")
        self._sent = True
        data = torch.frombuffer(bytearray(pickle.dumps(payload)), dtype=torch.uint8)
        dist.broadcast(torch.tensor([len(data)], dtype=torch.int64), src=0, group=self._wait_group)
        dist.broadcast(data, src=0, group=self._wait_group)

    def receive(self) -> object:
        """A follower: wait (up to :data:`WAIT_TIMEOUT`) for rank 0's payload and return it.

        The wait polls a pending receive, so Python stays responsive: SIGTERM and Ctrl-C stop it at once.
        """
        import torch
        import torch.distributed as dist

        size = torch.zeros(1, dtype=torch.int64)
        pending = dist.broadcast(size, src=0, group=self._wait_group, async_op=True)
        assert pending is not None  # async_op=True gives a Work
        while not pending.is_completed():
            time.sleep(POLL_SECONDS)
        pending.wait()  # raises if rank 0 went away
        data = torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(data, src=0, group=self._wait_group)
        return pickle.loads(data.numpy().tobytes())  # from rank 0 of this job, not from a file

    # ------------------------------------------------------------------ the fine-tune

    def device(self, device) -> "torch.device":
        """The device this process fine-tunes on: ``device`` on CPU; on CUDA, the GPU of its local rank."""
        import torch

        device = torch.device(device)
        if device.type != "cuda":
            return device
        if device.index is not None and device.index != self.launch.local_rank:
            raise UsageError(
                f"--device {device} under torchrun: each process uses the GPU of its local rank (cuda:"
                f"{self.launch.local_rank} here); pass --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        torch.cuda.set_device(self.launch.local_rank)
        return torch.device("cuda", self.launch.local_rank)

    def check_batch(self, batch_size: int) -> None:
        """Raise :class:`UsageError` when a global batch leaves some process no image."""
        _check_batch(batch_size, self.world_size)

    def wrap(self, model, device, memory_format, probe: Callable[[], "torch.Tensor"] | None = None):
        """``model`` (built and loaded, on ``device``) in ``memory_format``, wrapped in DistributedDataParallel over
        the training group. DDP starts every process from rank 0's parameters and buffers.

        ``probe`` (None: no probe) returns the loss of a forward of this process's first batch: the parameters it
        gives no gradient in any process (:func:`unused_parameters`) make DDP look for unused parameters at every
        step, which it otherwise refuses at the second step."""
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        device = torch.device(device)
        if self._train_group is None:
            backend = "nccl" if device.type == "cuda" else "gloo"
            train_group = dist.new_group(backend=backend, timeout=TRAIN_TIMEOUT)
            assert isinstance(train_group, dist.ProcessGroup)  # every process is a member
            self._train_group = train_group
        self._device = device
        model.to(memory_format=memory_format)  # before wrapping: DDP's buckets follow the parameters' layout
        unused = self._unused_everywhere(model, probe)
        if unused:
            log.info(
                "torchrun: %d parameters get no gradient from the loss: %s; DistributedDataParallel looks for unused "
                "parameters at every step",
                len(unused),
                few(unused, 10),
            )
        ids = [device.index] if device.type == "cuda" else None
        # parameters and buffers start as rank 0's; then each rank keeps its own BN statistics (no sync at every
        # forward), averaged after each epoch
        return DistributedDataParallel(
            model,
            device_ids=ids,
            process_group=self._train_group,
            forward_sync_buffers=False,
            find_unused_parameters=bool(unused),
        )

    def _unused_everywhere(self, model, probe: Callable[[], "torch.Tensor"] | None) -> list[str]:
        """The trainable parameters of ``model`` that ``probe`` gives no gradient in some process (every process
        must pass DDP the same ``find_unused_parameters``)."""
        import torch
        import torch.distributed as dist

        unused = unused_parameters(model, probe) if probe is not None else []
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        flags = torch.tensor([n in unused for n in names], dtype=torch.int32, device=self._device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._train_group)
        return [n for n, f in zip(names, flags.tolist()) if f]

    def shard(self, batches: Iterable[tuple]) -> Iterator[tuple]:
        """This process's rows (:func:`rows`) of every global batch ``(x, y)`` of ``batches``."""
        for x, y in batches:
            take = rows(len(y), self.rank, self.world_size)
            yield x[take], y[take]

    def share(self, rows_here: int, batch_size: int) -> float:
        """The weight of this process's mean loss over ``rows_here`` of a global ``batch_size``: DDP averages the
        processes' gradients, so ``rows_here * world / batch_size`` makes the average the global mean's gradient."""
        return rows_here * self.world_size / batch_size

    def sum(self, value: float) -> float:
        """``value`` summed over the processes."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self._device)
        dist.all_reduce(t, group=self._train_group)
        return float(t.item())

    def average_buffers(self, model) -> None:
        """Replace every floating-point buffer of ``model`` (BatchNorm's running mean and variance) by its mean over
        the processes; integer buffers (batches counted) are equal everywhere and left as they are."""
        import torch.distributed as dist

        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, group=self._train_group)
                buf.div_(self.world_size)

    def check_same(self, model) -> None:
        """Raise :class:`FnnpError` unless every process holds bit-identical parameters and buffers."""
        import torch
        import torch.distributed as dist

        mine = torch.tensor(list(state_digest(model)), dtype=torch.uint8, device=self._device)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine, group=self._train_group)
        differ = [r for r, d in enumerate(every) if not torch.equal(d, every[0])]
        if differ:
            raise FnnpError(
                f"after the fine-tune, the weights of ranks {differ} differ from rank 0's: the processes diverged "
                "(a bug); rerun without torchrun, and report it"
            )

    def use_training_threads(self) -> int:
        """Run :attr:`train_threads` torch threads from now on; returns the count before (to restore after)."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.train_threads)
        return before


def unused_parameters(model, probe: Callable[[], "torch.Tensor"]) -> list[str]:
    """Names of ``model``'s trainable parameters that get no gradient when the loss ``probe()`` returns (a forward of
    ``model`` in train mode) is backpropagated once. The model's mode, gradients and buffers (BN statistics) and the
    random generators (dropout) are left as they were."""
    import torch

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = [p.grad for _, p in params]
    buffers = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    gpus = sorted({p.device.index for _, p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=gpus):
        try:
            model.train()
            for _, p in params:
                p.grad = None
            probe().backward()
            return [n for n, p in params if p.grad is None]
        finally:
            model.train(was_training)
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
            for (_, p), g in zip(params, grads):
                p.grad = g


def state_digest(model) -> bytes:
    """SHA-256 of every tensor of ``model``'s state dict (names, shapes, dtypes, values): equal digests mean
    bit-identical weights."""
    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


_current: Group | None = None


def current() -> Group | None:
    """The :class:`Group` of the open :func:`session`; None in a plain run (no torchrun, or one process)."""
    return _current


def _join() -> None:
    """``init_process_group`` (gloo, env://) with :data:`JOIN_TIMEOUT`, run in a daemon thread while this thread
    polls it: torch's store connect blocks in C++ (past its timeout when the port answers something else), where no
    signal reaches Python. Raises what the join raised, :class:`TimeoutError` past the timeout (the thread is left
    to the process's exit), and KeyboardInterrupt/SystemExit from Ctrl-C/SIGTERM meanwhile. torch's C++ log of the
    join (retries, with their stack frames) is written to the debug log, not the screen."""
    import tempfile
    import threading

    import torch.distributed as dist

    outcome: list[BaseException | None] = []

    def join() -> None:
        try:
            dist.init_process_group("gloo", timeout=JOIN_TIMEOUT)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread)
            outcome.append(exc)

    deadline = time.monotonic() + JOIN_TIMEOUT.total_seconds() + 10  # the store's own timeout fires first
    with tempfile.TemporaryFile() as cpp_log:
        stderr = os.dup(2)
        os.dup2(cpp_log.fileno(), 2)  # c10's logger writes to fd 2
        try:
            thread = threading.Thread(target=join, name="fnnp-torchrun-join", daemon=True)
            thread.start()
            thread.join(QUIET_JOIN_S)
            if not outcome:  # the others are not up yet: say what this process waits for (on the saved fd 2)
                where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                minutes = JOIN_TIMEOUT.total_seconds() / 60
                text = f"waiting for torchrun's other processes at {where} (up to {minutes:g} min)\n"
                os.write(stderr, text.encode())
            while not outcome and time.monotonic() < deadline:
                thread.join(POLL_SECONDS)
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
            cpp_log.seek(0)
            text = cpp_log.read().decode(errors="replace").strip()
            if text:
                log.debug("torch's log while joining torchrun's job:\n%s", text)
    if not outcome:
        raise TimeoutError(f"no answer in {JOIN_TIMEOUT.total_seconds():.0f} s")
    if outcome[0] is not None:
        raise outcome[0]


@contextmanager
def session(environ: Mapping[str, str] = os.environ) -> Iterator[Group | None]:
    """Join the torchrun job this process belongs to, for the block; yield its :class:`Group`, or None outside
    torchrun (or with one process), where nothing changes.

    Sets the torch threads (:func:`choose_threads`, logged) and quiets the followers' info logs. When the block ends
    on rank 0 without a winner sent (nothing to fine-tune, or an error), None is sent so the followers
    end too. The process groups are destroyed at the end.
    """
    global _current
    launch = launched(environ)
    if launch is None:
        yield None
        return
    import torch
    import torch.distributed as dist

    try:  # env:// from torchrun
        _join()
        # the join's timeout is also its store's: give the store back the long wait (the followers load their data
        # after rank 0's search, and later groups meet through it), and make the winner's hand-over group
        dist.distributed_c10d._get_default_store().set_timeout(WAIT_TIMEOUT)
        wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)  # every process is up: no wait here
        assert isinstance(wait_group, dist.ProcessGroup)  # every process is a member
    except (RuntimeError, ValueError, OSError, TimeoutError) as exc:  # torch's DistNetworkError and DistStoreError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FnnpError(
            f"process {launch.rank} of {launch.world_size} could not join torchrun's job at "
            f"{environ.get('MASTER_ADDR')}:{environ.get('MASTER_PORT')} ({first}); start fnnp-opt with torchrun, "
            "and check that rank 0's host and port are reachable"
        ) from exc
    train, search, why = choose_threads(launch, environ, node_cores())
    group = Group(launch, train, search)
    group._wait_group = wait_group
    torch.set_num_threads(search if launch.main else train)
    if launch.main:
        log.info(
            "torchrun: %d processes (%d on this node); fine-tune threads per process: %d (%s); rank 0's search "
            "and report: %d",
            launch.world_size,
            launch.local_world_size,
            train,
            why,
            search,
        )
    else:  # rank 0 reports; the others only warn
        fnnp_log = logging.getLogger("fnnp_opt")
        fnnp_log.setLevel(max(fnnp_log.getEffectiveLevel(), logging.WARNING))
    _current = group
    try:
        yield group
    finally:
        _current = None
        if launch.main and not group._sent:
            try:  # the followers end too; if they are gone already (torchrun stopping the job), never mind
                group.send(None)
            except Exception as exc:  # noqa: BLE001
                log.debug("could not tell the other processes to stop: %s", exc)
        dist.destroy_process_group()
