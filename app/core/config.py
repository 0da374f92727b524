"""Settings, read from the environment with the prefix ``TRAINJOBS_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.structured_logs import LogFormat

MIN_WORKER_TOKEN = 24


class Settings(BaseSettings):
    """Every knob of the service; README has the table."""

    model_config = SettingsConfigDict(env_prefix="TRAINJOBS_", env_file=".env", extra="ignore")

    database_url: str = Field("sqlite:///./var/trainjobs.db", description="SQLAlchemy URL: SQLite file or PostgreSQL.")
    artifacts_dir: Path = Field(Path("./var/artifacts"), description="Where checkpoint files are kept.")
    data_dir: Path = Field(Path("./var/data"), description="Where datasets live; imagefolder paths are relative to it.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    worker_token: SecretStr | None = Field(
        None,
        description="A worker token from the environment, good for /worker/* (besides worker tokens in the database).",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="A token for GET /metrics alone (a Prometheus scraper's), besides an admin's user token.",
    )
    admin_credentials_file: Path = Field(
        Path("./var/admin-credentials"),
        description="Where the first start writes the first admin's password and token (mode 0600).",
    )
    max_active_jobs_per_user: int = Field(1000, ge=1, description="Queued plus running jobs one user may have.")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest JSON body of the public API.")
    login_max_failures: int = Field(5, ge=1, description="Failed logins per username (and 4x per address) per window.")
    login_window_seconds: float = Field(300.0, gt=0, description="The window failed logins are counted over.")
    login_token_days: float = Field(30.0, gt=0, description="How long a token made by POST /auth/login lasts.")
    session_hours: float = Field(12.0, gt=0, le=24 * 90, description="How long a dashboard sign-in lasts.")
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="A connection must send its request's headers within this long, or is closed."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="A request body that sends nothing for this long between two chunks is a 408."
    )
    max_connections: int = Field(
        1000, ge=16, description="Open connections at most; over it, the oldest still sending headers is closed."
    )
    max_concurrency: int = Field(
        200, ge=8, description="Requests in flight at most (long polls and event streams aside); over it, 503 at once."
    )
    api_threads: int = Field(
        4, ge=1, le=256, description="Threads for the public routes' database work; twice as many requests run at once."
    )
    pool_timeout_seconds: float = Field(
        2.0, gt=0, description="How long a request waits for a database connection before a 503."
    )
    max_params: int = Field(2_000_000_000, ge=1, description="Largest network a job may ask for (parameters).")
    max_dataset_bytes: int = Field(
        64 * 1024**3, ge=1, description="Largest dataset a job may hold in memory (uint8 images), when the spec tells."
    )
    max_log_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Text of one job's log kept at most; later lines are dropped, and counted.",
    )
    max_metric_points_per_job: int = Field(
        10_000_000, ge=1, description="Most metric points a job may report (estimated from its spec at submit)."
    )
    log_format: LogFormat = Field(
        "text", description="text, or json: one JSON object a line (time, level, logger, message, job_id, ...)."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies whose X-Forwarded-For is trusted for the client's address (comma-separated, or *).",
    )

    @field_validator("worker_token", "metrics_token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_WORKER_TOKEN:
            what = {"worker_token": "claim jobs and forge their results", "metrics_token": "read the service's metrics"}
            raise ValueError(
                f"TRAINJOBS_{str(info.field_name).upper()} has {len(token.get_secret_value())} characters; give at "
                f"least {MIN_WORKER_TOKEN} (e.g. `openssl rand -hex 32`): a short one can be guessed, and with it "
                f"anyone can {what.get(str(info.field_name), 'use it')}"
            )
        return token

    max_upload_bytes: int = Field(16 * 1024**3, ge=1, description="Largest checkpoint upload accepted.")
    lease_seconds: float = Field(60.0, gt=0, description="A running job whose heartbeat is older is requeued.")
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often workers heartbeat (sent to them on claim).")
    claim_max_wait_seconds: float = Field(30.0, ge=0, description="Longest long-poll a claim may ask for.")
    claim_poll_seconds: float = Field(
        1.0, gt=0, description="Re-check interval of a waiting claim (other API processes)."
    )
    gang_seconds: float = Field(
        30.0, gt=0, description="How long workers offered a node of a multi-node job have to take it."
    )
    reap_interval_seconds: float = Field(5.0, gt=0, description="How often expired leases are looked for.")
    idempotency_hours: float = Field(24.0, gt=0, description="How long an Idempotency-Key is remembered.")


@lru_cache
def get_settings() -> Settings:
    return Settings()
