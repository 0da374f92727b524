"""Engines and sessions: SQLite pragmas, ``BEGIN IMMEDIATE`` for writes, one factory for both backends.

SQLite: WAL (readers run during a write), ``busy_timeout``, foreign keys on,
``synchronous=FULL`` (a committed job survives a power loss, not only a crash).
pysqlite's own transaction handling is switched off so that SQLAlchemy emits
BEGIN itself: ``BEGIN IMMEDIATE`` on write sessions, so a read-then-write
transaction cannot fail with SQLITE_BUSY on the lock upgrade.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core.stored_json import load_stored_json

MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
SQLITE_BUSY_TIMEOUT_MS = 30_000
QUICK_READ_BUSY_TIMEOUT_MS = 50
"""A quick read runs on the event loop: if SQLite is busy (WAL recovery, a truncating checkpoint), it
gives up at once and the read is retried in the thread pool, where waiting blocks nobody."""


class UnsupportedDatabase(RuntimeError):
    pass


def check_sqlite_version(version: str = sqlite3.sqlite_version) -> None:
    parts = tuple(int(p) for p in version.split(".")[:3])
    if parts < MIN_SQLITE:
        raise UnsupportedDatabase(
            f"SQLite {version} is too old: trainjobs needs 3.35 or newer (UPDATE ... RETURNING). "
            "Upgrade Python's sqlite3 or use PostgreSQL (TRAINJOBS_DATABASE_URL)."
        )


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use psycopg 3 for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any) -> Engine:
    """An engine for ``url``, set up for concurrent use by the API, the reaper and tests."""
    url = normalize_url(url)
    parsed = make_url(url)
    kwargs.setdefault("json_deserializer", load_stored_json)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)

    check_sqlite_version()
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode != NO_BEGIN:
            conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


NO_BEGIN = "NONE"
"""``sqlite_begin`` of an engine whose sessions emit no BEGIN: each statement commits on its own (reads only)."""


class WriterTurn:
    """SQLite allows one writer at a time. This process's write transactions queue here for their
    turn instead of in SQLite's busy handler, which sleeps up to 100 ms between tries (a p99 of over
    a second with 10 concurrent submits). Writers in other processes still meet ``busy_timeout``.
    A turn not had within the busy timeout fails like a busy database (503)."""

    def __init__(self, timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
        self.lock = threading.RLock()
        self.timeout = timeout

    def __enter__(self) -> None:
        if not self.lock.acquire(timeout=self.timeout):
            raise OperationalError(
                "BEGIN IMMEDIATE", None, TimeoutError(f"no write turn within {self.timeout:g} s: database is busy")
            )

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


@dataclass
class Database:
    """An engine with its session factories: reads, writes (``BEGIN IMMEDIATE`` on SQLite), quick reads.

    ``quick_reads`` (SQLite files only) is a one-connection engine for reads short enough to run on
    the event loop itself, such as a job by its id: a WAL reader never waits for a writer, and the
    hop to the thread pool and back costs several times what the query does. Only the event loop's
    thread uses it, one read at a time, so its single connection is always free.
    """

    engine: Engine
    read_sessions: sessionmaker[Session]
    write_sessions: sessionmaker[Session]
    quick_reads: sessionmaker[Session] | None = None
    writer_turn: AbstractContextManager[Any] = field(default_factory=contextlib.nullcontext)
    """SQLite: this process's write transactions queue here for their turn (``WriterTurn``)."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        engine = create_db_engine(url, **kwargs)
        writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        quick = None
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            quick_engine = create_db_engine(
                url, pool_size=1, max_overflow=0, pool_timeout=1, busy_timeout_ms=QUICK_READ_BUSY_TIMEOUT_MS
            )
            # No BEGIN: each of a quick read's statements sees the database as it is (a WAL reader never
            # waits); a transaction around one primary-key read cost as much again as the read. Its few
            # statements may see moments apart (a job read queued, its waiting_for read after its claim).
            quick = sessionmaker(quick_engine.execution_options(sqlite_begin=NO_BEGIN), expire_on_commit=False)
        return cls(
            engine=engine,
            read_sessions=sessionmaker(engine, expire_on_commit=False),
            write_sessions=sessionmaker(writer, expire_on_commit=False),
            quick_reads=quick,
            writer_turn=WriterTurn() if engine.dialect.name == "sqlite" else contextlib.nullcontext(),
        )

    def sibling(self, pool_size: int, pool_timeout: float) -> Database:
        """Another pool on the same database (its own connections), sharing this process's writer turn."""
        url = self.engine.url.render_as_string(hide_password=False)
        engine = create_db_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=pool_timeout)
        writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        return Database(
            engine=engine,
            read_sessions=sessionmaker(engine, expire_on_commit=False),
            write_sessions=sessionmaker(writer, expire_on_commit=False),
            writer_turn=self.writer_turn,
        )

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success and rolled back on error.

        Enter and leave it in one thread, within one call (a route's body, a function run in the
        thread pool): on SQLite it holds this process's writer turn until it ends.
        """
        with self.writer_turn, self.write_sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.read_sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self.quick_reads is not None:
            bind = self.quick_reads.kw["bind"]
            bind.dispose()
