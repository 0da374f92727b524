"""SQLite is set up for several processes: WAL, busy timeout, foreign keys, FULL sync, IMMEDIATE writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text

from app.core.db import Database, UnsupportedDatabase, check_sqlite_version, normalize_url


def test_sqlite_pragmas(tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    with db.read() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert s.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
        assert s.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    db.dispose()


def test_write_sessions_take_the_write_lock_at_begin(tmp_path: Path) -> None:
    """A second writer waits at BEGIN IMMEDIATE instead of failing later with SQLITE_BUSY."""
    db = Database.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    with db.write() as s:
        s.execute(text("CREATE TABLE t (n INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (0)"))
    order: list[str] = []

    def second() -> None:
        with db.write() as s2:
            n = s2.execute(text("SELECT n FROM t")).scalar_one()  # BEGIN IMMEDIATE waits here
            order.append("second read")
            s2.execute(text("UPDATE t SET n = :n"), {"n": n + 1})

    with db.write() as s1:
        n = s1.execute(text("SELECT n FROM t")).scalar_one()
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first writing")
        s1.execute(text("UPDATE t SET n = :n"), {"n": n + 1})
    thread.join()
    assert order == ["first writing", "second read"]
    with db.read() as s:
        assert s.execute(text("SELECT n FROM t")).scalar_one() == 2  # no lost update
    db.dispose()


def test_old_sqlite_is_refused() -> None:
    with pytest.raises(UnsupportedDatabase, match=r"3\.35"):
        check_sqlite_version("3.31.1")
    check_sqlite_version("3.35.0")


def test_plain_postgres_urls_use_psycopg() -> None:
    assert normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_quick_reads_see_committed_writes_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    """SQLite's quick-read engine (used on the event loop) has its own connection and never waits for a writer."""
    db = Database.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    assert db.quick_reads is not None
    with db.write() as s:
        s.execute(text("CREATE TABLE t (n INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
    with db.write() as writer:
        writer.execute(text("UPDATE t SET n = 2"))  # the write lock is held, uncommitted
        with db.quick_reads() as quick, quick.begin():  # would raise 'database is locked' if it waited
            assert quick.execute(text("SELECT n FROM t")).scalar_one() == 1
    with db.quick_reads() as quick, quick.begin():
        assert quick.execute(text("SELECT n FROM t")).scalar_one() == 2
        assert quick.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    db.dispose()


def test_quick_reads_only_for_sqlite(postgres_url: str) -> None:
    pg = Database.from_url(postgres_url)
    assert pg.quick_reads is None  # network reads stay in the thread pool
    pg.dispose()


def test_one_process_writers_take_turns_without_meeting_the_sqlite_lock(tmp_path: Path) -> None:
    """Writers of one process queue in-process: even with no busy timeout at all, none sees 'database is locked'."""

    db = Database.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    event.listen(db.engine, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout = 0"))
    with db.write() as s:
        s.execute(text("CREATE TABLE t (n INTEGER)"))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(25):
                with db.write() as s:
                    s.execute(text("INSERT INTO t VALUES (1)"))
                    time.sleep(0.001)  # hold the write lock a moment, as a real transaction does
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.read() as s:
        assert s.execute(text("SELECT count(*) FROM t")).scalar_one() == 200
    db.dispose()
