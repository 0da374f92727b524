"""Dependencies of the route modules: sessions and settings (who is calling: app/api/auth.py).

Three ways a route reaches the database; pick by what the route does:

- ``SessionDep``: a read session for a plain ``def`` route, which FastAPI runs in the thread pool.
  For reads that scan (lists, metric series, checkpoint lists and downloads).
- ``DatabaseDep`` and ``with db.write() as session:`` in the route's body: every write. The
  transaction (``BEGIN IMMEDIATE`` and this process's writer turn on SQLite) is entered and left
  within that one call, in one thread; never hold it across an ``await``.
- ``quick_read(db, fn)`` from an ``async def`` route: a read by primary key, run on the event loop
  on SQLite (a WAL reader never waits) and in the thread pool elsewhere. For the hot polled reads
  (``GET /jobs/{id}``); nothing that scans.

Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the
thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.api.wakeup import Wakeup
from app.core.config import Settings
from app.core.db import Database

T = TypeVar("T")


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_wakeup(request: Request) -> Wakeup:
    wakeup: Wakeup = request.app.state.wakeup
    return wakeup


def get_read_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    with db.read() as session:
        yield session


async def quick_read(db: Database, read: Callable[[Session], T]) -> T:
    """Run a short read (rows by primary key, no scans): on SQLite on the event loop, elsewhere in the thread pool.

    If SQLite is busy the read gives up within 50 ms and is done in the thread pool instead.
    """
    if db.quick_reads is not None:
        try:
            with db.quick_reads() as session, session.begin():
                return read(session)
        except OperationalError:
            pass

    def in_thread() -> T:
        with db.read() as session:
            return read(session)

    return await run_in_threadpool(in_thread)


DatabaseDep = Annotated[Database, Depends(get_db)]
SessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
WakeupDep = Annotated[Wakeup, Depends(get_wakeup)]
