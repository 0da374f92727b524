"""Where a run is: steps, epochs, the best metric so far, and the sums of the unfinished epoch and log window.

All of it goes into a checkpoint (``partial_state`` and the top-level fields) and comes back on
resume (``restore``), so that a run resumed mid-epoch reports exactly what it would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from app.core.states import JobKind

from .distributed import Ranks
from .stopping import StoppingState


@dataclass
class WindowStep:
    """A step since the last log point: its sums of the training metrics over its ``n`` images, on the device."""

    epoch: int
    step: int
    values: dict[str, Tensor]
    n: int


@dataclass
class Progress:
    """Where the run is; all of it goes into a checkpoint."""

    epoch: int = 0
    """The epoch of the last step taken (1-based; 0 before the first step)."""
    step: int = 0
    """Optimizer steps taken."""
    step_in_epoch: int = 0
    """Steps taken in ``epoch``; equal to steps per epoch once that epoch is finished and evaluated."""
    best_metric: float | None = None
    best_epoch: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    epoch_sums: dict[str, Tensor] = field(default_factory=dict)
    """Sums over the unfinished epoch's images of each training metric; device tensors, read at epoch end."""
    epoch_samples: int = 0
    epoch_seconds: float = 0.0
    window: list[WindowStep] = field(default_factory=list)
    stopping: StoppingState = field(default_factory=StoppingState)
    """Early stopping's state (``stopping.py``)."""

    def epoch_finished(self, steps_per_epoch: int) -> bool:
        return self.epoch == 0 or self.step_in_epoch == steps_per_epoch

    def begin_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_sums = {}
        self.epoch_samples = 0
        self.epoch_seconds = 0.0

    def record(self, step: int, sums: dict[str, Tensor], n: int) -> None:
        """One step's sums over its ``n`` images."""
        self.step, self.step_in_epoch = step, self.step_in_epoch + 1
        for name, value in sums.items():
            total = self.epoch_sums.get(name)
            self.epoch_sums[name] = value if total is None else total + value
        self.epoch_samples += n
        self.window.append(WindowStep(self.epoch, step, sums, n))

    def combine(self, ranks: Ranks) -> None:
        """The unfinished epoch's and log window's sums, added up over the ranks (before rank 0 saves them)."""
        if not ranks.distributed:
            return
        tensors = [*self.epoch_sums.values(), *(v for w in self.window for v in w.values.values())]
        if not tensors:
            return
        totals = ranks.all_sum(torch.stack([t.double() for t in tensors]))
        for tensor, total in zip(tensors, totals, strict=True):
            tensor.copy_(total)

    def forget_sums(self) -> None:
        """Zero the restored sums on a rank other than 0: rank 0's checkpoint holds every rank's."""
        for tensor in [*self.epoch_sums.values(), *(v for w in self.window for v in w.values.values())]:
            tensor.zero_()

    def partial_state(self) -> dict[str, Any]:
        """The unfinished epoch's and log window's sums, on the CPU, for a checkpoint's ``partial``."""
        return {
            "epoch_sums": {name: total.cpu() for name, total in self.epoch_sums.items()},
            "epoch_samples": self.epoch_samples,
            "epoch_seconds": self.epoch_seconds,
            "window": [
                {"epoch": w.epoch, "step": w.step, "n": w.n, "values": {k: v.cpu() for k, v in w.values.items()}}
                for w in self.window
            ],
        }

    def restore(self, checkpoint: dict[str, Any], device: torch.device) -> None:
        """Back to where ``checkpoint`` left off (also one written by trainjobs 0.1's loop)."""
        partial = checkpoint["partial"]
        if "epoch_sums" not in partial:
            partial = from_first_layout(partial, checkpoint.get("kind"))
        self.epoch = checkpoint["epoch"]
        self.step = checkpoint["step"]
        self.step_in_epoch = checkpoint["step_in_epoch"]
        self.best_metric = checkpoint["best_metric"]
        self.best_epoch = checkpoint["best_epoch"]
        self.last_metrics = dict(checkpoint["last_metrics"])
        self.stopping = StoppingState.from_checkpoint(checkpoint.get("early_stopping"))
        self.epoch_sums = {name: total.to(device) for name, total in partial["epoch_sums"].items()}
        self.epoch_samples = partial["epoch_samples"]
        self.epoch_seconds = partial["epoch_seconds"]
        self.window = [
            WindowStep(w["epoch"], w["step"], {k: v.to(device) for k, v in w["values"].items()}, w["n"])
            for w in partial["window"]
        ]


def from_first_layout(partial: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """A ``partial`` of the first checkpoint layout (one loss and a count of right answers, per-step mean
    losses in the window) in today's layout, so a job saved by an older worker resumes on a newer one."""
    sums = {"train_loss": partial["epoch_loss"]}
    if kind == JobKind.FINETUNE:
        sums["train_accuracy"] = partial["epoch_correct"]
    window = [
        {"epoch": epoch, "step": step, "n": n, "values": {"train_loss": loss * n}}
        for epoch, step, loss, n in zip(
            partial["window_epochs"],
            partial["window_steps"],
            partial["window_losses"],
            partial["window_sizes"],
            strict=True,
        )
    ]
    return {**partial, "epoch_sums": sums, "window": window}
