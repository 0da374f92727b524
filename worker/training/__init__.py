"""Training code run by the worker's child process: plain functions, no HTTP, no queue.

``run_training(spec, ctx)`` trains a job of any kind and returns its result: it loads the dataset
(``data.LOADERS``), builds the kind's task (``task.TASKS``: pretrain.py, finetune.py) and hands it
to the one loop (``loop.fit``), which documents the metrics and checkpoints; ``errors.py`` lists
the exceptions. docs/extending.md shows how to add a dataset, an arch or a kind.
"""

from __future__ import annotations

from app.core.protocol import MetricPoint, Result
from app.core.specs import AnyJobSpec

from . import finetune, pretrain
from .context import StopRequested, TrainingContext
from .data import load_dataset
from .errors import DatasetError, DoesNotFit, TrainingError
from .loop import fit
from .memory import check_fits
from .task import TASKS

__all__ = [
    "TASKS",
    "DatasetError",
    "DoesNotFit",
    "MetricPoint",
    "StopRequested",
    "TrainingContext",
    "TrainingError",
    "finetune",
    "pretrain",
    "run_training",
]


def run_training(spec: AnyJobSpec, ctx: TrainingContext) -> Result:
    """Run one job to the end; raises TrainingError (DatasetError, DoesNotFit) or StopRequested."""
    build = TASKS[spec.kind]
    check_fits(spec, ctx.device)
    splits = load_dataset(spec.dataset, ctx.data_dir, spec.train.seed)
    return fit(spec, ctx, build(spec, ctx, splits), splits)
