"""The jobs a user sees: submit, read, list, cancel, delete, each scoped to the caller.

Every query here starts from ``visible_jobs(scope)``, the one scoped base statement, so who may see
which job is decided in one place (``Scope``). The functions take a session and never commit: the
caller (a route, a test) commits at its boundary, inside ``Database.write()`` for writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, bindparam, delete, func, select, true, update
from sqlalchemy.orm import Session

from app.core import telemetry
from app.core.errors import Conflict, IdempotencyConflict, InvalidRequest, JobNotFound, LimitExceeded
from app.core.leases import fail_dependents
from app.core.models import Checkpoint, IdempotencyKey, Job, JobLog, MetricBucket, MetricPoint, Sweep, User, utcnow
from app.core.specs import AnyJobSpec, ImageFolderDataset, parse_job_spec, spec_to_json
from app.core.specs.networks import Encoder, FinetuneModel
from app.core.states import ACTIVE, TERMINAL, JobKind, JobStatus, guard

R = TypeVar("R", Job, Sweep)


@dataclass(frozen=True)
class Scope:
    """Whose jobs a caller may see and act on: one owner's, or (an admin's scope) everyone's."""

    owner_id: int | None = None
    """None: every owner."""

    def condition(self) -> ColumnElement[bool]:
        return true() if self.owner_id is None else Job.owner_id == self.owner_id


EVERYONE = Scope()


def visible_jobs(scope: Scope) -> Select[Job]:
    """The scoped base statement every read and user-facing write of jobs starts from."""
    return select(Job).where(scope.condition())


def load_spec(job: Job) -> AnyJobSpec:
    """The stored spec of a job, parsed again (it was validated on submit)."""
    return parse_job_spec(job.spec)


def request_hash(spec: AnyJobSpec) -> str:
    canonical = json.dumps(spec_to_json(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- submitting -------------------------------------------------------------------


def check_dataset_path(spec: AnyJobSpec, data_dir: Path) -> None:
    """An imagefolder path must stay inside DATA_DIR, symlinks included."""
    if not isinstance(spec.dataset, ImageFolderDataset):
        return
    loc = ("body", "dataset", "path")
    try:
        root = data_dir.resolve()
        target = (data_dir / spec.dataset.path).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop, a name too long: fail closed
        raise InvalidRequest(
            f"dataset.path '{spec.dataset.path}' cannot be resolved ({type(exc).__name__}: a symlink loop, "
            "or a name too long); give a plain folder inside DATA_DIR",
            loc,
        ) from None
    if target != root and root not in target.parents:
        raise InvalidRequest(f"dataset.path '{spec.dataset.path}' leads outside DATA_DIR; give a folder inside it", loc)


def check_base_job(session: Session, scope: Scope, spec: AnyJobSpec, base_id: int) -> AnyJobSpec:
    """The spec, checked against its base job (and given the base's MLP widths where it left them out)."""
    loc = ("body", "model", "init", "job_id")
    # FOR SHARE (PostgreSQL): a delete of the base waits until this submit commits, then sees it waiting
    # and refuses; a submit that comes second finds the base gone. Never a finetune of a deleted job.
    base = session.scalars(visible_jobs(scope).where(Job.id == base_id).with_for_update(read=True, of=Job)).first()
    if base is None:
        raise InvalidRequest(f"model.init.job_id: job {base_id} does not exist", loc)
    if base.kind != JobKind.PRETRAIN:
        raise InvalidRequest(f"model.init.job_id: job {base_id} is a {base.kind} job; give a pretrain job", loc)
    if base.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise InvalidRequest(f"model.init.job_id: job {base_id} {base.status}; it has no encoder to start from", loc)
    try:
        have = load_spec(base).encoder()
    except ValidationError:  # a stored row no submit made (a hand-edit)
        raise InvalidRequest(f"model.init.job_id: job {base_id}'s stored spec cannot be read", loc) from None
    return fit_to_base(spec, have, f"job {base_id}", loc)


def fit_to_base(spec: AnyJobSpec, have: Encoder, base: str, loc: tuple[str | int, ...]) -> AnyJobSpec:
    """The finetune, given the base's MLP widths where it left them out, if it can start from ``have``."""
    spec = with_base_encoder(spec, have)
    want = spec.encoder()
    if want != have:
        raise InvalidRequest(
            f"model.init.job_id: {base}'s encoder is {have.describe()}, "
            f"but this finetune needs {want.describe()}; match model.arch, hidden/bottleneck and the image shape",
            loc,
        )
    return spec


DERIVED = ("mlp", "dcgan_discriminator")
"""Finetune archs whose widths, left out, come from the base job's encoder."""


def with_base_encoder(spec: AnyJobSpec, base: Encoder) -> AnyJobSpec:
    """A finetune's MLP that leaves out its hidden widths or bottleneck (a discriminator its width) takes
    them from the base's encoder."""
    model = spec.model
    if not isinstance(model, FinetuneModel) or model.arch != base.arch or model.arch not in DERIVED:
        return spec
    filled: dict[str, object] = {}
    if model.arch == "dcgan_discriminator" and model.width is None:
        filled["width"] = base.bottleneck
    if model.arch == "mlp" and model.hidden is None:
        filled["hidden"] = list(base.hidden)
    if model.arch == "mlp" and model.bottleneck is None:
        filled["bottleneck"] = base.bottleneck
    if not filled:
        return spec
    return spec.model_copy(update={"model": model.model_copy(update=filled)})


def _seen_key(
    session: Session, scope: Scope, owner_id: int, key: str, digest: str, ttl: timedelta, now: datetime
) -> Job | None:
    """The job an owner's Idempotency-Key still names (same body), None for a new or expired key; 409 for another body."""
    seen = session.get(IdempotencyKey, (owner_id, key))
    if seen is None:
        return None
    if seen.created_at <= now - ttl:
        session.delete(seen)
        session.flush()
        return None
    if seen.request_hash != digest:
        raise IdempotencyConflict(f"Idempotency-Key '{key}' was used for another request body; use a new key")
    return get_job(session, scope, seen.job_id)  # the key is deleted with its job


def check_active_limit(session: Session, owner_id: int, limit: int | None, adding: int = 1) -> None:
    """At most ``limit`` queued or running jobs per owner, ``adding`` more included (429 naming the cap)."""
    if limit is None:
        return
    # On PostgreSQL, submits of one owner take turns here, so two at once cannot both pass at cap - 1.
    session.scalars(select(User.id).where(User.id == owner_id).with_for_update()).first()
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner_id == owner_id, Job.status.in_(sorted(ACTIVE)))
    )
    if active is not None and active + adding > limit:
        more = "" if adding == 1 else f"; this adds {adding}"
        raise LimitExceeded(
            f"you have {active} queued or running jobs{more}; one user may have at most "
            f"TRAINJOBS_MAX_ACTIVE_JOBS_PER_USER = {limit}; wait for some to finish or cancel some"
        )


