"""Checkpoint files on disk: atomic writes, hashes, paths inside ARTIFACTS_DIR.

An upload goes to a temporary file in the job's folder, is hashed as it
streams, fsynced, and renamed to a name that includes its hash; only then does
the database point at it. A download in flight keeps reading the old file even
after a newer one replaces it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO


class UploadTooLarge(Exception):
    pass


class ChecksumMismatch(Exception):
    pass


def job_dir(artifacts_dir: Path, job_id: int) -> Path:
    return artifacts_dir / "jobs" / str(job_id)


def checkpoint_relpath(job_id: int, tag: str, fmt: str, sha256: str) -> str:
    suffix = "safetensors" if fmt == "safetensors" else "pt"
    return f"jobs/{job_id}/{tag}-{sha256[:16]}.{suffix}"


class PendingUpload:
    """A temporary file being written; ``commit`` moves it into place."""

    def __init__(self, artifacts_dir: Path, job_id: int, max_bytes: int) -> None:
        self.folder = job_dir(artifacts_dir, job_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=self.folder)
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes

    @classmethod
    def linked(cls, artifacts_dir: Path, job_id: int, source: Path) -> PendingUpload:
        """A pending upload whose file is a stored file of the job (hard-linked; copied where links fail)."""
        upload = cls(artifacts_dir, job_id, max_bytes=0)
        upload.file.close()
        upload.path.unlink()
        try:
            os.link(source, upload.path)
        except OSError:
            shutil.copyfile(source, upload.path)
        upload.size = upload.path.stat().st_size
        return upload

    def write(self, chunk: bytes) -> None:
        self.write_all([chunk])

    def write_all(self, chunks: list[bytes]) -> None:
        self.size += sum(len(c) for c in chunks)
        if self.size > self.max_bytes:
            raise UploadTooLarge(f"checkpoint is larger than MAX_UPLOAD_BYTES ({self.max_bytes} bytes)")
        for chunk in chunks:
            self.hash.update(chunk)
        self.file.writelines(chunks)

    def finish(self, expected_sha256: str | None) -> str:
        """Flush and fsync; check the hash; returns the sha256."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        digest = self.hash.hexdigest()
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            raise ChecksumMismatch(f"sha256 of the body is {digest}, not {expected_sha256} as the header says")
        return digest

    def commit(self, artifacts_dir: Path, relpath: str) -> None:
        target = artifacts_dir / relpath
        os.replace(self.path, target)
        fsync_dir(target.parent)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_files(artifacts_dir: Path, relpaths: list[str]) -> None:
    for rel in relpaths:
        (artifacts_dir / rel).unlink(missing_ok=True)


def remove_job_dir(artifacts_dir: Path, job_id: int) -> None:
    shutil.rmtree(job_dir(artifacts_dir, job_id), ignore_errors=True)
