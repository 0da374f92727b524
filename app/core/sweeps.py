"""Sweeps: store one whole (every trial's job, or none), read its status and results off its trials,
cancel, retry exactly its failed or cancelled points, delete. Scoped like jobs (``Scope``); the
functions take a session and never commit.

A trial is one job, or with ``then`` a pretrain and the finetune that starts from it (both carry the
trial's index; the finetune is the trial's result). Trials are ordinary jobs that workers claim; the
claim starts at most the sweep's ``max_concurrent`` at once (app/core/leases.py).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from app.core import jobs, logs, telemetry
from app.core.errors import Conflict, InvalidRequest, NotFound
from app.core.jobs import Scope, check_base_job, fit_to_base, new_job, paged
from app.core.models import Job, Sweep, utcnow
from app.core.specs import FinetuneSpec
from app.core.specs.sweeps import SweepSpec, Trial, expand, ranking, setting_key
from app.core.states import ACTIVE, JobStatus, guard


class SweepNotFound(NotFound):
    def __init__(self, sweep_id: int) -> None:
        super().__init__(f"sweep {sweep_id} not found")


def visible_sweeps(scope: Scope) -> Select[Sweep]:
    stmt: Select[Sweep] = select(Sweep)
    return stmt if scope.owner_id is None else stmt.where(Sweep.owner_id == scope.owner_id)


def plan(spec: SweepSpec) -> tuple[list[Trial], str, bool]:
    """The sweep's trials, each checked as a job (a ``then`` finetune against its own pretrain), and the
    metric they are ranked by: InvalidRequest names the first bad trial. No database needed."""
    trials = expand(spec)
    metric, higher = ranking(spec, trials[0])
    checked = []
    for trial in trials:
        if trial.then is not None:
            then = fit_to_base(trial.then, trial.spec.encoder(), f"{trial.label}'s pretrain", ("body", "then"))
            assert isinstance(then, FinetuneSpec)
            trial = replace(trial, then=then)
        checked.append(trial)
    return checked, metric, higher


def create_sweep(
    session: Session,
    spec: SweepSpec,
    trials: list[Trial],
    *,
    owner_id: int,
    scope: Scope | None = None,
    max_active: int | None = None,
    now: datetime | None = None,
) -> Sweep:
    """Store the sweep and every trial's job (``plan``'s trials) in the caller's transaction; a trial that
    starts from a job (``model.init``) is checked against it as POST /jobs would (``scope``: whose jobs it
    may start from; default the owner's)."""
    now = now or utcnow()
    trials = [_with_base(session, scope or Scope(owner_id), t) for t in trials]
    jobs_needed = sum(2 if t.then is not None else 1 for t in trials)
    jobs.check_active_limit(session, owner_id, max_active, adding=jobs_needed)
    metric, higher = ranking(spec, trials[0])
    sweep = Sweep(
        owner_id=owner_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        metric=metric,
        higher_is_better=higher,
        max_concurrent=spec.max_concurrent,
        trial_count=len(trials),
        created_at=now,
        updated_at=now,
    )
    session.add(sweep)
    session.flush()
    for trial in trials:
        links = {"sweep_id": sweep.id, "trial_index": trial.index, "trial_params": trial.params}
        first = new_job(trial.spec, owner_id=owner_id, now=now, **links)
        session.add(first)
        if trial.then is not None:
            session.flush()
            init = trial.then.model.init.model_copy(update={"job_id": first.id})
            then = trial.then.model_copy(update={"model": trial.then.model.model_copy(update={"init": init})})
            session.add(new_job(then, owner_id=owner_id, now=now, **links))
    session.flush()
    return sweep


def _with_base(session: Session, scope: Scope, trial: Trial) -> Trial:
    base_id = trial.spec.base_job_id
    if base_id is None:
        return trial
    try:
        return replace(trial, spec=check_base_job(session, scope, trial.spec, base_id))
    except InvalidRequest as exc:
        raise InvalidRequest(f"{trial.label}: {exc.message}", ("body", "base", *exc.loc[1:])) from None


def get_sweep(session: Session, scope: Scope, sweep_id: int, *, lock: bool = False) -> Sweep:
    stmt = visible_sweeps(scope).where(Sweep.id == sweep_id)
    sweep = session.scalars(stmt.with_for_update(of=Sweep) if lock else stmt).first()
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def list_sweeps(
    session: Session, scope: Scope, *, owner_id: int | None = None, limit: int = 50, before_id: int | None = None
) -> tuple[list[Sweep], int | None]:
    """Newest first, a page at a time; returns the page and the next cursor (None at the end)."""
    stmt = visible_sweeps(scope).order_by(Sweep.id.desc()).limit(limit + 1)
    if owner_id is not None:
        stmt = stmt.where(Sweep.owner_id == owner_id)
    if before_id is not None:
        stmt = stmt.where(Sweep.id < before_id)
    return paged(list(session.scalars(stmt)), limit)


def trial_jobs(session: Session, sweep_id: int) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))


