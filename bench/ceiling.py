"""``python -m bench.ceiling``: ``trainjobs-api`` serving one more route, the framework's ceiling for benchmark "api".

``GET /bench/constant`` answers a constant JSON object to a user token: the same process, middleware, token
check and event loop as ``GET /jobs/{id}``, without the job's read and encoding. Benchmarks only.
"""

from __future__ import annotations

import sys
from typing import Any

import app.main
from app.api.auth import CurrentUser
from app.cli import main

CONSTANT = {"id": 1, "status": "queued", "ok": True}


@app.main.app.get("/bench/constant", include_in_schema=False)
async def constant(caller: CurrentUser) -> dict[str, Any]:
    return CONSTANT


if __name__ == "__main__":
    sys.exit(main())  # uvicorn imports app.main:app, this very object, with the route above (one process)
