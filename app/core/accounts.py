"""Accounts: users, their passwords and API tokens, and who a request's token says the caller is.

Passwords are hashed with argon2id (argon2-cffi) and never stored or logged in clear. A token is
``tj_<prefix>_<secret>``: 32 random bytes of secret, shown once when it is made; the service keeps
the secret's SHA-256 (a fast hash is right for a random secret) and the short prefix, which is
safe to show. A token acts for its user (kind ``user``: the public API) or as a worker (kind
``worker``: ``/worker/*`` only). A deactivated user's tokens stop working at once: every request
looks its token up, with its user, in the database.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.core.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from app.core.files import replace_durably
from app.core.jobs import EVERYONE, Scope
from app.core.models import ApiToken, User, utcnow
from app.core.specs import storable_text
from app.core.states import TokenKind

USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TOKEN = re.compile(r"^tj_([a-z0-9]{8})_([A-Za-z0-9_-]{43})$")
LAST_USED_EVERY = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per token: a read must not become a write each time."""

_hasher = PasswordHasher()  # argon2id, the library's current recommended parameters


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the user does not exist, so a login takes as long for a wrong name as a wrong password."""
    return str(_hasher.hash(secrets.token_urlsafe(16)))


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: a user, by one of their user tokens (or the dashboard's session)."""

    user_id: int
    username: str
    is_admin: bool
    token_id: int | None = None

    @property
    def scope(self) -> Scope:
        """The jobs this caller may see and act on: their own; an admin's are everyone's."""
        return EVERYONE if self.is_admin else Scope(owner_id=self.user_id)


@dataclass(frozen=True)
class NewToken:
    row: ApiToken
    token: str
    """The whole token, ``tj_<prefix>_<secret>``: shown once, never stored."""


# --- passwords -------------------------------------------------------------------------


def hash_password(password: str) -> str:
    if not 8 <= len(password) <= 1024:
        raise InvalidRequest("password: give 8 to 1,024 characters", ("body", "password"))
    try:
        storable_text(password)
    except ValueError as exc:
        raise InvalidRequest(f"password {exc}", ("body", "password")) from None
    return str(_hasher.hash(password))


@dataclass(frozen=True)
class LoginCandidate:
    """What a login checks a password against, read before (and outside) any write."""

    user_id: int
    password_hash: str | None


def login_candidate(session: Session, username: str) -> LoginCandidate | None:
    """The active user of that name, if any."""
    user = session.scalars(select(User).where(User.username == username, User.is_active)).first()
    return None if user is None else LoginCandidate(user.id, user.password_hash)


def password_matches(candidate: LoginCandidate | None, password: str) -> bool:
    """Constant work whether or not the user exists or has a password."""
    stored = candidate.password_hash if candidate is not None and candidate.password_hash else _dummy_hash()
    try:
        ok = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
    return bool(ok) and candidate is not None and candidate.password_hash is not None


# --- users -----------------------------------------------------------------------------


def check_username(username: str) -> str:
    if not USERNAME.match(username):
        raise InvalidRequest("username: 1 to 64 letters, digits, '.', '_' or '-'", ("body", "username"))
    return username


def create_user(
    session: Session, username: str, *, password: str | None = None, is_admin: bool = False, now: datetime | None = None
) -> User:
    check_username(username)
    if session.scalars(select(User.id).where(User.username == username)).first() is not None:
        raise Conflict(f"user '{username}' exists already; choose another name")
    user = User(
        username=username,
        password_hash=hash_password(password) if password is not None else None,
        is_admin=is_admin,
        is_active=True,
        created_at=now or utcnow(),
    )
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def user_named(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None:
        raise NotFound(f"no user named '{username}'")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def update_user(
    session: Session,
    user_id: int,
    *,
    is_active: bool | None = None,
    is_admin: bool | None = None,
    password: str | None = None,
) -> User:
    """Change a user; deactivating one stops their tokens at once (their jobs stay)."""
    user = get_user(session, user_id)
    if (is_active is False or is_admin is False) and user.is_admin and user.is_active:
        # Lock the admins first: two admins demoting each other at once must not both pass.
        session.scalars(select(User.id).where(User.is_admin, User.is_active).with_for_update()).all()
        others = session.scalar(
            select(func.count()).where(User.is_admin, User.is_active, User.id != user.id).select_from(User)
        )
        if not others:
            raise Conflict(f"'{user.username}' is the last active admin; make another admin first")
    if is_active is not None:
        user.is_active = is_active
    if is_admin is not None:
        user.is_admin = is_admin
    if password is not None:
        user.password_hash = hash_password(password)
    session.flush()
    return user


# --- tokens ----------------------------------------------------------------------------


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_token(
    session: Session,
    user: User,
    kind: TokenKind,
    name: str,
    *,
    expires_in_days: float | None = None,
    now: datetime | None = None,
) -> NewToken:
    """A new token for ``user``; the whole token is in the result, and only there."""
    if not user.is_active:
        raise Conflict(f"user '{user.username}' is deactivated; reactivate them first (PATCH /users/{user.id})")
    if expires_in_days is not None and not 0 < expires_in_days <= 3650:
        raise InvalidRequest("expires_in_days: give a number of days from 0 to 3,650", ("body", "expires_in_days"))
    try:
        storable_text(name)
    except ValueError as exc:
        raise InvalidRequest(f"name {exc}", ("body", "name")) from None
    if not 1 <= len(name) <= 100:
        raise InvalidRequest("name: give 1 to 100 characters", ("body", "name"))
    now = now or utcnow()
    prefix, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id,
        kind=kind,
        name=name,
        prefix=prefix,
        secret_hash=_secret_hash(secret),
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days is not None else None,
    )
    session.add(row)
    session.flush()
    return NewToken(row, f"tj_{prefix}_{secret}")


