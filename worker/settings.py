"""The worker's settings, read from the environment (prefix ``TRAINJOBS_``) or ``.env``: the one source of its defaults.

``trainjobs-worker``'s options take their defaults from here, and a flag beats the variable.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.structured_logs import LogFormat

StartMethod = Literal["spawn", "forkserver"]


class WorkerSettings(BaseSettings):
    """Every knob of a worker; README's "Workers" table lists them."""

    model_config = SettingsConfigDict(env_prefix="TRAINJOBS_", env_file=".env", extra="ignore")

    api_url: str = Field("http://127.0.0.1:8000", description="The service.")
    worker_token: SecretStr | None = Field(None, description="Sent as 'Authorization: Bearer' when set.")
    device: str = Field("auto", description="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps.")
    worker_id: str | None = Field(None, description="Shown as the job's worker; default host:pid.")
    work_dir: Path = Field(Path("./var/worker"), description="Local scratch; cleaned after each job.")
    data_dir: Path = Field(Path("./var/data"), description="Datasets on this machine.")
    grace_seconds: float = Field(60.0, gt=0, description="On SIGTERM, how long the job may take to stop and save.")
    poll_seconds: float = Field(5.0, gt=0, le=300, description="Long-poll length of each claim.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads of each job (default: chosen per job, worker/threads.py)."
    )
    start_method: StartMethod = Field("spawn", description="How each job's process starts.")
    prestart: bool = Field(True, description="Start the next job's process while idle, its imports done.")
    log_level: str = Field("INFO", description="Logging level of the worker.")
    log_format: LogFormat = Field(
        "text", description="text, or json: one JSON object a line (time, level, message, job_id, attempt, worker)."
    )
    allow_insecure_http: bool = Field(False, description="Send the token over plain HTTP to another machine.")
    storage_retry_seconds: float = Field(
        300.0, ge=0, description="How long a checkpoint upload the service has no room for is retried."
    )
    gpus: str | None = Field(
        None,
        pattern=r"^(all|[0-9]{1,2}(,[0-9]{1,2})*)$",
        description="GPUs this worker manages (0,1,2,3 or all): a job on each free one, an N-GPU job on N.",
    )
    node_address: str | None = Field(
        None,
        max_length=255,
        description="This machine's address as the other nodes of a multi-node job reach it "
        "(default: the one it reaches the service from).",
    )
    rendezvous_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port node 0 of a multi-node job serves its rendezvous on (default: a free one).",
    )
    collective_timeout_seconds: float = Field(
        600.0, gt=0, description="How long a rank waits in a collective for the others before the job fails."
    )


LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_local(host: str) -> bool:
    """Whether ``host`` (a URL's host name) is this machine: a loopback address or name."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in LOOPBACK_NAMES


def service_is_local(settings: WorkerSettings) -> bool:
    return is_local(urlsplit(settings.api_url).hostname or "")


def insecure_reason(settings: WorkerSettings) -> str | None:
    """Why this worker must not start: its token would cross the network in clear. None when it may."""
    url = urlsplit(settings.api_url)
    host = (url.hostname or "").lower()
    if settings.worker_token is None or url.scheme != "http" or settings.allow_insecure_http or is_local(host):
        return None
    return (
        f"refusing to send the worker token over plain HTTP to {host}: anyone on the way could read it and "
        "then claim jobs and write results as this worker; use an https:// URL (TLS at the reverse proxy in "
        "front of the service), or pass --allow-insecure-http on a network you trust"
    )


@dataclass(frozen=True)
class WorkerConfig:
    """One running worker: its settings, with its id and device resolved and a scratch folder of its own."""

    settings: WorkerSettings
    worker_id: str
    device: str
    """As its claims name it: cpu, cuda:1, or cuda:0,1,2,3 for a worker of several GPUs."""
    work_dir: Path
    devices: tuple[str, ...] = ()
    """The devices it runs jobs on (one each, or a job's GPUs): ``device`` alone, or each of ``--gpus``."""

    @classmethod
    def of(
        cls, settings: WorkerSettings, worker_id: str, device: str, devices: list[str] | None = None
    ) -> WorkerConfig:
        safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)
        return cls(settings, worker_id, device, settings.work_dir / safe_id, tuple(devices or [device]))
