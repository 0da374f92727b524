"""Checkpoints: their rows and their files, together.

An upload is fenced by the lease before a byte is read, streamed to a temporary file in the job's
folder, hashed as it streams, fsynced, checked against the declared sha256, and renamed to a name
that includes its hash inside the transaction that points the row at it; the file it replaced is
removed after the commit. A download in flight keeps reading the old file even after a newer one
replaces it. Paths in rows are relative to ARTIFACTS_DIR.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from app.core.db import Database
from app.core.errors import (
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    JobNotFound,
    NotFound,
    PreconditionFailed,
    TooLarge,
)
from app.core.files import link_or_copy, replace_durably
from app.core.jobs import Scope, get_job
from app.core.leases import check_lease
from app.core.models import Checkpoint, Job, utcnow
from app.core.states import CheckpointFormat, CheckpointTag, JobStatus

# --- rows -----------------------------------------------------------------------------


def checkpoint_of(session: Session, job_id: int, tag: CheckpointTag, fmt: CheckpointFormat) -> Checkpoint | None:
    return session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.tag == tag, Checkpoint.format == fmt)
    ).first()


def best_or_last(session: Session, job_id: int, fmt: CheckpointFormat = CheckpointFormat.PT) -> Checkpoint | None:
    """What a job's training produced: its best checkpoint, else its last."""
    return checkpoint_of(session, job_id, CheckpointTag.BEST, fmt) or checkpoint_of(
        session, job_id, CheckpointTag.LAST, fmt
    )


def _tagged(session: Session, job: Job, tag: CheckpointTag | None, fmt: CheckpointFormat) -> Checkpoint:
    found = best_or_last(session, job.id, fmt) if tag is None else checkpoint_of(session, job.id, tag, fmt)
    if found is None:
        what = f"'{tag}' checkpoint" if tag else "checkpoint"
        raise NotFound(f"job {job.id} has no {what} in format '{fmt}' yet (status: {job.status})")
    return found


def find_checkpoint(
    session: Session, scope: Scope, job_id: int, tag: CheckpointTag | None, fmt: CheckpointFormat
) -> Checkpoint:
    """A job's checkpoint of that tag (no tag: best, falling back to last), for a caller who can see the job."""
    return _tagged(session, get_job(session, scope, job_id), tag, fmt)


def find_for_worker(
    session: Session, job_id: int, tag: CheckpointTag, fmt: CheckpointFormat, *, lease_token: str
) -> Checkpoint:
    """A checkpoint a worker starts from, for the lease it holds: its own job's (to resume) or that
    job's base job's (a finetune's init). Any other job's is a 404: a worker reads nothing else."""
    holds = select(Job.id).where(
        Job.lease_token == lease_token,
        Job.status == JobStatus.RUNNING,
        or_(Job.id == job_id, Job.init_job_id == job_id),
    )
    job = session.get(Job, job_id) if session.scalars(holds.limit(1)).first() is not None else None
    if job is None:
        raise JobNotFound(job_id)
    return _tagged(session, job, tag, fmt)


def on_disk(artifacts_dir: Path, ckpt: Checkpoint | None) -> Checkpoint | None:
    """The checkpoint, if its file is there (a row whose file vanished is neither listed nor handed out)."""
    return ckpt if ckpt is not None and (artifacts_dir / ckpt.path).is_file() else None


def list_checkpoints(session: Session, scope: Scope, job_id: int, artifacts_dir: Path) -> list[Checkpoint]:
    get_job(session, scope, job_id)
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.tag, Checkpoint.format)
    return [c for c in session.scalars(stmt) if on_disk(artifacts_dir, c)]


class NoStartingPoint(Conflict):
    """A finetune whose base job has no checkpoint file left to start from."""