def find_token(session: Session, token: str, *, now: datetime | None = None) -> ApiToken | None:
    """The live token ``token`` is: its user active, not revoked, not expired; else None."""
    parsed = TOKEN.match(token)
    if parsed is None:
        return None
    prefix, secret = parsed.groups()
    row = session.scalars(select(ApiToken).where(ApiToken.secret_hash == _secret_hash(secret))).first()
    now = now or utcnow()
    if row is None or not secrets.compare_digest(row.prefix, prefix) or row.revoked_at is not None:
        return None
    if (row.expires_at is not None and row.expires_at <= now) or not row.user.is_active:
        return None
    return row


def caller_of(row: ApiToken) -> Caller:
    return Caller(row.user.id, row.user.username, row.user.is_admin, row.id)


def list_tokens(session: Session, user_id: int) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)))


def revoke_token(session: Session, caller: Caller, token_id: int, *, now: datetime | None = None) -> ApiToken:
    """Revoke one of the caller's tokens (an admin may revoke anyone's); another's is a 404."""
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != caller.user_id and not caller.is_admin):
        raise NotFound(f"token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
        session.flush()
    return row


def note_use(session: Session, token_id: int, *, now: datetime | None = None) -> None:
    now = now or utcnow()
    row = session.get(ApiToken, token_id)
    if row is not None and (row.last_used_at is None or row.last_used_at < now - LAST_USED_EVERY):
        row.last_used_at = now


def log_in(
    session: Session, user_id: int, *, days: float, purpose: str = "login", now: datetime | None = None
) -> NewToken:
    """A new user token for a user whose password (or token) was just checked; ``purpose`` names it
    (``login``, or ``dashboard`` for a browser session)."""
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        raise Unauthorized("wrong username or password")
    now = now or utcnow()
    return issue_token(session, user, TokenKind.USER, f"{purpose} {now:%Y-%m-%d %H:%M}", expires_in_days=days, now=now)


# --- the first admin ------------------------------------------------------------------------


BOOTSTRAP_LOCK = 0x74726A62  # "trjb": the PostgreSQL advisory lock the first-admin check takes


@dataclass(frozen=True)
class AdminCredentials:
    username: str
    password: str
    token: str


def _can_sign_in(session: Session, admins: list[User], now: datetime) -> bool:
    if any(admin.password_hash for admin in admins):
        return True
    live = select(ApiToken.id).where(
        ApiToken.user_id.in_([a.id for a in admins]),
        ApiToken.kind == TokenKind.USER,
        ApiToken.revoked_at.is_(None),
        (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now),
    )
    return bool(admins) and session.scalars(live.limit(1)).first() is not None


def bootstrap_admin(session: Session, *, now: datetime | None = None) -> AdminCredentials | None:
    """On a start with no admin who can sign in: give the first admin (made if there is none) a password
    and a token, and return them; None when some admin can already sign in."""
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":  # API processes starting at once: one makes it
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BOOTSTRAP_LOCK})
    admins = list(session.scalars(select(User).where(User.is_admin, User.is_active).order_by(User.id)))
    if _can_sign_in(session, admins, now):
        return None
    if admins:
        admin = admins[0]
    else:
        taken = set(session.scalars(select(User.username)))
        name = next(n for n in ("admin", *(f"admin{i}" for i in range(2, 1000))) if n not in taken)
        admin = create_user(session, name, is_admin=True, now=now)
    password = secrets.token_urlsafe(18)
    admin.password_hash = hash_password(password)
    token = issue_token(session, admin, TokenKind.USER, "first start", now=now)
    return AdminCredentials(admin.username, password, token.token)


def write_credentials(path: Path, credentials: AdminCredentials, server: str) -> None:
    """The first admin's password and token, readable by the service's own user only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "# trainjobs: the first admin, made on the service's first start. Keep this file secret.\n"
            "# The password signs in (POST /auth/login); the token goes with every request:\n"
            f'#   . {path}   # then: curl -H "Authorization: Bearer $TRAINJOBS_TOKEN" $TRAINJOBS_SERVER/me\n'
            f"export TRAINJOBS_SERVER={server}\n"
            f"export TRAINJOBS_USERNAME={credentials.username}\n"
            f"export TRAINJOBS_PASSWORD={credentials.password}\n"
            f"export TRAINJOBS_TOKEN={credentials.token}\n"
        )
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    replace_durably(tmp, path)
