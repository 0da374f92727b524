"""Checkpoint downloads over HTTP, for users and workers alike: ETag, Range, Content-Disposition.

A download must survive the worker replacing that checkpoint meanwhile (the row then names a new
file and the old one is removed): before answering, the file gets a second, private name (a hard
link), and the answer is served from it. So the bytes sent are the ones the headers describe, and
the private name goes when the answer is done. If the file was replaced between the look-up and the
link, the row is looked up again (up to ``LOOK_UPS`` times: a worker replacing it many times a second
can win the race twice in a row).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request, Response, status
from fastapi.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from app.core.checkpoints import temporary_prefix
from app.core.errors import NotFound
from app.core.models import Checkpoint
from app.core.telemetry import CHECKPOINT_BYTES


class CheckpointFile(FileResponse):
    """A file response read in 4 MiB chunks (Starlette's 64 KiB cost a thread hop per 64 KiB: 300 MB/s),
    whose private name is removed when the answer ends, however it ends."""

    chunk_size = 4 * 1024 * 1024

    def __init__(self, path: Path, *, private: bool, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.private = private

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def counting(message: Message) -> None:
            nonlocal sent
            await send(message)
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))

        try:
            await super().__call__(scope, receive, counting)
        finally:
            CHECKPOINT_BYTES.labels("out").inc(sent)
            if self.private:
                Path(self.path).unlink(missing_ok=True)


def _private_name(path: Path) -> Path:
    """A hard link to ``path`` beside it, under a name no one else uses; FileNotFoundError if it is gone."""
    link = path.with_name(f"{temporary_prefix('download')}{secrets.token_hex(8)}")
    try:
        os.link(path, link)
    except FileNotFoundError:
        raise
    except OSError:  # hard links not supported here: a download may then see the file replaced under it
        return path
    return link


LOOK_UPS = 20


def serve_checkpoint(find: Callable[[], Checkpoint], artifacts_dir: Path, request: Request) -> Response:
    """The file of the checkpoint ``find`` looks up, with Content-Length, ETag (its sha256) and Range."""
    for _attempt in range(LOOK_UPS):
        ckpt = find()
        etag = f'"{ckpt.sha256}"'
        wanted = [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]
        if etag in wanted or "*" in wanted:
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        path = artifacts_dir / ckpt.path
        try:
            served = _private_name(path)
        except FileNotFoundError:
            continue  # replaced just now: the row names the new file
        return CheckpointFile(
            served,
            private=served != path,
            media_type="application/octet-stream",
            filename=f"job-{ckpt.job_id}-{ckpt.tag}{ckpt.format.suffix}",
            headers={"ETag": etag, "X-Checkpoint-Epoch": str(ckpt.epoch), "X-Checkpoint-Step": str(ckpt.step)},
        )
    raise NotFound(f"job {ckpt.job_id}'s '{ckpt.tag}' checkpoint file is missing on the server")
