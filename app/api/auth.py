"""Who is calling: the dependencies every route but a short allowlist has (tests/api/test_route_auth.py).

- ``CurrentUser``: a user token (``Authorization: Bearer tj_...``); for the public API.
- ``AdminUser``: the same, of an admin (403 otherwise).
- ``metrics_reader``: ``TRAINJOBS_METRICS_TOKEN`` or an admin's user token; ``GET /metrics`` only.
- ``require_worker``: a worker token (one in the database, or ``TRAINJOBS_WORKER_TOKEN``); the
  worker protocol only. A token of the other kind is refused on each side.

The dashboard's session is a user token too, made at its login and kept in an HttpOnly,
SameSite=Strict cookie (``SESSION_COOKIE``); a write sent with the cookie must carry the session's
CSRF token (``X-CSRF-Token``, or a form's ``csrf`` field on the dashboard's own forms). Answers to a
cookie are never cached by the browser.

A token is looked up (an indexed read, on the event loop on SQLite) at most once a second per
process (``RecentTokens``): a revoked token or a deactivated user stops working at once on the API
process that made the change, and within a second on others. A token's ``last_used_at`` is
written at most once a minute, after the response. A request with more than one Authorization header is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass, replace
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as ASGIScope

from app.api.deps import DatabaseDep, SettingsDep, WorkerLane, WorkerLaneDep, quick_read
from app.api.errors import database_error, domain_error
from app.core import accounts
from app.core.accounts import Caller
from app.core.config import Settings
from app.core.db import Database
from app.core.errors import Forbidden, InvalidRequest, TrainjobsError, Unauthorized
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


class RecentTokens:
    """Tokens that were good within the last ``ttl`` seconds, by their SHA-256: most requests of a busy
    client then cost no token read. Only good tokens are kept (a wrong one is looked up every time).

    A revoke, a deactivation or an admin change made through this process forgets them all at once;
    one made through another API process (or ``trainjobs-api`` on the server) takes effect here
    within ``ttl`` (one second).
    """

    def __init__(self, ttl: float = 1.0, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._seen: dict[bytes, tuple[float, Presented]] = {}
        self.generation = 0
        """Counts ``forget_all``: a look-up that began before one must not put back what it forgot."""

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Presented | None:
        found = self._seen.get(self.key(token))
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def put(self, token: str, seen: Presented, generation: int) -> None:
        """Keep ``seen``, unless the cache was cleared since its look-up began (``generation``)."""
        if generation != self.generation:
            return
        if len(self._seen) >= self.size:
            self._seen.clear()
        self._seen[self.key(token)] = (time.monotonic() + self.ttl, seen)

    def forget_all(self) -> None:
        self.generation += 1
        self._seen.clear()


def recent_tokens(request: Request) -> RecentTokens:
    tokens: RecentTokens = request.app.state.recent_tokens
    return tokens


async def presented(request: Request, db: Database, token: str, lane: WorkerLane | None = None) -> Presented | None:
    """What ``token`` is (None: nothing good); the token's last use is written after the response when due."""
    recent = recent_tokens(request)
    seen = recent.get(token)
    if seen is None:

        def look_up(session: Session) -> Presented | None:
            row = accounts.find_token(session, token)
            if row is None:
                return None
            stale = row.last_used_at is None or row.last_used_at < utcnow() - accounts.LAST_USED_EVERY
            return Presented(row.kind, accounts.caller_of(row), stale)

        generation = recent.generation
        seen = await quick_read(db, look_up, lane)
        if seen is None:
            return None
        recent.put(token, replace(seen, stale_use=False), generation)  # its use is noted once, below
    if seen.stale_use and seen.caller.token_id is not None:
        note_use(db, seen.caller.token_id)
    return seen


_noting: set[asyncio.Task[None]] = set()


def note_use(db: Database, token_id: int) -> None:
    """Write the token's last use after this request, whatever its answer (a probe's 404 counts too)."""

    def write() -> None:
        with db.write() as session:
            accounts.note_use(session, token_id)

    task = asyncio.get_running_loop().create_task(run_in_threadpool(write))
    _noting.add(task)
    task.add_done_callback(_noting.discard)


SESSION_COOKIE = "trainjobs_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(session: str) -> str:
    """The CSRF token of a dashboard session: only a page that was given it (never the cookie) knows it."""
    return hashlib.sha256(b"trainjobs-csrf\0" + session.encode()).hexdigest()[:32]


def session_of(request: Request) -> str | None:
    """The dashboard session token the request's cookie holds, if any."""
    value = request.cookies.get(SESSION_COOKIE)
    return value if value and value.isascii() and len(value) <= 200 else None


def check_csrf(request: Request, session: str) -> None:
    """A write sent with the session cookie must carry its CSRF token (the dashboard's forms check their own)."""
    if request.method in SAFE_METHODS or request.url.path.startswith("/ui/"):
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not secrets.compare_digest(sent.encode(), csrf_token(session).encode()):
        raise Forbidden(f"a write with the session cookie needs its CSRF token in the {CSRF_HEADER} header")


def check_form_csrf(request: Request, csrf: Annotated[str, Form(max_length=100)] = "") -> None:
    """A dashboard form sent with the session cookie carries the session's CSRF token in its ``csrf`` field
    (a dependency of every dashboard route that writes: tests/ui/test_dashboard_pages.py walks them)."""
    session = getattr(request.state, "session", None)
    if session is not None and not secrets.compare_digest(csrf.encode(), csrf_token(session).encode()):
        raise Forbidden("this form has expired or did not come from the dashboard: reload the page and send it again")


