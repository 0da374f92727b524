"""The claim's transaction: a node offered to this worker first, else the next job it can run and fit; the
answer built while the transaction is open (a job that can never run is failed with why, and the next looked
at). The route (``POST /worker/claim``) long-polls around it."""

from __future__ import annotations

from fastapi import Response, status
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from app.core import checkpoints, gangs, leases, logs, queue, telemetry, workers
from app.core.config import Settings
from app.core.db import Database
from app.core.models import Job, utcnow
from app.core.protocol import ClaimedJob, ClaimRequest
from app.core.states import JobStatus


def claim_once(
    db: Database, settings: Settings, body: ClaimRequest, reap: bool, fleet: workers.Fleet
) -> Response | None:
    with telemetry.CLAIM_SECONDS.time(), db.write() as session:
        if fleet.due(body.worker_id, body.capabilities, settings.lease_seconds):
            workers.record(session, body.worker_id, body.capabilities)
        else:
            workers.hold(session, body.worker_id)
        now = utcnow()
        taken = gangs.take(session, body.worker_id, body.capabilities, now=now, lease_seconds=settings.lease_seconds)
        if taken is not None:  # a node of a multi-node job another worker's claim offered this one
            answer = answer_for(session, settings, *taken)
            if answer is not None:
                return answer
        for _ in range(CLAIMS_PER_CALL):
            job = queue.claim_next_job(
                session,
                worker_id=body.worker_id,
                device=body.device,
                lease_seconds=settings.lease_seconds,
                reap=reap,
                can_run=workers.can_run(body.capabilities),
                capabilities=body.capabilities,
                gang_seconds=settings.gang_seconds,
            )
            if job is None:
                return None
            workers.took(session, body.worker_id, job)
            answer = answer_for(session, settings, job, 0 if job.nodes > 1 else None)
            if answer is not None:
                return answer
            reap = False
    return None


def answer_for(session: Session, settings: Settings, job: Job, node: int | None) -> Response | None:
    """The claim's answer for a job just leased; None when the job can never run (then it is failed, with why)."""
    assert job.lease_token is not None
    try:
        starts = checkpoints.starting_points(session, job, settings.artifacts_dir)
    except checkpoints.NoStartingPoint as exc:  # it can never run: end it, try the next
        leases.finish_job(session, job.id, job.lease_token, status=JobStatus.FAILED, error=str(exc), retry=False)
        return None
    try:
        claimed = ClaimedJob.of(
            job,
            starts,
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            node=node,
            first_log_seq=logs.first_seq(session, job.id, job.attempt, node or 0),
        )
    except ValidationError:  # a stored row no submit made (a hand-edit): it would block the queue
        error = "the job's stored spec cannot be read (it was changed outside the service); submit it again"
        leases.finish_job(session, job.id, job.lease_token, status=JobStatus.FAILED, error=error, retry=False)
        return None
    return json_answer(claimed)


CLAIMS_PER_CALL = 10
"""Jobs one claim may look at (each that cannot run is failed with its reason) before it answers 204."""


def json_answer(model: BaseModel, status_code: int = status.HTTP_200_OK) -> Response:
    """The answer's bytes, made while the transaction is open: a write is never committed and then
    followed by an answer that fails to encode."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
