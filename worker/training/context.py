"""What a training run needs from the process that runs it.

The training functions know nothing of HTTP, queues or processes: the worker's
child process builds a ``TrainingContext`` whose callbacks relay metrics and
checkpoints to the parent, and whose ``should_stop`` reflects cancel and
shutdown requests. Tests build one with plain lists and flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.core.protocol import MetricPoint

from .distributed import Ranks

__all__ = ["MetricPoint", "StopRequested", "TrainingContext"]
from app.core.states import CheckpointTag


class StopRequested(Exception):  # named as a request, not an error
    """Raised by the training loop when ``should_stop`` turned true mid-run."""


@dataclass
class TrainingContext:
    """Inputs and callbacks of one training run."""

    device: str
    """torch device string: 'cpu', 'cuda', 'cuda:1', 'mps'."""
    data_dir: Path
    """Datasets live under here (``TRAINJOBS_DATA_DIR``)."""
    work_dir: Path
    """Private scratch folder of this run; checkpoints are written here."""
    resume_from: Path | None = None
    """A checkpoint of this same job to continue from."""
    init_from: Path | None = None
    """A pretrain job's checkpoint whose encoder initialises a finetune backbone."""
    report_metrics: Callable[[list[MetricPoint]], None] = lambda points: None
    """Called with points at log steps and epoch ends."""
    on_checkpoint: Callable[[CheckpointTag, Path, int, int, float | None, str], None] = (
        lambda tag, path, epoch, step, metric, sha256: None
    )
    """Called as (tag, path, epoch, step, metric, sha256) after a checkpoint file is complete on disk."""
    on_artifact: Callable[[str, Path], None] = lambda name, path: None
    """Called as (name, path) when a file the job makes besides checkpoints (a GAN's samples) is complete."""
    on_progress: Callable[[int, int, int], None] = lambda epoch, epochs, step: None
    """Called as (epoch, epochs, step) at log points and epoch ends."""
    should_stop: Callable[[], bool] = field(default=lambda: False)
    """Polled once per step; True makes the loop save and raise StopRequested (on every rank at once)."""
    ranks: Ranks = field(default_factory=Ranks)
    """Where this process stands among the job's ranks (distributed.py); one process by default."""
