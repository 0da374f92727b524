"""Accounts on SQLite and PostgreSQL: tokens, who sees which job, admins, logins, limits.

The fixtures make three users (conftest.USERS): root (an admin), alice and bob; the client acts
for alice unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.core import accounts
from app.core.config import Settings
from app.core.db import Database
from app.core.models import ApiToken, utcnow
from app.core.states import TokenKind
from devtools.servers import wait_until
from tests.api.helpers import claim_job, client_with, finish, post_points, put_checkpoint, submit
from tests.authed import AuthedClient
from tests.conftest import finetune_body, pretrain_body

JSON = {"Content-Type": "application/json"}
PUBLIC = [
    ("GET", "/me"),
    ("GET", "/tokens"),
    ("POST", "/tokens"),
    ("DELETE", "/tokens/1"),
    ("GET", "/users"),
    ("POST", "/users"),
    ("PATCH", "/users/1"),
    ("POST", "/users/1/tokens"),
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/1"),
    ("POST", "/jobs/1/cancel"),
    ("DELETE", "/jobs/1"),
    ("GET", "/jobs/1/metrics"),
    ("GET", "/jobs/1/checkpoints"),
    ("GET", "/jobs/1/checkpoint"),
]


def test_every_public_endpoint_needs_a_valid_user_token(
    client: AuthedClient, db: Database, tokens: dict[str, str], subtests: pytest.Subtests
) -> None:
    submit(client, pretrain_body())
    revoked = tokens["bob"]
    with db.write() as session:
        row = accounts.find_token(session, revoked)
        assert row is not None
        accounts.revoke_token(session, accounts.caller_of(row), row.id)
        bob = accounts.user_named(session, "bob")
        old = utcnow() - timedelta(days=2)
        expired = accounts.issue_token(session, bob, TokenKind.USER, "old", expires_in_days=1, now=old)
    bad = {
        "none": None,
        "garbage": "Bearer nonsense",
        "not bearer": f"Basic {tokens['alice']}",
        "a token's prefix with another secret": tokens["alice"][:12] + "x" * 43,
        "revoked": f"Bearer {revoked}",
        "expired": f"Bearer {expired.token}",
    }
    for method, path in PUBLIC:
        for case, header in bad.items():
            with subtests.test(f"{method} {path}: {case}"), client.anonymous():
                headers = {"Authorization": header} if header else {}
                r = client.request(method, path, headers=headers, json={})
                assert r.status_code == 401, r.text
                assert r.headers["WWW-Authenticate"] == "Bearer"
                assert "token" in r.json()["detail"]
                if header is None:
                    assert "POST /auth/login" in r.json()["detail"]  # says how to get one


def test_two_authorization_headers_are_refused(client: AuthedClient, tokens: dict[str, str]) -> None:
    r = client.request(
        "GET",
        "/me",
        headers=[("Authorization", f"Bearer {tokens['bob']}"), ("Authorization", f"Bearer {tokens['alice']}")],
    )
    assert r.status_code == 422 and "one Authorization header" in str(r.json()["detail"])


def test_me_says_who_the_token_acts_for(client: AuthedClient, tokens: dict[str, str]) -> None:
    me = client.get("/me").json()
    assert (me["username"], me["is_admin"], me["is_active"]) == ("alice", False, True)
    with client.as_user(tokens["root"]):
        assert client.get("/me").json()["is_admin"] is True


def make_bobs_job(client: AuthedClient, tokens: dict[str, str]) -> int:
    """A succeeded pretrain job of bob's, with metrics and a checkpoint."""
    with client.as_user(tokens["bob"]):
        job_id = submit(client, pretrain_body(name="bobs"))["id"]
    token = claim_job(client, job_id)
    post_points(client, job_id, token, [{"name": "train_loss", "step": 1, "value": 0.5}])
    assert put_checkpoint(client, job_id, token, b"bob's weights", "best").status_code == 201
    assert finish(client, job_id, token, result={"test_loss": 0.5}).status_code == 200
    return job_id


