"""Accounts through real processes: the operator's commands, and secrets that never reach a log."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from devtools.servers import ApiServer, WorkerProcess
from tests.conftest import TINY_JOB

pytestmark = pytest.mark.slow
TOKEN = re.compile(r"^tj_[a-z0-9]{8}_[A-Za-z0-9_-]{43}$")


def test_users_and_tokens_are_made_from_a_shell_on_the_server(tmp_path: Path) -> None:
    with ApiServer(tmp_path) as api:
        made = api.cli("users", "create", "erin", "--password-stdin", stdin="a long password\n")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        assert TOKEN.match(token) and made.stdout == token + "\n"  # the token alone: scripts capture it
        me = httpx.get(f"{api.url}/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert (me["username"], me["is_admin"], me["has_password"]) == ("erin", False, True)
        login = httpx.post(f"{api.url}/auth/login", json={"username": "erin", "password": "a long password"})
        assert login.status_code == 201

        admin = api.cli("users", "create", "frank", "--admin")
        assert admin.returncode == 0
        assert (
            httpx.get(f"{api.url}/users", headers={"Authorization": f"Bearer {admin.stdout.strip()}"}).status_code
            == 200
        )

        taken = api.cli("users", "create", "erin")
        assert (taken.returncode, taken.stdout) == (1, "")
        assert taken.stderr == "trainjobs-api: user 'erin' exists already; choose another name\n"
        unknown = api.cli("tokens", "create", "--user", "nobody")
        assert (unknown.returncode, unknown.stderr) == (1, "trainjobs-api: no user named 'nobody'\n")

        worker = api.cli("tokens", "create", "--user", "erin", "--worker", "--name", "gpu7")
        assert worker.returncode == 0 and TOKEN.match(worker.stdout.strip())
        claim = {"worker_id": "gpu7", "wait_seconds": 0}
        auth = {"Authorization": f"Bearer {worker.stdout.strip()}"}
        assert httpx.post(f"{api.url}/worker/claim", json=claim, headers=auth).status_code == 204
        assert httpx.get(f"{api.url}/jobs", headers=auth).status_code == 401


def test_tokens_and_passwords_never_reach_a_log_an_error_or_a_job(tmp_path: Path) -> None:
    """A real API (debug logging, access log on) and a worker through logins, jobs and wrong tokens."""
    secrets: list[str] = []
    with ApiServer(tmp_path, log_level="debug", access_log=True) as api:
        credentials = Path(api.env["TRAINJOBS_ADMIN_CREDENTIALS_FILE"]).read_text()
        secrets += re.findall(r"^export TRAINJOBS_(?:PASSWORD|TOKEN)=(.+)$", credentials, re.MULTILINE)
        user = api.cli("users", "create", "gina", "--password-stdin", stdin="gina's password\n").stdout.strip()
        worker_token = api.cli("tokens", "create", "--user", "gina", "--worker").stdout.strip()
        secrets += [user, worker_token, "gina's password", api.worker_headers["Authorization"].split()[1]]
        login = httpx.post(f"{api.url}/auth/login", json={"username": "gina", "password": "gina's password"})
        secrets.append(login.json()["token"])
        wrong = httpx.post(f"{api.url}/auth/login", json={"username": "gina", "password": "not-her-password"})
        secrets.append("not-her-password")
        bodies = [wrong.text]  # (the login answer shows its new token, once: that is its job)
        auth = {"Authorization": f"Bearer {user}"}
        made = httpx.post(f"{api.url}/tokens", json={"name": "laptop"}, headers=auth)
        secrets.append(made.json()["token"])
        for header in (f"Bearer {user}x", f"Bearer {worker_token}", f"Basic {user}", user):
            bodies.append(httpx.get(f"{api.url}/jobs", headers={"Authorization": header}).text)
        bodies.append(httpx.post(f"{api.url}/worker/claim", json={"worker_id": "w"}, headers=auth).text)
        job_id = httpx.post(f"{api.url}/jobs", json=TINY_JOB, headers=auth).json()["id"]
        worker = WorkerProcess(api.url, tmp_path, "logged", "--once", log_level="debug", token=worker_token)
        assert worker.wait(120) == 0
        job = httpx.get(f"{api.url}/jobs/{job_id}", headers=auth)
        assert job.json()["status"] == "succeeded"
        bodies += [job.text, httpx.get(f"{api.url}/jobs", headers=auth).text]
        bodies.append(httpx.get(f"{api.url}/tokens", headers=auth).text)
    logs = api.log.read_text() + worker.text()
    assert "POST /auth/login" in logs and "GET /jobs" in logs  # the access log was on
    for secret in secrets:
        assert len(secret) >= 8
        assert secret not in logs, "a secret in a log"
        assert not any(secret in body for body in bodies), "a secret in an answer"


def test_the_operators_commands_say_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    with ApiServer(tmp_path) as api:
        api.cli("users", "create", "ivy")
        cases = {
            ("tokens", "create", "--user", "ivy", "--expires-in-days", "nan"): "expires_in_days",
            ("tokens", "create", "--user", "ivy", "--expires-in-days", "1e9"): "expires_in_days",
            ("tokens", "create", "--user", "ivy", "--expires-in-days", "-1"): "expires_in_days",
            ("tokens", "create", "--user", "ivy", "--name", ""): "name",
            ("tokens", "create", "--user", "ivy", "--name", "n" * 101): "name",
            ("users", "create", "bad name"): "username",
        }
        for args, mentions in cases.items():
            done = api.cli(*args)
            assert done.returncode == 1 and done.stdout == "", args
            assert done.stderr.count("\n") == 1 and mentions in done.stderr and "Traceback" not in done.stderr, args
        short = api.cli("users", "create", "jo", "--password-stdin", stdin="short\n")
        assert short.returncode == 1 and "password" in short.stderr
        ivy = httpx.get(f"{api.url}/users", headers=api.headers).json()["data"][-1]
        httpx.patch(f"{api.url}/users/{ivy['id']}", json={"is_active": False}, headers=api.headers)
        inactive = api.cli("tokens", "create", "--user", "ivy")
        assert inactive.returncode == 1 and "deactivated" in inactive.stderr


def test_a_guessable_worker_token_stops_the_service_at_start(tmp_path: Path) -> None:
    api = ApiServer(tmp_path, worker_token="change-me")
    done = api.cli("serve")
    assert done.returncode == 2
    assert done.stderr.startswith("trainjobs-api: bad setting: worker_token") and "at least 24" in done.stderr
    assert "change-me" not in done.stderr
