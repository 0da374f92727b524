"""Early stopping (``train.early_stopping``): after each epoch, whether the rule fires.

It fires when the metric reaches ``target`` (at or past it), or when ``patience`` epochs in a row
brought no improvement of more than ``min_delta`` over the best value so far. Its state (the best
value and the epochs since) goes into every checkpoint, so a resumed run stops where it would have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.core.specs.jobs import EarlyStopping

from .errors import TrainingError


@dataclass
class StoppingState:
    best: float | None = None
    since_best: int = 0
    """Epochs since the best value (0: this epoch was the best)."""
    stopped_epoch: int | None = None
    """The epoch at whose end the rule fired."""

    def to_checkpoint(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any] | None) -> StoppingState:
        """From a checkpoint's ``early_stopping`` (a checkpoint written before early stopping has none)."""
        return cls(**saved) if saved else cls()


def fires(rule: EarlyStopping, state: StoppingState, metrics: dict[str, float], epoch: int) -> bool:
    """Update ``state`` with this epoch's ``metrics``; True when the run should stop after this epoch."""
    if rule.metric not in metrics:  # val_*, with a validation split too small to hold an image
        raise TrainingError(
            f"early_stopping.metric '{rule.metric}' was not reported: the validation split is empty; "
            "raise dataset.val_fraction or pick another metric"
        )
    value = metrics[rule.metric]
    sign = 1.0 if rule.higher_is_better else -1.0
    if state.best is None or sign * (value - state.best) > rule.min_delta:
        state.best, state.since_best = value, 0
    else:
        state.since_best += 1
    reached = rule.target is not None and sign * (value - rule.target) >= 0
    if reached or state.since_best >= rule.patience:
        state.stopped_epoch = epoch
        return True
    return False
