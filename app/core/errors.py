"""The domain's exceptions, in one place.

The API maps each to an HTTP status (app/main.py); the messages are written
for the person who sent the request and say what to change.

- ``TrainjobsError``: base.
  - ``Unauthorized`` (401): no token, or one that is wrong, expired, revoked or of the wrong kind.
  - ``Forbidden`` (403): a known caller asking for what only an admin may do.
  - ``JobNotFound`` (404): no job with that id (or not one the caller may see).
  - ``NotFound`` (404): something else is missing (a checkpoint).
  - ``TooLarge`` (413): a request body or upload over its limit.
  - ``LimitExceeded`` (429): a per-user limit, or too many failed logins (``retry_after`` seconds).
  - ``InsufficientStorage`` (507): the service's disk is full; try again later (``retry_after``).
  - ``InvalidRequest`` (422): a request that validates field by field but not against the store.
  - ``Conflict`` (409): the job is in a state that does not allow this.
    - ``LeaseLost`` (409): a worker's lease token is no longer the job's.
    - ``IdempotencyConflict`` (409): an Idempotency-Key reused with another body.
"""

from __future__ import annotations


class TrainjobsError(Exception):
    """Base of every error the service reports to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(TrainjobsError):
    pass


class Forbidden(TrainjobsError):
    pass


class LimitExceeded(TrainjobsError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InsufficientStorage(TrainjobsError):
    def __init__(self, message: str, retry_after: float | None = 30) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(TrainjobsError):
    pass


class JobNotFound(NotFound):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidRequest(TrainjobsError):
    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


class TooLarge(TrainjobsError):
    pass


class Conflict(TrainjobsError):
    pass


class PreconditionFailed(TrainjobsError):
    pass


class LeaseLost(Conflict):
    def __init__(self, job_id: int) -> None:
        super().__init__(
            f"job {job_id}: lease lost (the job was requeued, cancelled, finished or handed to another worker)"
        )
        self.job_id = job_id


class IdempotencyConflict(Conflict):
    pass


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
