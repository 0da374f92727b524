"""Training code run by the worker's child process: plain functions, no HTTP, no queue.

``run_training(spec, ctx)`` trains a pretrain or finetune job and returns its result dict;
``loop.py`` documents the metrics and checkpoints it produces, ``errors.py`` the exceptions.
"""

from __future__ import annotations

from typing import Any

from app.core.specs import FinetuneSpec, PretrainSpec

from .context import MetricPoint, StopRequested, TrainingContext
from .errors import DatasetError, TrainingError
from .finetune import run_finetune
from .pretrain import run_pretrain

__all__ = [
    "DatasetError",
    "MetricPoint",
    "StopRequested",
    "TrainingContext",
    "TrainingError",
    "run_finetune",
    "run_pretrain",
    "run_training",
]


def run_training(spec: PretrainSpec | FinetuneSpec, ctx: TrainingContext) -> dict[str, Any]:
    """Run one job to the end; raises TrainingError (DatasetError) or StopRequested."""
    if isinstance(spec, PretrainSpec):
        return run_pretrain(spec, ctx)
    return run_finetune(spec, ctx)