def new_job(spec: AnyJobSpec, *, owner_id: int, now: datetime, **links: Any) -> Job:
    """A queued job row of the spec (``links``: its base job, its sweep and trial), not yet added."""
    return Job(
        owner_id=owner_id,
        kind=spec.kind,
        name=spec.name,
        status=JobStatus.QUEUED,
        spec=spec_to_json(spec),
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        init_job_id=spec.base_job_id,
        arch=spec.model.arch,
        dataset=spec.dataset.name,
        gpus=spec.resources.gpus_per_node,
        nodes=spec.resources.nodes,
        progress={"epoch": 0, "epochs": spec.train.epochs, "step": 0},
        created_at=now,
        updated_at=now,
        **links,
    )


def submit_job(
    session: Session,
    scope: Scope,
    spec: AnyJobSpec,
    *,
    owner_id: int,
    idempotency_key: str | None = None,
    idempotency_ttl: timedelta = timedelta(hours=24),
    max_active: int | None = None,
    now: datetime | None = None,
) -> tuple[Job, bool]:
    """Store a new queued job of ``owner_id``; returns (job, created). With an idempotency key the owner
    used before, the first job. ``scope`` decides which jobs it may start from.

    Check the spec against the file system first (``check_dataset_path``), outside the transaction.
    """
    now = now or utcnow()
    digest = request_hash(spec)
    if idempotency_key is not None:
        seen = _seen_key(session, scope, owner_id, idempotency_key, digest, idempotency_ttl, now)
        if seen is not None:
            return seen, False
    check_active_limit(session, owner_id, max_active)
    base_id = spec.base_job_id
    if base_id is not None:
        spec = check_base_job(session, scope, spec, base_id)
    job = new_job(spec, owner_id=owner_id, now=now)
    session.add(job)
    session.flush()
    if idempotency_key is not None:
        key = IdempotencyKey(owner_id=owner_id, key=idempotency_key, request_hash=digest, job_id=job.id, created_at=now)
        session.add(key)
        session.flush()
    return job, True


# --- reading ----------------------------------------------------------------------


def get_job(session: Session, scope: Scope, job_id: int) -> Job:
    params = {"job_id": job_id} if scope.owner_id is None else {"job_id": job_id, "owner_id": scope.owner_id}
    job = session.scalars(_ONE_JOB[scope.owner_id is None], params).first()
    if job is None:
        raise JobNotFound(job_id)
    return job


