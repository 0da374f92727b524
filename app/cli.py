"""``trainjobs-api``: serve the API; ``migrate`` the schema; make ``users`` and ``tokens`` from a shell on the server.

``trainjobs-api users create NAME`` and ``trainjobs-api tokens create --user NAME`` print the new
token alone on stdout (scripts capture it); any failure is one line on stderr and a non-zero exit.
They use the service's own settings (``TRAINJOBS_DATABASE_URL``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from app.core import accounts
from app.core.config import Settings, get_settings
from app.core.db import Database, UnsupportedDatabase, check_sqlite_version
from app.core.errors import TrainjobsError, first_line
from app.core.migrate import check_schema_current, upgrade
from app.core.protocol import summarize
from app.core.states import TokenKind
from app.core.structured_logs import configure, uvicorn_log_config


def serve(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="trainjobs-api", description="The trainjobs API service.")
    parser.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    parser.add_argument("--migrate", action="store_true", help="upgrade the schema first, then serve")
    parser.add_argument("--host", default=settings.host, help="default: TRAINJOBS_HOST (%(default)s)")
    parser.add_argument("--port", type=int, default=settings.port, help="default: TRAINJOBS_PORT (%(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true", help="log every request (off: workers poll often)")
    parser.epilog = "also: trainjobs-api users create NAME [--admin] [--password-stdin]; trainjobs-api tokens create --user NAME [--worker]"
    args = parser.parse_args(argv)
    if args.command == "migrate" or args.migrate:
        upgrade(settings.database_url)
        done = f"schema is up to date ({settings.database_url.split('@')[-1]})"
        if settings.log_format == "json":
            configure(settings.log_format, args.log_level)
            logging.getLogger("trainjobs.api").warning(done)
        else:
            print(f"trainjobs-api: {done}", file=sys.stderr)
        if args.command == "migrate":
            return 0

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from app.serve import uvicorn_options

    with shared_counters(args.workers):
        uvicorn.run(
            "app.main:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=args.access_log,
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            log_config=uvicorn_log_config(args.log_level) if settings.log_format == "json" else LOGGING_CONFIG,
            **uvicorn_options(),
        )
    return 0


@contextlib.contextmanager
def shared_counters(processes: int) -> Iterator[None]:
    """Several API processes count into files in one folder (``PROMETHEUS_MULTIPROC_DIR``), which a scrape of
    any of them sums (app/api/routes/operators.py). The folder is emptied first (a count of an earlier run
    must not add up with this one's): a new private one, unless the operator named one."""
    if processes <= 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        yield
        return
    named = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(named) if named else Path(tempfile.mkdtemp(prefix="trainjobs-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield
    finally:
        if not named:
            shutil.rmtree(folder, ignore_errors=True)


def account_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainjobs-api", description="Users and tokens, from a shell on the server.")
    nouns = parser.add_subparsers(dest="noun", required=True)
    users = nouns.add_parser("users", help="users").add_subparsers(dest="verb", required=True)
    create_user = users.add_parser("create", help="make a user and print a new user token for them")
    create_user.add_argument("name", help="1-64 of [A-Za-z0-9._-]")
    create_user.add_argument("--admin", action="store_true", help="an admin: sees and manages every user's jobs")
    create_user.add_argument("--password-stdin", action="store_true", help="read a password (8+ characters) from stdin")
    tokens = nouns.add_parser("tokens", help="tokens").add_subparsers(dest="verb", required=True)
    create_token = tokens.add_parser("create", help="print a new token for a user")
    create_token.add_argument("--user", required=True, help="whose token it is")
    create_token.add_argument("--worker", action="store_true", help="a worker token (/worker/* only)")
    create_token.add_argument("--name", default=None, help="a label (default: made by trainjobs-api)")
    create_token.add_argument("--expires-in-days", type=float, default=None, help="default: never expires")
    return parser


def manage_accounts(argv: list[str], settings: Settings) -> int:
    args = account_parser().parse_args(argv)
    db = Database.from_url(settings.database_url)
    try:
        password = sys.stdin.read().rstrip("\n") if getattr(args, "password_stdin", False) else None
        check_schema_current(db.engine)
        with db.write() as session:
            if args.noun == "users":
                user = accounts.create_user(session, args.name, password=password, is_admin=args.admin)
                kind, name, days = TokenKind.USER, "made by trainjobs-api users create", None
            else:
                user = accounts.user_named(session, args.user)
                kind = TokenKind.WORKER if args.worker else TokenKind.USER
                name = args.name if args.name is not None else "made by trainjobs-api tokens create"
                days = args.expires_in_days
            token = accounts.issue_token(session, user, kind, name, expires_in_days=days).token
    except Exception as exc:  # a one-line reason, whatever went wrong: scripts read stderr
        message = exc.message if isinstance(exc, TrainjobsError) else first_line(exc)
        print(f"trainjobs-api: {message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(token)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"trainjobs-api: bad setting: {summarize(exc)}", file=sys.stderr)
        return 2
    try:
        check_sqlite_version()
    except UnsupportedDatabase as exc:
        print(f"trainjobs-api: {exc}", file=sys.stderr)
        return 2
    if argv and argv[0] in ("users", "tokens"):
        return manage_accounts(argv, settings)
    return serve(argv, settings)


if __name__ == "__main__":
    sys.exit(main())