def starting_points(session: Session, job: Job, artifacts_dir: Path) -> tuple[Checkpoint | None, Checkpoint | None]:
    """The checkpoints a claimed job starts from, by this rule (README, "Crashes and stops"):

    - it resumes from its newest checkpoint whose file is there: ``last``, else ``best`` (each is a
      whole checkpoint); with neither, it starts again from its first step;
    - a finetune starts from its base job's ``best``, else ``last``; with neither file left it cannot
      run: ``NoStartingPoint``.
    """
    base = job.init_job_id
    ids = [job.id] if base is None else [job.id, base]
    found = {(c.job_id, c.tag): c for c in session.scalars(_STARTS, {"ids": ids})}  # one query, built once

    def first(job_id: int, *tags: CheckpointTag) -> Checkpoint | None:
        return next((c for t in tags if (c := on_disk(artifacts_dir, found.get((job_id, t)))) is not None), None)

    resume = first(job.id, CheckpointTag.LAST, CheckpointTag.BEST)
    if base is None:
        return resume, None
    init = first(base, CheckpointTag.BEST, CheckpointTag.LAST)
    if init is None:
        raise NoStartingPoint(f"base job {base} has no checkpoint file left to start from (they were deleted)")
    return resume, init


_STARTS = select(Checkpoint).where(
    Checkpoint.job_id.in_(bindparam("ids", expanding=True)), Checkpoint.format == CheckpointFormat.PT
)


@dataclass(frozen=True)
class UploadHeader:
    """What a worker declares about a checkpoint it uploads (the X-Checkpoint-* headers)."""

    job_id: int
    lease_token: str
    tag: CheckpointTag
    fmt: CheckpointFormat
    epoch: int
    step: int
    sha256: str
    metric: float | None = None
    same_as: CheckpointTag | None = None
    """No body: the file is the one stored for that tag (same format), if its sha256 is ``sha256``."""


def record_checkpoint(
    session: Session, header: UploadHeader, *, size: int, path: str, now: datetime | None = None
) -> tuple[Checkpoint, str | None]:
    """Point the job's (tag, format) checkpoint at a new file; returns it and the replaced file's path. Fenced."""
    now = now or utcnow()
    check_lease(session, header.job_id, header.lease_token, now=now)
    existing = checkpoint_of(session, header.job_id, header.tag, header.fmt)
    old_path = None
    if existing is None:
        existing = Checkpoint(job_id=header.job_id, tag=header.tag, format=header.fmt)
        session.add(existing)
    elif existing.path != path:
        old_path = existing.path
    existing.epoch, existing.step, existing.size, existing.sha256 = header.epoch, header.step, size, header.sha256
    existing.path, existing.metric_value, existing.created_at = path, header.metric, now
    session.flush()
    return existing, old_path


# --- files ---------------------------------------------------------------------------

HOST = socket.gethostname()
TEMPORARY = re.compile(r"^\.(?:upload|download)-(?P<host>.+)-(?P<pid>\d+)(?:\.(?P<started>\d+))?-")
STALE_AFTER = timedelta(hours=24)


def temporary_prefix(what: str) -> str:
    """``.upload-<host>-<pid>.<started>-``: whose temporary file it is, so a later start knows it is left
    over. The process's start time tells a restarted container's API (PID 1 again) from its predecessor."""
    return f".{what}-{HOST}-{os.getpid()}.{process_started(os.getpid()) or 0}-"


def process_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None: gone, or not known here."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


