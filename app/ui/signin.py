"""Signing in to the dashboard and out: a username and password (or a token) become a session, a new
user token of its own kept in an HttpOnly, SameSite=Strict cookie; signing out revokes it."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api.auth import SESSION_COOKIE, CurrentUser, FormCsrf, recent_tokens
from app.api.deps import DatabaseDep, SettingsDep
from app.api.routes.accounts import check_password, login_guards
from app.core import accounts, throttle
from app.core.db import Database
from app.core.errors import Forbidden, LimitExceeded, NotFound, Unauthorized
from app.core.models import utcnow
from app.core.states import TokenKind
from app.ui.render import page

router = APIRouter(include_in_schema=False)
Field = Annotated[str, Form(max_length=1024)]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard page of this service, never another site."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/login")
async def sign_in_form(request: Request, next: str = "/ui/") -> HTMLResponse:
    return page(request, "login.html", next=safe_next(next))


def same_origin(request: Request) -> bool:
    """A form sent from a page of this service (browsers send Origin with every POST)."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


@router.post("/ui/login", response_model=None)
async def sign_in(
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    username: Field = "",
    password: Field = "",
    token: Field = "",
    next: Field = "/ui/",
) -> Response:
    """Check the password (or token) and set the session cookie; the form again, with the reason, if not."""
    target, expires = safe_next(next), None
    try:
        if not same_origin(request):
            raise Forbidden("sign in from this service's own page")
        if token.strip():
            user_id, expires = await token_sign_in(request, db, token.strip())
        elif username and password:
            user_id = await check_password(request, db, username, password)
        else:
            raise Unauthorized("give a username and password, or a token")
    except (Unauthorized, LimitExceeded, Forbidden) as exc:
        code = 429 if isinstance(exc, LimitExceeded) else 403 if isinstance(exc, Forbidden) else 401
        return page(request, "login.html", status_code=code, error=exc.message, username=username, next=target)

    def issue() -> str:
        now, days = utcnow(), settings.session_hours / 24
        if token.strip() and expires is not None:  # never longer than the token it was made from
            days = min(days, max(1e-9, (expires - now).total_seconds() / 86400))
        with db.write() as session:
            return accounts.log_in(session, user_id, days=days, purpose="dashboard", now=now).token

    session_token = await run_in_threadpool(issue)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_token,
        max_age=int(settings.session_hours * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def token_sign_in(request: Request, db: Database, token: str) -> tuple[int, datetime | None]:
    """The user a user token acts for, and when the token expires; failures are counted per client address."""
    guards = login_guards(request)
    address = request.client.host if request.client else "?"
    wait = throttle.attempt([(guards.by_address, address)])
    if wait is not None:
        raise LimitExceeded("too many failed sign-ins; wait and try again", retry_after=wait)

    def look_up() -> tuple[int, datetime | None] | None:
        with db.read() as session:
            row = accounts.find_token(session, token)
            return None if row is None or row.kind != TokenKind.USER else (row.user_id, row.expires_at)

    found = await run_in_threadpool(look_up)
    if found is None:
        raise Unauthorized("that token is wrong, expired or revoked, or it is not a user token")
    guards.by_address.forgive(address)
    return found


@router.post("/ui/logout", response_model=None, dependencies=[FormCsrf])
def sign_out(request: Request, caller: CurrentUser, db: DatabaseDep) -> Response:
    """End the session: its token is revoked (at once on every API process within a second) and the cookie cleared."""
    if getattr(request.state, "session", None) is not None and caller.token_id is not None:
        with db.write() as tx, contextlib.suppress(NotFound):  # revoked already, by another tab
            accounts.revoke_token(tx, caller, caller.token_id)
        recent_tokens(request).forget_all()
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
