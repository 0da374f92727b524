"""A job's artifacts: small files it makes besides its checkpoints (a GAN's sample grids), stored under
``ARTIFACTS_DIR/jobs/<id>/artifacts/<name>``, listed from that folder, deleted with the job's folder.

A name is plain: letters, digits, ``.``, ``_``, ``-``, one of the suffixes ``MEDIA`` knows, so it can
never leave the folder. An upload is fenced by the lease like every worker write, checked against the
sha256 the worker declares, and written to a temporary file renamed into place (a reader never sees
half a file).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.core.checkpoints import disk_full_is_507, job_dir, temporary_prefix
from app.core.errors import Conflict, InvalidRequest, NotFound, TooLarge
from app.core.files import fsync_path
from app.core.leases import check_lease

MEDIA = {".png": "image/png", ".json": "application/json", ".txt": "text/plain; charset=utf-8"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_ARTIFACT_BYTES = 4 * 1024 * 1024
MAX_ARTIFACTS_PER_JOB = 1000
"""Files one job may keep (a dcgan writes at most about a hundred sample grids, however long it runs)."""
NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Artifact:
    name: str
    size: int

    @property
    def media_type(self) -> str:
        return MEDIA[Path(self.name).suffix]


def check_name(name: str) -> str:
    if not NAME.match(name) or Path(name).suffix not in MEDIA or ".." in name:
        raise InvalidRequest(
            f"artifact name {name[:120]!r}: use letters, digits, '.', '_' and '-', ending in one of "
            f"{', '.join(sorted(MEDIA))}",
            ("path", "name"),
        )
    return name


def folder(artifacts_dir: Path, job_id: int) -> Path:
    return job_dir(artifacts_dir, job_id) / "artifacts"


def store_artifact(
    session: Session, artifacts_dir: Path, job_id: int, lease_token: str, name: str, data: bytes, sha256: str
) -> Artifact:
    """Write the artifact of a job this lease holds (fenced: the row stays locked on PostgreSQL until commit)."""
    check_name(name)
    if len(data) > MAX_ARTIFACT_BYTES:
        raise TooLarge(f"an artifact is at most {MAX_ARTIFACT_BYTES} bytes; this one has {len(data)}")
    if hashlib.sha256(data).hexdigest() != sha256.lower():
        raise InvalidRequest("X-Artifact-Sha256 does not match the body: it was damaged on the way", ("header",))
    check_lease(session, job_id, lease_token)
    where = folder(artifacts_dir, job_id)
    with disk_full_is_507("an artifact upload"):
        where.mkdir(parents=True, exist_ok=True)
        if not (where / name).exists() and len(list_artifacts(artifacts_dir, job_id)) >= MAX_ARTIFACTS_PER_JOB:
            raise Conflict(f"job {job_id} has {MAX_ARTIFACTS_PER_JOB} artifacts, the most a job may keep")
        with tempfile.NamedTemporaryFile(dir=where, prefix=temporary_prefix("upload"), delete=False) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(out.name, where / name)
        fsync_path(where)
    return Artifact(name, len(data))


def _order(name: str) -> list[object]:
    """samples-epoch-2 before samples-epoch-10."""
    return [int(part) if part.isdigit() else part for part in NUMBER.split(name)]


def list_artifacts(artifacts_dir: Path, job_id: int) -> list[Artifact]:
    """The job's artifacts (of a job the caller may see), by name, numbers in number order."""
    found = []
    try:
        with os.scandir(folder(artifacts_dir, job_id)) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not NAME.match(entry.name) or Path(entry.name).suffix not in MEDIA:
                    continue
                try:
                    if entry.is_file():
                        found.append(Artifact(entry.name, entry.stat().st_size))
                except OSError:  # deleted (or replaced) while listed
                    continue
    except OSError:  # no folder yet, or the job's folder going away
        return []
    return sorted(found, key=lambda a: _order(a.name))


def read_artifact(artifacts_dir: Path, job_id: int, name: str) -> tuple[bytes, Artifact]:
    """A job's artifact (of a job the caller may see), whole (at most MAX_ARTIFACT_BYTES): the file is
    replaced by a rename, so what is read is one version of it. NotFound when there is none."""
    path = folder(artifacts_dir, job_id) / check_name(name)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise NotFound(f"job {job_id} has no artifact {name!r}") from None
    return data, Artifact(name, len(data))
