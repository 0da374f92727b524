"""The sweeps API: submit a sweep (all its trials or none), list, inspect, cancel, retry, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status
from fastapi import Path as PathParam
from pydantic import BeforeValidator

from app.api.auth import CurrentUser, ScopeDep
from app.api.deps import DatabaseDep, SettingsDep, WakeupDep, plain_digits
from app.api.routes.jobs import check_submittable, owner_filter, parse_cursor
from app.core import checkpoints, sweeps
from app.core.errors import InvalidRequest
from app.core.specs.sweeps import SweepSpec
from app.schemas import SweepDetail, SweepPublic, SweepsPublic

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses={401: {"description": "No token, or not a valid one."}})

SweepId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="Sweep id."), BeforeValidator(plain_digits)]

_ERRORS: dict[int | str, dict[str, str]] = {
    404: {"description": "No such sweep, or not one of yours."},
    409: {"description": "The sweep's state does not allow this."},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        422: {"description": "Invalid sweep, or one of its trials is not a valid job: the detail names the trial."},
        429: {
            "description": "Its trials would take you past TRAINJOBS_MAX_ACTIVE_JOBS_PER_USER queued or running jobs."
        },
    },
)
def submit_sweep(
    spec: Annotated[SweepSpec, Body(description="A base job spec and the fields to sweep (see README, Sweeps).")],
    response: Response,
    db: DatabaseDep,
    caller: CurrentUser,
    settings: SettingsDep,
    wakeup: WakeupDep,
) -> SweepDetail:
    """Submit a sweep: every trial is checked as a job first, then all are stored in one transaction."""
    trials, _, _ = sweeps.plan(spec)
    for trial in trials:
        for where, job in (("base", trial.spec), ("then", trial.then)):
            try:
                if job is not None:
                    check_submittable(job, settings)
            except InvalidRequest as exc:
                raise InvalidRequest(f"{trial.label}: {where}: {exc.message}", ("body", where, *exc.loc[1:])) from None
    with db.write() as session:
        sweep = sweeps.create_sweep(
            session,
            spec,
            trials,
            owner_id=caller.user_id,
            scope=caller.scope,
            max_active=settings.max_active_jobs_per_user,
        )
        detail = SweepDetail.of_summary(sweep, sweeps.summarize(sweep, sweeps.trial_jobs(session, sweep.id)))
    wakeup.notify()
    response.headers["Location"] = f"/sweeps/{detail.id}"
    return detail


@router.get("", responses={403: {"description": "?owner= names another user, and you are not an admin."}})
def list_sweeps(
    db: DatabaseDep,
    caller: CurrentUser,
    owner: Annotated[
        str | None, Query(max_length=64, description="Admins: a username, or * for everyone's. Default: your own.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page.")] = None,
) -> SweepsPublic:
    """List your sweeps (an admin: anyone's), newest first."""
    before_id = parse_cursor(cursor)
    with db.read() as session:
        owner_id = owner_filter(session, caller, owner)
        page, next_id = sweeps.list_sweeps(session, caller.scope, owner_id=owner_id, limit=limit, before_id=before_id)
        states = sweeps.states(session, page)
        data = [SweepPublic.of(s, *states[s.id]) for s in page]
    return SweepsPublic(data=data, next_cursor=str(next_id) if next_id else None)


@router.get("/{sweep_id}", responses=_ERRORS)
def get_sweep(sweep_id: SweepId, db: DatabaseDep, scope: ScopeDep) -> SweepDetail:
    """A sweep: status, counts, every trial with its parameters and metric, per setting the mean and
    spread over seeds, the best setting and the best trial."""
    with db.read() as session:
        sweep = sweeps.get_sweep(session, scope, sweep_id)
        return SweepDetail.of_summary(sweep, sweeps.summarize(sweep, sweeps.trial_jobs(session, sweep_id)))


@router.post("/{sweep_id}/cancel", responses=_ERRORS)
def cancel_sweep(sweep_id: SweepId, db: DatabaseDep, scope: ScopeDep) -> SweepDetail:
    """Cancel: queued trials at once, running ones at their workers' next heartbeat."""
    with db.write() as session:
        sweep = sweeps.cancel_sweep(session, scope, sweep_id)
        return SweepDetail.of_summary(sweep, sweeps.summarize(sweep, sweeps.trial_jobs(session, sweep_id)))


@router.post("/{sweep_id}/retry", responses=_ERRORS)
def retry_sweep(
    sweep_id: SweepId, db: DatabaseDep, scope: ScopeDep, settings: SettingsDep, wakeup: WakeupDep
) -> SweepDetail:
    """Run exactly the failed and cancelled trials again, as the next attempt of the same jobs."""
    with db.write() as session:
        sweeps.retry_sweep(session, scope, sweep_id, max_active=settings.max_active_jobs_per_user)
        sweep = sweeps.get_sweep(session, scope, sweep_id)
        detail = SweepDetail.of_summary(sweep, sweeps.summarize(sweep, sweeps.trial_jobs(session, sweep_id)))
    wakeup.notify()
    return detail


@router.delete("/{sweep_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_sweep(sweep_id: SweepId, db: DatabaseDep, scope: ScopeDep, settings: SettingsDep) -> Response:
    """Delete a finished sweep with its trials' jobs, metrics and checkpoint files."""
    with db.write() as session:
        deleted = sweeps.delete_sweep(session, scope, sweep_id)
    for job_id in deleted:
        checkpoints.remove_job_files(settings.artifacts_dir, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
