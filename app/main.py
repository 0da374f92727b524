"""The FastAPI application: routers, error handlers, and the lifespan (schema check, lease reaper)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from app import __version__
from app.api.limits import BodyLimit, body_limit
from app.api.routes import accounts as accounts_routes
from app.api.routes import health, jobs, worker
from app.api.wakeup import Wakeup
from app.core import accounts, leases
from app.core.config import Settings, get_settings
from app.core.db import Database
from app.core.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    JobNotFound,
    LimitExceeded,
    NotFound,
    PreconditionFailed,
    TooLarge,
    TrainjobsError,
    Unauthorized,
)
from app.core.migrate import check_schema_current
from app.core.states import JobStatus

log = logging.getLogger("trainjobs.api")

DESCRIPTION = """
Run PyTorch **pretrain** (autoencoder on unlabelled images) and **finetune** (classifier,
optionally from a pretrain job's encoder) jobs. Submit with `POST /jobs`; follow
`GET /jobs/{id}` and `GET /jobs/{id}/metrics`; download with `GET /jobs/{id}/checkpoint`.
Workers speak the `/worker` protocol. Errors are `{"detail": ...}`.
"""


class ReapGate:
    """Leases are not reaped in the first lease period after start-up.

    While the service was down no worker could heartbeat: their leases look expired, yet the
    workers are alive and will heartbeat within one lease period. Reaping them at once would
    restart jobs that are running fine.
    """

    def __init__(self, lease_seconds: float) -> None:
        self.open_at = time.monotonic() + lease_seconds

    def is_open(self) -> bool:
        return time.monotonic() >= self.open_at


async def reap_periodically(db: Database, settings: Settings, wakeup: Wakeup, gate: ReapGate) -> None:
    """Requeue jobs whose worker vanished, even when no worker is claiming."""

    def reap() -> list[tuple[int, JobStatus]]:
        with db.write() as session:
            return leases.reap_expired_leases(session)

    while True:
        await asyncio.sleep(settings.reap_interval_seconds)
        if not gate.is_open():
            continue
        try:
            changed = await run_in_threadpool(reap)
        except Exception:  # the next round tries again; a reaper that dies would strand jobs
            log.exception("lease reaper failed")
            continue
        for job_id, new_status in changed:
            log.warning("job %s: lease expired, now %s", job_id, new_status)
        if any(s == JobStatus.QUEUED for _, s in changed):
            wakeup.notify()


def make_first_admin(db: Database, settings: Settings) -> None:
    """On a start with no admin who can sign in, make one and write its secrets to a file (never to the log)."""
    try:
        with db.write() as session:
            made = accounts.bootstrap_admin(session)
            if made is None:
                return
            path = settings.admin_credentials_file.resolve()
            accounts.write_credentials(path, made, f"http://{settings.host}:{settings.port}")
    except IntegrityError:  # another API process made it at the same moment
        return
    log.warning("first start: made admin '%s'; its password and a token are in %s (mode 0600)", made.username, path)


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = db or Database.from_url(settings.database_url)
        check_schema_current(database.engine)
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        await run_in_threadpool(make_first_admin, database, settings)
        app.state.db = database
        app.state.wakeup.bind(asyncio.get_running_loop())
        app.state.reap_gate = ReapGate(settings.lease_seconds)
        reaper = asyncio.create_task(reap_periodically(database, settings, app.state.wakeup, app.state.reap_gate))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            if db is None:
                database.dispose()

    app = FastAPI(title="trainjobs", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.wakeup = Wakeup()
    app.add_middleware(BodyLimit, limit_for=body_limit(settings.max_body_bytes, settings.max_upload_bytes))
    app.include_router(accounts_routes.router)
    app.include_router(jobs.router)
    app.include_router(worker.router)
    app.include_router(health.router)
    install_error_handlers(app)
    return app


def printable(value: object) -> object:
    """A string made encodable (a lone surrogate becomes its escape, \\ud800); anything else as it is."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def install_error_handlers(app: FastAPI) -> None:
    def detail(exc: TrainjobsError, code: int) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=code)

    @app.exception_handler(TrainjobsError)
    async def _domain_error(_request: Request, exc: TrainjobsError) -> JSONResponse:
        if isinstance(exc, Unauthorized):
            response = detail(exc, status.HTTP_401_UNAUTHORIZED)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if isinstance(exc, Forbidden):
            return detail(exc, status.HTTP_403_FORBIDDEN)
        if isinstance(exc, LimitExceeded):
            response = detail(exc, status.HTTP_429_TOO_MANY_REQUESTS)
            if exc.retry_after is not None:
                response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
            return response
        if isinstance(exc, JobNotFound | NotFound):
            return detail(exc, status.HTTP_404_NOT_FOUND)
        if isinstance(exc, Conflict):
            return detail(exc, status.HTTP_409_CONFLICT)
        if isinstance(exc, PreconditionFailed):
            return detail(exc, status.HTTP_412_PRECONDITION_FAILED)
        if isinstance(exc, TooLarge):
            return detail(exc, status.HTTP_413_CONTENT_TOO_LARGE)
        if isinstance(exc, InvalidRequest):
            body = {"detail": [{"loc": list(exc.loc), "msg": exc.message, "type": "value_error"}]}
            return JSONResponse(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        return detail(exc, status.HTTP_400_BAD_REQUEST)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Pydantic's errors name the field; drop the echoed input and context, which can be large or binary,
        # and escape what is not Unicode text (a lone surrogate in a key or an echoed tag) so the answer encodes.
        errors = [
            {"loc": [printable(part) for part in e["loc"]], "msg": printable(e["msg"]), "type": e["type"]}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError) -> JSONResponse:
        # A value the database cannot store that validation let through: the client's to change.
        log.warning("database refused a value: %s", exc.orig)
        return JSONResponse(
            {"detail": "a value in the request cannot be stored (out of range or an invalid character)"},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc)
        return JSONResponse(
            {"detail": "the database is unavailable; try again shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )


app = create_app()