def test_another_users_job_is_a_404_everywhere(
    client: AuthedClient, tokens: dict[str, str], subtests: pytest.Subtests
) -> None:
    bobs = make_bobs_job(client, tokens)
    mine = submit(client, pretrain_body(name="alices"))["id"]
    for method, path in [
        ("GET", f"/jobs/{bobs}"),
        ("POST", f"/jobs/{bobs}/cancel"),
        ("DELETE", f"/jobs/{bobs}"),
        ("GET", f"/jobs/{bobs}/metrics"),
        ("GET", f"/jobs/{bobs}/checkpoints"),
        ("GET", f"/jobs/{bobs}/checkpoint"),
        ("GET", f"/jobs/{bobs}/checkpoint?tag=best&format=pt"),
    ]:
        with subtests.test(f"{method} {path}"):
            r = client.request(method, path)
            assert r.status_code == 404, r.text
            assert r.json()["detail"] == f"job {bobs} not found"  # the same words as for no job at all
    assert client.get("/jobs/99999").json()["detail"] == "job 99999 not found"
    listed = client.get("/jobs").json()["data"]
    assert [j["id"] for j in listed] == [mine] and listed[0]["owner"] == "alice"
    for page in ({"limit": 1}, {"limit": 1, "cursor": str(mine + 1)}, {"status": "succeeded"}):
        assert bobs not in [j["id"] for j in client.get("/jobs", params=page).json()["data"]]
    r = client.post("/jobs", json=finetune_body(bobs))  # bob's pretrain job as alice's base
    assert r.status_code == 422 and "does not exist" in r.text
    with client.as_user(tokens["bob"]):
        assert client.get(f"/jobs/{bobs}").status_code == 200
        assert client.get(f"/jobs/{mine}").status_code == 404
        assert client.post("/jobs", json=finetune_body(bobs)).status_code == 201


def test_an_admin_sees_and_manages_everyones_jobs(client: AuthedClient, tokens: dict[str, str]) -> None:
    bobs = make_bobs_job(client, tokens)
    alices = submit(client, pretrain_body())["id"]
    assert client.get("/jobs", params={"owner": "bob"}).status_code == 403  # alice is no admin
    with client.as_user(tokens["root"]):
        assert client.get("/jobs").json()["data"] == []  # an admin's own, by default
        assert [j["id"] for j in client.get("/jobs", params={"owner": "*"}).json()["data"]] == [alices, bobs]
        assert [(j["id"], j["owner"]) for j in client.get("/jobs", params={"owner": "bob"}).json()["data"]] == [
            (bobs, "bob")
        ]
        r = client.get("/jobs", params={"owner": "nobody"})
        assert r.status_code == 422 and "no user named 'nobody'" in r.text
        assert client.get(f"/jobs/{bobs}").json()["owner"] == "bob"
        assert client.get(f"/jobs/{bobs}/checkpoint").content == b"bob's weights"
        assert client.post(f"/jobs/{alices}/cancel").json()["status"] == "cancelled"
        assert client.delete(f"/jobs/{bobs}").status_code == 204


def test_idempotency_keys_of_two_users_never_collide(client: AuthedClient, tokens: dict[str, str]) -> None:
    key = {"Idempotency-Key": "nightly"}
    alices = client.post("/jobs", json=pretrain_body(), headers=key)
    with client.as_user(tokens["bob"]):
        bobs = client.post("/jobs", json=pretrain_body(name="other body"), headers=key)  # no 409: his own key
        again = client.post("/jobs", json=pretrain_body(name="other body"), headers=key)
    assert (alices.status_code, bobs.status_code, again.status_code) == (201, 201, 200)
    assert alices.json()["id"] != bobs.json()["id"] == again.json()["id"]
    assert client.post("/jobs", json=pretrain_body(), headers=key).json()["id"] == alices.json()["id"]


def test_deactivating_a_user_stops_their_tokens_at_once_and_keeps_their_jobs(
    client: AuthedClient, tokens: dict[str, str]
) -> None:
    bobs = make_bobs_job(client, tokens)
    with client.as_user(tokens["root"]):
        bob = next(u for u in client.get("/users").json()["data"] if u["username"] == "bob")
        assert client.patch(f"/users/{bob['id']}", json={"is_active": False}).json()["is_active"] is False
    with client.as_user(tokens["bob"]):
        assert client.get("/me").status_code == 401
    with client.as_user(tokens["root"]):
        assert client.get(f"/jobs/{bobs}").json()["owner"] == "bob"
        client.patch(f"/users/{bob['id']}", json={"is_active": True})
    with client.as_user(tokens["bob"]):
        assert client.get("/me").status_code == 200


