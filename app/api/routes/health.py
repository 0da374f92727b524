"""Liveness that means something: the database answers."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from app.api.deps import SessionDep
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"description": "The database does not answer."}})
def healthz(session: SessionDep) -> Health:
    """200 when the database is reachable."""
    session.execute(text("SELECT 1"))
    return Health(status="ok", database=session.get_bind().dialect.name)