# --- results ------------------------------------------------------------------------


@dataclass
class TrialResult:
    index: int
    params: dict[str, Any]
    job_ids: list[int]
    status: JobStatus
    value: float | None


@dataclass
class Summary:
    """A sweep's state and results, read off its trials' jobs."""

    status: str
    counts: dict[str, int]
    trials: list[TrialResult]
    settings: list[dict[str, Any]] = field(default_factory=list)
    best_setting: dict[str, Any] | None = None
    best_trial: TrialResult | None = None


def trial_status(statuses: list[JobStatus]) -> JobStatus:
    """Running or queued while any of its jobs is; else how its last job (the result) ended."""
    for status in (JobStatus.RUNNING, JobStatus.QUEUED):
        if status in statuses:
            return status
    return statuses[-1]


def _counts(trial_statuses: list[JobStatus]) -> dict[str, int]:
    counts = {s.value: 0 for s in JobStatus}
    for status in trial_statuses:
        counts[status.value] += 1
    return counts


def states(session: Session, sweeps: list[Sweep]) -> dict[int, tuple[str, dict[str, int]]]:
    """Each sweep's status and its trials' counts by status (for a list: no results read)."""
    rows = session.execute(
        select(Job.sweep_id, Job.trial_index, Job.status)
        .where(Job.sweep_id.in_([s.id for s in sweeps]))
        .order_by(Job.id)
    ).all()
    grouped: dict[int, dict[int, list[JobStatus]]] = {s.id: {} for s in sweeps}
    for sweep_id, index, status in rows:
        grouped[sweep_id or 0].setdefault(index or 0, []).append(status)
    out = {}
    for sweep in sweeps:
        counts = _counts([trial_status(g) for g in grouped[sweep.id].values()])
        out[sweep.id] = (_status(sweep, counts), counts)
    return out


def _value(job: Job, metric: str) -> float | None:
    if job.status != JobStatus.SUCCEEDED or not isinstance(job.result, dict):
        return None
    value = job.result.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def summarize(sweep: Sweep, members: list[Job]) -> Summary:
    """Counts by status, the trials table, per distinct setting the mean, spread and count over seeds,
    the best setting (by mean) and the best trial."""
    by_trial: dict[int, list[Job]] = {}
    for job in members:
        by_trial.setdefault(job.trial_index or 0, []).append(job)
    trials = [
        TrialResult(
            index,
            dict(group[-1].trial_params or {}),
            [j.id for j in group],
            trial_status([j.status for j in group]),
            _value(group[-1], sweep.metric),
        )
        for index, group in sorted(by_trial.items())
    ]
    counts = _counts([t.status for t in trials])
    sign = 1.0 if sweep.higher_is_better else -1.0
    valued = [t for t in trials if t.value is not None]
    best_trial = max(valued, key=lambda t: sign * (t.value or 0.0), default=None)
    settings = _settings(trials)
    scored = [s for s in settings if s["mean"] is not None]
    best_setting = max(scored, key=lambda s: sign * s["mean"], default=None)
    return Summary(_status(sweep, counts), counts, trials, settings, best_setting, best_trial)