def test_the_last_active_admin_cannot_be_locked_out(client: AuthedClient, tokens: dict[str, str]) -> None:
    with client.as_user(tokens["root"]):
        root = client.get("/me").json()
        for change in ({"is_active": False}, {"is_admin": False}):
            r = client.patch(f"/users/{root['id']}", json=change)
            assert r.status_code == 409 and "last active admin" in r.json()["detail"]


def test_tokens_are_shown_once_and_listed_without_secrets(client: AuthedClient) -> None:
    made = client.post("/tokens", json={"name": "laptop", "expires_in_days": 30})
    assert made.status_code == 201
    token = made.json()["token"]
    assert token.startswith(f"tj_{made.json()['prefix']}_") and made.json()["kind"] == "user"
    listed = client.get("/tokens").json()["data"]
    assert [t["name"] for t in listed] == ["tests", "laptop"]
    assert token not in str(listed) and token.split("_", 2)[2] not in str(listed)
    with client.as_user(token):
        assert client.get("/me").json()["username"] == "alice"
    assert client.delete(f"/tokens/{made.json()['id']}").status_code == 204
    with client.as_user(token):
        assert client.get("/me").status_code == 401
    assert next(t for t in client.get("/tokens").json()["data"] if t["name"] == "laptop")["revoked_at"] is not None


def test_another_users_token_cannot_be_revoked(client: AuthedClient, db: Database, tokens: dict[str, str]) -> None:
    with db.read() as session:
        bobs = session.query(ApiToken).filter(ApiToken.name == "tests").all()
    bob_token_id = next(t.id for t in bobs if t.user.username == "bob")
    assert client.delete(f"/tokens/{bob_token_id}").status_code == 404
    with client.as_user(tokens["bob"]):
        assert client.get("/me").status_code == 200