@contextmanager
def disk_full_is_507(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise InsufficientStorage(
            f"the service's disk is full: {what} could not be stored; it is kept nowhere, send it again later"
        ) from None


def _still_running(pid: int, started: str | None) -> bool:
    """Whether the process that named a temporary file is still the one running as ``pid``."""
    if started is not None and started != "0":
        return process_started(pid) == started
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(artifacts_dir: Path, *, now: datetime | None = None) -> int:
    """Remove temporary files left by processes that died mid-upload or mid-download; returns how many.

    A file of this host whose process is gone goes at once; any other after ``STALE_AFTER`` (several
    API processes may share the folder, so a live one's files are never touched).
    """
    now = now or utcnow()
    removed = 0
    jobs = artifacts_dir / "jobs"
    for path in itertools.chain(jobs.glob("*/.*-*"), jobs.glob("*/artifacts/.*-*")):
        found = TEMPORARY.match(path.name)
        if found is None:
            continue
        try:  # ctime: a download's link is as old as the link, not as the checkpoint it names
            age = now - datetime.fromtimestamp(path.stat().st_ctime, UTC)
        except FileNotFoundError:
            continue
        mine_and_dead = found["host"] == HOST and not _still_running(int(found["pid"]), found["started"])
        if mine_and_dead or age > STALE_AFTER:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def job_dir(artifacts_dir: Path, job_id: int) -> Path:
    return artifacts_dir / "jobs" / str(job_id)


def checkpoint_relpath(job_id: int, tag: CheckpointTag, fmt: CheckpointFormat, sha256: str) -> str:
    return f"jobs/{job_id}/{tag}-{sha256[:16]}{fmt.suffix}"


def remove_job_files(artifacts_dir: Path, job_id: int) -> None:
    shutil.rmtree(job_dir(artifacts_dir, job_id), ignore_errors=True)


class PendingUpload:
    """A temporary file in the job's folder being written; ``commit`` moves it into place."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        with disk_full_is_507("a checkpoint upload"):
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=temporary_prefix("upload"), dir=folder)
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes
        self.linked = False

    @classmethod
    def of_stored(cls, folder: Path, source: Path) -> PendingUpload:
        """A pending upload whose file is a stored file of the job (linked, or copied where links fail)."""
        upload = cls(folder, max_bytes=0)
        upload.file.close()
        upload.path.unlink()
        try:
            with disk_full_is_507("a checkpoint upload"):  # a copy, where links fail, needs room
                link_or_copy(source, upload.path)
        except BaseException:
            upload.path.unlink(missing_ok=True)
            raise
        upload.size, upload.linked = upload.path.stat().st_size, True
        return upload

    def write_all(self, chunks: list[bytes]) -> None:
        self.size += sum(len(c) for c in chunks)
        if self.size > self.max_bytes:
            raise TooLarge(f"checkpoint is larger than MAX_UPLOAD_BYTES ({self.max_bytes} bytes)")
        for chunk in chunks:
            self.hash.update(chunk)
        with disk_full_is_507("a checkpoint upload"):
            self.file.writelines(chunks)

    def finish(self, expected_sha256: str) -> None:
        """Flush and fsync; refuse a body whose sha256 is not the declared one."""
        if self.linked:
            return
        with disk_full_is_507("a checkpoint upload"):
            self.file.flush()
            os.fsync(self.file.fileno())
        self.file.close()
        digest = self.hash.hexdigest()
        if expected_sha256 != digest:
            raise InvalidRequest(
                f"sha256 of the body is {digest}, not {expected_sha256} as the header says",
                ("header", "x-checkpoint-sha256"),
            )

    def commit(self, artifacts_dir: Path, relpath: str) -> None:
        replace_durably(self.path, artifacts_dir / relpath)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


class CheckpointStore:
    """Uploads and removals of checkpoint files, each paired with its row (two short transactions)."""

    def __init__(self, db: Database, artifacts_dir: Path, max_bytes: int) -> None:
        self.db, self.artifacts_dir, self.max_bytes = db, artifacts_dir, max_bytes

    def open_upload(self, header: UploadHeader, *, has_body: bool) -> PendingUpload:
        """Fenced before a byte is read, so a stale worker is refused before it sends gigabytes."""
        with self.db.write() as session:
            check_lease(session, header.job_id, header.lease_token)
            source = None
            if header.same_as is not None and has_body:
                raise InvalidRequest("send no body with X-Checkpoint-Same-As", ("header", "x-checkpoint-same-as"))
            if header.same_as is not None:
                source = checkpoint_of(session, header.job_id, header.same_as, header.fmt)
                if source is None or source.sha256 != header.sha256:
                    raise PreconditionFailed(
                        f"job {header.job_id} has no '{header.same_as}' checkpoint ({header.fmt}) with sha256 "
                        f"{header.sha256}; upload the file itself"
                    )
        folder = job_dir(self.artifacts_dir, header.job_id)
        if source is None:
            return PendingUpload(folder, self.max_bytes)
        try:
            return PendingUpload.of_stored(folder, self.artifacts_dir / source.path)
        except FileNotFoundError as exc:
            raise PreconditionFailed(f"the '{header.same_as}' checkpoint file is gone; upload the file") from exc

    def commit_upload(self, header: UploadHeader, upload: PendingUpload) -> Checkpoint:
        """Check the file, point the row at it (fenced), then remove the file it replaced."""
        upload.finish(header.sha256)
        relpath = checkpoint_relpath(header.job_id, header.tag, header.fmt, header.sha256)
        with self.db.write() as session:
            ckpt, old = record_checkpoint(session, header, size=upload.size, path=relpath)
            upload.commit(self.artifacts_dir, relpath)
        if old is not None and old != relpath:
            (self.artifacts_dir / old).unlink(missing_ok=True)
        return ckpt
