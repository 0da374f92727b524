"""Schemathesis against /openapi.json: no generated request gets a 5xx.

One app on a migrated SQLite file for the whole module, with jobs in every
state so that generated ids often hit one. Bounded: 25 fuzzed examples per
operation after schemathesis' coverage cases, no shrinking, and claims never
long-poll for more than 50 ms.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, settings
from pydantic import SecretStr
from schemathesis import APIOperation, Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.generation.hypothesis.builder import HypothesisTestConfig, HypothesisTestMode, create_test
from schemathesis.python import asgi

from app.core import accounts
from app.core.config import Settings
from app.core.db import Database
from app.core.states import TokenKind
from app.main import create_app
from devtools.servers import WORKER_TOKEN
from tests.api.helpers import claim_job, finish, post_points, put_checkpoint, run_job, submit
from tests.authed import AuthedClient
from tests.conftest import finetune_body, pretrain_body

SEEDED_IDS = 6
USER_TOKEN: list[str] = []
"""alice's, made with the app below (she owns every seeded job)."""


def seed_jobs(client: AuthedClient) -> None:
    """Jobs 1-6: succeeded (with metrics and a checkpoint), failed, cancelled, running, queued finetune, queued."""
    base = submit(client, pretrain_body())["id"]
    token = claim_job(client, base)
    post_points(client, base, token, [{"name": "train_loss", "step": s, "value": 1 / (s + 1)} for s in range(50)])
    put_checkpoint(client, base, token, b"weights" * 100, "best")
    finish(client, base, token, result={"test_accuracy": 0.9})
    run_job(client, pretrain_body(), "failed")
    run_job(client, pretrain_body(), "cancelled")
    running = submit(client, pretrain_body(priority=10))["id"]
    claim_job(client, running)
    submit(client, finetune_body(base))
    submit(client, pretrain_body())


@pytest.fixture(scope="module")
def api_app(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The app on its own migrated SQLite file, seeded with jobs."""
    folder = tmp_path_factory.mktemp("schemathesis")
    shutil.copy(sqlite_template, folder / "trainjobs.db")
    url = f"sqlite:///{folder / 'trainjobs.db'}"
    app_settings = Settings(
        database_url=url,
        artifacts_dir=folder / "artifacts",
        data_dir=folder / "data",
        worker_token=SecretStr(WORKER_TOKEN),
        admin_credentials_file=folder / "admin-credentials",
        claim_max_wait_seconds=0.05,
        claim_poll_seconds=0.05,
        _env_file=None,  # type: ignore[call-arg]
    )
    db = Database.from_url(url)
    with db.write() as session:
        alice = accounts.create_user(session, "alice")
        USER_TOKEN.append(accounts.issue_token(session, alice, TokenKind.USER, "schemathesis").token)
    app = create_app(app_settings, db)
    with AuthedClient(app, USER_TOKEN[0]) as client:
        seed_jobs(client)
    yield app
    asgi.shutdown_lifespans()  # schemathesis keeps the app's lifespan (and its reaper) running until exit
    db.dispose()


# The schema comes from an app that is never started (making one touches no database); requests go to api_app.
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())  # type: ignore[call-arg]


def operations_by_label() -> dict[str, APIOperation[Any, Any, Any, Any]]:
    found = {}
    for result in SCHEMA.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # an operation schemathesis cannot read is a broken schema
        found[result.ok().label] = result.ok()
    return found


OPERATIONS = operations_by_label()


def authenticate(case: Case[Any]) -> None:
    """Send the caller's token as a client would: alice's on the public API, the worker token to /worker/*."""
    token = WORKER_TOKEN if case.path.startswith("/worker/") else USER_TOKEN[0]
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


def hit_seeded_jobs(case: Case[Any]) -> None:
    """Point half of the valid generated job ids at a seeded job, so requests get past the 404."""
    job_id = case.path_parameters.get("job_id") if case.path_parameters else None
    if isinstance(job_id, int) and job_id > SEEDED_IDS and job_id % 2 == 0:
        case.path_parameters["job_id"] = job_id % SEEDED_IDS + 1


# schemathesis' own @schema.parametrize() gives every item the same node id under pytest 9, so each
# operation is a plain parametrized test that runs the Hypothesis test schemathesis builds for it: the
# coverage phase's boundary and negative cases (explicit examples), then fuzzed positive and negative cases.
HYPOTHESIS_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure here is reproducible, not luck
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows the request as generated
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.mark.parametrize("label", list(OPERATIONS))
def test_no_generated_request_gets_a_server_error(api_app: FastAPI, label: str) -> None:
    def check(case: Case[Any]) -> None:
        hit_seeded_jobs(case)
        authenticate(case)
        case.call_and_validate(app=api_app, checks=[not_a_server_error])

    config = HypothesisTestConfig(project=SCHEMA.config, modes=list(HypothesisTestMode), settings=HYPOTHESIS_SETTINGS)
    run = create_test(operation=OPERATIONS[label], test_func=check, config=config)
    run()
