"""Signing in to the dashboard and out: a username and password (or a token) become a session, a new
user token of its own kept in an HttpOnly, SameSite=Strict cookie; signing out revokes it."""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api.auth import SESSION_COOKIE, CurrentUser, check_form_csrf, recent_tokens
from app.api.deps import DatabaseDep, SettingsDep
from app.api.routes.accounts import check_password
from app.core import accounts
from app.core.errors import Forbidden, LimitExceeded, NotFound, Unauthorized
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
    target = safe_next(next)
    try:
        if not same_origin(request):
            raise Forbidden("sign in from this service's own page")
        if token.strip():
            user_id = await run_in_threadpool(user_of_token, db, token.strip())
        elif username and password:
            user_id = await check_password(request, db, username, password)
        else:
            raise Unauthorized("give a username and password, or a token")
    except (Unauthorized, LimitExceeded, Forbidden) as exc:
        code = 429 if isinstance(exc, LimitExceeded) else 403 if isinstance(exc, Forbidden) else 401
        return page(request, "login.html", status_code=code, error=exc.message, username=username, next=target)

    def issue() -> str:
        with db.write() as session:
            days = settings.session_hours / 24
            return accounts.log_in(session, user_id, days=days, purpose="dashboard").token

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


def user_of_token(db: DatabaseDep, token: str) -> int:
    with db.read() as session:
        row = accounts.find_token(session, token)
        if row is None or row.kind != TokenKind.USER:
            raise Unauthorized("that token is wrong, expired or revoked, or it is not a user token")
        return row.user_id


@router.post("/ui/logout", response_model=None)
def sign_out(request: Request, caller: CurrentUser, db: DatabaseDep, csrf: Field = "") -> Response:
    """End the session: its token is revoked (at once on every API process within a second) and the cookie cleared."""
    check_form_csrf(request, csrf)
    if getattr(request.state, "session", None) is not None and caller.token_id is not None:
        with db.write() as tx, contextlib.suppress(NotFound):  # revoked already, by another tab
            accounts.revoke_token(tx, caller, caller.token_id)
        recent_tokens(request).forget_all()
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
