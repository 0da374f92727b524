"""The public jobs API: submit, list, inspect, cancel, delete, metrics, checkpoints."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BeforeValidator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.auth import CurrentUser, ScopeDep
from app.api.deps import DatabaseDep, SettingsDep, WakeupDep, fleet_of, plain_digits, quick_read
from app.api.downloads import serve_checkpoint
from app.api.errors import printable
from app.core import accounts, artifacts, checkpoints, estimates, gangs, jobs, logs, metrics, workers
from app.core.accounts import Caller
from app.core.config import Settings
from app.core.errors import Forbidden, InvalidRequest, NotFound
from app.core.models import Checkpoint, Job
from app.core.specs import AnyJobSpec, JobSpec
from app.core.states import CheckpointFormat, CheckpointTag, JobKind, JobStatus, LogStream
from app.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    CheckpointPublic,
    CheckpointsPublic,
    JobPublic,
    JobsPublic,
    LogLinePublic,
    LogsPublic,
    MetricsPublic,
    NodePublic,
)

router = APIRouter(prefix="/jobs", tags=["jobs"], responses={401: {"description": "No token, or not a valid one."}})

JobId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="Job id."), BeforeValidator(plain_digits)]

_ERRORS: dict[int | str, dict[str, str]] = {
    404: {"description": "No such job (or checkpoint), or not one of yours."},
    409: {"description": "The job's state does not allow this."},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "Same Idempotency-Key and body as an earlier request: that job.", "model": JobPublic},
        409: {"description": "Idempotency-Key reused with another body."},
        422: {"description": "Invalid job: the detail names the field."},
        429: {"description": "You have TRAINJOBS_MAX_ACTIVE_JOBS_PER_USER queued or running jobs already."},
    },
)
def submit_job(
    spec: Annotated[JobSpec, Body(description="A pretrain or finetune job (see README for every field).")],
    response: Response,
    db: DatabaseDep,
    caller: CurrentUser,
    settings: SettingsDep,
    wakeup: WakeupDep,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, description="Same key + same body within 24 h: same job.")
    ] = None,
) -> JobPublic:
    """Submit a job; 201 means it is stored on disk."""
    check_submittable(spec, settings)
    for attempt in range(3):
        try:
            with db.write() as session:
                job, created = store_job(session, caller, settings, spec, idempotency_key)
                public = JobPublic.of(job)
            break
        except IntegrityError:
            # Two requests with one new Idempotency-Key at once (PostgreSQL): the loser reads the winner's job.
            if idempotency_key is None or attempt == 2:
                raise
    if created:
        wakeup.notify()
        response.headers["Location"] = f"/jobs/{public.id}"
    else:
        response.status_code = status.HTTP_200_OK
    return public


def store_job(
    session: Session, caller: Caller, settings: Settings, spec: AnyJobSpec, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Store the caller's job (checked by ``check_submittable``) in the caller's transaction, under the
    service's idempotency window and active-jobs cap: POST /jobs and the dashboard's submit form."""
    return jobs.submit_job(
        session,
        caller.scope,
        spec,
        owner_id=caller.user_id,
        idempotency_key=idempotency_key,
        idempotency_ttl=timedelta(hours=settings.idempotency_hours),
        max_active=settings.max_active_jobs_per_user,
    )


def check_submittable(spec: AnyJobSpec, settings: Settings) -> None:
    """What a job must pass beyond its schema before it is stored: the service's limits and its data folder."""
    estimates.check_limits(
        spec,
        max_params=settings.max_params,
        max_dataset_bytes=settings.max_dataset_bytes,
        max_metric_points=settings.max_metric_points_per_job,
    )
    jobs.check_dataset_path(spec, settings.data_dir)