def _settings(trials: list[TrialResult]) -> list[dict[str, Any]]:
    groups: dict[str, list[TrialResult]] = {}
    for trial in trials:
        groups.setdefault(setting_key(trial.params), []).append(trial)
    out = []
    for group in groups.values():
        values = [t.value for t in group if t.value is not None]
        params = {k: v for k, v in group[0].params.items() if k != "seed"}
        mean, std = _spread(values)
        out.append(
            {
                "params": params,
                "trials": [t.index for t in group],
                "count": len(values),
                "mean": mean,
                "std": std,
                "min": min(values, default=None),
                "max": max(values, default=None),
            }
        )
    return out


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values, or they overflow a float)."""
    try:
        mean = statistics.mean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else None
    except (OverflowError, ValueError):
        return None, None
    finite = [v for v in (mean, std) if v is not None]
    return (mean, std) if all(math.isfinite(v) for v in finite) else (None, None)


def _status(sweep: Sweep, counts: dict[str, int]) -> str:
    if counts[JobStatus.QUEUED] or counts[JobStatus.RUNNING]:
        return "running"
    if sweep.cancelled_at is not None and counts[JobStatus.CANCELLED]:
        return "cancelled"
    return "succeeded" if counts[JobStatus.SUCCEEDED] == sweep.trial_count else "failed"


# --- acting on a sweep -------------------------------------------------------------------


def cancel_sweep(session: Session, scope: Scope, sweep_id: int, *, now: datetime | None = None) -> Sweep:
    """Queued trials cancelled at once, running ones asked to stop (their workers save and stop)."""
    now = now or utcnow()
    sweep = get_sweep(session, scope, sweep_id, lock=True)
    if not any(j.status in ACTIVE for j in trial_jobs(session, sweep_id)):
        raise Conflict(f"sweep {sweep_id} has no queued or running trials; there is nothing to cancel")
    queued = frozenset({JobStatus.QUEUED})
    cancelled = session.execute(
        update(Job)
        .where(Job.sweep_id == sweep_id, guard(Job.status, queued, JobStatus.CANCELLED))
        .values(status=JobStatus.CANCELLED, finished_at=now, updated_at=now, error="cancelled with its sweep")
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).all()
    telemetry.finished(session, JobStatus.CANCELLED, amount=len(cancelled))
    session.execute(
        update(Job)
        .where(Job.sweep_id == sweep_id, Job.status == JobStatus.RUNNING)
        .values(cancel_requested=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    sweep.cancelled_at, sweep.updated_at = now, now
    session.flush()
    return sweep


def retry_sweep(
    session: Session, scope: Scope, sweep_id: int, *, max_active: int | None = None, now: datetime | None = None
) -> list[int]:
    """Queue again exactly the sweep's failed and cancelled jobs, each as its next attempt (the same job: no
    duplicate trials; it resumes from its last checkpoint); returns their ids. Conflict when there are none."""
    now = now or utcnow()
    sweep = get_sweep(session, scope, sweep_id, lock=True)
    ended = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
    again = [j for j in trial_jobs(session, sweep_id) if j.status in ended]
    if not again:
        raise Conflict(f"sweep {sweep_id} has no failed or cancelled trials to retry")
    jobs.check_active_limit(session, sweep.owner_id, max_active, adding=len(again))
    for job in again:
        note = f"queued again by a retry of sweep {sweep_id} (it was {job.status}: {job.error or 'no reason'})"
        session.execute(
            update(Job)
            .where(Job.id == job.id, guard(Job.status, ended, JobStatus.QUEUED))
            .values(
                status=JobStatus.QUEUED,
                max_attempts=job.attempt + int(job.spec.get("max_attempts", 3) if isinstance(job.spec, dict) else 3),
                error=None,
                error_class=None,
                result=None,
                cancel_requested=False,
                started_at=None,
                finished_at=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        logs.note(session, job, note[:500], attempt=job.attempt + 1)  # the attempt it starts
    sweep.cancelled_at, sweep.updated_at = None, now
    session.flush()
    return [j.id for j in again]


def delete_sweep(session: Session, scope: Scope, sweep_id: int) -> list[int]:
    """Delete a finished sweep with its trials' jobs (metrics, logs, checkpoint rows); returns their ids,
    whose files the caller removes after commit."""
    sweep = get_sweep(session, scope, sweep_id, lock=True)
    members = trial_jobs(session, sweep_id)
    active = [j.id for j in members if j.status in ACTIVE]
    if active:
        raise Conflict(
            f"sweep {sweep_id} has {len(active)} queued or running trial job(s); cancel it first "
            f"(POST /sweeps/{sweep_id}/cancel), then delete it"
        )
    for job in reversed(members):  # a trial's finetune before the pretrain it started from
        jobs.delete_job(session, scope, job.id, with_sweep=True)
    session.delete(sweep)
    session.flush()
    return [j.id for j in members]
