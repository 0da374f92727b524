"""Who is calling: the dependencies every route but a short allowlist has (tests/api/test_route_auth.py).

- ``CurrentUser``: a user token (``Authorization: Bearer tj_...``); for the public API.
- ``AdminUser``: the same, of an admin (403 otherwise).
- ``require_worker``: a worker token (one in the database, or ``TRAINJOBS_WORKER_TOKEN``); the
  worker protocol only. A token of the other kind is refused on each side.

Tokens are looked up on every request (an indexed read, on the event loop on SQLite), so a revoked
token or a deactivated user stops working at once. A token's ``last_used_at`` is written at most
once a minute, after the response. A request with more than one Authorization header is refused.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.deps import DatabaseDep, SettingsDep, quick_read
from app.core import accounts
from app.core.accounts import Caller
from app.core.db import Database
from app.core.errors import Forbidden, InvalidRequest, Unauthorized
from app.core.jobs import Scope
from app.core.models import utcnow
from app.core.states import TokenKind

USER_TOKEN_HELP = (
    "send 'Authorization: Bearer <token>' with a user token: from POST /auth/login, from "
    "`trainjobs-api users create NAME` on the server, or the one in var/admin-credentials after the first start"
)
WORKER_TOKEN_HELP = (
    "send 'Authorization: Bearer <worker token>': TRAINJOBS_WORKER_TOKEN, or one made with "
    "`trainjobs-api tokens create --user NAME --worker`"
)


# For the OpenAPI document (and Swagger UI's Authorize button) only: the header is read by bearer_token.
_user_scheme = HTTPBearer(auto_error=False, scheme_name="user token", description="A user token, tj_...")
_worker_scheme = HTTPBearer(auto_error=False, scheme_name="worker token", description="A worker token.")
UserScheme = Annotated[HTTPAuthorizationCredentials | None, Depends(_user_scheme)]
WorkerScheme = Annotated[HTTPAuthorizationCredentials | None, Depends(_worker_scheme)]


@dataclass(frozen=True)
class Presented:
    """What a request's token turned out to be."""

    kind: TokenKind
    caller: Caller
    stale_use: bool
    """Its last_used_at is older than a minute: write it after the response."""


def bearer_token(request: Request, help: str = USER_TOKEN_HELP) -> str | None:
    """The token of the one ``Authorization: Bearer`` header, or None when there is none."""
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise InvalidRequest("send one Authorization header, not several", ("header", "authorization"))
    if not values:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(f"the Authorization header must be 'Bearer <token>'; {help}")
    return token.strip()


async def presented(db: Database, token: str) -> Presented | None:
    def look_up(session: Session) -> Presented | None:
        row = accounts.find_token(session, token)
        if row is None:
            return None
        stale = row.last_used_at is None or row.last_used_at < utcnow() - accounts.LAST_USED_EVERY
        return Presented(row.kind, accounts.caller_of(row), stale)

    return await quick_read(db, look_up)


_noting: set[asyncio.Task[None]] = set()


def note_use(db: Database, token_id: int) -> None:
    """Write the token's last use after this request, whatever its answer (a probe's 404 counts too)."""

    def write() -> None:
        with db.write() as session:
            accounts.note_use(session, token_id)

    task = asyncio.get_running_loop().create_task(run_in_threadpool(write))
    _noting.add(task)
    task.add_done_callback(_noting.discard)


async def current_user(request: Request, db: DatabaseDep, _: UserScheme) -> Caller:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized(f"no token: {USER_TOKEN_HELP}")
    found = await presented(db, token)
    if found is None:
        raise Unauthorized(f"the token is wrong, expired or revoked, or its user is deactivated; {USER_TOKEN_HELP}")
    if found.kind != TokenKind.USER:
        raise Unauthorized("this is a worker token: it is good for /worker/* only; use a user token")
    if found.stale_use and found.caller.token_id is not None:
        note_use(db, found.caller.token_id)
    return found.caller


CurrentUser = Annotated[Caller, Depends(current_user)]


async def caller_scope(caller: CurrentUser) -> Scope:
    """The jobs the caller may see and act on."""
    return caller.scope


ScopeDep = Annotated[Scope, Depends(caller_scope)]


async def admin_user(caller: CurrentUser) -> Caller:
    if not caller.is_admin:
        raise Forbidden("only an admin may do this")
    return caller


AdminUser = Annotated[Caller, Depends(admin_user)]


async def require_worker(request: Request, db: DatabaseDep, settings: SettingsDep, _: WorkerScheme) -> None:
    token = bearer_token(request, WORKER_TOKEN_HELP)
    if token is None:
        raise Unauthorized(f"worker token missing: {WORKER_TOKEN_HELP}")
    expected = settings.worker_token
    if expected is not None and secrets.compare_digest(token.encode(), expected.get_secret_value().encode()):
        return
    found = await presented(db, token)
    if found is None:
        raise Unauthorized(f"worker token wrong, expired or revoked: {WORKER_TOKEN_HELP}")
    if found.kind != TokenKind.WORKER:
        raise Unauthorized(f"a user token cannot speak the worker protocol: {WORKER_TOKEN_HELP}")
    if found.stale_use and found.caller.token_id is not None:
        note_use(db, found.caller.token_id)
