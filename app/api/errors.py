"""Every error an answer can carry, in one place: the domain's exceptions and the database's, as HTTP.

A domain error's status comes from ``STATUS``; its message is written for the caller. A database
error that reaches here is a busy or unreachable database (503, Retry-After) or a race the request
lost (409), never a 500. Messages never echo a client's input (it may be huge, binary, or a secret).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.core.errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PreconditionFailed,
    TooLarge,
    TrainjobsError,
    Unauthorized,
)
from app.core.specs import escaped

log = logging.getLogger("trainjobs.api")

STATUS: list[tuple[type[TrainjobsError], int]] = [
    (Unauthorized, status.HTTP_401_UNAUTHORIZED),
    (Forbidden, status.HTTP_403_FORBIDDEN),
    (NotFound, status.HTTP_404_NOT_FOUND),
    (Conflict, status.HTTP_409_CONFLICT),
    (PreconditionFailed, status.HTTP_412_PRECONDITION_FAILED),
    (TooLarge, status.HTTP_413_CONTENT_TOO_LARGE),
    (InvalidRequest, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (LimitExceeded, status.HTTP_429_TOO_MANY_REQUESTS),
    (InsufficientStorage, status.HTTP_507_INSUFFICIENT_STORAGE),
]


def printable(value: object) -> object:
    """A string made encodable (a lone surrogate becomes its escape, \\ud800); anything else as it is."""
    return escaped(value) if isinstance(value, str) else value


def unavailable(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "1"})


async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrainjobsError)
    code = next((code for kind, code in STATUS if isinstance(exc, kind)), status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, InvalidRequest):
        return JSONResponse({"detail": [{"loc": list(exc.loc), "msg": exc.message, "type": "value_error"}]}, code)
    response = JSONResponse({"detail": exc.message}, code)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, LimitExceeded | InsufficientStorage) and exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


NOT_UNICODE = "must be valid Unicode text: it holds a lone surrogate (such as \\ud800)"


def not_unicode(value: object, loc: tuple[object, ...] = ("body",)) -> Iterator[tuple[object, ...]]:
    """Where a decoded JSON body holds a string, or a key, that is not Unicode text."""
    if isinstance(value, str):
        if printable(value) != value:
            yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from not_unicode(key, (*loc, key)) if isinstance(key, str) and printable(key) != key else ()
            yield from not_unicode(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from not_unicode(item, (*loc, i))


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # Pydantic's errors name the field; drop the echoed input and context, which can be large or binary,
    # and escape what is not Unicode text (a lone surrogate in a key or an echoed tag) so the answer encodes.
    # Pydantic cannot name a key it cannot read: those errors become one per such place in the body.
    assert isinstance(exc, RequestValidationError)
    found = [e for e in exc.errors() if e["type"] != "string_unicode"]
    if len(found) < len(exc.errors()):
        found += [{"loc": loc, "msg": NOT_UNICODE, "type": "value_error"} for loc in not_unicode(exc.body)]
    errors = [
        {"loc": [printable(part) for part in e["loc"]], "msg": printable(e["msg"]), "type": e["type"]} for e in found
    ]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own errors; a body its JSON decoder could not read gets a reason the client can act on."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.__cause__ is not None:
        cause = exc.__cause__
        if isinstance(cause, RecursionError):
            reason = "it nests too deeply"
        elif isinstance(cause, ValueError) and "digits" in str(cause):
            reason = "a number in it has too many digits"
        else:
            reason = "it is not JSON"
        return JSONResponse({"detail": f"the body could not be read: {reason}"}, exc.status_code)
    return await http_exception_handler(request, exc)


async def unstorable(_request: Request, exc: Exception) -> JSONResponse:
    # A value the database cannot store that validation let through: the client's to change.
    log.warning("database refused a value: %s", type(exc).__name__)
    message = "a value in the request cannot be stored (out of range or an invalid character)"
    return JSONResponse({"detail": message}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def no_connection(_request: Request, _exc: Exception) -> JSONResponse:
    log.warning("no database connection free within the pool timeout")
    return unavailable("the service is busy (no database connection free); try again in a moment")


async def conflicting_change(_request: Request, exc: Exception) -> JSONResponse:
    # Two requests at once (a delete racing a submit that names the deleted job, say): one lost.
    log.info("a request lost a race: %s", type(exc).__name__)
    message = "the request conflicted with a change made at the same moment; read the state again and retry"
    return JSONResponse({"detail": message}, status_code=status.HTTP_409_CONFLICT)


async def database_down(_request: Request, exc: Exception) -> JSONResponse:
    log.error("database error: %s", exc)
    if "database or disk is full" in str(exc):
        message = "the service's disk is full: nothing was written; try again later"
        return JSONResponse({"detail": message}, status.HTTP_507_INSUFFICIENT_STORAGE, headers={"Retry-After": "30"})
    return unavailable("the database is unavailable; try again shortly")


async def database_failed(_request: Request, exc: Exception) -> JSONResponse:
    log.error("database error: %s", type(exc).__name__)
    return unavailable("the database is unavailable; try again shortly")


Handler = Callable[[Request, Exception], Awaitable[Response]]
DATABASE_ERRORS: list[tuple[type[Exception], Handler]] = [
    (DataError, unstorable),
    (PoolTimeout, no_connection),
    (IntegrityError, conflicting_change),
    (OperationalError, database_down),
    (SQLAlchemyError, database_failed),
]
"""Most specific first; ``database_error`` answers for middleware, outside FastAPI's handlers."""


async def database_error(request: Request, exc: SQLAlchemyError) -> Response:
    return await next(handler for kind, handler in DATABASE_ERRORS if isinstance(exc, kind))(request, exc)


async def client_gone(_request: Request, _exc: Exception) -> Response:
    # It hung up mid-body (a worker killed mid-upload): nothing was stored, and nobody reads the answer.
    log.info("a client disconnected before its request body ended")
    return JSONResponse({"detail": "the request body ended early: the client disconnected"}, 400)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(TrainjobsError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    for kind, handler in DATABASE_ERRORS:
        app.add_exception_handler(kind, handler)
