"""The worker protocol: claim, heartbeat, metrics, checkpoints, finish, release.

Workers never touch the database; they speak this HTTP protocol, so a GPU
machine needs only the service's URL (and the token, when one is set). Every
write is fenced by the lease token the claim handed out.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi import Path as PathParam

from app.api.auth import require_worker
from app.api.claims import claim_once, json_answer
from app.api.deps import SettingsDep, WakeupDep, WorkerLane, WorkerLaneDep, fleet_of
from app.api.downloads import serve_checkpoint
from app.api.json_body import json_body, openapi_body
from app.api.routes.jobs import JobId
from app.core import artifacts, checkpoints, gangs, leases, logs, metrics, telemetry, workers
from app.core.checkpoints import CheckpointStore, PendingUpload, UploadHeader
from app.core.errors import InvalidRequest, TooLarge
from app.core.models import Checkpoint
from app.core.protocol import (
    ClaimedJob,
    ClaimRequest,
    FinishRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    LogBatch,
    LogsStored,
    MetricsAccepted,
    MetricsBatch,
    ReleaseRequest,
    Rendezvous,
    RendezvousRequest,
)
from app.core.states import CheckpointFormat, CheckpointTag
from app.schemas import CheckpointPublic, JobPublic


async def notify_streams(request: Request) -> AsyncIterator[None]:
    """After a worker's write (a claim, a heartbeat, metrics, lines, an end), event streams here read at once."""
    yield
    if request.method != "GET":
        request.app.state.changes.notify()


router = APIRouter(prefix="/worker", tags=["worker"], dependencies=[Depends(require_worker), Depends(notify_streams)])

_FENCED: dict[int | str, dict[str, str]] = {
    401: {"description": "Worker token missing or wrong."},
    404: {"description": "No such job."},
    409: {"description": "Lease lost: this worker no longer holds the job; stop and write nothing more."},
}


