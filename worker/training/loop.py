"""The one training loop, driving a ``Task`` (task.py): ``fit``, ``train_one_epoch``, ``evaluate``.

Metrics (``ctx.report_metrics``; steps are global optimizer steps counted from 1, epochs from 1,
every point carries the epoch its step belongs to):

- every ``log_every_steps`` steps: each of the task's ``logged`` metrics (``train_loss``), the
  sample-weighted mean of the steps since the previous log point (a step that ends an epoch
  reports the epoch's mean instead);
- at the last step of each epoch: the epoch mean of every training metric the task's step
  returns (``train_loss``; a finetune adds ``train_accuracy``), its evaluation metrics on the
  test split as ``test_*`` (``test_loss``, ``test_accuracy``) and, with ``val_fraction``, on the
  validation split as ``val_*``; then ``lr`` (the rate of the epoch's last step), ``epoch_seconds``
  (training plus evaluation) and ``samples_per_second`` (training images per second of training).

The task's ``primary`` metric (``test_accuracy`` for finetune, ``test_loss`` for pretrain) picks the
best checkpoint. ``ctx.on_progress`` is called at log points and epoch ends. The learning rate of
step ``i`` is ``lr * make_lr_factor(...)(i)`` on every optimizer the task has: a pure function of
the step, so nothing about the schedule needs saving.

Checkpoints (``saving.py``, in ``ctx.work_dir``): ``best`` when the primary metric improves, ``last`` every
``checkpoint_every_epochs`` epochs but not within ``checkpoint_min_seconds`` of the previous write, after the
final epoch, and at the exact step where ``ctx.should_stop()`` turned true (polled before each step), then
``StopRequested`` is raised; resuming from it continues bit for bit on CPU.

With ``train.early_stopping``, the run ends after the epoch where the rule fires: ``last`` is saved
then, and the result says ``stopped_early`` and ``stopped_epoch``.

A logged metric that is NaN or infinite is found at the next log point or epoch end without a sync
per step, and raises ``TrainingError("loss became NaN at epoch E, step S")`` naming the first bad step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from app.core.protocol import Result
from app.core.specs import AnyJobSpec, TrainSpec

from . import phases
from .checkpoints import load_checkpoint
from .context import MetricPoint, StopRequested, TrainingContext
from .data import Images, Splits, epoch_batches, flip_crop, normalize, steps_per_epoch
from .errors import OutOfMemory, TrainingError
from .phases import PhasePlan
from .progress import Progress
from .saving import Saver, restore_checkpoint
from .stopping import StoppingState, fires
from .task import Batch, Task


@dataclass
class Run:
    """Everything fixed for the length of a run."""

    spec: AnyJobSpec
    ctx: TrainingContext
    task: Task
    data: Splits
    lr_factor: Callable[[int], float]
    steps_per_epoch: int
    plans: list[PhasePlan]
    phase: PhasePlan
    saver: Saver


def fit(spec: AnyJobSpec, ctx: TrainingContext, task: Task, splits: Splits) -> Result:
    """Train ``task`` on ``splits`` as ``spec.train`` says; returns the job's result dict."""
    device = task.runtime.device
    data = Splits(
        splits.train.to(device),
        splits.test.to(device),
        splits.val.to(device) if splits.val is not None else None,
        splits.num_classes,
    )
    if len(data.train) < 2 * ctx.ranks.world:
        raise TrainingError(
            f"the job's {ctx.ranks.world} ranks need at least 2 training images each; it has {len(data.train)}"
        )
    per_epoch = steps_per_epoch(len(data.train), spec.train.batch_size, ctx.ranks.world)
    for optimizer in task.optimizers():
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    plans = phases.plan(spec.train, per_epoch)
    saver = Saver(spec.train.checkpoint_min_seconds)
    run = Run(spec, ctx, task, data, make_lr_factor(spec.train, per_epoch), per_epoch, plans, plans[0], saver)
    progress = Progress()
    if ctx.resume_from is not None:
        checkpoint = load_checkpoint(ctx.resume_from)
        saved = checkpoint.get("phase", 0)
        if not isinstance(saved, int) or not 0 <= saved < len(plans):
            raise TrainingError(f"the checkpoint to resume from was taken in phase {saved}, which this job lacks")
        enter_phase(run, plans[saved])  # its optimizer, to take the saved state back
        restore_checkpoint(run, progress, checkpoint)
    else:
        enter_phase(run, plans[0])
    try:
        while True:
            if progress.epoch_finished(run.steps_per_epoch):
                if progress.epoch >= spec.train.epochs or progress.stopping.stopped_epoch is not None:
                    break
                progress.begin_epoch()
                if progress.epoch > run.phase.last_epoch:
                    enter_phase(run, phases.phase_of(plans, progress.epoch))
                    progress.stopping = StoppingState()  # early stopping looks at the last phase alone
            train_one_epoch(run, progress)
            finish_epoch(run, progress)
    except torch.OutOfMemoryError:
        raise OutOfMemory(
            f"out of device memory with batch_size {spec.train.batch_size}: lower train.batch_size"
        ) from None
    return _result(run, progress)