def test_users_are_made_by_admins_only(client: AuthedClient, tokens: dict[str, str]) -> None:
    assert client.post("/users", json={"username": "eve"}).status_code == 403
    assert client.get("/users").status_code == 403
    with client.as_user(tokens["root"]):
        made = client.post("/users", json={"username": "carol", "password": "long enough password"})
        assert made.status_code == 201 and made.json()["has_password"] is True
        assert client.post("/users", json={"username": "carol"}).status_code == 409
        bad = client.post("/users", json={"username": "no spaces please"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "username"]
        short = client.post("/users", json={"username": "dave", "password": "short"})
        assert short.status_code == 422
        token = client.post(f"/users/{made.json()['id']}/tokens", json={"name": "carol's"}).json()["token"]
    with client.as_user(token):
        assert client.get("/me").json()["username"] == "carol"


def test_worker_and_user_tokens_work_on_their_side_only(
    client: AuthedClient, db: Database, tokens: dict[str, str]
) -> None:
    with client.as_user(tokens["root"]):
        alice_id = next(u["id"] for u in client.get("/users").json()["data"] if u["username"] == "alice")
        made = client.post(f"/users/{alice_id}/tokens", json={"name": "gpu box", "kind": "worker"}).json()
    worker_token = made["token"]
    submit(client, pretrain_body())
    client.worker_token = worker_token  # a database worker token, not the environment's
    assert client.post("/worker/claim", json={"worker_id": "box"}).status_code == 200
    with client.as_user(worker_token):
        r = client.get("/jobs")
        assert r.status_code == 401 and "worker token" in r.json()["detail"]
    client.worker_token = tokens["alice"]
    r = client.post("/worker/claim", json={"worker_id": "box"})
    assert r.status_code == 401 and "user token cannot speak the worker protocol" in r.json()["detail"]


def test_logging_in_gives_a_token_and_failures_are_throttled(
    settings: Settings, db: Database, tokens: dict[str, str]
) -> None:
    with db.write() as session:
        accounts.create_user(session, "dana", password="correct horse battery")
    with client_with(settings, db, tokens, login_max_failures=3) as client, client.anonymous():
        r = client.post("/auth/login", json={"username": "dana", "password": "correct horse battery"})
        assert r.status_code == 201
        with client.as_user(r.json()["token"]):
            assert client.get("/me").json()["username"] == "dana"
        for _ in range(3):
            r = client.post("/auth/login", json={"username": "dana", "password": "wrong guess!"})
            assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
        r = client.post("/auth/login", json={"username": "dana", "password": "correct horse battery"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0  # even the right password now
        assert client.post("/auth/login", json={"username": "nobody", "password": "x"}).status_code == 401
        for name in ("n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"):  # the same address, many names
            client.post("/auth/login", json={"username": name, "password": "guess"})
        r = client.post("/auth/login", json={"username": "n9", "password": "guess"})
        assert r.status_code == 429


def test_a_user_has_at_most_the_cap_of_active_jobs(settings: Settings, db: Database, tokens: dict[str, str]) -> None:
    with client_with(settings, db, tokens, max_active_jobs_per_user=2) as client:
        first = submit(client, pretrain_body())["id"]
        submit(client, pretrain_body())
        r = client.post("/jobs", json=pretrain_body())
        assert r.status_code == 429 and "TRAINJOBS_MAX_ACTIVE_JOBS_PER_USER = 2" in r.json()["detail"]
        with client.as_user(tokens["bob"]):
            assert client.post("/jobs", json=pretrain_body()).status_code == 201  # the cap is per user
        client.post(f"/jobs/{first}/cancel")
        assert client.post("/jobs", json=pretrain_body()).status_code == 201


def test_public_bodies_over_a_mebibyte_are_refused_before_they_are_read(client: AuthedClient) -> None:
    big = b'{"kind": "pretrain", "name": "' + b"x" * (1024 * 1024) + b'"}'
    r = client.post("/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than this route takes (1048576 bytes)" in r.json()["detail"]

    def streamed() -> Any:
        for _ in range(40):
            yield b"x" * 65536

    r = client.post("/jobs", content=streamed(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/jobs").json()["data"] == []


def test_the_first_start_makes_an_admin_and_writes_its_secrets_to_a_private_file(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from app.main import create_app

    settings = Settings(
        database_url=database_url,
        artifacts_dir=tmp_path / "artifacts",
        admin_credentials_file=tmp_path / "var" / "admin-credentials",
        _env_file=None,  # type: ignore[call-arg]
    )
    db = Database.from_url(database_url)
    try:
        with AuthedClient(create_app(settings, db), None) as client:
            path = settings.admin_credentials_file
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            values = dict(
                line.removeprefix("export ").split("=", 1)
                for line in path.read_text().splitlines()
                if line.startswith("export")
            )
            assert values["TRAINJOBS_USERNAME"] == "admin"
            with client.as_user(values["TRAINJOBS_TOKEN"]):
                assert client.get("/me").json() | {"created_at": None} == {
                    "id": 1,
                    "username": "admin",
                    "is_admin": True,
                    "is_active": True,
                    "has_password": True,
                    "created_at": None,
                }
            login = {"username": "admin", "password": values["TRAINJOBS_PASSWORD"]}
            assert client.post("/auth/login", json=login).status_code == 201
        assert str(path) in caplog.text
        for secret in (values["TRAINJOBS_TOKEN"], values["TRAINJOBS_PASSWORD"]):
            assert secret not in caplog.text
        path.unlink()
        with AuthedClient(create_app(settings, db), None):
            pass
        assert not path.exists()  # an admin can sign in already: nothing new is made
    finally:
        db.dispose()


def test_guesses_sent_at_once_do_not_pass_the_login_throttle(
    settings: Settings, db: Database, tokens: dict[str, str]
) -> None:
    with db.write() as session:
        accounts.create_user(session, "hal", password="the right password")
    with (
        client_with(settings, db, tokens, login_max_failures=3) as client,
        client.anonymous(),
        ThreadPoolExecutor(12) as pool,
    ):
        codes = list(
            pool.map(
                lambda _: client.post("/auth/login", json={"username": "hal", "password": "a wrong one"}).status_code,
                range(12),
            )
        )
    assert sorted(codes) == [401] * 3 + [429] * 9


def test_a_tokens_use_is_recorded_also_when_the_answer_is_an_error(
    client: AuthedClient, db: Database, tokens: dict[str, str]
) -> None:
    with client.as_user(tokens["bob"]):
        assert client.get("/jobs/424242").status_code == 404  # a probe

    def last_used() -> object:
        with db.read() as session:
            row = accounts.find_token(session, tokens["bob"])
            return row.last_used_at if row else None

    assert wait_until(last_used, 5, "bob's token's last use to be written") is not None


def test_a_delete_blocked_by_others_jobs_does_not_name_them(client: AuthedClient, tokens: dict[str, str]) -> None:
    base = submit(client, pretrain_body())["id"]
    token = claim_job(client, base)
    assert finish(client, base, token, result={"test_loss": 0.1}).status_code == 200
    with client.as_user(tokens["root"]):  # an admin may start from anyone's job
        theirs = submit(client, finetune_body(base))["id"]
    mine = submit(client, finetune_body(base))["id"]
    r = client.delete(f"/jobs/{base}")
    assert r.status_code == 409
    assert (
        r.json()["detail"]
        == f"job {base} is the base of unfinished job(s) {mine}, 1 of other users'; they must end first"
    )
    assert str(theirs) not in r.json()["detail"]


def test_text_that_is_not_unicode_is_a_422_naming_the_field(
    client: AuthedClient, tokens: dict[str, str], subtests: pytest.Subtests
) -> None:
    bad = "a\ud800b"
    cases = [
        ("POST", "/auth/login", {"username": "alice", "password": bad}, ["body", "password"]),
        ("POST", "/auth/login", {"username": bad, "password": "x"}, ["body", "username"]),
        ("POST", "/tokens", {"name": bad}, ["body", "name"]),
        ("POST", "/jobs", pretrain_body(name=bad), ["body", "pretrain", "name"]),
        ("POST", "/users", {"username": "carl", "password": f"long {bad} password"}, ["body", "password"]),
    ]
    for method, path, body, loc in cases:
        with subtests.test(path=path, loc=loc), client.as_user(tokens["root"]):
            r = client.request(method, path, content=json.dumps(body), headers=JSON)  # "\ud800", as JSON allows
            assert r.status_code == 422, r.text
            assert loc in [e["loc"] for e in r.json()["detail"]]
            assert any("lone surrogate" in e["msg"] for e in r.json()["detail"])
    with client.as_user(tokens["root"]):
        body = json.dumps(pretrain_body(model={"arch": bad}))
        r = client.post("/jobs", content=body, headers=JSON)  # an echoed tag is escaped, not a 500
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "pretrain", "model"]


def test_a_deactivated_user_gets_no_new_token(client: AuthedClient, tokens: dict[str, str]) -> None:
    with client.as_user(tokens["root"]):
        bob = next(u for u in client.get("/users").json()["data"] if u["username"] == "bob")
        client.patch(f"/users/{bob['id']}", json={"is_active": False})
        r = client.post(f"/users/{bob['id']}/tokens", json={"name": "again"})
        assert r.status_code == 409 and "deactivated" in r.json()["detail"]


def test_a_token_revoked_by_another_process_stops_working_within_a_second(
    client: AuthedClient, db: Database, tokens: dict[str, str]
) -> None:
    """Good tokens are remembered for a second per process; a revoke elsewhere (another API process, the CLI) shows then."""
    with client.as_user(tokens["bob"]):
        assert client.get("/me").status_code == 200  # remembered now
        with db.write() as session:  # what another process's revoke does
            row = session.query(ApiToken).filter(ApiToken.name == "tests", ApiToken.user.has(username="bob")).one()
            row.revoked_at = utcnow()
        wait_until(lambda: client.get("/me").status_code == 401, timeout=5, what="the revoke to take effect")


@pytest.mark.parametrize(
    "failure",
    [
        OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly")),
        PoolTimeout("QueuePool limit reached"),
    ],
    ids=["database down", "no connection free"],
)
def test_a_token_that_cannot_be_checked_for_a_database_fault_is_a_503_not_a_500(
    client: AuthedClient, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    def fails(*_args: object) -> None:
        raise failure

    monkeypatch.setattr(accounts, "find_token", fails)
    for method, path in (("GET", "/jobs"), ("POST", "/worker/claim")):
        r = client.request(method, path, headers={"Authorization": "Bearer tj_notcached_x"})
        assert r.status_code == 503, (path, r.text)
        assert r.headers["Retry-After"] == "1" and "try again" in r.json()["detail"]


def test_a_token_look_up_that_began_before_a_revoke_does_not_put_the_token_back() -> None:
    from app.api.auth import Presented, RecentTokens

    recent = RecentTokens()
    seen = Presented(TokenKind.USER, accounts.Caller(user_id=1, username="a", is_admin=False), stale_use=False)
    began = recent.generation
    recent.forget_all()  # a revoke commits while the look-up is in flight
    recent.put("tj_x_y", seen, began)
    assert recent.get("tj_x_y") is None
    recent.put("tj_x_y", seen, recent.generation)
    assert recent.get("tj_x_y") == seen