@router.post(
    "/claim",
    response_model=ClaimedJob,
    responses={200: {"model": ClaimedJob}, 204: {"description": "No job to run (after waiting wait_seconds)."}},
)
async def claim_job(
    body: ClaimRequest, request: Request, lane: WorkerLaneDep, settings: SettingsDep, wakeup: WakeupDep
) -> Response:
    """Lease the next job; with wait_seconds, wait for one to be submitted (long poll)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(body.wait_seconds, settings.claim_max_wait_seconds)
    while True:
        event = wakeup.current()  # taken before looking, so a submission while we look is not missed
        gate, fleet = request.app.state.reap_gate.is_open(), fleet_of(request)
        claimed = await lane.run(claim_once, lane.db, settings, body, gate, fleet)
        if claimed is not None:
            telemetry.CLAIMS.labels("job").inc()
            return claimed
        remaining = deadline - loop.time()
        if remaining <= 0 or await request.is_disconnected():
            telemetry.CLAIMS.labels("none").inc()
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        await wakeup.wait(event, min(remaining, settings.claim_poll_seconds))


@router.post("/jobs/{job_id}/heartbeat", responses=_FENCED)
async def heartbeat(
    job_id: JobId, body: HeartbeatRequest, request: Request, lane: WorkerLaneDep, settings: SettingsDep
) -> HeartbeatResponse:
    """Renew the lease (a node's, of a multi-node job) and report progress and what the worker is now; the
    answer says whether a cancel was requested."""
    progress = body.progress.model_dump() if body.progress else None
    fleet = fleet_of(request)

    def beat() -> bool:
        with lane.db.write() as session:
            said, caps = body.worker_id, body.capabilities  # its row first, as a claim locks it: no lock cycles
            if said is not None and caps is not None and fleet.due(said, caps, settings.lease_seconds):
                workers.record(session, said, caps)
            else:
                workers.seen_by_job(session, job_id, said)
            return leases.heartbeat(
                session,
                job_id,
                body.lease_token,
                lease_seconds=settings.lease_seconds,
                progress=progress,
                node=body.node,
            )

    return HeartbeatResponse(cancel_requested=await lane.run(beat))


@router.post("/jobs/{job_id}/rendezvous", responses=_FENCED)
async def rendezvous(job_id: JobId, body: RendezvousRequest, lane: WorkerLaneDep) -> Rendezvous:
    """A multi-node job's rendezvous: node 0 publishes the host:port where every rank joins; the other nodes
    read it (None until node 0 has)."""

    def meet() -> Rendezvous:
        with lane.db.write() as session:
            nodes, address = gangs.rendezvous(session, job_id, body.lease_token, body.node, body.address)
            return Rendezvous(nodes=nodes, address=address)

    return await lane.run(meet)


@router.post(
    "/jobs/{job_id}/metrics",
    responses={**_FENCED, 422: {"description": "Invalid batch: the detail names the point and field."}},
    openapi_extra=openapi_body(MetricsBatch),
)
async def report_metrics(
    job_id: JobId, body: Annotated[MetricsBatch, Depends(json_body(MetricsBatch))], lane: WorkerLaneDep
) -> MetricsAccepted:
    """Store up to 1,000 metric points in one transaction; a step reported again replaces the value."""

    def record() -> int:
        with lane.db.write() as session:
            return metrics.record_metrics(session, job_id, body.lease_token, body.points)

    accepted = await lane.run(record)
    telemetry.METRIC_POINTS.inc(accepted)
    return MetricsAccepted(accepted=accepted)


@router.post(
    "/jobs/{job_id}/logs",
    responses={**_FENCED, 422: {"description": "Invalid batch: the detail names the line and field."}},
)
async def report_logs(job_id: JobId, body: LogBatch, lane: WorkerLaneDep, settings: SettingsDep) -> LogsStored:
    """Store up to 1,000 lines of the job's log under its current attempt; a line sent again (same seq) is stored once.

    Past ``TRAINJOBS_MAX_LOG_BYTES`` of a job's log, lines are dropped and one line says how much.
    """

    def record() -> int:
        with lane.db.write() as session:
            job = leases.leased_job(session, job_id, body.lease_token)
            lines = [line.model_dump() for line in body.lines]
            return logs.append_lines(session, job, lines, max_log_bytes=settings.max_log_bytes)

    stored = await lane.run(record)
    telemetry.LOG_LINES.inc(stored)
    return LogsStored(stored=stored)


@router.put(
    "/jobs/{job_id}/checkpoints/{tag}",
    status_code=status.HTTP_201_CREATED,
    responses={
        **_FENCED,
        412: {"description": "X-Checkpoint-Same-As: that checkpoint is not stored with this sha256; send the file."},
        413: {"description": "Larger than MAX_UPLOAD_BYTES."},
        422: {"description": "Bad headers."},
    },
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": False}},
)
async def upload_checkpoint(
    job_id: JobId,
    tag: Annotated[CheckpointTag, PathParam()],
    request: Request,
    lane: WorkerLaneDep,
    settings: SettingsDep,
    x_lease_token: Annotated[str, Header(min_length=1, max_length=64)],
    x_checkpoint_sha256: Annotated[str, Header(pattern=r"^[0-9a-fA-F]{64}$")],
    x_checkpoint_epoch: Annotated[int, Header(ge=0, le=2**31 - 1)],
    x_checkpoint_step: Annotated[int, Header(ge=0, le=2**62)],
    x_checkpoint_metric: Annotated[float | None, Header()] = None,
    x_checkpoint_same_as: Annotated[
        CheckpointTag | None,
        Header(description="Send no body: the file is the one stored as this job's checkpoint of that tag."),
    ] = None,
    format: Annotated[CheckpointFormat, Query()] = CheckpointFormat.PT,
) -> CheckpointPublic:
    """Upload a checkpoint file (streamed; written to a temporary file, checked, fsynced, renamed).

    With ``X-Checkpoint-Same-As: <tag>`` and no body, the checkpoint is the file already stored for
    that tag (same format), provided its sha256 is the one declared: a worker saving one file as
    both ``best`` and ``last`` sends it once. 412 if it is not; then send the file.
    """
    if x_checkpoint_metric is not None and not math.isfinite(x_checkpoint_metric):
        raise InvalidRequest("X-Checkpoint-Metric must be a finite number", ("header", "x-checkpoint-metric"))
    declared = request.headers.get("content-length")  # over MAX_UPLOAD_BYTES: a 413 already (app/api/limits.py)
    header = UploadHeader(
        job_id=job_id,
        lease_token=x_lease_token,
        tag=tag,
        fmt=format,
        epoch=x_checkpoint_epoch,
        step=x_checkpoint_step,
        sha256=x_checkpoint_sha256.lower(),
        metric=x_checkpoint_metric,
        same_as=x_checkpoint_same_as,
    )
    store = CheckpointStore(lane.db, settings.artifacts_dir, settings.max_upload_bytes)
    has_body = declared not in (None, "0") or "chunked" in request.headers.get("transfer-encoding", "")
    upload = await lane.run(functools.partial(store.open_upload, header, has_body=has_body))  # fenced
    try:
        received = 0 if upload.linked else await receive_into(request, upload, lane)
        ckpt = await lane.run(store.commit_upload, header, upload)
    except BaseException:
        upload.discard()
        raise
    telemetry.CHECKPOINT_BYTES.labels("in").inc(received)
    return CheckpointPublic.of(ckpt, worker=True)


@router.put(
    "/jobs/{job_id}/artifacts/{name}",
    status_code=status.HTTP_201_CREATED,
    responses={**_FENCED, 413: {"description": "Over 4 MiB."}, 422: {"description": "A bad name or sha256."}},
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def upload_artifact(
    job_id: JobId,
    name: Annotated[str, PathParam(max_length=200, description="e.g. samples-epoch-3.png")],
    request: Request,
    lane: WorkerLaneDep,
    settings: SettingsDep,
    x_lease_token: Annotated[str, Header(min_length=1, max_length=64)],
    x_artifact_sha256: Annotated[str, Header(pattern=r"^[0-9a-fA-F]{64}$")],
) -> dict[str, object]:
    """Store a small file the job made besides its checkpoints (a GAN's samples); the same name replaces it."""
    artifacts.check_name(name)
    data = await request.body()  # at most WORKER_BODY_BYTES (app/api/limits.py)

    def store() -> artifacts.Artifact:
        with lane.db.write() as session:
            return artifacts.store_artifact(
                session, settings.artifacts_dir, job_id, x_lease_token, name, data, x_artifact_sha256
            )

    stored = await lane.run(store)
    return {"name": stored.name, "size": stored.size}


UPLOAD_BUFFER = 8 * 1024 * 1024


async def receive_into(request: Request, upload: PendingUpload, lane: WorkerLane) -> int:
    """Stream the body into ``upload``: 8 MiB at a time, hashed and written in a thread while the next arrives.
    Returns the bytes received."""
    chunks: list[bytes] = []
    buffered = 0
    writing: asyncio.Future[None] | None = None
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > upload.max_bytes:
                raise TooLarge(f"checkpoint is larger than MAX_UPLOAD_BYTES ({upload.max_bytes} bytes)")
            chunks.append(chunk)
            buffered += len(chunk)
            if buffered >= UPLOAD_BUFFER:
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(lane.run(upload.write_all, chunks))
                chunks, buffered = [], 0
        if writing is not None:
            await writing
        if chunks:
            await lane.run(upload.write_all, chunks)
    except BaseException:
        if writing is not None:  # the thread may still be writing: let it end before the file is discarded
            with anyio.CancelScope(shield=True):
                await asyncio.wait({writing})
            if not writing.cancelled():
                writing.exception()  # retrieved; the error raised is the first one
        raise
    return received


@router.get(
    "/jobs/{job_id}/checkpoints/{tag}",
    responses={200: {"content": {"application/octet-stream": {}}}, **_FENCED},
)
async def download_checkpoint(
    job_id: JobId,
    tag: Annotated[CheckpointTag, PathParam()],
    lane: WorkerLaneDep,
    settings: SettingsDep,
    request: Request,
    x_lease_token: Annotated[
        str, Header(min_length=1, max_length=64, description="The lease of the job that starts from it.")
    ],
    format: Annotated[CheckpointFormat, Query()] = CheckpointFormat.PT,
) -> Response:
    """Serve a checkpoint to the worker whose job starts from it: to resume, or a finetune from its base job."""

    def find() -> Checkpoint:
        with lane.db.read() as session:
            return checkpoints.find_for_worker(session, job_id, tag, format, lease_token=x_lease_token)

    return await lane.run(serve_checkpoint, find, settings.artifacts_dir, request)


@router.post("/jobs/{job_id}/finish", response_model=JobPublic, responses=_FENCED)
async def finish_job(job_id: JobId, body: FinishRequest, lane: WorkerLaneDep, wakeup: WakeupDep) -> Response:
    """End the job: succeeded (with result), failed (with error and error_class: requeued if the job's
    retry_on has that class and attempts are left) or cancelled."""

    def finish() -> Response:
        with lane.db.write() as session:
            progress = body.progress.model_dump() if body.progress else None
            job = leases.finish_job(
                session,
                job_id,
                body.lease_token,
                status=body.status,
                error=body.error,
                error_class=body.error_class,
                result=body.result,
                progress=progress,
            )
            return json_answer(JobPublic.of(job))

    answer = await lane.run(finish)
    wakeup.notify()  # jobs waiting for this one may be claimable now
    return answer


@router.post("/jobs/{job_id}/release", response_model=JobPublic, responses=_FENCED)
async def release_job(job_id: JobId, body: ReleaseRequest, lane: WorkerLaneDep, wakeup: WakeupDep) -> Response:
    """Give the job back to the queue without spending an attempt (worker shutting down)."""

    def release() -> Response:
        with lane.db.write() as session:
            return json_answer(JobPublic.of(leases.release_job(session, job_id, body.lease_token)))

    answer = await lane.run(release)
    wakeup.notify()
    return answer
