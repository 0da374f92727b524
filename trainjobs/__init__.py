"""trainjobs from Python: ``Client`` (and ``AsyncClient``) for the service's public API.

    import trainjobs
    with trainjobs.Client() as tj:          # TRAINJOBS_SERVER / TRAINJOBS_TOKEN, or `trainjobs login`
        job = tj.submit({"preset": "seed-pretrain"})
        print(tj.wait(job.id).result)

Depends on httpx and pydantic only (not on fastapi or torch).
"""

from trainjobs.client import AsyncClient, Client
from trainjobs.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    TrainjobsError,
    Unauthorized,
    ValidationError,
)
from trainjobs.models import Checkpoint, Job, LogLine, Setting, Sweep, Trial

__all__ = [
    "AsyncClient",
    "Checkpoint",
    "Client",
    "Conflict",
    "Forbidden",
    "Job",
    "LogLine",
    "NotFound",
    "ServiceUnavailable",
    "Setting",
    "Sweep",
    "TrainjobsError",
    "Trial",
    "Unauthorized",
    "ValidationError",
]
