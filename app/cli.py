"""``trainjobs-api``: serve the API with uvicorn; ``trainjobs-api migrate`` upgrades the schema."""

from __future__ import annotations

import argparse
import sys

from app.core.config import get_settings
from app.core.db import UnsupportedDatabase, check_sqlite_version
from app.core.migrate import upgrade


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="trainjobs-api", description="The trainjobs API service.")
    parser.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    parser.add_argument("--migrate", action="store_true", help="upgrade the schema first, then serve")
    parser.add_argument("--host", default=settings.host, help="default: TRAINJOBS_HOST (%(default)s)")
    parser.add_argument("--port", type=int, default=settings.port, help="default: TRAINJOBS_PORT (%(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true", help="log every request (off: workers poll often)")
    args = parser.parse_args(argv)

    try:
        check_sqlite_version()
    except UnsupportedDatabase as exc:
        print(f"trainjobs-api: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate" or args.migrate:
        upgrade(settings.database_url)
        print(f"trainjobs-api: schema is up to date ({settings.database_url.split('@')[-1]})", file=sys.stderr)
        if args.command == "migrate":
            return 0

    import uvicorn

    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