def make_lr_factor(train: TrainSpec, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier of optimizer step ``i`` (0-based), a pure function of ``i``.

    Warmup rises linearly over ``warmup_epochs``; then constant, cosine to 0, or onecycle
    (from lr/25 up to lr over the warmup, 30% of the run when none is given, then cosine to 0).
    """
    total = train.epochs * steps_per_epoch
    warmup = train.warmup_epochs * steps_per_epoch
    if train.schedule == "onecycle" and warmup == 0:
        warmup = max(1, round(0.3 * total))

    def factor(i: int) -> float:
        if i < warmup:
            if train.schedule == "onecycle":
                return 0.04 + 0.96 * i / warmup
            return (i + 1) / warmup
        if train.schedule == "constant":
            return 1.0
        done = (i - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return factor


def enter_phase(run: Run, phase: PhasePlan) -> None:
    """Make ``phase`` the run's: its optimizer (a job with phases) and its learning-rate schedule."""
    if phase.freeze_backbone is not None:
        run.task.enter_phase(phase.train, phase.freeze_backbone)
        for optimizer in run.task.optimizers():
            for group in optimizer.param_groups:
                group["initial_lr"] = group["lr"]
    factor = make_lr_factor(phase.train, run.steps_per_epoch)
    run.phase, run.lr_factor = phase, lambda i: factor(i - phase.first_step)


def set_learning_rate(task: Task, factor: float) -> None:
    for optimizer in task.optimizers():
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor


def train_one_epoch(run: Run, progress: Progress) -> None:
    """Train the steps of ``progress.epoch`` that are not done yet; may save and raise StopRequested."""
    train, task = run.spec.train, run.task
    augment = run.spec.dataset.augment == "flip_crop"
    task.train_mode()
    started = time.perf_counter()
    ranks = run.ctx.ranks
    for images, labels in epoch_batches(
        run.data.train, train.batch_size, train.seed, progress.epoch, progress.step_in_epoch, ranks.world
    ):
        if run.ctx.should_stop():
            progress.epoch_seconds += time.perf_counter() - started
            check_finite(run, progress)
            progress.combine(ranks)  # every rank's share of the unfinished epoch, in rank 0's checkpoint
            run.saver.stop_now(run, progress)
            raise StopRequested(f"stopped at epoch {progress.epoch}, step {progress.step}")
        step = progress.step + 1
        set_learning_rate(task, run.lr_factor(step - 1))
        batch = Batch(normalize(images), labels, train.seed, progress.epoch, step)
        if augment:
            batch.x = flip_crop(batch.x, batch.rng())
        batch.shard(ranks)  # the whole batch is drawn and augmented alike on every rank; each trains on its rows
        progress.record(step, task.train_step(batch), batch.size)
        if step % train.log_every_steps == 0 and progress.step_in_epoch < run.steps_per_epoch:
            _log_window(run, progress)
    if task.runtime.device.type == "cuda":
        torch.cuda.synchronize(task.runtime.device)
    progress.epoch_seconds += time.perf_counter() - started


def _nan_error(name: str, epoch: int, step: int, value: float) -> TrainingError:
    what = "loss" if name == "train_loss" else name
    return TrainingError(
        f"{what} became NaN at epoch {epoch}, step {step}" + ("" if math.isnan(value) else " (it was inf)")
    )


def check_finite(run: Run, progress: Progress) -> dict[str, list[float]]:
    """The logged metrics' sums of each step of the log window (one sync); raises TrainingError at the first NaN or inf."""
    logged = run.task.logged
    if not progress.window:
        return {name: [] for name in logged}
    stacked = torch.stack([w.values[name] for w in progress.window for name in logged])
    flat: list[float] = run.ctx.ranks.all_sum(stacked).tolist()
    sums = {name: flat[i :: len(logged)] for i, name in enumerate(logged)}
    for i, w in enumerate(progress.window):
        for name in logged:
            if not math.isfinite(sums[name][i]):
                raise _nan_error(name, w.epoch, w.step, sums[name][i])
    return sums


def _log_window(run: Run, progress: Progress) -> None:
    sums = check_finite(run, progress)
    images = sum(w.n for w in progress.window)
    points = [
        MetricPoint(name=name, step=progress.step, epoch=progress.epoch, value=sum(series) / images)
        for name, series in sums.items()
    ]
    progress.window.clear()
    run.ctx.report_metrics(points)
    run.ctx.on_progress(progress.epoch, run.spec.train.epochs, progress.step)


@torch.no_grad()
def evaluate(run: Run, images: Images) -> dict[str, float]:
    """The mean of each of the task's evaluation metrics over ``images``, without augmentation or noise; each
    rank of a distributed job evaluates every world-th image (all of them, when there are fewer than ranks)."""
    task, ranks = run.task, run.ctx.ranks
    task.eval_mode()
    shard, count = images, len(images)
    if ranks.distributed and len(images) >= ranks.world:
        shard = Images(images.x[ranks.rank :: ranks.world], images.y[ranks.rank :: ranks.world])
    elif ranks.distributed:
        count *= ranks.world
    sums: dict[str, Tensor] = {}
    batch = 2 * run.spec.train.batch_size
    for i in range(0, len(shard), batch):
        x, labels = normalize(shard.x[i : i + batch]), shard.y[i : i + batch]
        for name, value in task.eval_step(x, labels).items():
            sums[name] = sums[name] + value if name in sums else value
    return {name: total / count for name, total in ranks.sums(sums).items()}


def finish_epoch(run: Run, progress: Progress) -> None:
    """Evaluate, report the epoch's metrics, and write the checkpoints that are due."""
    train, task = run.spec.train, run.task
    check_finite(run, progress)
    metrics = {name: total / progress.epoch_samples for name, total in run.ctx.ranks.sums(progress.epoch_sums).items()}
    for name in task.logged:
        if not math.isfinite(metrics[name]):
            raise _nan_error(name, progress.epoch, progress.step, metrics[name])
    if progress.step % train.log_every_steps == 0:
        progress.window.clear()  # this log point reports the epoch mean
    started = time.perf_counter()
    splits = {"test": run.data.test, "val": run.data.val}
    for prefix, images in splits.items():
        if images is not None:
            metrics.update({f"{prefix}_{name}": value for name, value in evaluate(run, images).items()})
    metrics["lr"] = run.phase.train.lr * run.lr_factor(progress.step - 1)
    metrics["epoch_seconds"] = progress.epoch_seconds + time.perf_counter() - started
    metrics["samples_per_second"] = progress.epoch_samples / max(progress.epoch_seconds, 1e-9)
    progress.last_metrics = metrics
    run.ctx.report_metrics(
        [MetricPoint(name=name, step=progress.step, epoch=progress.epoch, value=v) for name, v in metrics.items()]
    )
    run.ctx.on_progress(progress.epoch, train.epochs, progress.step)
    for name, path in task.epoch_artifacts(run.ctx.work_dir, progress.epoch):
        run.ctx.on_artifact(name, path)

    primary = metrics[task.primary]
    improved = task.improves(primary, progress.best_metric)
    if improved:
        progress.best_metric, progress.best_epoch = primary, progress.epoch
    stops = (
        train.early_stopping is not None
        and progress.epoch < train.epochs  # at the last epoch there is nothing left to stop
        and run.phase is run.plans[-1]  # earlier phases (a probe) run in full
        and fires(train.early_stopping, progress.stopping, metrics, progress.epoch)
    )
    run.saver.epoch_end(
        run,
        progress,
        improved=improved,
        last=progress.epoch == train.epochs or stops,
        every=progress.epoch % train.checkpoint_every_epochs == 0,
        metric=primary,
    )


def _result(run: Run, progress: Progress) -> Result:
    primary, last = run.task.primary, progress.last_metrics
    result: Result = {
        "primary_metric": primary,
        primary: last[primary],
        f"best_{primary}": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "epochs": progress.epoch,
        "steps": progress.step,
    }
    for name in (*run.task.logged, "test_loss", "train_accuracy", "test_accuracy", "val_loss", "val_accuracy"):
        if name in last:
            result[name] = last[name]
    if run.spec.train.early_stopping is not None:
        result["stopped_early"] = progress.stopping.stopped_epoch is not None
        result["stopped_epoch"] = progress.stopping.stopped_epoch
    return result
