"""Jobs that ask for devices (resources): what a spec may ask for, which worker's claim gets them, why one
waits, and the protocol of a multi-node job's nodes (offers taken by claims, heartbeats, the rendezvous)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_workers_api import CPU_WORKER, claim_as
from tests.authed import AuthedClient
from tests.conftest import pretrain_body

NEW_CPU = {**CPU_WORKER, "free": 1, "distributed": True}
"""A CPU worker of this version: it runs CPU ranks and takes a node of a multi-node job."""


def gpu_worker(gpus: int, free: int) -> dict[str, Any]:
    devices = [{"name": f"cuda:{i}", "busy": i >= free} for i in range(gpus)]
    return {**CPU_WORKER, "devices": devices, "gpus": gpus, "free": free, "distributed": True}


def submit(client: AuthedClient, resources: dict[str, Any], **train: Any) -> int:
    r = client.post("/jobs", json=pretrain_body(resources=resources, train={"epochs": 1, "batch_size": 64, **train}))
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def waiting(client: AuthedClient, job_id: int) -> str | None:
    found: str | None = client.get(f"/jobs/{job_id}").json()["waiting_for"]
    return found


@pytest.mark.parametrize(
    ("resources", "train", "says"),
    [
        ({"processes": 3}, {}, "train.batch_size (64) must divide evenly among the job's 3 ranks"),
        ({"gpus": 2, "nodes": 3}, {"batch_size": 100}, "among the job's 6 ranks"),
        ({"gpus": 2, "processes": 2}, {}, "give resources.gpus or resources.processes, not both"),
        ({"gpus": 0}, {}, "resources.gpus: Input should be greater than or equal to 1"),
        ({"nodes": 65}, {}, "resources.nodes: Input should be less than or equal to 64"),
        ({"cpus": 2}, {}, "resources.cpus: Extra inputs are not permitted"),
    ],
)
def test_resources_a_job_cannot_have_are_422_saying_what_to_change(
    client: AuthedClient, resources: dict[str, Any], train: dict[str, Any], says: str
) -> None:
    r = client.post("/jobs", json=pretrain_body(resources=resources, train={"batch_size": 64, **train}))
    assert r.status_code == 422, r.text
    problems = [".".join(map(str, p["loc"][2:])) + ": " + p["msg"] for p in r.json()["detail"]]
    assert any(says in problem for problem in problems), problems


def test_a_dcgan_trains_on_one_device_for_now(client: AuthedClient) -> None:
    body = {
        **pretrain_body(),
        "dataset": {"name": "digits", "image_size": 32},
        "model": {"arch": "dcgan", "width": 8},
        "resources": {"processes": 2},
    }
    r = client.post("/jobs", json=body)
    assert r.status_code == 422 and "a dcgan trains on one device for now" in r.text


def test_resources_are_stored_only_when_they_ask_for_more_than_one_device(client: AuthedClient) -> None:
    plain = client.post("/jobs", json=pretrain_body(resources={"gpus": 1, "nodes": 1})).json()
    assert "resources" not in plain["spec"]  # older workers read it; its idempotency hash is unchanged
    two = client.get(f"/jobs/{submit(client, {'processes': 2})}").json()
    assert two["spec"]["resources"] == {"gpus": 1, "processes": 2, "nodes": 1}


def test_a_claim_gets_only_jobs_that_fit_the_devices_the_worker_has_free(client: AuthedClient) -> None:
    four = submit(client, {"gpus": 4})
    two = submit(client, {"gpus": 2})
    cpu_ranks = submit(client, {"processes": 2})
    assert claim_as(client, "old", None) is None  # an older worker runs one device on one node
    assert claim_as(client, "old-caps", CPU_WORKER) is None  # it describes itself, but knows no resources
    got = claim_as(client, "gpu-a", gpu_worker(4, free=3))
    assert got is not None and got["id"] == two  # four asked, three free: the next job that fits
    assert claim_as(client, "gpu-b", gpu_worker(1, free=1)) is None  # CPU ranks are not for a GPU worker
    got = claim_as(client, "cpu-a", NEW_CPU)
    assert got is not None and got["id"] == cpu_ranks and got["node"] is None
    assert claim_as(client, "cpu-busy", {**NEW_CPU, "free": 0}) is None
    got = claim_as(client, "gpu-c", gpu_worker(8, free=4))
    assert got is not None and got["id"] == four


def test_a_job_that_needs_more_than_the_workers_have_says_what_it_waits_for(client: AuthedClient) -> None:
    job = submit(client, {"gpus": 2})
    assert waiting(client, job) == "no worker is connected"
    assert claim_as(client, "cpu", NEW_CPU) is None
    assert waiting(client, job) == "no worker with 2 GPUs"
    assert claim_as(client, "gpu-1", gpu_worker(2, free=1)) is None
    assert waiting(client, job) == "no worker with 2 free GPUs"
    several = submit(client, {"nodes": 2})
    assert waiting(client, several) == "2 workers with 1 GPU each; 1 connected"  # nodes run on one kind of device
    node0, node1 = claim_as(client, "cpu-2", NEW_CPU), claim_as(client, "cpu", NEW_CPU)  # a second CPU worker
    assert node0 is not None and node1 is not None and (node0["node"], node1["node"]) == (0, 1)
    assert node0["id"] == node1["id"] == several and waiting(client, several) is None


def test_jobs_of_several_ranks_wait_for_workers_that_run_them(client: AuthedClient) -> None:
    ranks = submit(client, {"processes": 2})
    assert claim_as(client, "old", CPU_WORKER) is None
    assert waiting(client, ranks) == "no worker runs jobs of several ranks or nodes (upgrade the workers)"
    assert claim_as(client, "gpu", gpu_worker(2, free=2)) is None
    assert waiting(client, ranks) == "no CPU worker (resources.processes runs on workers without GPUs)"
    nodes = submit(client, {"nodes": 3, "gpus": 2}, batch_size=60)
    assert waiting(client, nodes) == "3 workers with 2 GPUs each; 1 connected"


def test_a_two_node_job_goes_to_two_workers_that_meet_through_the_service(
    client: AuthedClient, tokens: dict[str, str]
) -> None:
    assert claim_as(client, "b", NEW_CPU) is None  # idle, long-polling
    job = submit(client, {"nodes": 2})
    first = claim_as(client, "a", NEW_CPU)
    assert first is not None and (first["id"], first["node"]) == (job, 0)
    second = claim_as(client, "b", NEW_CPU)  # the node its claim was offered
    assert second is not None and (second["id"], second["node"]) == (job, 1)
    token = first["lease_token"]
    assert second["lease_token"] == token and second["attempt"] == first["attempt"] == 1
    assert (first["first_log_seq"], second["first_log_seq"]) == (0, 1 << 40)  # each node numbers its own lines

    meet = f"/worker/jobs/{job}/rendezvous"
    assert client.post(meet, json={"lease_token": token, "node": 1}).json() == {"nodes": 2, "address": None}
    r = client.post(meet, json={"lease_token": token, "node": 0, "address": "not an address"})
    assert r.status_code == 422
    published = client.post(meet, json={"lease_token": token, "node": 0, "address": "10.1.2.3:29400"}).json()
    assert published == {"nodes": 2, "address": "10.1.2.3:29400"}
    assert client.post(meet, json={"lease_token": token, "node": 1}).json()["address"] == "10.1.2.3:29400"
    assert client.post(meet, json={"lease_token": "other", "node": 1}).status_code == 409

    beat = f"/worker/jobs/{job}/heartbeat"
    busy = {**NEW_CPU, "free": 0, "devices": [{"name": "cpu", "busy": True}]}
    for node, worker in ((0, "a"), (1, "b")):
        r = client.post(beat, json={"lease_token": token, "node": node, "worker_id": worker, "capabilities": busy})
        assert r.status_code == 200 and r.json() == {"cancel_requested": False}
    assert client.post(beat, json={"lease_token": token, "node": 5}).status_code == 409
    with client.as_user(tokens["root"]):
        listed = {w["id"]: w for w in client.get("/workers").json()["data"]}
    assert listed["a"]["running"] == [job] and listed["b"]["running"] == [job]
    assert listed["b"]["devices"] == [{"name": "cpu", "memory_bytes": None, "busy": True}]

    done = {"lease_token": token, "status": "succeeded", "result": {"test_loss": 0.1}}
    assert client.post(f"/worker/jobs/{job}/finish", json=done).status_code == 200  # from the node of rank 0
    assert client.post(beat, json={"lease_token": token, "node": 0}).status_code == 409  # the other node stops
    assert client.get(f"/jobs/{job}").json()["status"] == "succeeded"
