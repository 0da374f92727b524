"""The worker as real processes against a real API: crashes, signals, cancel, lease loss, restarts, resume."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sqlalchemy import create_engine, text

from app.core.migrate import upgrade
from devtools.servers import ApiServer, WorkerProcess, pid_alive, wait_until

pytestmark = pytest.mark.slow

FAST_LEASES = {
    "lease_seconds": "3",
    "heartbeat_seconds": "0.5",
    "reap_interval_seconds": "0.5",
    "claim_poll_seconds": "0.2",
}


def training_job(epochs: int = 8, **train: Any) -> dict[str, Any]:
    """About half a second per epoch on one CPU thread; a checkpoint every epoch."""
    return {
        "kind": "pretrain",
        "dataset": {"name": "digits"},
        "model": {"arch": "mlp_autoencoder", "hidden": [512, 256], "bottleneck": 32},
        "train": {
            "epochs": epochs,
            "batch_size": 16,
            "log_every_steps": 10,
            "seed": 7,
            "checkpoint_min_seconds": 0,
            **train,
        },
    }


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    url = f"sqlite:///{tmp_path / 'trainjobs.db'}"
    upgrade(url)
    server = ApiServer(tmp_path, url, **FAST_LEASES).start()
    yield server
    server.kill()


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client(timeout=30) as client:
        yield client


@pytest.fixture
def workers(api: ApiServer, tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(name: str, *args: str, api_url: str | None = None) -> WorkerProcess:
        w = WorkerProcess(api_url or api.url, tmp_path, name, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def submit(http: httpx.Client, body: dict[str, Any]) -> int:
    r = http.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def job(http: httpx.Client, job_id: int) -> dict[str, Any]:
    return dict(http.get(f"/jobs/{job_id}").json())


def wait_status(http: httpx.Client, job_id: int, *statuses: str, timeout: float = 120) -> dict[str, Any]:
    wait_until(lambda: job(http, job_id)["status"] in statuses, timeout, f"job {job_id} to be {statuses}")
    return job(http, job_id)


def has_checkpoint(http: httpx.Client, job_id: int, min_epoch: int) -> bool:
    data = http.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    return any(c["tag"] == "last" and c["format"] == "pt" and c["epoch"] >= min_epoch for c in data)


def final_weights(http: httpx.Client, job_id: int) -> dict[str, torch.Tensor]:
    r = http.get(f"/jobs/{job_id}/checkpoint", params={"tag": "last"})
    assert r.status_code == 200, r.text
    checkpoint = torch.load(io.BytesIO(r.content), weights_only=True)
    return dict(checkpoint["model"])


def series_points(http: httpx.Client, job_id: int) -> dict[str, list[tuple[int, float]]]:
    doc = http.get(f"/jobs/{job_id}/metrics").json()
    return {name: [(p["step"], p["value"]) for p in pts] for name, pts in doc["series"].items()}


def test_pretrain_then_finetune_from_it(http: httpx.Client, workers: Any) -> None:
    """The article as one pipeline: a finetune starts from the pretrain job's encoder."""
    pre = submit(http, training_job(epochs=2))
    fine = submit(
        http,
        {
            "kind": "finetune",
            "dataset": {"name": "digits", "labels_per_class": 5},
            "model": {"arch": "mlp", "hidden": [512, 256], "bottleneck": 32, "init": {"from": "job", "job_id": pre}},
            "train": {"epochs": 2, "batch_size": 16, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9},
        },
    )
    workers("w1")
    done = wait_status(http, fine, "succeeded", "failed")
    assert done["status"] == "succeeded", done["error"]
    assert 0.0 <= done["result"]["test_accuracy"] <= 1.0 and done["device"] == "cpu"
    assert job(http, pre)["status"] == "succeeded"
    assert {"test_accuracy", "train_loss", "test_loss"} <= set(series_points(http, fine))


