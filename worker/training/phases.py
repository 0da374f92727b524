"""Phases (``train.phases``): parts of one finetune run, each with its epochs, learning rate, optimizer,
schedule and frozen or trained backbone; e.g. a linear probe, then a full finetune at a lower rate.

Each phase starts a fresh optimizer over the parameters it trains, and its learning-rate schedule
runs over its own steps. A checkpoint records its phase: a run resumed inside a phase takes that
phase's optimizer state back; one resumed at a phase's end starts the next phase fresh, as the
uninterrupted run did, so resume is bit-exact across a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.specs import TrainSpec


@dataclass(frozen=True)
class PhasePlan:
    index: int
    first_epoch: int
    """1-based."""
    last_epoch: int
    first_step: int
    """Optimizer steps taken before it."""
    train: TrainSpec
    """The job's settings as this phase has them."""
    freeze_backbone: bool | None
    """None: the job has no phases (the model's own freeze_backbone holds)."""


def plan(train: TrainSpec, steps_per_epoch: int) -> list[PhasePlan]:
    """The job's phases in order (one, the whole run, for a job without phases)."""
    if not train.phases:
        return [PhasePlan(0, 1, train.epochs, 0, train, None)]
    plans, first = [], 1
    for i, phase in enumerate(train.phases):
        last = first + phase.epochs - 1
        plans.append(
            PhasePlan(i, first, last, (first - 1) * steps_per_epoch, train.phase_settings(phase), phase.freeze_backbone)
        )
        first = last + 1
    return plans


def phase_of(plans: list[PhasePlan], epoch: int) -> PhasePlan:
    """The phase that epoch ``epoch`` (1-based; 0: before the first) belongs to."""
    return next((p for p in plans if p.first_epoch <= max(1, epoch) <= p.last_epoch), plans[-1])
