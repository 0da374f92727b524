"""Dependencies of the route modules: sessions and settings (who is calling: app/api/auth.py).

Three ways a route reaches the database; pick by what the route does. In each, a session lives
inside one call in one thread, and is closed before the answer is serialised: a request never
holds a connection while it waits for a thread (under load, that was a deadlock).

- ``DatabaseDep`` and ``with db.read() as session:`` in a plain ``def`` route's body (FastAPI runs
  it in the thread pool): reads that scan (lists, metric series, checkpoint lists and downloads).
- ``DatabaseDep`` and ``with db.write() as session:`` in the route's body: every write. The
  transaction (``BEGIN IMMEDIATE`` and this process's writer turn on SQLite) is entered and left
  within that one call; never hold it across an ``await``.
- ``quick_read(db, fn)`` from an ``async def`` route: a read by primary key, run on the event loop
  on SQLite (a WAL reader never waits) and in the thread pool elsewhere. For the hot polled reads
  (``GET /jobs/{id}``, the token of each request); nothing that scans.

The worker protocol has a lane of its own (``WorkerLaneDep``): its own connections and threads,
so heartbeats never queue behind public reads.

Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the
thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.api.wakeup import Wakeup
from app.core import workers
from app.core.config import Settings
from app.core.db import Database

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerLane:
    """The worker protocol's own database pool and threads: public load never holds heartbeats up."""

    db: Database
    threads: anyio.CapacityLimiter

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in one of the lane's threads."""
        return await anyio.to_thread.run_sync(functools.partial(call, *args), limiter=self.threads)


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_wakeup(request: Request) -> Wakeup:
    wakeup: Wakeup = request.app.state.wakeup
    return wakeup


async def quick_read(db: Database, read: Callable[[Session], T], lane: WorkerLane | None = None) -> T:
    """Run a short read (rows by primary key, no scans): on SQLite on the event loop, elsewhere in a thread
    (the worker lane's, given one, else the public thread pool).

    If SQLite is busy the read gives up within 50 ms and is done in a thread instead.
    """
    if db.quick_reads is not None:
        with contextlib.suppress(OperationalError), db.quick_reads() as session, session.begin():
            return read(session)

    def in_thread(database: Database) -> T:
        with database.read() as session:
            return read(session)

    if lane is not None:
        return await lane.run(in_thread, lane.db)
    return await run_in_threadpool(in_thread, db)


WORKER_THREADS = 16
"""The worker lane's threads and connections: enough for heartbeats, metrics and uploads of many workers."""


async def get_worker_lane(request: Request) -> WorkerLane:
    lane: WorkerLane = request.app.state.worker_lane
    return lane


def plain_digits(value: object) -> object:
    """An id in a path is plain digits: ``1_0``, ``+1``, ``01`` or `` 1`` name no job (int() would take them)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and (value == "0" or value[0] != "0")):
        raise ValueError("give the id as plain digits, such as 12")
    return value


DatabaseDep = Annotated[Database, Depends(get_db)]
WorkerLaneDep = Annotated[WorkerLane, Depends(get_worker_lane)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
WakeupDep = Annotated[Wakeup, Depends(get_wakeup)]


def fleet_of(request: Request) -> workers.Fleet:
    """This app's memory of its workers (when their descriptions were written; the live ones)."""
    found: workers.Fleet | None = getattr(request.app.state, "fleet", None)
    if found is None:
        found = request.app.state.fleet = workers.Fleet()
    return found
