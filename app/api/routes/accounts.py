"""Accounts over HTTP: logging in, the caller's own tokens, and (admins) users and their tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from fastapi import Path as PathParam

from app.api.auth import AdminUser, CurrentUser
from app.api.deps import DatabaseDep, SessionDep, SettingsDep
from app.core import accounts
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
Id = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
_AUTH: dict[int | str, dict[str, str]] = {401: {"description": "No token, or not a valid one."}}
_ADMIN: dict[int | str, dict[str, str]] = {**_AUTH, 403: {"description": "Admins only."}}


def login_throttles(request: Request) -> tuple[FailureThrottle, FailureThrottle]:
    """(per username, per client address), made once per app from its settings."""
    state = request.app.state
    if not hasattr(state, "login_throttles"):
        settings = state.settings
        state.login_throttles = (
            FailureThrottle(settings.login_max_failures, settings.login_window_seconds),
            FailureThrottle(4 * settings.login_max_failures, settings.login_window_seconds),
        )
    throttles: tuple[FailureThrottle, FailureThrottle] = state.login_throttles
    return throttles


@router.post(
    "/auth/login",
    status_code=status.HTTP_201_CREATED,
    responses={401: {"description": "Wrong username or password."}, 429: {"description": "Too many failures."}},
)
def log_in(body: LoginRequest, request: Request, db: DatabaseDep, settings: SettingsDep) -> TokenCreated:
    """Trade a username and password for a new user token (it lasts TRAINJOBS_LOGIN_TOKEN_DAYS)."""
    by_name, by_address = login_throttles(request)
    keys = [(by_name, body.username.lower()), (by_address, request.client.host if request.client else "?")]
    waits = [wait for throttle, key in keys if (wait := throttle.retry_after(key)) is not None]
    if waits:
        raise LimitExceeded("too many failed logins; wait and try again", retry_after=max(waits))
    try:
        with db.write() as session:
            return TokenCreated.of_new(
                accounts.log_in(session, body.username, body.password, days=settings.login_token_days)
            )
    except Unauthorized:
        for throttle, key in keys:
            throttle.fail(key)
        raise


@router.get("/me", responses=_AUTH)
def me(caller: CurrentUser, session: SessionDep) -> UserPublic:
    """The user the token acts for."""
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
def list_tokens(caller: CurrentUser, session: SessionDep) -> TokensPublic:
    """Your tokens: names, prefixes, last use; never their secrets."""
    return TokensPublic(data=[TokenPublic.of(t) for t in accounts.list_tokens(session, caller.user_id)])


@router.delete(
    "/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_AUTH, 404: {"description": "No such token of yours."}},
)
def revoke_token(token_id: Id, caller: CurrentUser, db: DatabaseDep) -> Response:
    """Revoke a token: it stops working at once."""
    with db.write() as session:
        accounts.revoke_token(session, caller, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/users", status_code=status.HTTP_201_CREATED, responses={**_ADMIN, 409: {"description": "Taken."}})
def create_user(body: UserCreate, _admin: AdminUser, db: DatabaseDep) -> UserPublic:
    """Make a user (admins only); give them a token with POST /users/{id}/tokens, or a password here."""
    with db.write() as session:
        return UserPublic.of(
            accounts.create_user(session, body.username, password=body.password, is_admin=body.is_admin)
        )


@router.get("/users", responses=_ADMIN)
def list_users(_admin: AdminUser, session: SessionDep) -> UsersPublic:
    """Every user (admins only)."""
    return UsersPublic(data=[UserPublic.of(u) for u in accounts.list_users(session)])


@router.patch("/users/{user_id}", responses={**_ADMIN, 404: {"description": "No such user."}})
def update_user(user_id: Id, body: UserUpdate, _admin: AdminUser, db: DatabaseDep) -> UserPublic:
    """Deactivate (their tokens stop at once; their jobs stay), reactivate, make admin, set a password."""
    with db.write() as session:
        user = accounts.update_user(
            session, user_id, is_active=body.is_active, is_admin=body.is_admin, password=body.password
        )
        return UserPublic.of(user)


@router.post("/users/{user_id}/tokens", status_code=status.HTTP_201_CREATED, responses=_ADMIN)
def create_user_token(user_id: Id, body: UserTokenCreate, _admin: AdminUser, db: DatabaseDep) -> TokenCreated:
    """A new token for a user (admins only): a user token, or a worker token for /worker/*."""
    with db.write() as session:
        user = accounts.get_user(session, user_id)
        return TokenCreated.of_new(
            accounts.issue_token(session, user, body.kind, body.name, expires_in_days=body.expires_in_days)
        )
