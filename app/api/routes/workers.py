"""The workers, for admins: what each can run, its devices, what it runs now and did in the last hour."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.auth import AdminUser
from app.api.deps import DatabaseDep, SettingsDep
from app.api.errors import printable
from app.core import workers
from app.core.workers import WorkerState


class DevicePublic(BaseModel):
    name: str
    memory_bytes: int | None = None
    busy: bool


class WorkerPublic(BaseModel):
    id: str
    host: str
    version: str
    kinds: list[str]
    archs: list[str]
    datasets: list[str]
    devices: list[DevicePublic]
    gpus: int = Field(description="Its CUDA devices (0: a CPU or MPS worker).")
    free: int = Field(description="Its devices free, as it last said (a worker not heard from: 0).")
    running: list[int] = Field(description="Its jobs running now (a node of a multi-node job too).")
    lost: bool = Field(description="Not heard from for longer than the lease (TRAINJOBS_LEASE_SECONDS).")
    first_seen: datetime
    last_seen: datetime
    succeeded_last_hour: int
    failed_last_hour: int

    @classmethod
    def of(cls, state: WorkerState) -> WorkerPublic:
        caps, w = state.worker.capabilities or {}, state.worker
        said = state.worker.capabilities is not None

        def names(key: str) -> list[str]:
            value = caps.get(key)
            return [str(v) for v in value] if isinstance(value, list) else []

        return cls(
            id=printable(w.id) or "",
            host=printable(w.host) or "",
            version=printable(w.version) or ("" if said else "(older: says nothing; may run anything)"),
            kinds=names("kinds"),
            archs=names("archs"),
            datasets=names("datasets"),
            devices=[DevicePublic.model_validate(d) for d in state.devices()],
            gpus=w.gpus,
            free=0 if state.lost else sum(not d["busy"] for d in state.devices()),
            running=state.running,
            lost=state.lost,
            first_seen=w.first_seen,
            last_seen=w.last_seen,
            succeeded_last_hour=state.succeeded_last_hour,
            failed_last_hour=state.failed_last_hour,
        )


class WorkersPublic(BaseModel):
    data: list[WorkerPublic]


router = APIRouter(
    prefix="/workers",
    tags=["workers"],
    responses={401: {"description": "No token, or not a valid one."}, 403: {"description": "Not an admin."}},
)


@router.get("")
def list_workers(db: DatabaseDep, admin: AdminUser, settings: SettingsDep) -> WorkersPublic:
    """Every worker heard from in the last day (newest first): id, host, version, what its code runs, its
    devices and whether each is busy, its running jobs, when it was last seen (lost: longer ago than the
    lease), and its jobs that succeeded and failed in the last hour."""
    with db.read() as session:
        return WorkersPublic(data=[WorkerPublic.of(s) for s in workers.states(session, settings.lease_seconds)])
