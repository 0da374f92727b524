"""Workers that say what they are: the claim hands a worker only jobs its code can run, a queued job says
what holds it back (waiting_for), and admins see every worker (GET /workers)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.core import workers
from app.core.db import Database
from app.core.models import utcnow
from app.core.protocol import Capabilities
from tests.api.helpers import finish
from tests.authed import AuthedClient
from tests.conftest import finetune_body, pretrain_body

CPU_WORKER: dict[str, Any] = {
    "version": "0.1.0",
    "host": "box-1",
    "kinds": ["pretrain", "finetune"],
    "archs": ["mlp", "mlp_autoencoder"],
    "datasets": ["digits", "synthetic"],
    "devices": [{"name": "cpu", "memory_bytes": 8 * 2**30}],
}
DCGAN = {**pretrain_body(), "dataset": {"name": "digits", "image_size": 32}, "model": {"arch": "dcgan", "width": 8}}


def claim_as(client: AuthedClient, worker_id: str, capabilities: dict[str, Any] | None) -> dict[str, Any] | None:
    body: dict[str, Any] = {"worker_id": worker_id, "device": "cpu", "capabilities": capabilities}
    r = client.post("/worker/claim", json=body)
    assert r.status_code in (200, 204), r.text
    return None if r.status_code == 204 else dict(r.json())


def test_a_worker_is_handed_only_jobs_its_code_can_run_and_a_job_says_why_it_waits(client: AuthedClient) -> None:
    gan = client.post("/jobs", json=DCGAN).json()["id"]
    assert client.get(f"/jobs/{gan}").json()["waiting_for"] == "no worker is connected"

    assert claim_as(client, "cpu-1", CPU_WORKER) is None  # it cannot run a dcgan: the job stays queued
    assert client.get(f"/jobs/{gan}").json()["waiting_for"] == "no worker supports arch dcgan"
    plain = client.post("/jobs", json=pretrain_body()).json()["id"]
    got = claim_as(client, "cpu-1", CPU_WORKER)
    assert got is not None and got["id"] == plain  # the newer job it can run, past the older it cannot
    other_data = {**CPU_WORKER, "archs": [*CPU_WORKER["archs"], "dcgan"], "datasets": ["synthetic"]}
    assert claim_as(client, "cpu-2", other_data) is None
    waiting = client.get(f"/jobs/{gan}").json()["waiting_for"]
    assert waiting == "no one worker supports kind pretrain, arch dcgan, dataset digits together"
    full = {**CPU_WORKER, "archs": [*CPU_WORKER["archs"], "dcgan"]}
    got = claim_as(client, "gpu-1", full)
    assert got is not None and got["id"] == gan
    assert client.get(f"/jobs/{gan}").json()["waiting_for"] is None  # running
    assert claim_as(client, "old", None) is None  # an older worker, saying nothing, would take anything


def test_waiting_for_names_a_base_job_and_a_full_sweep(client: AuthedClient) -> None:
    base = client.post("/jobs", json=pretrain_body()).json()["id"]
    child = client.post("/jobs", json=finetune_body(base)).json()["id"]
    assert claim_as(client, "w", CPU_WORKER) is not None  # the base runs
    assert client.get(f"/jobs/{child}").json()["waiting_for"] == f"its base job {base} to succeed (it is running)"
    sweep = client.post("/sweeps", json={"base": pretrain_body(), "seeds": [0, 1], "max_concurrent": 1}).json()
    trial = claim_as(client, "w2", CPU_WORKER)
    assert trial is not None
    queued = next(
        j for j in client.get("/jobs", params={"sweep": sweep["id"]}).json()["data"] if j["status"] == "queued"
    )
    assert client.get(f"/jobs/{queued['id']}").json()["waiting_for"] == (
        f"its sweep {sweep['id']} has its max_concurrent (1) trials running"
    )


def test_admins_see_every_worker_with_its_devices_jobs_and_last_hour(
    client: AuthedClient, tokens: dict[str, str], db: Database
) -> None:
    job = client.post("/jobs", json=pretrain_body()).json()["id"]
    claimed = claim_as(client, "cpu-1", CPU_WORKER)
    assert claimed is not None
    with client.as_user(tokens["alice"]):
        assert client.get("/workers").status_code == 403
    with client.as_user(tokens["root"]):
        listed = client.get("/workers").json()["data"]
    assert [w["id"] for w in listed] == ["cpu-1"]
    me = listed[0]
    assert me["host"] == "box-1" and me["version"] == "0.1.0" and not me["lost"]
    assert me["running"] == [job] and me["devices"] == [{"name": "cpu", "memory_bytes": 8 * 2**30, "busy": True}]
    assert "mlp_autoencoder" in me["archs"] and me["datasets"] == ["digits", "synthetic"]
    finish(client, job, claimed["lease_token"])
    with db.write() as session:  # an hour of silence later
        workers.record(session, "cpu-0", Capabilities.model_validate(CPU_WORKER), now=utcnow() - timedelta(hours=1))
    with client.as_user(tokens["root"]):
        listed = {w["id"]: w for w in client.get("/workers").json()["data"]}
    assert listed["cpu-1"]["succeeded_last_hour"] == 1 and listed["cpu-1"]["running"] == []
    assert listed["cpu-1"]["devices"][0]["busy"] is False
    assert listed["cpu-0"]["lost"] is True


def test_the_dashboard_lists_the_workers_for_admins_only(client: AuthedClient, tokens: dict[str, str]) -> None:
    assert claim_as(client, "cpu-1", CPU_WORKER) is None
    with client.as_user(tokens["root"]):
        page = client.get("/ui/workers")
    assert page.status_code == 200 and 'data-worker="cpu-1"' in page.text and "box-1" in page.text
    with client.as_user(tokens["alice"]):
        page = client.get("/ui/workers")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")


def test_a_worker_describes_what_its_code_runs_without_torch_on_a_cpu() -> None:
    from app.core.specs import DATASET_NAMES
    from worker.capabilities import describe

    caps = describe("cpu")
    assert {"dcgan", "dcgan_discriminator", "mlp", "mlp_autoencoder"} <= set(caps.archs)
    assert caps.kinds == ["pretrain", "finetune"] and caps.datasets == list(DATASET_NAMES)
    assert caps.devices[0].name == "cpu" and (caps.devices[0].memory_bytes or 0) > 2**30
