"""What a call to the service can raise: each error carries the HTTP status and the server's ``detail``."""

from __future__ import annotations

from typing import Any

import httpx


class TrainjobsError(Exception):
    """A call the service refused (``status`` and ``detail`` as it answered), or could not be made."""

    def __init__(self, message: str, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status, self.detail = status, detail


class Unauthorized(TrainjobsError):
    """401: no token, or a wrong, expired or revoked one (``trainjobs login``)."""


class Forbidden(TrainjobsError):
    """403: the token's user may not do this (an admin's action)."""


class NotFound(TrainjobsError):
    """404: no such job (or not yours: another user's job is a 404 too)."""


class Conflict(TrainjobsError):
    """409: the job is not in a state that allows it (a delete of a running job), or a reused idempotency key."""


class ValidationError(TrainjobsError):
    """422: the request is wrong; ``errors`` lists each field (``loc``) and what is wrong with it (``msg``)."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        if isinstance(self.detail, list):
            return [e for e in self.detail if isinstance(e, dict)]
        return [{"loc": [], "msg": str(self.detail)}]


class ServiceUnavailable(TrainjobsError):
    """The service could not be reached, or stayed busy (502/503/504), through every retry."""


BY_STATUS: dict[int, type[TrainjobsError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
}


def field_of(error: dict[str, Any]) -> str:
    """``body.train.lr`` -> ``train.lr``: the dotted path a user wrote."""
    loc = [str(p) for p in error.get("loc", [])]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    return ".".join(loc) or "(request)"


def describe(detail: Any) -> str:
    """The server's ``detail`` as one readable line: a message, or each field and what is wrong with it."""
    if isinstance(detail, list):
        return "; ".join(f"{field_of(e)}: {e.get('msg', e)}" for e in detail if isinstance(e, dict)) or str(detail)
    return str(detail)


def error_for(response: httpx.Response) -> TrainjobsError:
    """The exception for an answer of 4xx or 5xx."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    kind = BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServiceUnavailable if response.status_code >= 500 else TrainjobsError
    request = response.request
    return kind(
        f"{request.method} {request.url.path}: {response.status_code}: {describe(detail)}", response.status_code, detail
    )