_ONE_JOB = {  # the most read statement of all (GET /jobs/{id}): built once, not per read (a third of its cost)
    True: select(Job).where(Job.id == bindparam("job_id")),
    False: select(Job).where(Job.id == bindparam("job_id"), Job.owner_id == bindparam("owner_id")),
}
"""``visible_jobs(scope)``'s job of an id, for everyone's scope (True) and for one owner's (False)."""


def list_jobs(
    session: Session,
    scope: Scope,
    *,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    owner_id: int | None = None,
    name: str | None = None,
    sweep_id: int | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> tuple[list[Job], int | None]:
    """Newest first (``name``: those whose name holds it, any case); returns the page and the id to pass
    as the next cursor (None at the end)."""
    stmt = visible_jobs(scope).order_by(Job.id.desc()).limit(limit + 1)
    if name:
        pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(Job.name.ilike(f"%{pattern}%", escape="\\"))
    if owner_id is not None:
        stmt = stmt.where(Job.owner_id == owner_id)
    if sweep_id is not None:
        stmt = stmt.where(Job.sweep_id == sweep_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if before_id is not None:
        stmt = stmt.where(Job.id < before_id)
    return paged(list(session.scalars(stmt)), limit)


def paged(rows: list[R], limit: int) -> tuple[list[R], int | None]:
    """A page of rows read with ``limit + 1``, and the id to pass as the next cursor (None at the end)."""
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None


# --- cancelling and deleting ---------------------------------------------------------


def _update_visible(
    session: Session, scope: Scope, job_id: int, sources: frozenset[JobStatus], **values: object
) -> Job | None:
    """One guarded UPDATE of a job the caller can see; None when it is not in one of ``sources``."""
    targets = [v for v in (values.get("status"),) if isinstance(v, JobStatus)]
    stmt = (
        update(Job)
        .where(Job.id == job_id, scope.condition(), guard(Job.status, sources, *targets))
        .values(**values)
        .returning(Job)
    )
    return session.execute(stmt, execution_options={"synchronize_session": False}).scalar_one_or_none()


def cancel_job(session: Session, scope: Scope, job_id: int, *, now: datetime | None = None) -> Job:
    """Queued: cancelled at once. Running: cancel requested, the worker stops it. Finished: Conflict."""
    now = now or utcnow()
    queued = frozenset({JobStatus.QUEUED})
    job = _update_visible(
        session,
        scope,
        job_id,
        queued,
        status=JobStatus.CANCELLED,
        finished_at=now,
        updated_at=now,
        error="cancelled before it started",
        error_class=None,
    )
    if job is not None:
        telemetry.finished(session, JobStatus.CANCELLED)
        fail_dependents(session, job_id, JobStatus.CANCELLED, now=now)
        return job
    running = frozenset({JobStatus.RUNNING})
    job = _update_visible(session, scope, job_id, running, cancel_requested=True, updated_at=now)
    if job is not None:
        return job
    job = get_job(session, scope, job_id)
    raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")


def delete_job(session: Session, scope: Scope, job_id: int, *, with_sweep: bool = False) -> None:
    """Delete a finished job with its metrics and checkpoint rows (its files: ``checkpoints.remove_job_files``);
    a sweep's trial only as part of deleting the sweep (``with_sweep``)."""
    job = session.scalars(visible_jobs(scope).where(Job.id == job_id).with_for_update(of=Job)).first()
    if job is None:
        raise JobNotFound(job_id)
    if job.status not in TERMINAL:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first (POST /jobs/{job_id}/cancel), then delete it")
    # Integrity, not visibility: whoever's jobs wait for this one, it must stay; the message names only yours.
    waiting = session.execute(
        select(Job.id, scope.condition())
        .where(Job.init_job_id == job_id, Job.status.in_(sorted(ACTIVE)))
        .order_by(Job.id)
    ).all()
    if waiting:
        yours = [str(i) for i, visible in waiting if visible]
        others = len(waiting) - len(yours)
        named = ", ".join(yours + ([f"{others} of other users'"] if others else []))
        raise Conflict(f"job {job_id} is the base of unfinished job(s) {named}; they must end first")
    if job.sweep_id is not None and not with_sweep:
        raise Conflict(
            f"job {job_id} is trial {job.trial_index} of sweep {job.sweep_id}; delete the sweep "
            f"(DELETE /sweeps/{job.sweep_id}) to delete its trials"
        )
    session.execute(update(Job).where(Job.init_job_id == job_id).values(init_job_id=None))
    for table in (MetricPoint, MetricBucket, Checkpoint, IdempotencyKey, JobLog):
        session.execute(delete(table).where(table.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