@router.get("", responses={403: {"description": "?owner= names another user, and you are not an admin."}})
def list_jobs(
    db: DatabaseDep,
    caller: CurrentUser,
    status: Annotated[JobStatus | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    owner: Annotated[
        str | None, Query(max_length=64, description="Admins: a username, or * for everyone's. Default: your own.")
    ] = None,
    name: Annotated[
        str | None, Query(max_length=200, description="Only jobs whose name contains this (any case).")
    ] = None,
    sweep: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="Only the trials of this sweep.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page.")] = None,
) -> JobsPublic:
    """List your jobs (an admin: anyone's), newest first, a page at a time."""
    before_id = parse_cursor(cursor)
    with db.read() as session:
        owner_id = owner_filter(session, caller, owner)
        page, next_id = jobs.list_jobs(
            session,
            caller.scope,
            status=status,
            kind=kind,
            owner_id=owner_id,
            name=name,
            sweep_id=sweep,
            limit=limit,
            before_id=before_id,
        )
        return JobsPublic(data=[JobPublic.of(j) for j in page], next_cursor=str(next_id) if next_id else None)


def parse_cursor(cursor: str | None) -> int | None:
    """The id a page's ``next_cursor`` names (None: the first page)."""
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or not 0 < int(cursor) < 2**31:
        raise InvalidRequest("cursor is not one this API gave out; pass next_cursor unchanged", ("query", "cursor"))
    return int(cursor)


def owner_filter(session: Session, caller: Caller, owner: str | None) -> int | None:
    """The owner ``?owner=`` names: your own by default; others' (or ``*``, everyone's) for admins only."""
    if owner is None or owner == caller.username:
        return caller.user_id
    if not caller.is_admin:
        raise Forbidden("only an admin may list other users' jobs; leave out ?owner= for your own")
    if owner == "*":
        return None
    try:
        return accounts.user_named(session, owner).id
    except NotFound:
        raise InvalidRequest(f"owner: no user named '{owner}'", ("query", "owner")) from None


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
async def get_job(job_id: JobId, db: DatabaseDep, scope: ScopeDep, settings: SettingsDep, request: Request) -> Response:
    """One job: status, progress, error, result."""

    # The most polled endpoint: a quick read (on the event loop on SQLite), no response-model re-validation.
    fleet = fleet_of(request)

    def read(session: Session) -> str:
        job = jobs.get_job(session, scope, job_id)
        queued = job.status == JobStatus.QUEUED
        waiting = workers.waiting_for(session, job, settings.lease_seconds, fleet=fleet) if queued else None
        files = (
            [a.name for a in artifacts.list_artifacts(settings.artifacts_dir, job.id)] if job.arch == "dcgan" else []
        )
        nodes = None
        if job.nodes > 1 and job.status == JobStatus.RUNNING:
            nodes = [
                NodePublic(node=n, worker=printable(w) or "", taken=t) for n, w, t in gangs.listing(session, job.id)
            ]
        return JobPublic.of(job, waiting, files or None, nodes).model_dump_json()

    body = await quick_read(db, read)
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", responses=_ERRORS)
def cancel_job(job_id: JobId, db: DatabaseDep, scope: ScopeDep) -> JobPublic:
    """Cancel: a queued job at once, a running one at its worker's next heartbeat."""
    with db.write() as session:
        return JobPublic.of(jobs.cancel_job(session, scope, job_id))


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_job(job_id: JobId, db: DatabaseDep, scope: ScopeDep, settings: SettingsDep) -> Response:
    """Delete a finished job with its metrics and checkpoint files."""
    with db.write() as session:
        jobs.delete_job(session, scope, job_id)
    checkpoints.remove_job_files(settings.artifacts_dir, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=_ERRORS)
def get_metrics(
    job_id: JobId,
    db: DatabaseDep,
    scope: ScopeDep,
    name: Annotated[str | None, Query(max_length=100, description="Only this series.")] = None,
    since_step: Annotated[int | None, Query(ge=0, le=2**62, description="Only points after this step.")] = None,
    max_points: Annotated[
        int | None, Query(ge=4, le=1_000_000, description="Downsample each series (first, last, min, max per bucket).")
    ] = None,
    per_epoch: Annotated[
        bool, Query(description="Only each epoch's last point (for train_loss: the epoch's mean).")
    ] = False,
) -> Response:
    """Metric series of a job, with last and best of each (over every point). Every point of a long series is
    streamed (a page at a time); max_points and per_epoch read its buckets, not its points."""
    whole_read = max_points is None and since_step is None and not per_epoch
    with db.read() as session:  # one transaction: the summaries and the points agree
        wholes = metrics.whole_series(session, scope, job_id, name) if whole_read else None
        if wholes is not None and sum(whole.count for whole in wholes.values()) > metrics.PAGE:
            body = None
        else:
            body = metrics.read_metrics(
                session,
                scope,
                job_id,
                name=name,
                since_step=since_step,
                max_points=max_points,
                per_epoch=per_epoch,
                wholes=wholes,
            )
    if body is None:  # read after this session ends, a page at a time
        return StreamingResponse(metrics.stream_document(db, job_id, wholes or {}), media_type="application/json")
    # Serialised directly: re-validating 100,000 points through the response model would cost more than the query.
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


