"""A worker's devices: which are free, what each claim says, where a job runs (its GPUs, the only ones it
sees), and jobs side by side on the free ones while the worker claims more."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.migrate import upgrade
from app.core.protocol import ClaimedJob
from devtools.servers import WORKER_TOKEN, ApiServer, wait_until
from worker.__main__ import parse_args, settings_from
from worker.agent import Agent, Slots, _devices_needed
from worker.capabilities import Inventory
from worker.client import WorkerClient
from worker.gang import placement
from worker.settings import WorkerConfig, WorkerSettings


def test_slots_hand_out_free_devices_and_take_them_back() -> None:
    slots = Slots(("cuda:0", "cuda:1", "cuda:2"))
    assert slots.take(2) == ["cuda:0", "cuda:1"] and slots.free() == 1
    assert slots.take(2) is None and slots.free() == 1  # all or none
    assert slots.take(1) == ["cuda:2"] and slots.free() == 0
    slots.give(["cuda:0", "cuda:1"])
    assert slots.taken() == {"cuda:2"} and slots.take(1) == ["cuda:0"]


def test_a_job_sees_only_its_gpus_counted_from_zero() -> None:
    assert placement(["cuda:2", "cuda:3"]) == ("cuda:0", "2,3")
    assert placement(["cuda:1"]) == ("cuda:0", "1")
    assert placement(["cpu"]) == ("cpu", None) and placement(["cuda"]) == ("cuda", None)


def claimed(resources: dict[str, Any] | None) -> ClaimedJob:
    spec = {"kind": "pretrain", **({"resources": resources} if resources else {})}
    return ClaimedJob.model_validate(
        {
            **dict.fromkeys(("resume_checkpoint", "init_checkpoint")),
            "id": 1,
            "kind": "pretrain",
            "spec": spec,
            "attempt": 1,
            "max_attempts": 3,
            "lease_token": "t",
            "lease_seconds": 60,
            "heartbeat_seconds": 5,
        }
    )


def test_a_job_takes_its_gpus_on_a_gpu_worker_and_the_one_device_elsewhere() -> None:
    assert _devices_needed(claimed({"gpus": 4}), gpus=8) == 4
    assert _devices_needed(claimed(None), gpus=8) == 1
    assert _devices_needed(claimed({"processes": 4}), gpus=0) == 1  # CPU ranks share the CPU
    assert _devices_needed(claimed({"gpus": "many"}), gpus=8) == 1  # a spec the service would refuse


def test_each_claim_says_which_devices_are_free() -> None:
    inventory = Inventory.of(["cpu:0", "cpu:1"])
    caps = inventory.capabilities({"cpu:1"})
    assert (caps.free, caps.gpus, caps.distributed) == (1, 0, True)
    assert [(d.name, d.busy) for d in caps.devices] == [("cpu:0", False), ("cpu:1", True)]


def test_gpus_are_an_option_with_the_environment_as_default(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = WorkerSettings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.gpus is None
    assert settings_from(parse_args(["--gpus", "0,2"], defaults), defaults).gpus == "0,2"
    monkeypatch.setenv("TRAINJOBS_GPUS", "all")
    assert WorkerSettings(_env_file=None).gpus == "all"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="gpus"):
        WorkerSettings(gpus="zero", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with ApiServer(tmp_path, url, claim_poll_seconds="0.2") as server:
        yield server


@pytest.mark.slow
def test_a_worker_of_two_devices_runs_two_jobs_side_by_side(api: ApiServer, tmp_path: Path) -> None:
    """The same agent a worker of several GPUs runs, on two CPU slots (no GPU here): the second job starts
    while the first runs, and each device runs one job at a time."""
    job = {
        "kind": "pretrain",
        "dataset": {"name": "digits"},
        "model": {"arch": "mlp_autoencoder", "hidden": [256], "bottleneck": 16},
        "train": {"epochs": 40, "batch_size": 32},
    }
    http = api.client(timeout=30)
    ids = [http.post("/jobs", json=job).json()["id"] for _ in range(3)]
    settings = WorkerSettings(work_dir=tmp_path / "work", threads=1, poll_seconds=1, _env_file=None)  # type: ignore[call-arg]
    config = WorkerConfig.of(settings, "two", "cpu:0,1", ["cpu:0", "cpu:1"])
    agent = Agent(WorkerClient(api.url, WORKER_TOKEN), config)
    serving = threading.Thread(target=agent.run)
    serving.start()
    try:

        def statuses() -> list[str]:
            return [http.get(f"/jobs/{i}").json()["status"] for i in ids]

        both = wait_until(lambda: (s := statuses()).count("running") == 2 and s, 120, "two jobs at once")
        assert both.count("queued") == 1  # two devices: two jobs, not three
        for i in ids[:2]:
            assert http.post(f"/jobs/{i}/cancel").status_code == 200
        wait_until(lambda: statuses()[2] == "running", 60, "the third job on a freed device")
    finally:
        agent.shutdown.signal()
        agent.shutdown.signal()  # the second: stop now
        serving.join(120)
    assert not serving.is_alive()
    http.close()
