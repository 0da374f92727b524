"""The public jobs API: submit, list, inspect, cancel, delete, metrics, checkpoints."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError

from app.api.deps import DatabaseDep, SessionDep, SettingsDep, WakeupDep, quick_read
from app.core import artifacts, metrics, queue
from app.core.errors import InvalidRequest, NotFound
from app.core.models import Checkpoint
from app.core.specs import FinetuneSpec, ImageFolderDataset, JobSpec, PretrainSpec
from app.schemas import CheckpointPublic, CheckpointsPublic, JobPublic, JobsPublic, MetricsPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="Job id.")]
Tag = Literal["last", "best"]
Format = Literal["pt", "safetensors"]

_ERRORS: dict[int | str, dict[str, str]] = {
    404: {"description": "No such job (or checkpoint)."},
    409: {"description": "The job's state does not allow this."},
}


def check_dataset_path(spec: PretrainSpec | FinetuneSpec, data_dir: Path) -> None:
    """An imagefolder path must stay inside DATA_DIR, symlinks included."""
    if not isinstance(spec.dataset, ImageFolderDataset):
        return
    root = data_dir.resolve()
    target = (data_dir / spec.dataset.path).resolve()
    if target != root and root not in target.parents:
        raise InvalidRequest(
            f"dataset.path '{spec.dataset.path}' leads outside DATA_DIR; give a folder inside it",
            ("body", "dataset", "path"),
        )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "Same Idempotency-Key and body as an earlier request: that job.", "model": JobPublic},
        409: {"description": "Idempotency-Key reused with another body."},
        422: {"description": "Invalid job: the detail names the field."},
    },
)
def submit_job(
    spec: Annotated[JobSpec, Body(description="A pretrain or finetune job (see README for every field).")],
    response: Response,
    db: DatabaseDep,
    settings: SettingsDep,
    wakeup: WakeupDep,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, description="Same key + same body within 24 h: same job.")
    ] = None,
) -> JobPublic:
    """Submit a job; 201 means it is stored on disk."""
    check_dataset_path(spec, settings.data_dir)
    ttl = timedelta(hours=settings.idempotency_hours)
    for attempt in range(3):
        try:
            with db.write() as session:
                job, created = queue.enqueue_job(session, spec, idempotency_key=idempotency_key, idempotency_ttl=ttl)
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


@router.get("")
def list_jobs(
    session: SessionDep,
    status: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()] = None,
    kind: Annotated[Literal["pretrain", "finetune"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page.")] = None,
) -> JobsPublic:
    """List jobs, newest first, a page at a time."""
    before_id = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or not 0 < int(cursor) < 2**31:
            raise InvalidRequest("cursor is not one this API gave out; pass next_cursor unchanged", ("query", "cursor"))
        before_id = int(cursor)
    jobs, next_id = queue.list_jobs(session, status=status, kind=kind, limit=limit, before_id=before_id)
    return JobsPublic(data=[JobPublic.of(j) for j in jobs], next_cursor=str(next_id) if next_id else None)


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
async def get_job(job_id: JobId, db: DatabaseDep) -> Response:
    """One job: status, progress, error, result."""
    # The most polled endpoint: a quick read (on the event loop on SQLite), no response-model re-validation.
    body = await quick_read(db, lambda session: JobPublic.of(queue.get_job(session, job_id)).model_dump_json())
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", responses=_ERRORS)
def cancel_job(job_id: JobId, db: DatabaseDep) -> JobPublic:
    """Cancel: a queued job at once, a running one at its worker's next heartbeat."""
    with db.write() as session:
        return JobPublic.of(queue.cancel_job(session, job_id))


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_job(job_id: JobId, db: DatabaseDep, settings: SettingsDep) -> Response:
    """Delete a finished job with its metrics and checkpoint files."""
    with db.write() as session:
        paths = queue.delete_job(session, job_id)
    artifacts.remove_files(settings.artifacts_dir, paths)
    artifacts.remove_job_dir(settings.artifacts_dir, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=_ERRORS)
def get_metrics(
    job_id: JobId,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=100, description="Only this series.")] = None,
    since_step: Annotated[int | None, Query(ge=0, le=2**62, description="Only points after this step.")] = None,
    max_points: Annotated[
        int | None, Query(ge=4, le=1_000_000, description="Downsample each series (first, last, min, max per bucket).")
    ] = None,
) -> Response:
    """Metric series of a job, with last and best of each."""
    queue.get_job(session, job_id)
    series = metrics.read_series(session, job_id, name=name, since_step=since_step)
    body = metrics.metrics_document(job_id, series, max_points=max_points)
    # Serialised directly: re-validating 100,000 points through the response model would cost more than the query.
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def checkpoint_url(prefix: str, ckpt: Checkpoint) -> str:
    return f"{prefix}?tag={ckpt.tag}&format={ckpt.format}"


@router.get("/{job_id}/checkpoints", responses=_ERRORS)
def list_checkpoints(job_id: JobId, session: SessionDep) -> CheckpointsPublic:
    """The job's checkpoints (last, best; .pt and .safetensors)."""
    found = queue.list_checkpoints(session, job_id)
    return CheckpointsPublic(
        data=[CheckpointPublic.of(c, checkpoint_url(f"/jobs/{job_id}/checkpoint", c)) for c in found]
    )


class CheckpointFile(FileResponse):
    """A file response read in 4 MiB chunks: Starlette's 64 KiB cost a thread hop per 64 KiB (300 MB/s)."""

    chunk_size = 4 * 1024 * 1024


def serve_checkpoint(ckpt: Checkpoint, artifacts_dir: Path, request: Request) -> Response:
    """The file with Content-Length, Content-Disposition, ETag (its sha256) and Range support."""
    path = artifacts_dir / ckpt.path
    if not path.is_file():
        raise NotFound(f"job {ckpt.job_id}'s '{ckpt.tag}' checkpoint file is missing on the server")
    etag = f'"{ckpt.sha256}"'
    wanted = [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]
    if etag in wanted or "*" in wanted:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    filename = f"job-{ckpt.job_id}-{ckpt.tag}.{ckpt.format}"
    return CheckpointFile(
        path,
        media_type="application/octet-stream",
        filename=filename,
        headers={"ETag": etag, "X-Checkpoint-Epoch": str(ckpt.epoch), "X-Checkpoint-Step": str(ckpt.step)},
    )


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
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    tag: Annotated[Tag | None, Query(description="Default: best, falling back to last.")] = None,
    format: Annotated[Format, Query(description="pt: full checkpoint dict; safetensors: weights only.")] = "pt",
) -> Response:
    """Download a checkpoint (supports Range and If-None-Match)."""
    ckpt = queue.find_checkpoint(session, job_id, tag, format)
    return serve_checkpoint(ckpt, settings.artifacts_dir, request)
