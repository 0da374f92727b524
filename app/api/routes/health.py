"""Liveness that means something: the database answers."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from app.api.deps import DatabaseDep
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"description": "The database does not answer."}})
def healthz(db: DatabaseDep) -> Health:
    """200 when the database is reachable."""
    with db.read() as session:
        session.execute(text("SELECT 1"))
    return Health(status="ok", database=db.backend)
