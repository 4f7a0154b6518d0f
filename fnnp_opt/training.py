"""Training and fine-tuning: SGD with momentum and a cosine schedule, resumable per epoch."""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fnnp_opt import distributed
from fnnp_opt.data import Augment, Batch, TrainSet
from fnnp_opt.errors import CheckpointError
from fnnp_opt.evaluate import NonFiniteError, run_batches, to_device
from fnnp_opt.kernels import onednn_unsafe, without_onednn
from fnnp_opt.progress import NULL, Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 3  # passes over the train part
    lr: float = 0.02  # peak learning rate; cosine-annealed to 0 over all steps
    batch_size: int = 128  # images per step
    momentum: float = 0.9  # SGD momentum (Nesterov)
    weight_decay: float = 5e-4  # L2 penalty on conv and linear weights (not on BN or biases)
    seed: int = 0  # shuffling and augmentation seed


@dataclass(frozen=True)
class Distill:
    """Knowledge distillation from the unpruned network (Hinton et al., 2015, "Distilling the Knowledge in a
    Neural Network"): the loss is ``(1 - weight) * CE(student, labels) + weight * T^2 * KL(teacher_T || student_T)``,
    where ``x_T`` are the logits divided by the temperature ``T``, softened into probabilities."""

    temperature: float = 4.0  # T > 0: softens both distributions; T^2 keeps the KL gradient's scale
    weight: float = 0.5  # in [0, 1]: the KL term's share; 0 is plain cross-entropy fine-tuning


def distill_loss(
    logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None, distill: Distill | None
) -> torch.Tensor:
    """Cross-entropy of ``logits`` (N, classes) against labels ``target`` (N,), mixed with the KL divergence
    from ``teacher_logits`` (N, classes) when distilling. Returns a scalar (mean over the batch)."""
    ce = F.cross_entropy(logits, target)
    if distill is None or teacher_logits is None:
        return ce
    t = distill.temperature
    kl = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - distill.weight) * ce + distill.weight * t * t * kl


def _read_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The epoch checkpoint at ``path``, or None (with a warning) when it is damaged: that only costs the epochs it
    held, and the next epoch replaces it. :class:`CheckpointError` when the system cannot read it (permissions, an
    I/O error): that file is left alone."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as exc:  # the file is there but cannot be read: not damage, and not to be overwritten
        raise CheckpointError(
            f"epoch checkpoint {path} cannot be read ({exc.strerror or exc}); make it readable, or remove it to "
            "train from the first epoch"
        ) from None
    except Exception as exc:  # noqa: BLE001  (damage: unpickling, zip and torch format errors alike)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("ignoring %s: it is not a readable checkpoint (%s); training from the first epoch", path, first)
        return None
    if not isinstance(state, dict):
        log.warning("ignoring %s: it holds a %s, not a checkpoint; training from the first epoch", path, type(state))
        return None
    return state


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(
    model: nn.Module,
    train: TrainSet,
    cfg: FitConfig,
    *,
    augment: Augment | None = None,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    tag: str = "",
    progress: Progress = NULL,
    teacher: nn.Module | None = None,
    distill: Distill | None = None,
    log_epochs: bool = True,
) -> list[float]:
    """Train ``model`` in place and return the mean training loss of each epoch.

    Each epoch's loss is logged at INFO (the plain log lines off a terminal); ``log_epochs=False`` logs it at
    DEBUG, for the short fine-tunes of a score, which are not the fine-tune a user waits for.

    When ``checkpoint`` is given, the state is saved there after every epoch and a
    later call with the same ``tag`` resumes after the last finished epoch. With a
    ``teacher`` and ``distill``, the loss is :func:`distill_loss`; the teacher runs in eval
    mode without gradients and is left unchanged.

    Under torchrun (:func:`fnnp_opt.distributed.session`), every process calls this with the same arguments: the
    model is wrapped in DistributedDataParallel after the checkpoint is loaded, each process trains on its rows of
    every global batch of ``cfg.batch_size``, and rank 0 alone writes the checkpoint, whose state is global (it
    resumes with any process count).
    """
    device = torch.device(device)
    group = distributed.current()  # None in a plain run, which the lines for a group leave unchanged
    if group is not None:
        device = group.device(device)
        group.check_batch(cfg.batch_size)
        threads_before = group.use_training_threads()
    unsafe = onednn_unsafe(model, device)
    memory_format = torch.contiguous_format if unsafe else torch.channels_last  # channels-last: ~20% faster on CPU
    model.to(device=device)
    if teacher is not None and distill is not None:
        teacher_was_training = teacher.training
        # torch's stubs lack Module.to(device=..., memory_format=...), which torch accepts
        teacher.to(device=device, memory_format=memory_format).eval()  # type: ignore[call-overload]
    else:
        teacher = distill = None
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=True,
    )
    steps_per_epoch = len(train) // cfg.batch_size
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history = 0, []
    tag = f"{tag}|{sorted(asdict(cfg).items())}" + (f"|distill{sorted(asdict(distill).items())}" if distill else "")

    state = _read_checkpoint(checkpoint, device) if checkpoint is not None and checkpoint.is_file() else None
    if state is not None:
        if state.get("tag") == tag:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            start, history = int(state["epoch"]), list(state["history"])
            log.info("resuming training after epoch %d from %s", start, checkpoint)
        else:
            log.warning("ignoring %s: it belongs to a different run", checkpoint)
    if group is None:
        net = model
    else:  # DDP: after the load; probed on this process's rows of the first global batch (gen left as it is)
        peek = torch.Generator()
        peek.set_state(gen.get_state())
        peeked = train.shuffled(cfg.batch_size, peek, augment)
        first = next(group.shard(peeked), None)
        peeked.close()  # an image folder's loader processes end now

        def probe() -> torch.Tensor:
            assert first is not None  # passed to wrap only with a first batch
            x, y = to_device(first, device, memory_format)
            return distill_loss(model(x), y, None, None)

        with without_onednn() if unsafe else nullcontext():  # the probe trains as the steps do
            net = group.wrap(model, device, memory_format, probe if first is not None else None)

    for epoch in range(start, cfg.epochs):
        net.train()
        loss_sum, steps = 0.0, 0

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            nonlocal loss_sum, steps
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
            else:
                teacher_logits = None
            loss = distill_loss(net(x), y, teacher_logits, distill)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"training loss became {loss.item()} in epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            if group is None:
                loss.backward()
            else:  # weighted by this process's share, DDP's mean gradient is the global batch's
                (loss * group.share(len(y), cfg.batch_size)).backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() if group is None else loss.item() * len(y) / cfg.batch_size
            steps += 1

        # global batches, the same in every process
        batches: Iterator[Batch] = train.shuffled(cfg.batch_size, gen, augment)
        if group is not None:
            batches = group.shard(batches)
        with without_onednn() if unsafe else nullcontext():
            what = f"epoch {epoch + 1}/{cfg.epochs}"
            run_batches(model, batches, device, step, progress, what, steps_per_epoch, memory_format)
        if group is not None:
            loss_sum = group.sum(loss_sum)  # the global batches' mean losses
            group.average_buffers(model)  # BN running statistics: their mean over the processes
        history.append(loss_sum / max(steps, 1))
        log.log(
            logging.INFO if log_epochs else logging.DEBUG, "epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, history[-1]
        )
        if checkpoint is not None and (group is None or group.main):
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            _save_atomic(
                {
                    "tag": tag,
                    "epoch": epoch + 1,
                    "history": history,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "generator": gen.get_state(),
                },
                checkpoint,
            )
    if group is not None:
        group.check_same(model)
        torch.set_num_threads(threads_before)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    if teacher is not None:
        teacher.to(memory_format=torch.contiguous_format).train(teacher_was_training)
    return history