@router.get("/{job_id}/logs", responses=_ERRORS)
def get_logs(
    job_id: JobId,
    db: DatabaseDep,
    scope: ScopeDep,
    after: Annotated[
        int | None, Query(ge=0, le=2**62, description="Only lines after this seq (next of a page).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    attempt: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Only this attempt's lines.")] = None,
    stream: Annotated[LogStream | None, Query(description="Only stdout, stderr or system lines.")] = None,
    tail: Annotated[int | None, Query(ge=1, le=10_000, description="Only the last N lines.")] = None,
) -> LogsPublic:
    """The job's log, oldest first: its processes' stdout and stderr, and the worker's and service's notes."""
    with db.read() as session:
        jobs.get_job(session, scope, job_id)
        found = logs.read_lines(session, job_id, after=after, limit=limit, attempt=attempt, stream=stream, tail=tail)
        lines = [LogLinePublic.of(line) for line in found]
    return LogsPublic(lines=lines, next=lines[-1].seq if lines else after)


@router.get("/{job_id}/checkpoints", responses=_ERRORS)
def list_checkpoints(job_id: JobId, db: DatabaseDep, scope: ScopeDep, settings: SettingsDep) -> CheckpointsPublic:
    """The job's checkpoints (last, best; .pt and .safetensors)."""
    with db.read() as session:
        found = checkpoints.list_checkpoints(session, scope, job_id, settings.artifacts_dir)
        return CheckpointsPublic(data=[CheckpointPublic.of(c) for c in found])


@router.get(
    "/{job_id}/checkpoint",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The checkpoint file."},
        206: {"description": "Part of the file (Range request)."},
        304: {"description": "If-None-Match matched its ETag."},
        **_ERRORS,
    },
)
def download_checkpoint(
    job_id: JobId,
    db: DatabaseDep,
    scope: ScopeDep,
    settings: SettingsDep,
    request: Request,
    tag: Annotated[CheckpointTag | None, Query(description="Default: best, falling back to last.")] = None,
    format: Annotated[
        CheckpointFormat, Query(description="pt: full checkpoint dict; safetensors: weights only.")
    ] = CheckpointFormat.PT,
) -> Response:
    """Download a checkpoint (supports Range and If-None-Match)."""

    def find() -> Checkpoint:
        with db.read() as session:
            return checkpoints.find_checkpoint(session, scope, job_id, tag, format)

    return serve_checkpoint(find, settings.artifacts_dir, request)


@router.get("/{job_id}/artifacts", responses=_ERRORS)
def list_artifacts(job_id: JobId, db: DatabaseDep, scope: ScopeDep, settings: SettingsDep) -> ArtifactsPublic:
    """Files the job made besides its checkpoints: a dcgan's samples-epoch-E.png, one an epoch."""
    with db.read() as session:
        jobs.get_job(session, scope, job_id)
    found = artifacts.list_artifacts(settings.artifacts_dir, job_id)
    return ArtifactsPublic(
        data=[ArtifactPublic(name=a.name, size=a.size, url=f"/jobs/{job_id}/artifacts/{a.name}") for a in found]
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The file."}, **_ERRORS},
)
def download_artifact(
    job_id: JobId,
    name: Annotated[str, PathParam(max_length=200)],
    db: DatabaseDep,
    scope: ScopeDep,
    settings: SettingsDep,
) -> Response:
    """One artifact of the job (a PNG, JSON or text file)."""
    with db.read() as session:
        jobs.get_job(session, scope, job_id)
    data, found = artifacts.read_artifact(settings.artifacts_dir, job_id, name)
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=60"}
    return Response(data, media_type=found.media_type, headers=headers)
