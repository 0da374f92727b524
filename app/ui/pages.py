"""The dashboard's pages: jobs, one job, compare; and the fragments its scripts fetch to redraw a row
or a job's header when an event says it changed (the same templates as the page: one way to draw each)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from app.api.auth import CurrentUser
from app.api.deps import DatabaseDep, SettingsDep
from app.api.routes.jobs import owner_filter
from app.core import artifacts, checkpoints, jobs, logs
from app.core.accounts import Caller
from app.core.db import Database
from app.core.errors import InvalidRequest, NotFound, TrainjobsError
from app.core.models import Job
from app.core.states import JobKind, JobStatus
from app.schemas import ArtifactPublic, CheckpointPublic, JobPublic
from app.ui import views
from app.ui.render import PAGE_HEADERS, not_found, page

router = APIRouter(prefix="/ui", include_in_schema=False)
PAGE_SIZE = 50
MAX_COMPARED = 10
Text = Annotated[str, Query(max_length=200)]


def job_id_of(text: str) -> int | None:
    """A job id written as plain digits, or None (then no job is found)."""
    return int(text) if len(text) <= 10 and text.isascii() and text.isdigit() and 0 < int(text) < 2**31 else None


@router.get("/")
def jobs_page(
    request: Request,
    db: DatabaseDep,
    caller: CurrentUser,
    status: Text = "",
    kind: Text = "",
    name: Text = "",
    owner: Text = "",
    cursor: Text = "",
) -> HTMLResponse:
    """Your jobs (an admin: everyone's unless ?owner= names one), newest first, 50 a page."""
    owner = owner or ("*" if caller.is_admin else "")
    filters = {"status": status, "kind": kind, "name": name, "owner": owner}
    error = None
    rows: list[JobPublic] = []
    next_cursor = None
    try:
        chosen_status = JobStatus(status) if status else None
        chosen_kind = JobKind(kind) if kind else None
        with db.read() as session:
            owner_id = owner_filter(session, caller, owner or None)
            found, next_id = jobs.list_jobs(
                session,
                caller.scope,
                status=chosen_status,
                kind=chosen_kind,
                owner_id=owner_id,
                name=name or None,
                limit=PAGE_SIZE,
                before_id=job_id_of(cursor),
            )
            rows = [JobPublic.of(job) for job in found]
        next_cursor = str(next_id) if next_id else None
    except ValueError:
        error = "pick a status and kind from the lists"
    except TrainjobsError as exc:
        error = exc.message
    return page(
        request,
        "jobs.html",
        rows=rows,
        filters=filters,
        next_cursor=next_cursor,
        paged=bool(cursor),
        error=error,
        show_owner=caller.is_admin,
        kinds=list(JobKind),
    )


def visible(db: Database, caller: Caller, job_id: int) -> JobPublic:
    with db.read() as session:
        return JobPublic.of(jobs.get_job(session, caller.scope, job_id))


@router.get("/fragments/jobs/{job_id}/row")
def job_row(job_id: str, request: Request, db: DatabaseDep, caller: CurrentUser) -> Response:
    """One row of the jobs table, as the page draws it (for a job that changed or is new)."""
    found = job_id_of(job_id)
    try:
        job = visible(db, caller, found or 0)
    except NotFound:
        return Response("no such job", status_code=404, media_type="text/plain")
    return page(request, "_job_row.html", job=job, show_owner=caller.is_admin)


@router.get("/fragments/jobs/{job_id}/header")
def job_header(job_id: str, request: Request, db: DatabaseDep, caller: CurrentUser) -> Response:
    """The job page's header (status, progress, attempt, worker, result, error, actions)."""
    try:
        job = visible(db, caller, job_id_of(job_id) or 0)
    except NotFound:
        return Response("no such job", status_code=404, media_type="text/plain")
    return page(request, "_job_header.html", job=job)


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, db: DatabaseDep, caller: CurrentUser, settings: SettingsDep) -> Response:
    """A job: header and actions; metrics, log, checkpoints, spec and lineage."""
    found = job_id_of(job_id)
    try:
        with db.read() as session:
            job = JobPublic.of(jobs.get_job(session, caller.scope, found or 0))
            saved = checkpoints.list_checkpoints(session, caller.scope, job.id, settings.artifacts_dir)
            stored = [CheckpointPublic.of(c) for c in saved]
            children = session.scalars(
                jobs.visible_jobs(caller.scope).where(Job.init_job_id == job.id).order_by(Job.id).limit(100)
            )
            started = [(child.id, child.name, child.status) for child in children]
            base = None
            if job.depends_on is not None:
                parent = session.scalars(jobs.visible_jobs(caller.scope).where(Job.id == job.depends_on)).first()
                base = (parent.id, parent.name, parent.status) if parent is not None else None
    except NotFound:
        return not_found(request, f"job {job_id}")
    samples = [
        ArtifactPublic(name=a.name, size=a.size, url=f"/jobs/{job.id}/artifacts/{a.name}")
        for a in artifacts.list_artifacts(settings.artifacts_dir, job.id)
        if a.media_type == "image/png"
    ]
    return page(request, "job.html", job=job, checkpoints=stored, children=started, base=base, samples=samples)


@router.get("/jobs/{job_id}/log.txt")
def job_log_text(job_id: str, request: Request, db: DatabaseDep, caller: CurrentUser) -> Response:
    """The job's whole log as text: every attempt, each line with its time and stream."""
    found = job_id_of(job_id) or 0
    try:
        visible(db, caller, found)
    except NotFound:
        return not_found(request, f"job {job_id}")

    def lines() -> Iterator[bytes]:
        after, attempt = 0, None
        while True:
            with db.read() as session:
                page_ = logs.read_lines(session, found, after=after, limit=5000)
                text = []
                for line in page_:
                    if line.attempt != attempt:
                        attempt = line.attempt
                        text.append(f"----- attempt {attempt} -----\n")
                    text.append(f"{line.time.isoformat()} {line.stream:<6} {line.text}\n")
            if not page_:
                return
            after = page_[-1].id
            yield "".join(text).encode("utf-8", "backslashreplace")

    headers = {**PAGE_HEADERS, "Content-Disposition": f'attachment; filename="job-{found}-log.txt"'}
    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8", headers=headers)


@router.get("/compare")
def compare_page(request: Request, db: DatabaseDep, caller: CurrentUser, ids: Text = "") -> Response:
    """Jobs side by side: their curves overlaid (drawn by compare.js), the spec fields that differ, their results."""
    try:
        wanted = [job_id_of(part.strip()) for part in ids.split(",") if part.strip()]
        if not wanted or None in wanted or len(wanted) > MAX_COMPARED:
            raise InvalidRequest(f"ids: give 1 to {MAX_COMPARED} job ids, such as ?ids=1,2")
        chosen = [visible(db, caller, job_id) for job_id in dict.fromkeys(w for w in wanted if w)]
    except InvalidRequest as exc:
        return page(request, "404.html", status_code=422, what=exc.message)
    except NotFound as exc:
        return not_found(request, exc.message.removesuffix(" not found"))
    return page(
        request,
        "compare.html",
        chosen=chosen,
        differing=views.differing([job.spec for job in chosen]),
        results=views.result_rows([job.result for job in chosen]),
    )