FormCsrf = Depends(check_form_csrf)


async def authenticate_user(request: Request, db: Database) -> Caller:
    """The caller a request's user token (or dashboard session) acts for; Unauthorized otherwise."""
    token = bearer_token(request)
    if token is None and (token := session_of(request)) is not None:
        check_csrf(request, token)
        request.state.session = token
    if token is None:
        raise Unauthorized(f"no token: {USER_TOKEN_HELP}")
    found = await presented(request, db, token)
    if found is None:
        raise Unauthorized(f"the token is wrong, expired or revoked, or its user is deactivated; {USER_TOKEN_HELP}")
    if found.kind != TokenKind.USER:
        raise Unauthorized("this is a worker token: it is good for /worker/* only; use a user token")
    return found.caller


async def current_user(request: Request, db: DatabaseDep, _: UserScheme) -> Caller:
    caller: Caller | None = getattr(request.state, "caller", None)  # ``Authenticate`` found it already
    return caller if caller is not None else await authenticate_user(request, db)


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


async def authenticate_worker(request: Request, db: Database, lane: WorkerLane, settings: Settings) -> None:
    """Pass if the request carries a worker token (the environment's or one in the database); Unauthorized otherwise."""
    token = bearer_token(request, WORKER_TOKEN_HELP)
    if token is None:
        raise Unauthorized(f"worker token missing: {WORKER_TOKEN_HELP}")
    expected = settings.worker_token
    if expected is not None and secrets.compare_digest(token.encode(), expected.get_secret_value().encode()):
        return
    found = await presented(request, db, token, lane)
    if found is None:
        raise Unauthorized(f"worker token wrong, expired or revoked: {WORKER_TOKEN_HELP}")
    if found.kind != TokenKind.WORKER:
        raise Unauthorized(f"a user token cannot speak the worker protocol: {WORKER_TOKEN_HELP}")


async def require_worker(
    request: Request, db: DatabaseDep, lane: WorkerLaneDep, settings: SettingsDep, _: WorkerScheme
) -> None:
    if not getattr(request.state, "worker", False):  # ``Authenticate`` checked it already
        await authenticate_worker(request, db, lane, settings)


METRICS_PATH = "/metrics"


def is_metrics_token(request: Request, settings: Settings) -> bool:
    """Whether the request carries ``TRAINJOBS_METRICS_TOKEN`` (compared in constant time)."""
    if settings.metrics_token is None:
        return False
    token = bearer_token(request)
    expected = settings.metrics_token.get_secret_value()
    return token is not None and secrets.compare_digest(token.encode(), expected.encode())


async def metrics_reader(request: Request, db: DatabaseDep, _: UserScheme) -> None:
    """``GET /metrics``: ``TRAINJOBS_METRICS_TOKEN`` (a scraper's), or an admin's user token."""
    if getattr(request.state, "metrics_reader", False):  # ``Authenticate`` found the metrics token
        return
    if not (await current_user(request, db, None)).is_admin:
        raise Forbidden("only an admin's token or TRAINJOBS_METRICS_TOKEN may read /metrics")


MetricsReader = Depends(metrics_reader)


OPEN_PATHS = frozenset(
    {"/healthz", "/auth/login", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/", "/ui", "/ui/login"}
)
"""Everything anyone reaches without a token (tests/api/test_route_auth.py holds every route to it);
``/`` and ``/ui`` only redirect, ``/ui/login`` is the dashboard's sign-in form."""
OPEN_PREFIXES = ("/docs/assets/", "/ui/static/")
"""Swagger UI's and ReDoc's files (app/api/routes/docs.py) and the dashboard's (app/ui/)."""


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class Authenticate:
    """ASGI middleware: a request's token is checked before a byte of its body is read, so a body without
    a valid token costs the service nothing; routes then take the caller from ``request.state``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        state = scope["app"].state
        try:
            if scope["path"].startswith("/worker/"):
                await authenticate_worker(request, state.db, state.worker_lane, state.settings)
                request.state.worker = True
            elif scope["path"] == METRICS_PATH and is_metrics_token(request, state.settings):
                request.state.metrics_reader = True
            else:
                request.state.caller = await authenticate_user(request, state.db)
        except TrainjobsError as exc:
            if is_page(scope["path"]) and isinstance(exc, Unauthorized):  # a person: to the sign-in form
                await sign_in_first(request)(scope, receive, send)
                return
            await (await domain_error(request, exc))(scope, receive, send)
            return
        except SQLAlchemyError as exc:  # outside FastAPI's handlers here: a 503, not a 500
            await (await database_error(request, exc))(scope, receive, send)
            return
        if getattr(request.state, "session", None) is not None:
            send = never_cached(send)
        await self.app(scope, receive, send)


def is_page(path: str) -> bool:
    """A dashboard page (not one of its fragments or files): shown to a person, who can sign in."""
    return path.startswith("/ui/") and not path.startswith("/ui/fragments/")


def sign_in_first(request: Request) -> RedirectResponse:
    """To the sign-in form, and back to this page (with its query) after it; a form sent without a session
    comes back to the jobs page (its data is gone)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method not in SAFE_METHODS:
        target = "/ui/"
    return RedirectResponse(f"/ui/login?{urlencode({'next': target})}", status_code=303)


def never_cached(send: Send) -> Send:
    """Answers to a session cookie hold private data: the browser must not keep them."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers.setdefault("cache-control", "no-store")
        await send(message)

    return sending
