"""The FastAPI application: routers, error handlers, and the lifespan (schema check, lease reaper)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError

from app import __version__
from app.api.auth import Authenticate, RecentTokens
from app.api.deps import WORKER_THREADS, WorkerLane
from app.api.errors import install_error_handlers
from app.api.limits import BodyLimit, body_limit
from app.api.routes import accounts as accounts_routes
from app.api.routes import events as events_routes
from app.api.routes import health, jobs, operators, worker
from app.api.routes import sweeps as sweeps_routes
from app.api.routes import workers as workers_routes
from app.api.routes.docs import install_docs
from app.api.shedding import LoadShedding, Turns
from app.api.timing import RequestTimes
from app.api.wakeup import Wakeup
from app.core import accounts, checkpoints, leases
from app.core.config import Settings, get_settings
from app.core.db import Database
from app.core.migrate import check_schema_current
from app.core.states import JobStatus
from app.serve import CloseUnreadBodies
from app.ui import install_dashboard

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
            log.warning("job %s: lease expired, now %s", job_id, new_status, extra={"job_id": job_id})
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
        database = db or Database.from_url(settings.database_url, pool_timeout=settings.pool_timeout_seconds)
        check_schema_current(database.engine)
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        await run_in_threadpool(make_first_admin, database, settings)
        swept = await run_in_threadpool(checkpoints.sweep_temporaries, settings.artifacts_dir)
        if swept:
            log.warning("removed %s temporary file(s) left by interrupted uploads or downloads", swept)
        app.state.db = database
        worker_db = database.sibling(WORKER_THREADS + 2, settings.pool_timeout_seconds)
        app.state.worker_lane = WorkerLane(worker_db, anyio.CapacityLimiter(WORKER_THREADS))
        app.state.wakeup.bind(asyncio.get_running_loop())
        app.state.changes.bind(asyncio.get_running_loop())
        # Few threads for the public routes: each more makes every hand-over of the GIL slower, and the
        # event loop (with every worker's heartbeat on it) waits its turn behind them all (docs/benchmarks.md).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        app.state.reap_gate = ReapGate(settings.lease_seconds)
        reaper = asyncio.create_task(reap_periodically(database, settings, app.state.wakeup, app.state.reap_gate))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            worker_db.dispose()
            if db is None:
                database.dispose()

    app = FastAPI(
        title="trainjobs",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the package: app/api/routes/docs.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.wakeup = Wakeup()
    app.state.changes = Wakeup()  # a job changed: event streams read (app/api/routes/events.py)
    app.state.recent_tokens = RecentTokens()
    # Outermost last: time it, shed load, check the token, bound (and, public, read) the body; then take a turn to run.
    limit_for = body_limit(settings.max_body_bytes, settings.max_upload_bytes)
    app.add_middleware(Turns, running=2 * settings.api_threads)
    app.add_middleware(BodyLimit, limit_for=limit_for, body_timeout=settings.body_timeout_seconds)
    app.add_middleware(Authenticate)
    app.add_middleware(LoadShedding, limit=settings.max_concurrency)
    app.add_middleware(CloseUnreadBodies)
    app.add_middleware(RequestTimes)
    for routes in (accounts_routes, jobs, sweeps_routes, worker, workers_routes, events_routes, operators, health):
        app.include_router(routes.router)
    install_docs(app)
    install_dashboard(app)
    install_error_handlers(app)
    return app


app = create_app()