def test_a_dcgan_job_uploads_its_samples_and_a_finetune_starts_from_its_discriminator(
    http: httpx.Client, workers: Any
) -> None:
    digits = {"name": "digits", "image_size": 32, "limit": 256}
    gan = submit(
        http,
        {"kind": "pretrain", "dataset": digits, "model": {"arch": "dcgan", "width": 8}, "train": {"epochs": 2}},
    )
    probe = submit(
        http,
        {
            "kind": "finetune",
            "dataset": {**digits, "labels_per_class": 5},
            "model": {"arch": "dcgan_discriminator", "init": {"from": "job", "job_id": gan}, "freeze_backbone": True},
            "train": {"epochs": 2, "batch_size": 10, "lr": 0.01},
        },
    )
    workers("w1")
    done = wait_status(http, probe, "succeeded", "failed")
    assert done["status"] == "succeeded", done["error"]
    assert done["spec"]["model"]["width"] == 8  # taken from the pretrain's discriminator
    listed = http.get(f"/jobs/{gan}/artifacts").json()["data"]
    assert [a["name"] for a in listed] == ["samples-epoch-1.png", "samples-epoch-2.png"]
    png = http.get(listed[-1]["url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert {"d_loss", "g_loss", "d_real", "d_fake", "test_d_loss"} <= set(series_points(http, gan))


def test_sigkill_of_a_worker_mid_job_resumes_elsewhere_and_ends_identical(http: httpx.Client, workers: Any) -> None:
    victim = submit(http, training_job())
    a = workers("a")
    child = a.child_of(victim)
    wait_until(lambda: has_checkpoint(http, victim, 2), 120, "an uploaded checkpoint")
    a.signal(signal.SIGKILL)
    a.wait()
    wait_until(lambda: not pid_alive(child), 10, "the orphaned training process to die with its worker")

    reference = submit(http, {**training_job(), "priority": -1})  # same spec, uninterrupted, runs after
    b = workers("b")
    resumed = wait_status(http, victim, "succeeded", "failed")
    assert resumed["status"] == "succeeded", resumed["error"]
    assert resumed["attempt"] == 2 and resumed["worker"] == "b"
    assert resumed["error_class"] is None  # succeeded; the first attempt's end was infra (its log says so)
    assert "resuming from epoch" in b.text()
    ref = wait_status(http, reference, "succeeded", "failed")
    assert ref["status"] == "succeeded", ref["error"]

    # Continuous curves: the same (series, step) points as the uninterrupted run, no gaps, no duplicates.
    got, want = series_points(http, victim), series_points(http, reference)
    assert {n: [s for s, _ in pts] for n, pts in got.items()} == {n: [s for s, _ in pts] for n, pts in want.items()}
    assert got["test_loss"] == want["test_loss"]
    a_weights, b_weights = final_weights(http, victim), final_weights(http, reference)
    assert a_weights.keys() == b_weights.keys()
    assert all(torch.equal(a_weights[k], b_weights[k]) for k in a_weights)

    # Both attempts' logs, each line once: the first up to the kill, the expiry, the second from its resume.
    lines = http.get(f"/jobs/{victim}/logs", params={"limit": 10_000}).json()["lines"]
    story = [(line["attempt"], line["stream"], line["text"]) for line in lines]
    assert len(story) == len(set(story)), "a line stored twice"
    first, second = ([t for a_, s, t in story if a_ == n] for n in (1, 2))
    assert first[0].startswith("attempt 1 of") and any(t.startswith("epoch 1/") for t in first), first
    assert any("lease expired" in t and "requeued" in t for t in first), first
    assert second[0].startswith("attempt 2 of") and "worker b" in second[0], second
    assert second[1].startswith("resuming from its 'last' checkpoint"), second
    assert second[-1] == "succeeded", second


def phased_finetune() -> dict[str, Any]:
    """A linear probe for 3 epochs, then the whole net for 8 at a lower rate: one job, about 5 s (the kill
    below must land while it trains, not after its last epoch: uploads trail the training by a little)."""
    return {
        "kind": "finetune",
        "dataset": {"name": "digits", "limit": 960},
        "model": {"arch": "mlp", "hidden": [512, 256], "bottleneck": 32},
        "train": {
            "batch_size": 16,
            "seed": 3,
            "log_every_steps": 10,
            "checkpoint_min_seconds": 0,
            "phases": [{"epochs": 3, "freeze_backbone": True, "lr": 0.01}, {"epochs": 8, "lr": 0.001}],
        },
    }


def test_sigkill_in_the_second_phase_resumes_in_it_and_ends_identical(http: httpx.Client, workers: Any) -> None:
    victim = submit(http, phased_finetune())
    a = workers("a")
    wait_until(lambda: has_checkpoint(http, victim, 4), 120, "a checkpoint inside the second phase")
    a.signal(signal.SIGKILL)
    a.wait()
    reference = submit(http, {**phased_finetune(), "priority": -1})  # uninterrupted, runs after
    workers("b")
    resumed = wait_status(http, victim, "succeeded", "failed")
    assert resumed["status"] == "succeeded", resumed["error"]
    assert resumed["attempt"] == 2 and resumed["result"]["epochs"] == 11
    ref = wait_status(http, reference, "succeeded", "failed")
    assert ref["status"] == "succeeded", ref["error"]
    got, want = series_points(http, victim), series_points(http, reference)
    assert got["test_accuracy"] == want["test_accuracy"] and got["lr"] == want["lr"]
    a_weights, b_weights = final_weights(http, victim), final_weights(http, reference)
    assert all(torch.equal(a_weights[k], b_weights[k]) for k in a_weights)
    lines = [line["text"] for line in http.get(f"/jobs/{victim}/logs", params={"attempt": 2}).json()["lines"]]
    assert any(t.startswith("resuming from its 'last' checkpoint") for t in lines), lines
    assert not any(t.startswith(("epoch 1/", "epoch 2/", "epoch 3/")) for t in lines), lines  # not the probe again


def test_sigterm_gives_the_job_back_without_spending_an_attempt(http: httpx.Client, workers: Any) -> None:
    victim = submit(http, training_job())
    a = workers("a")
    a.child_of(victim)
    wait_until(lambda: job(http, victim)["progress"]["epoch"] >= 1, 120, "an epoch to finish")
    a.signal(signal.SIGTERM)
    assert a.wait(timeout=60) == 0
    released = job(http, victim)
    assert released["status"] == "queued" and released["attempt"] == 0
    stopped_at = next(c for c in http.get(f"/jobs/{victim}/checkpoints").json()["data"] if c["tag"] == "last")

    b = workers("b")
    done = wait_status(http, victim, "succeeded", "failed")
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 1 and done["worker"] == "b"
    assert f"resuming from epoch {stopped_at['epoch']}" in b.text()


def test_cancel_a_running_job(http: httpx.Client, workers: Any) -> None:
    target = submit(http, training_job(epochs=30))
    w = workers("w")
    child = w.child_of(target)
    wait_until(lambda: has_checkpoint(http, target, 1), 120, "a first checkpoint")
    asked = time.monotonic()
    assert http.post(f"/jobs/{target}/cancel").json()["cancel_requested"] is True
    ended = wait_status(http, target, "cancelled", "succeeded", "failed", timeout=30)
    assert ended["status"] == "cancelled"
    assert time.monotonic() - asked < 10  # a heartbeat (0.5 s here) plus one step
    wait_until(lambda: not pid_alive(child), 10, "the training process to exit")
    assert http.get(f"/jobs/{target}/checkpoint", params={"tag": "last"}).status_code == 200

    after = submit(http, training_job(epochs=1))  # the worker serves the next job; the cancelled one never returns
    assert wait_status(http, after, "succeeded", "failed")["status"] == "succeeded"
    again = job(http, target)
    assert again["status"] == "cancelled" and again["attempt"] == 1


def test_cancel_a_job_that_is_just_finishing(http: httpx.Client, workers: Any) -> None:
    target = submit(http, training_job(epochs=1))
    workers("w")
    wait_until(
        lambda: job(http, target)["progress"]["step"] > 0 or job(http, target)["status"] != "queued", 120, "start"
    )
    r = http.post(f"/jobs/{target}/cancel")
    assert r.status_code in (200, 409)
    ended = wait_status(http, target, "cancelled", "succeeded", "failed", timeout=60)
    assert ended["status"] in ("cancelled", "succeeded")
    time.sleep(2)
    assert job(http, target)["status"] == ended["status"] and job(http, target)["attempt"] == 1


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_a_training_process_killed_from_outside_fails_the_job(http: httpx.Client, workers: Any, sig: int) -> None:
    target = submit(http, training_job(epochs=30))
    w = workers("w")
    child = w.child_of(target)
    wait_until(lambda: job(http, target)["progress"]["step"] > 0, 120, "training to start")
    os.kill(child, sig)
    failed = wait_status(http, target, "failed", "succeeded", timeout=30)
    assert failed["status"] == "failed" and failed["error_class"] == "crash" and failed["attempt"] == 1
    assert signal.Signals(sig).name in failed["error"]
    nxt = submit(http, training_job(epochs=1))
    assert wait_status(http, nxt, "succeeded", "failed")["status"] == "succeeded"
    assert job(http, target)["status"] == "failed"  # a crash is not retried by default


def test_a_crash_is_retried_when_retry_on_names_it_and_resumes_from_its_checkpoint(
    http: httpx.Client, workers: Any
) -> None:
    target = submit(http, {**training_job(epochs=30), "retry_on": ["infra", "crash"]})
    w = workers("w")
    child = w.child_of(target)
    wait_until(lambda: has_checkpoint(http, target, 2), 120, "an uploaded checkpoint")
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: job(http, target)["attempt"] == 2, 60, "the second attempt")
    done = wait_status(http, target, "succeeded", "failed", timeout=300)
    assert done["status"] == "succeeded" and done["error"] is None, done["error"]
    lines = [line["text"] for line in http.get(f"/jobs/{target}/logs", params={"limit": 10_000}).json()["lines"]]
    assert any(t.startswith("attempt 1 of 3 failed (crash): training process killed by SIGKILL") for t in lines)
    assert any(t.startswith("resuming from its 'last' checkpoint") for t in lines)


def test_failures_inside_training_have_one_line_reasons(http: httpx.Client, workers: Any) -> None:
    nan = submit(
        http,
        {
            "kind": "finetune",
            "dataset": {"name": "digits"},
            "model": {"arch": "mlp", "hidden": [64], "bottleneck": 16},
            # Weight decay 1 at lr 10 multiplies every weight by -9 each step: inf, then NaN, within an epoch.
            "train": {"epochs": 3, "batch_size": 16, "optimizer": "sgd", "lr": 10, "weight_decay": 1.0},
        },
    )
    missing = submit(http, {**training_job(epochs=1), "dataset": {"name": "cifar10"}})
    fine = submit(http, training_job(epochs=1))
    workers("w")
    for job_id in (nan, missing, fine):
        wait_status(http, job_id, "succeeded", "failed")
    nan_error = job(http, nan)["error"]
    assert job(http, nan)["error_class"] == "user" and job(http, nan)["attempt"] == 1  # not retried
    assert nan_error.splitlines()[0].startswith("loss became NaN at epoch 1, step ")
    assert "Traceback" in nan_error
    missing_error = job(http, missing)["error"].splitlines()[0]
    assert "cifar10" in missing_error.lower() and "not found" in missing_error.lower()
    assert job(http, missing)["progress"]["step"] == 0  # failed before any training
    assert job(http, fine)["status"] == "succeeded"


def test_a_worker_that_loses_its_lease_stops_and_writes_nothing_more(
    http: httpx.Client, workers: Any, api: ApiServer
) -> None:
    target = submit(http, training_job(epochs=30))
    w = workers("w")
    child = w.child_of(target)
    wait_until(lambda: has_checkpoint(http, target, 1), 120, "a first checkpoint")
    engine = create_engine(api.env["TRAINJOBS_DATABASE_URL"])
    with engine.begin() as conn:  # as if the lease had expired and another worker had taken the job
        conn.execute(
            text(
                "UPDATE jobs SET lease_token = 'stolen', lease_owner = 'thief', lease_expires_at = :later WHERE id = :id"
            ),
            {"id": target, "later": datetime(2100, 1, 1)},
        )
    engine.dispose()
    wait_until(lambda: not pid_alive(child), 15, "the training process to be stopped")
    before = (http.get(f"/jobs/{target}/metrics").content, http.get(f"/jobs/{target}/checkpoints").json())
    time.sleep(2)
    after = (http.get(f"/jobs/{target}/metrics").content, http.get(f"/jobs/{target}/checkpoints").json())
    assert before == after
    assert job(http, target)["worker"] == "thief" and job(http, target)["status"] == "running"
    assert "lease lost" in w.text()


def test_the_service_restarted_mid_job_does_not_disturb_it(
    http: httpx.Client, workers: Any, api: ApiServer, tmp_path: Path
) -> None:
    target = submit(http, training_job(epochs=10))
    workers("w")
    wait_until(lambda: job(http, target)["progress"]["epoch"] >= 1, 120, "an epoch")
    api.kill()
    time.sleep(4)  # longer than the lease: heartbeats fail meanwhile
    restarted = ApiServer(tmp_path, api.env["TRAINJOBS_DATABASE_URL"], port=api.port, **FAST_LEASES).start()
    try:
        done = wait_status(http, target, "succeeded", "failed", timeout=120)
        assert done["status"] == "succeeded", done["error"]
        assert done["attempt"] == 1
        epochs = [s for s, _ in series_points(http, target)["test_loss"]]
        assert len(epochs) == 10
    finally:
        restarted.kill()


def test_a_job_this_workers_code_cannot_run_fails_with_the_reason_not_a_traceback(
    api: ApiServer, http: httpx.Client, workers: Any
) -> None:
    """A service newer than its worker: the stored spec names an arch the worker's registry lacks."""
    job_id = submit(http, training_job(epochs=1))
    engine = create_engine(api.env["TRAINJOBS_DATABASE_URL"])
    with engine.begin() as conn:  # what a newer service would have stored
        spec = conn.execute(text("SELECT spec FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
        spec = spec if isinstance(spec, dict) else json.loads(spec)
        spec["model"] = {"arch": "vision_transformer", "patch": 4}
        conn.execute(text("UPDATE jobs SET spec = :spec WHERE id = :id"), {"id": job_id, "spec": json.dumps(spec)})
    engine.dispose()
    worker = workers("old", "--once")
    assert worker.wait(60) == 0
    failed = job(http, job_id)
    assert failed["status"] == "failed" and failed["attempt"] == 1
    assert failed["error"].startswith(f"this worker cannot run job {job_id}")
    assert "'vision_transformer'" in failed["error"] and "mlp_autoencoder" in failed["error"]  # names the known archs
    assert "Traceback" not in failed["error"] and "\n" not in failed["error"]
    assert worker.children() == []  # no training process was started for it
