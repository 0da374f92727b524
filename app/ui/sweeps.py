"""The dashboard's sweeps: a list, and a sweep's page (its best setting, a table per setting and per
trial, and a chart of the metric against each parameter, drawn by sweep.js); and, for admins, the workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.auth import CurrentUser
from app.api.deps import DatabaseDep, SettingsDep
from app.api.routes.jobs import owner_filter
from app.api.routes.workers import WorkerPublic
from app.core import sweeps, workers
from app.core.errors import NotFound, TrainjobsError
from app.schemas import SweepDetail, SweepPublic
from app.ui.pages import job_id_of
from app.ui.render import not_found, page

router = APIRouter(prefix="/ui", include_in_schema=False)
PAGE_SIZE = 50
Text = Annotated[str, Query(max_length=200)]


@router.get("/sweeps")
def sweeps_page(request: Request, db: DatabaseDep, caller: CurrentUser, cursor: Text = "") -> Response:
    """Your sweeps (an admin: everyone's), newest first."""
    rows: list[SweepPublic] = []
    next_cursor, error = None, None
    try:
        with db.read() as session:
            owner_id = owner_filter(session, caller, "*" if caller.is_admin else None)
            found, next_id = sweeps.list_sweeps(
                session, caller.scope, owner_id=owner_id, limit=PAGE_SIZE, before_id=job_id_of(cursor)
            )
            states = sweeps.states(session, found)
            rows = [SweepPublic.of(s, *states[s.id]) for s in found]
        next_cursor = str(next_id) if next_id else None
    except TrainjobsError as exc:
        error = exc.message
    return page(request, "sweeps.html", rows=rows, next_cursor=next_cursor, error=error, show_owner=caller.is_admin)


@router.get("/sweeps/{sweep_id}")
def sweep_page(sweep_id: str, request: Request, db: DatabaseDep, caller: CurrentUser) -> Response:
    """A sweep: status and counts, the best setting and trial, the settings ranked, every trial."""
    try:
        with db.read() as session:
            sweep = sweeps.get_sweep(session, caller.scope, job_id_of(sweep_id) or 0)
            detail = SweepDetail.of_summary(sweep, sweeps.summarize(sweep, sweeps.trial_jobs(session, sweep.id)))
    except NotFound:
        return not_found(request, f"sweep {sweep_id}")
    sign = -1.0 if detail.mode == "max" else 1.0
    ranked = sorted(detail.settings, key=lambda s: (s.mean is None, sign * (s.mean or 0.0)))
    names = list(detail.spec.get("parameters", {})) if isinstance(detail.spec.get("parameters"), dict) else []
    trials = [t.model_dump(mode="json") for t in detail.trials]
    return page(request, "sweep.html", sweep=detail, ranked=ranked, parameters=names, trials=trials)


@router.get("/workers")
def workers_page(request: Request, db: DatabaseDep, caller: CurrentUser, settings: SettingsDep) -> Response:
    """Admins: the workers, their devices and what they run (GET /workers); anyone else: not found."""
    if not caller.is_admin:
        return not_found(request, "the workers page")
    with db.read() as session:
        rows = [WorkerPublic.of(s) for s in workers.states(session, settings.lease_seconds)]
    return page(request, "workers.html", rows=rows)
