"""A job's log: the lines of its processes' stdout and stderr, and the worker's and service's notes on it.

Workers send lines in batches, each numbered within its attempt (``seq`` from 0); a batch sent
again after a lost answer stores nothing twice (the rows are unique on job, attempt and seq).
Readers page by ``id``, the line's place in the job's whole log (every attempt, in order). A job
keeps at most ``max_log_bytes`` of text: past it, lines are dropped and one line, kept up to date,
says how much.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from app.core.models import Job, JobLog, utcnow
from app.core.states import LogStream

DROPPED_SEQ = -1
"""The seq of the one line that says how much of a job's log was dropped (the service writes it)."""
SERVICE_SEQ_BASE = -1_000_000
"""Lines the service writes itself (a lease that expired) number down from here, apart from the worker's."""


NODE_SEQ_SPAN = 1 << 40
"""Each node of a multi-node job numbers its lines from ``node * NODE_SEQ_SPAN``: none is taken for another's."""


def first_seq(session: Session, job_id: int, attempt: int, node: int = 0) -> int:
    """Where a run of the job (one node of it) numbers its lines from: after those its attempt stored already (a
    run given back at a worker's shutdown keeps its attempt; the next run's lines must not be taken for its)."""
    base = node * NODE_SEQ_SPAN
    last = (
        session.connection()
        .execute(_LAST_SEQ, {"job_id": job_id, "attempt": attempt, "low": base, "high": base + NODE_SEQ_SPAN})
        .scalar()
    )
    return base if last is None else int(last) + 1


_LAST_SEQ = select(func.max(JobLog.seq)).where(
    JobLog.job_id == bindparam("job_id"),
    JobLog.attempt == bindparam("attempt"),
    JobLog.seq >= bindparam("low"),
    JobLog.seq < bindparam("high"),
)


def append_lines(session: Session, job: Job, lines: list[dict[str, Any]], *, max_log_bytes: int) -> int:
    """Store ``lines`` (seq, stream, time, text) under the job's current attempt; returns how many were new."""
    if not lines:
        return 0
    seqs = [line["seq"] for line in lines]
    stored = set(
        session.scalars(
            select(JobLog.seq).where(JobLog.job_id == job.id, JobLog.attempt == job.attempt, JobLog.seq.in_(seqs))
        )
    )
    room = max(0, max_log_bytes - job.log_bytes)
    kept, dropped_bytes, dropped_lines = [], 0, 0
    for line in lines:
        if line["seq"] in stored:
            continue
        stored.add(line["seq"])
        size = len(line["text"].encode("utf-8", "surrogatepass"))
        if size > room or job.log_dropped_lines or dropped_lines:  # once full, full: no sample of what follows
            dropped_bytes, dropped_lines = dropped_bytes + size, dropped_lines + 1
            continue
        room -= size
        kept.append(
            JobLog(
                job_id=job.id,
                attempt=job.attempt,
                seq=line["seq"],
                stream=LogStream(line["stream"]),
                time=datetime.fromtimestamp(line["time"], utcnow().tzinfo),
                text=line["text"],
            )
        )
    session.add_all(kept)
    added = sum(len(row.text.encode("utf-8", "surrogatepass")) for row in kept)
    job.log_bytes += added
    if dropped_lines:
        _count_dropped(session, job, dropped_bytes, dropped_lines, max_log_bytes)
    return len(kept)


def _count_dropped(session: Session, job: Job, size: int, lines: int, max_log_bytes: int) -> None:
    job.log_dropped_bytes += size
    job.log_dropped_lines += lines
    text = (
        f"the log reached its limit of {max_log_bytes} bytes (TRAINJOBS_MAX_LOG_BYTES): "
        f"{job.log_dropped_lines} later line(s), {job.log_dropped_bytes} bytes, were dropped"
    )
    # Written anew each time (a new id): a reader paging by id sees the count as it grows.
    session.execute(delete(JobLog).where(JobLog.job_id == job.id, JobLog.seq == DROPPED_SEQ))
    session.flush()
    marker = JobLog(
        job_id=job.id, attempt=job.attempt, seq=DROPPED_SEQ, stream=LogStream.SYSTEM, time=utcnow(), text=text
    )
    session.add(marker)


def note(session: Session, job: Job, text: str, *, attempt: int | None = None) -> None:
    """A line the service writes into the job's log itself (stream ``system``), in its current attempt's
    lines (or ``attempt``'s)."""
    attempt = job.attempt if attempt is None else attempt
    taken = session.scalar(
        select(func.count())
        .select_from(JobLog)
        .where(JobLog.job_id == job.id, JobLog.attempt == attempt, JobLog.seq <= SERVICE_SEQ_BASE)
    )
    seq = SERVICE_SEQ_BASE - (taken or 0)
    session.add(JobLog(job_id=job.id, attempt=attempt, seq=seq, stream=LogStream.SYSTEM, time=utcnow(), text=text))


def read_lines(
    session: Session,
    job_id: int,
    *,
    after: int | None = None,
    limit: int = 1000,
    attempt: int | None = None,
    stream: LogStream | None = None,
    tail: int | None = None,
) -> list[JobLog]:
    """Lines of a job (already found visible to the caller), oldest first: after ``after``, or the last ``tail``."""
    query = select(JobLog).where(JobLog.job_id == job_id)
    if after is not None:
        query = query.where(JobLog.id > after)
    if attempt is not None:
        query = query.where(JobLog.attempt == attempt)
    if stream is not None:
        query = query.where(JobLog.stream == stream)
    if tail is not None:
        newest = list(session.scalars(query.order_by(JobLog.id.desc()).limit(min(tail, limit))))
        return within_bytes(newest[::-1], from_end=True)
    return within_bytes(list(session.scalars(query.order_by(JobLog.id).limit(limit))))


MAX_PAGE_BYTES = 4 * 1024 * 1024
"""A page of lines holds at most this much text (the rest comes with the next page)."""


def within_bytes(lines: list[JobLog], *, from_end: bool = False) -> list[JobLog]:
    """The lines, cut where their text passes ``MAX_PAGE_BYTES`` (at least one line)."""
    total, kept = 0, list[JobLog]()
    for line in reversed(lines) if from_end else lines:
        total += len(line.text) * 4  # at most 4 bytes a character: no encoding needed to bound it
        if kept and total > MAX_PAGE_BYTES:
            break
        kept.append(line)
    return kept[::-1] if from_end else kept