def train_base(
    model_name: str,
    dataset: str,
    output: Path,
    cfg: FitConfig,
    *,
    data_dir: Path | None = None,
    search_size: int | None = None,
    search_per_class: int | None = None,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    command: str = "",
    progress: Progress = NULL,
) -> dict:
    """Train a base model from scratch on the train part and save it as safetensors plus a JSON card.

    The search split is held out exactly as a study holds it out, so a shipped base
    model has never seen the images that score candidates. Returns the card.
    """
    import time

    from fnnp_opt.data import load_splits, resolve_dataset
    from fnnp_opt.evaluate import accuracy
    from fnnp_opt.export import check_output_writable, save_weights_and_card
    from fnnp_opt.latency import machine
    from fnnp_opt.models import check_input, create_model
    from fnnp_opt.options import check_batch_fits, check_lr, check_seed, check_split

    check_lr(cfg.lr)
    check_seed(cfg.seed)
    check_split(search_size, search_per_class, image_size)
    output = Path(output)
    check_output_writable(output)
    info = resolve_dataset(dataset, data_dir, image_size)
    torch.manual_seed(cfg.seed)  # the initial weights
    model = create_model(model_name, info.in_channels, info.num_classes)
    check_input(model, model_name, (1, info.in_channels, info.image_size, info.image_size), info.num_classes)
    splits = load_splits(
        dataset,
        data_dir,
        search_size=search_size,
        search_per_class=search_per_class,
        image_size=image_size,
        abn_batches=1,
        abn_batch_size=1,
    )
    check_batch_fits(cfg.batch_size, len(splits.train))
    t0 = time.perf_counter()
    history = fit(
        model,
        splits.train,
        cfg,
        augment=splits.augment,
        device=device,
        checkpoint=output.with_suffix(".resume.pt"),
        tag=f"train|{model_name}|{dataset}|{splits.fingerprint}",
        progress=progress,
    )
    minutes = (time.perf_counter() - t0) / 60
    test_acc = accuracy(model, splits.test_batches(500), device, progress, "test")
    model.cpu()
    card = {
        "model": model_name,
        "dataset": dataset,
        "command": command,
        "fit": asdict(cfg),
        "train_images": len(splits.train),
        "held_out_search_images": len(splits.search),
        "test_accuracy": round(test_acc, 4),
        "final_train_loss": round(history[-1], 4) if history else None,
        # wall minutes of the `fnnp-opt train` process that finished the training (a resumed one counts from its
        # resume), on this machine
        "wall_minutes": round(minutes, 1),
        "machine": {"processor": machine(str(device)), "cpu_cores": os.cpu_count(), "device": str(device)},
        "torch": torch.__version__,
    }
    save_weights_and_card(model, output, output.with_suffix(".json"), card)
    output.with_suffix(".resume.pt").unlink(missing_ok=True)
    return card
