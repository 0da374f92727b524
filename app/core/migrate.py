"""Schema migrations: run them, and refuse to serve a database that is behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.operations import BatchOperations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from app.core.db import normalize_url

ROOT = Path(__file__).resolve().parents[2]
MIGRATE_COMMAND = "trainjobs-api migrate"


class SchemaNotCurrent(RuntimeError):
    pass


@contextmanager
def rebuild_table(name: str) -> Iterator[BatchOperations]:
    """For a migration: a batch of changes to a table with AUTOINCREMENT ids (jobs, users, api_tokens).

    On SQLite batch mode rebuilds the table: its partial indexes and check constraints are reflected
    and rebuilt, AUTOINCREMENT is not, so it is restated, and the table's counter (sqlite_sequence) is
    carried over, so that a deleted row's id is still never handed out again.
    """
    from alembic import op

    sqlite = op.get_bind().dialect.name == "sqlite"
    counter = sa.text("SELECT seq FROM sqlite_sequence WHERE name = :name").bindparams(name=name)
    last_id = op.get_bind().execute(counter).scalar() if sqlite else None
    with op.batch_alter_table(name, table_kwargs={"sqlite_autoincrement": True}) as batch:
        yield batch
    if last_id is not None:
        update = "UPDATE sqlite_sequence SET seq = max(seq, :last) WHERE name = :name"
        op.execute(sa.text(update).bindparams(last=last_id, name=name))


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def check_schema_current(engine: Engine) -> None:
    """Raise SchemaNotCurrent, naming the command that fixes it, unless the database is at head."""
    url = engine.url.render_as_string(hide_password=False)
    head = head_revision(url)
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        state = "has no schema yet" if current is None else f"is at schema revision {current}"
        raise SchemaNotCurrent(
            f"database {where} {state}, the newest is {head}: run `{MIGRATE_COMMAND}` "
            "(or `make migrate`, or `alembic upgrade head`) and start again"
        )
