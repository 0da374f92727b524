"""Checkpoints of a run: what goes in one, when one is written (``Saver``), and resuming from one.

A ``.pt`` checkpoint is a dict that loads with ``torch.load(path, weights_only=True)``: the task's
weights (``model``), and in ``last`` its optimizers' state too (``optimizer``; a GAN's ``g_optimizer``),
``epoch`` (of the last step taken), ``step`` (global), ``step_in_epoch``, ``steps_per_epoch``, ``rng``
({"torch", "cuda"}), ``best_metric``, ``best_epoch``, ``primary_metric``, ``last_metrics`` (the last
epoch's metrics), ``early_stopping`` (the rule's state: ``stopping.py``), ``phase``, ``partial`` (the
unfinished epoch's and log window's sums), ``kind``, ``spec`` (``model_dump(mode="json", by_alias=True)``)
and ``trainjobs_version``. ``best`` holds no optimizer state (a third of ``last``'s size with Adam): it
is for using the model, and for resuming only when ``last`` is gone (then the optimizer starts afresh).
Each ``<tag>.pt`` comes with ``<tag>.safetensors``: the weights alone (metadata: epoch, step, spec JSON,
trainjobs_version).

When (``Saver``): ``last`` every ``train.checkpoint_every_epochs`` epochs, but not within
``train.checkpoint_min_seconds`` of the previous write (a long run of short epochs would otherwise spend
much of its time writing), and always after the final epoch, when early stopping fires, and at the exact
step of a stop request. ``best`` at the end of an epoch whose primary metric beats all earlier ones; within
``checkpoint_min_seconds`` of the previous write its weights are kept in memory (on the CPU) instead and
written with the next checkpoint, or a later best replaces them. So every ``last`` written has the best
it knows of written before it, and a resumed run's best is never one that was lost.

After a file is complete, ``ctx.on_checkpoint(tag, path, epoch, step, metric, sha256)`` is called: per tag
(``best`` before ``last``) first the ``.pt`` path, then the ``.safetensors`` path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from app import __version__
from app.core.states import CheckpointTag

from .checkpoints import save_torch, save_weights
from .errors import TrainingError
from .progress import Progress

if TYPE_CHECKING:
    from .loop import Run

HOLD_BYTES = 512 * 1024**2
"""A best checkpoint's weights up to this size are held in memory until the next write; larger ones are written at once."""


@dataclass
class Snapshot:
    """A checkpoint taken, ready to write: its dict, its weights and where it was taken."""

    checkpoint: dict[str, Any]
    epoch: int
    step: int
    metric: float | None


@dataclass
class Saver:
    min_seconds: float
    written_at: float = field(default_factory=lambda: time.monotonic())
    """When a checkpoint was last written (the run's start counts as one)."""
    held: Snapshot | None = None
    """A best checkpoint not written yet."""

    def epoch_end(
        self, run: Run, progress: Progress, *, improved: bool, last: bool, every: bool, metric: float
    ) -> None:
        """At an epoch's end: write ``best`` (``improved``) and ``last`` when they are due. ``last``: due
        whatever the time (the final epoch, an early stop); ``every``: due if the time allows."""
        if not run.ctx.ranks.chief:
            return
        in_time = time.monotonic() - self.written_at >= self.min_seconds
        last = last or (every and in_time)
        if improved:
            best = take(run, progress, metric, optimizer=False)
            held = None if last or in_time else holdable(best)
            if held is None:
                self.held = None
                write(run, CheckpointTag.BEST, best)
            else:
                self.held = held
        if last:
            self.flush(run)
            write(run, CheckpointTag.LAST, take(run, progress, metric, optimizer=True))
        if last or (improved and self.held is None):
            self.written_at = time.monotonic()

    def stop_now(self, run: Run, progress: Progress) -> None:
        """At a stop request: the best held, then ``last`` of this very step."""
        if not run.ctx.ranks.chief:
            return
        self.flush(run)
        write(run, CheckpointTag.LAST, take(run, progress, None, optimizer=True))

    def flush(self, run: Run) -> None:
        if self.held is not None:
            write(run, CheckpointTag.BEST, self.held)
            self.held = None


