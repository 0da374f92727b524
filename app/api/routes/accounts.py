"""Accounts over HTTP: logging in, the caller's own tokens, and (admins) users and their tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import APIRouter, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BeforeValidator

from app.api.auth import AdminUser, CurrentUser, recent_tokens
from app.api.deps import DatabaseDep, SettingsDep, plain_digits
from app.core import accounts, throttle
from app.core.db import Database
from app.core.errors import LimitExceeded, Unauthorized
from app.core.states import TokenKind
from app.core.throttle import FailureThrottle
from app.schemas import (
    LoginRequest,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    TokensPublic,
    UserCreate,
    UserPublic,
    UsersPublic,
    UserTokenCreate,
    UserUpdate,
)

router = APIRouter(tags=["accounts"])
Id = Annotated[int, PathParam(ge=1, le=2**31 - 1), BeforeValidator(plain_digits)]
_AUTH: dict[int | str, dict[str, str]] = {401: {"description": "No token, or not a valid one."}}
_ADMIN: dict[int | str, dict[str, str]] = {**_AUTH, 403: {"description": "Admins only."}}


PASSWORD_CHECKS_AT_ONCE = 2
"""argon2 takes about 0.2 s of a core and 64 MiB per check: more at once would only slow every other request."""


@dataclass
class LoginGuards:
    """Per app: failed logins counted per username and per client address, and a cap on checks at once."""

    by_name: FailureThrottle
    by_address: FailureThrottle
    checks: anyio.CapacityLimiter


def login_guards(request: Request) -> LoginGuards:
    state = request.app.state
    if not hasattr(state, "login_guards"):
        settings = state.settings
        state.login_guards = LoginGuards(
            FailureThrottle(settings.login_max_failures, settings.login_window_seconds),
            FailureThrottle(4 * settings.login_max_failures, settings.login_window_seconds),
            anyio.CapacityLimiter(PASSWORD_CHECKS_AT_ONCE),
        )
    guards: LoginGuards = state.login_guards
    return guards


@router.post(
    "/auth/login",
    status_code=status.HTTP_201_CREATED,
    responses={401: {"description": "Wrong username or password."}, 429: {"description": "Too many failures."}},
)
async def log_in(body: LoginRequest, request: Request, db: DatabaseDep, settings: SettingsDep) -> TokenCreated:
    """Trade a username and password for a new user token (it lasts TRAINJOBS_LOGIN_TOKEN_DAYS)."""
    user_id = await check_password(request, db, body.username, body.password)

    def issue() -> TokenCreated:
        with db.write() as session:
            return TokenCreated.of_new(accounts.log_in(session, user_id, days=settings.login_token_days))

    return await run_in_threadpool(issue)


async def check_password(request: Request, db: Database, username: str, password: str) -> int:
    """The id of the user ``username`` if ``password`` is theirs; Unauthorized, or LimitExceeded after too many
    failures (per username and per client address). Used by POST /auth/login and the dashboard's sign-in."""
    guards = login_guards(request)
    address = request.client.host if request.client else "?"
    keys = [(guards.by_name, username), (guards.by_address, address)]
    wait = throttle.attempt(keys)  # counted before the check: guesses sent at once cannot all get in
    if wait is not None:
        raise LimitExceeded("too many failed logins; wait and try again", retry_after=wait)

    def who() -> accounts.LoginCandidate | None:
        with db.read() as session:
            return accounts.login_candidate(session, username)

    candidate = await run_in_threadpool(who)  # no transaction is open while the password is checked
    matches = await anyio.to_thread.run_sync(accounts.password_matches, candidate, password, limiter=guards.checks)
    if not matches or candidate is None:
        raise Unauthorized("wrong username or password")
    for guard, key in keys:
        guard.forgive(key)
    return candidate.user_id


@router.get("/me", responses=_AUTH)
def me(caller: CurrentUser, db: DatabaseDep) -> UserPublic:
    """The user the token acts for."""
    with db.read() as session:
        return UserPublic.of(accounts.get_user(session, caller.user_id))


@router.post("/tokens", status_code=status.HTTP_201_CREATED, responses=_AUTH)
def create_token(body: TokenCreate, caller: CurrentUser, db: DatabaseDep) -> TokenCreated:
    """A new user token for yourself; the response is the only time its secret is shown."""
    with db.write() as session:
        user = accounts.get_user(session, caller.user_id)
        return TokenCreated.of_new(
            accounts.issue_token(session, user, TokenKind.USER, body.name, expires_in_days=body.expires_in_days)
        )


@router.get("/tokens", responses=_AUTH)
def list_tokens(caller: CurrentUser, db: DatabaseDep) -> TokensPublic:
    """Your tokens: names, prefixes, last use; never their secrets."""
    with db.read() as session:
        return TokensPublic(data=[TokenPublic.of(t) for t in accounts.list_tokens(session, caller.user_id)])


@router.delete(
    "/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_AUTH, 404: {"description": "No such token of yours."}},
)
def revoke_token(token_id: Id, caller: CurrentUser, db: DatabaseDep, request: Request) -> Response:
    """Revoke a token: it stops working at once (within a second on the service's other API processes)."""
    with db.write() as session:
        accounts.revoke_token(session, caller, token_id)
    recent_tokens(request).forget_all()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/users", status_code=status.HTTP_201_CREATED, responses={**_ADMIN, 409: {"description": "Taken."}})
def create_user(body: UserCreate, _admin: AdminUser, db: DatabaseDep) -> UserPublic:
    """Make a user (admins only); give them a token with POST /users/{id}/tokens, or a password here."""
    with db.write() as session:
        return UserPublic.of(
            accounts.create_user(session, body.username, password=body.password, is_admin=body.is_admin)
        )


@router.get("/users", responses=_ADMIN)
def list_users(_admin: AdminUser, db: DatabaseDep) -> UsersPublic:
    """Every user (admins only)."""
    with db.read() as session:
        return UsersPublic(data=[UserPublic.of(u) for u in accounts.list_users(session)])


@router.patch("/users/{user_id}", responses={**_ADMIN, 404: {"description": "No such user."}})
def update_user(user_id: Id, body: UserUpdate, _admin: AdminUser, db: DatabaseDep, request: Request) -> UserPublic:
    """Deactivate (their tokens stop at once; their jobs stay), reactivate, make admin, set a password."""
    with db.write() as session:
        user = accounts.update_user(
            session, user_id, is_active=body.is_active, is_admin=body.is_admin, password=body.password
        )
        answer = UserPublic.of(user)
    recent_tokens(request).forget_all()
    return answer


@router.post("/users/{user_id}/tokens", status_code=status.HTTP_201_CREATED, responses=_ADMIN)
def create_user_token(user_id: Id, body: UserTokenCreate, _admin: AdminUser, db: DatabaseDep) -> TokenCreated:
    """A new token for a user (admins only): a user token, or a worker token for /worker/*."""
    with db.write() as session:
        user = accounts.get_user(session, user_id)
        return TokenCreated.of_new(
            accounts.issue_token(session, user, body.kind, body.name, expires_in_days=body.expires_in_days)
        )
