"""The training package's exceptions, in one place.

Each message is one line that says what went wrong and what to change; the worker
reports it as the failed job's reason.

- ``TrainingError``: base; a run that cannot go on (loss became NaN, out of memory,
  a base checkpoint that does not fit, ImageNet weights missing).
  - ``DatasetError``: the dataset is missing, unreadable, or outside ``DATA_DIR``.

``StopRequested`` (in ``context``) is not an error: it is raised after a resumable
``last`` checkpoint was saved because ``should_stop`` turned true.
"""

from __future__ import annotations


class TrainingError(Exception):
    """A training run failed; the message says why in one line."""


class DatasetError(TrainingError):
    """The dataset cannot be loaded; the message names the path and what belongs there."""


class DoesNotFit(TrainingError):
    """The job needs more memory than its device has free; found before training starts."""


class OutOfMemory(TrainingError):
    """The device ran out of memory during training."""
