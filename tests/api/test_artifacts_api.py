"""A job's artifacts over HTTP: a worker uploads them under its lease; the owner lists and downloads them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from app.core.config import Settings
from tests.api.helpers import finish, start
from tests.authed import AuthedClient
from tests.conftest import pretrain_body

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
DCGAN = {**pretrain_body(), "dataset": {"name": "digits", "image_size": 32}, "model": {"arch": "dcgan", "width": 8}}


def put(client: AuthedClient, job_id: int, token: str, name: str, data: bytes = PNG, sha: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"X-Lease-Token": token, "X-Artifact-Sha256": sha or hashlib.sha256(data).hexdigest()}
    return client.put(f"/worker/jobs/{job_id}/artifacts/{name}", content=data, headers=headers)


def test_uploaded_samples_are_listed_in_epoch_order_and_downloaded_by_their_owner_only(
    client: AuthedClient, tokens: dict[str, str], settings: Settings
) -> None:
    job_id, token = start(client, DCGAN)
    for epoch in (1, 2, 10):
        assert put(client, job_id, token, f"samples-epoch-{epoch}.png", PNG + bytes([epoch])).status_code == 201
    assert put(client, job_id, token, "samples-epoch-2.png", PNG + b"again").status_code == 201  # replaced

    listed = client.get(f"/jobs/{job_id}/artifacts").json()["data"]
    assert client.get(f"/jobs/{job_id}").json()["artifacts"] == [a["name"] for a in listed]
    assert [a["name"] for a in listed] == ["samples-epoch-1.png", "samples-epoch-2.png", "samples-epoch-10.png"]
    assert listed[0]["url"] == f"/jobs/{job_id}/artifacts/samples-epoch-1.png"
    r = client.get(listed[1]["url"])
    assert r.status_code == 200 and r.content == PNG + b"again"
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"
    with client.as_user(tokens["bob"]):
        assert client.get(f"/jobs/{job_id}/artifacts").status_code == 404
        assert client.get(listed[0]["url"]).status_code == 404
    assert client.get(f"/jobs/{job_id}/artifacts/samples-epoch-3.png").status_code == 404
    finish(client, job_id, token)
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert not (settings.artifacts_dir / "jobs" / str(job_id)).exists()


def test_uploads_are_fenced_named_plainly_and_checked(client: AuthedClient, settings: Settings) -> None:
    job_id, token = start(client, pretrain_body())
    for name in ("..png", ".hidden.png", "a b.png", "x.exe", "samples.PNG", "%2e%2e%2fx.png", "a" * 150 + ".png"):
        r = put(client, job_id, token, name)
        assert r.status_code in (404, 422), (name, r.status_code, r.text)
    assert put(client, job_id, token, "x.png", sha="0" * 64).status_code == 422
    assert put(client, job_id, "not-the-lease", "x.png").status_code == 409
    assert client.get(f"/jobs/{job_id}/artifacts").json()["data"] == []
    assert client.get(f"/jobs/{job_id}/artifacts/..%2F..%2Fsecret.png").status_code in (404, 422)
    finish(client, job_id, token)
    assert put(client, job_id, token, "late.png").status_code == 409  # the job ended: the lease with it
    assert list(Path(settings.artifacts_dir).rglob("*.png")) == []