def take(run: Run, progress: Progress, metric: float | None, *, optimizer: bool) -> Snapshot:
    """The checkpoint of where the run is now (its tensors the run's own: write it before the next step)."""
    state = run.task.state_dict() if optimizer else {"model": run.task.model.state_dict()}
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    device = run.task.runtime.device
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    checkpoint = {
        **state,
        "epoch": progress.epoch,
        "step": progress.step,
        "step_in_epoch": progress.step_in_epoch,
        "steps_per_epoch": run.steps_per_epoch,
        "rng": rng,
        "best_metric": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "primary_metric": run.task.primary,
        "last_metrics": dict(progress.last_metrics),
        "early_stopping": progress.stopping.to_checkpoint(),
        "phase": run.phase.index,
        "partial": progress.partial_state(),
        "kind": run.spec.kind.value,
        "spec": run.spec.model_dump(mode="json", by_alias=True),
        "trainjobs_version": __version__,
    }
    return Snapshot(checkpoint, progress.epoch, progress.step, metric)


def holdable(snapshot: Snapshot) -> Snapshot | None:
    """A copy of ``snapshot`` on the CPU, to write later; None when its weights are too large to hold."""
    if sum(t.numel() * t.element_size() for t in snapshot.checkpoint["model"].values()) > HOLD_BYTES:
        return None
    return Snapshot(_copied(snapshot.checkpoint), snapshot.epoch, snapshot.step, snapshot.metric)


def _copied(value: Any) -> Any:
    """``value`` with every tensor in it copied to the CPU (the run goes on changing the originals)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copied(v) for v in value)
    return value


def write(run: Run, tag: CheckpointTag, snapshot: Snapshot) -> None:
    """Write ``<tag>.pt`` and ``<tag>.safetensors``, then announce each with its sha256."""
    checkpoint, ctx = snapshot.checkpoint, run.ctx
    metadata = {
        "epoch": str(snapshot.epoch),
        "step": str(snapshot.step),
        "spec": json.dumps(checkpoint["spec"]),
        "trainjobs_version": __version__,
    }
    pt, weights = ctx.work_dir / f"{tag}.pt", ctx.work_dir / f"{tag}.safetensors"
    pt_sha = save_torch(checkpoint, pt)
    weights_sha = save_weights(checkpoint["model"], weights, metadata)
    ctx.on_checkpoint(tag, pt, snapshot.epoch, snapshot.step, snapshot.metric, pt_sha)
    ctx.on_checkpoint(tag, weights, snapshot.epoch, snapshot.step, snapshot.metric, weights_sha)


def restore_checkpoint(run: Run, progress: Progress, checkpoint: dict[str, Any]) -> None:
    """Put the task, RNG and progress back where ``checkpoint`` left them (a ``best``, without optimizer
    state: its weights, the optimizer as it starts)."""
    if checkpoint.get("steps_per_epoch") != run.steps_per_epoch or checkpoint.get("kind") != run.spec.kind:
        raise TrainingError(
            "the checkpoint to resume from was made for other data or another kind of job "
            f"({checkpoint.get('kind')}, {checkpoint.get('steps_per_epoch')} steps per epoch)"
        )
    try:
        run.task.load_state_dict(checkpoint)
    except (RuntimeError, KeyError, ValueError) as e:
        raise TrainingError(f"the checkpoint to resume from does not fit the model: {str(e)[:300]}") from e
    device = run.task.runtime.device
    try:
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if "cuda" in checkpoint["rng"] and device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
        progress.restore(checkpoint, device)
        if not run.ctx.ranks.chief:
            progress.forget_sums()
    except (KeyError, TypeError, ValueError) as e:
        raise TrainingError(f"the checkpoint to resume from is not one this worker can read: missing {e}") from e
