"""Sweeps through the HTTP API: grid and random trials, one bad trial creates nothing, results per
setting, max_concurrent in the claim, cancel, retry without duplicates, delete, pipelines per trial."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from app.core.config import Settings
from app.core.db import Database
from tests.api.helpers import claim, client_with, finish, heartbeat
from tests.authed import AuthedClient
from tests.conftest import finetune_body, pretrain_body


def grid(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "lr-opt",
        "base": finetune_body(),
        "method": "grid",
        "parameters": {"train.lr": {"values": [0.1, 0.01]}, "train.optimizer": {"values": ["adam", "sgd"]}},
        "seeds": [0, 1],
        "metric": "test_accuracy",
        "mode": "max",
    }
    body["base"]["train"].pop("momentum")
    body.update(changes)
    return body


def submit_sweep(client: AuthedClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/sweeps", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/sweeps/{r.json()['id']}"
    sweep: dict[str, Any] = r.json()
    return sweep


def trials_of(client: AuthedClient, sweep_id: int) -> list[dict[str, Any]]:
    r = client.get("/jobs", params={"sweep": sweep_id, "limit": 500})
    assert r.status_code == 200, r.text
    return sorted(r.json()["data"], key=lambda j: j["id"])


def trial_index(client: AuthedClient, claimed: dict[str, Any]) -> int | None:
    index: int | None = client.get(f"/jobs/{claimed['id']}").json()["trial_index"]
    return index


def run_next(client: AuthedClient, value: float | None, worker: str = "w1") -> dict[str, Any]:
    """Claim the next job and finish it: succeeded with test_accuracy ``value``, or failed (None)."""
    job = claim(client, worker)
    assert job is not None
    if value is None:
        r = finish(client, job["id"], job["lease_token"], "failed", error="diverged")
    else:
        r = finish(client, job["id"], job["lease_token"], result={"test_accuracy": value, "primary_metric": "x"})
    assert r.status_code == 200, r.text
    return job


# --- submitting ------------------------------------------------------------------------


def test_a_grid_sweep_is_every_combination_for_every_seed_as_ordinary_jobs(client: AuthedClient) -> None:
    sweep = submit_sweep(client, grid())

    assert sweep["status"] == "running"
    assert sweep["trial_count"] == 8
    assert sweep["counts"]["queued"] == 8
    jobs = trials_of(client, sweep["id"])
    assert [j["trial_index"] for j in jobs] == list(range(8))
    seen = {(j["spec"]["train"]["lr"], j["spec"]["train"]["optimizer"], j["spec"]["train"]["seed"]) for j in jobs}
    assert seen == {(lr, opt, seed) for lr in (0.1, 0.01) for opt in ("adam", "sgd") for seed in (0, 1)}
    for job in jobs:
        assert job["sweep_id"] == sweep["id"] and job["owner"] == "alice" and job["status"] == "queued"
        params = job["trial_params"]
        assert (params["train.lr"], params["train.optimizer"], params["seed"]) == (
            job["spec"]["train"]["lr"],
            job["spec"]["train"]["optimizer"],
            job["spec"]["train"]["seed"],
        )
    # The sweep is not a job: the queue holds exactly its 8 trials.
    assert len(client.get("/jobs").json()["data"]) == 8


def test_random_draws_are_the_same_for_the_same_random_seed_and_stay_in_range(client: AuthedClient) -> None:
    def random_sweep(seed: int) -> list[dict[str, Any]]:
        body = grid(
            method="random",
            num_trials=5,
            random_seed=seed,
            seeds=[3],
            parameters={
                "train.weight_decay": {"distribution": "log_uniform", "min": 1e-6, "max": 1e-2},
                "train.lr": {"distribution": "uniform", "min": 0.001, "max": 0.1},
                "model.bottleneck": {"values": [4, 8, 16]},
                "train.batch_size": {"distribution": "int_uniform", "min": 8, "max": 64},
            },
        )
        sweep = submit_sweep(client, body)
        assert sweep["trial_count"] == 5
        return [j["trial_params"] for j in trials_of(client, sweep["id"])]

    first, again, other = random_sweep(7), random_sweep(7), random_sweep(8)

    assert first == again
    assert first != other
    for params in first + other:
        assert 1e-6 <= params["train.weight_decay"] <= 1e-2
        assert 0.001 <= params["train.lr"] <= 0.1
        assert params["model.bottleneck"] in (4, 8, 16)
        assert isinstance(params["train.batch_size"], int) and 8 <= params["train.batch_size"] <= 64
        assert params["seed"] == 3
    # log-uniform: the draws spread over the decades, not bunched near the top
    assert len({math.floor(math.log10(p["train.weight_decay"])) for p in first + other}) >= 2


def test_one_bad_trial_is_a_422_naming_it_and_nothing_is_created(client: AuthedClient) -> None:
    body = grid(parameters={"train.lr": {"values": [0.1, 0.01, -1.0]}}, seeds=[0])

    r = client.post("/sweeps", json=body)

    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert "trial 2" in detail["msg"] and "train.lr=-1.0" in detail["msg"]
    assert "base.train.lr" in detail["msg"]
    assert client.get("/sweeps").json()["data"] == []
    assert client.get("/jobs").json()["data"] == []


def test_sweeps_that_cannot_work_are_refused_with_what_to_change(client: AuthedClient) -> None:
    cases = [
        (grid(parameters={"train.lr": {"distribution": "uniform", "min": 0.1, "max": 1}}), "needs values"),
        (grid(method="random"), "needs num_trials"),
        (grid(metric="val_f1"), "has no 'val_f1'"),
        (grid(parameters={"train.seed": {"values": [1, 2]}}), "give seeds"),
        (grid(parameters={"train.lr": {"values": [0.001 * i for i in range(1, 601)]}}), "at most 1000"),
        (grid(parameters={"then.train.lr": {"values": [0.1]}}), "need a then spec"),
        (grid(parameters={"train..lr": {"values": [0.1]}}), "dotted path"),
        (grid(parameters={"train.lr.deeper": {"values": [0.1]}}), "not an object"),
        (grid(parameters={"train.no_such": {"values": [1]}}), "trial 0"),
        (grid(seeds=[1, 1]), "each seed once"),
        (grid(seeds=[0, 2**40]), "less than or equal to 2147483647"),
        (grid(then=finetune_body()), "base must be a pretrain"),
    ]
    for body, message in cases:
        r = client.post("/sweeps", json=body)
        assert r.status_code == 422, (message, r.text)
        assert any(message in e["msg"] for e in r.json()["detail"]), (message, r.json())
    assert client.get("/jobs").json()["data"] == []


def test_a_sweep_past_the_active_jobs_cap_is_429_and_stores_nothing(
    settings: Settings, db: Database, tokens: dict[str, str]
) -> None:
    with client_with(settings, db, tokens, max_active_jobs_per_user=5) as client:
        r = client.post("/sweeps", json=grid())
        assert r.status_code == 429, r.text
        assert "this adds 8" in r.json()["detail"]
        assert client.get("/jobs").json()["data"] == []


# --- results ---------------------------------------------------------------------------


def test_results_per_setting_mean_std_count_best_setting_and_best_trial(client: AuthedClient) -> None:
    sweep = submit_sweep(client, grid(parameters={"train.lr": {"values": [0.1, 0.01]}}, seeds=[0, 1, 2]))
    # trials 0-2: lr 0.1, seeds 0-2; trials 3-5: lr 0.01. Trial 5 fails.
    values = [0.80, 0.82, 0.84, 0.90, 0.70, None]
    for value in values:
        run_next(client, value)

    got = client.get(f"/sweeps/{sweep['id']}").json()

    assert got["status"] == "failed"
    assert got["counts"]["succeeded"] == 5 and got["counts"]["failed"] == 1
    assert [t["value"] for t in got["trials"]] == values
    by_lr = {s["params"]["train.lr"]: s for s in got["settings"]}
    assert by_lr[0.1]["count"] == 3 and by_lr[0.01]["count"] == 2
    assert by_lr[0.1]["mean"] == statistics.fmean([0.80, 0.82, 0.84])
    assert by_lr[0.1]["std"] == statistics.stdev([0.80, 0.82, 0.84])
    assert by_lr[0.01]["mean"] == statistics.fmean([0.90, 0.70])
    assert by_lr[0.1]["trials"] == [0, 1, 2]
    assert got["best_setting"]["params"] == {"train.lr": 0.1}  # mean 0.82 beats 0.80
    assert got["best_trial"]["index"] == 3 and got["best_trial"]["value"] == 0.90
    listed = client.get("/sweeps").json()["data"]
    assert [(s["id"], s["status"], s["counts"]["failed"]) for s in listed] == [(sweep["id"], "failed", 1)]


def test_mode_min_ranks_the_lowest_first(client: AuthedClient) -> None:
    sweep = submit_sweep(client, grid(metric="test_loss", mode=None, seeds=None))
    assert sweep["mode"] == "min"
    for i in range(4):
        job = claim(client)
        assert job is not None
        finish(client, job["id"], job["lease_token"], result={"test_loss": float(i)})
    got = client.get(f"/sweeps/{sweep['id']}").json()
    assert got["status"] == "succeeded"
    assert got["best_trial"]["index"] == 0 and got["best_setting"]["mean"] == 0.0


# --- max_concurrent ----------------------------------------------------------------------


def test_at_most_max_concurrent_trials_are_claimed_by_any_number_of_workers(client: AuthedClient) -> None:
    sweep = submit_sweep(client, grid(max_concurrent=2))
    other = client.post("/jobs", json=pretrain_body()).json()  # not part of the sweep: never held back

    held = [claim(client, f"w{i}") for i in range(3)]
    running = [j for j in held if j is not None]
    assert sorted(trial_index(client, j) for j in running if j["id"] != other["id"]) == [0, 1]
    assert other["id"] in [j["id"] for j in running]
    assert claim(client, "w4") is None
    finish(client, running[0]["id"], running[0]["lease_token"], result={"test_accuracy": 0.5})
    nxt = claim(client, "w4")
    assert nxt is not None and client.get(f"/jobs/{nxt['id']}").json()["sweep_id"] == sweep["id"]
    assert claim(client, "w5") is None


# --- cancel, retry, delete -------------------------------------------------------------


def test_cancel_then_retry_runs_exactly_the_failed_and_cancelled_points_once(client: AuthedClient) -> None:
    sweep = submit_sweep(client, grid(seeds=[0]))
    ok = run_next(client, 0.9)
    bad = run_next(client, None)
    running = claim(client)
    assert running is not None

    r = client.post(f"/sweeps/{sweep['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"  # its running trial stops at the next heartbeat
    assert heartbeat(client, running["id"], running["lease_token"]).json()["cancel_requested"] is True
    finish(client, running["id"], running["lease_token"], "cancelled")
    got = client.get(f"/sweeps/{sweep['id']}").json()
    assert got["status"] == "cancelled"
    assert got["counts"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 1, "cancelled": 2}

    r = client.post(f"/sweeps/{sweep['id']}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["counts"]["queued"] == 3
    jobs = trials_of(client, sweep["id"])
    assert len(jobs) == 4  # the same jobs: no duplicate trials
    by_id = {j["id"]: j for j in jobs}
    assert by_id[ok["id"]]["status"] == "succeeded" and by_id[ok["id"]]["attempt"] == 1
    assert by_id[bad["id"]]["status"] == "queued" and by_id[bad["id"]]["error"] is None
    again = []
    while (job := claim(client)) is not None:
        again.append(job)
        finish(client, job["id"], job["lease_token"], result={"test_accuracy": 0.5})
    assert sorted(j["id"] for j in again) == sorted(j["id"] for j in jobs if j["id"] != ok["id"])
    assert {j["id"]: j["attempt"] for j in again}[bad["id"]] == 2
    done = client.get(f"/sweeps/{sweep['id']}").json()
    assert done["status"] == "succeeded" and done["counts"]["succeeded"] == 4
    assert client.post(f"/sweeps/{sweep['id']}/retry").status_code == 409  # nothing left to retry
    log = client.get(f"/jobs/{bad['id']}/logs").json()["lines"]
    assert any(f"retry of sweep {sweep['id']}" in line["text"] for line in log)


def test_delete_needs_a_finished_sweep_and_takes_its_trials(client: AuthedClient, tokens: dict[str, str]) -> None:
    sweep = submit_sweep(client, grid(seeds=None, parameters={"train.lr": {"values": [0.1, 0.2]}}))
    job = run_next(client, 0.5)
    assert client.delete(f"/sweeps/{sweep['id']}").status_code == 409
    assert client.delete(f"/jobs/{job['id']}").status_code == 409  # a trial goes with its sweep
    with client.as_user(tokens["bob"]):
        assert client.get(f"/sweeps/{sweep['id']}").status_code == 404
        assert client.post(f"/sweeps/{sweep['id']}/cancel").status_code == 404
        assert client.delete(f"/sweeps/{sweep['id']}").status_code == 404
        assert client.get("/jobs", params={"sweep": sweep["id"]}).json()["data"] == []
    client.post(f"/sweeps/{sweep['id']}/cancel")

    assert client.delete(f"/sweeps/{sweep['id']}").status_code == 204

    assert client.get(f"/sweeps/{sweep['id']}").status_code == 404
    assert client.get(f"/jobs/{job['id']}").status_code == 404
    assert client.get("/jobs").json()["data"] == []


# --- a pretrain -> finetune pipeline per trial ---------------------------------------------


def test_then_gives_each_trial_a_finetune_that_starts_from_its_own_pretrain(client: AuthedClient) -> None:
    then = finetune_body()
    del then["model"]["hidden"], then["model"]["bottleneck"]  # taken from each trial's pretrain
    body = {
        "base": pretrain_body(),
        "then": then,
        "parameters": {"model.bottleneck": {"values": [4, 8]}, "then.train.lr": {"values": [0.05]}},
        "seeds": [0, 1],
    }
    sweep = submit_sweep(client, body)
    assert sweep["trial_count"] == 4 and sweep["metric"] == "test_accuracy"

    jobs = trials_of(client, sweep["id"])
    assert len(jobs) == 8
    pretrains = {j["trial_index"]: j for j in jobs if j["kind"] == "pretrain"}
    for finetune in (j for j in jobs if j["kind"] == "finetune"):
        base = pretrains[finetune["trial_index"]]
        assert finetune["depends_on"] == base["id"]
        assert finetune["spec"]["model"]["bottleneck"] == base["spec"]["model"]["bottleneck"]
        assert finetune["spec"]["train"]["lr"] == 0.05 and base["spec"]["train"]["lr"] != 0.05
        assert finetune["spec"]["train"]["seed"] == base["spec"]["train"]["seed"]
    # A trial's result is its finetune's: a pretrain's success alone leaves it running.
    first = claim(client)
    assert first is not None and first["kind"] == "pretrain"
    finish(client, first["id"], first["lease_token"], result={"test_loss": 0.1})
    got = client.get(f"/sweeps/{sweep['id']}").json()
    assert got["trials"][trial_index(client, first)]["status"] == "queued"
    assert got["trials"][trial_index(client, first)]["value"] is None


def test_a_then_finetune_that_does_not_fit_its_pretrain_is_a_422(client: AuthedClient) -> None:
    body = {"base": pretrain_body(), "then": finetune_body(), "parameters": {"model.bottleneck": {"values": [8, 4]}}}
    r = client.post("/sweeps", json=body)
    assert r.status_code == 422, r.text
    assert "trial 1" in r.json()["detail"][0]["msg"] and "encoder" in r.json()["detail"][0]["msg"]
    body["then"] = {**finetune_body(), "model": {**finetune_body()["model"], "init": {"from": "imagenet"}}}
    assert "leave it out" in client.post("/sweeps", json=body).json()["detail"][0]["msg"]


# --- what a hostile or careless client sends ------------------------------------------------


def test_a_sweep_cannot_start_from_another_users_job_or_one_that_does_not_fit(
    client: AuthedClient, tokens: dict[str, str]
) -> None:
    with client.as_user(tokens["bob"]):
        bobs = client.post("/jobs", json=pretrain_body()).json()["id"]
    mine = client.post("/jobs", json=pretrain_body()).json()["id"]
    for base_id, message in ((bobs, "does not exist"), (999_999, "does not exist")):
        body = {"base": finetune_body(base_id), "seeds": [0, 1]}
        r = client.post("/sweeps", json=body)
        assert r.status_code == 422, r.text
        assert "trial 0 (seed=0)" in r.json()["detail"][0]["msg"] and message in r.json()["detail"][0]["msg"]
    wrong_widths = finetune_body(mine)
    wrong_widths["model"]["bottleneck"] = 16
    r = client.post("/sweeps", json={"base": wrong_widths, "seeds": [0]})
    assert r.status_code == 422 and "encoder" in r.json()["detail"][0]["msg"]
    ok = submit_sweep(client, {"base": finetune_body(mine), "seeds": [0]})
    assert trials_of(client, ok["id"])[0]["depends_on"] == mine
    assert client.get("/sweeps").json()["data"][0]["id"] == ok["id"]  # the refused ones stored nothing


def test_a_grid_too_big_is_refused_before_it_is_built(client: AuthedClient) -> None:
    values = {"values": list(range(1000))}
    params = {"train.lr": values, "train.batch_size": values, "model.bottleneck": values, "train.epochs": values}
    r = client.post("/sweeps", json=grid(parameters=params))  # 10^12 trials in a few kilobytes
    assert r.status_code == 422 and "at most 1000" in r.json()["detail"][0]["msg"]


def test_json_a_job_spec_could_never_hold_is_a_422_and_stores_nothing(client: AuthedClient) -> None:
    deep: Any = 0.1
    for _ in range(700):
        deep = [deep]
    bodies = [
        grid(parameters={"train.lr": {"values": [deep]}}),
        {**grid(), "base": {**finetune_body(), "train": {"lr": deep}}},
        {**grid(), "base": {**finetune_body(), "name": "\ud800"}, "parameters": {"name": {"values": ["ok"]}}},
        grid(parameters={"name": {"values": ["a\x00b", "\udfff"]}}),
        grid(parameters={"train.lr": {"values": [0.1, 0.1]}}),
        grid(parameters={"seed": {"values": [1, 2]}}),
        grid(parameters={"then": {"values": [1]}}),
        grid(parameters={"train.seed": {"values": [1, 2]}}, seeds=None),
    ]
    raw = b'{"base": {"kind": "pretrain", "x": 1e400}, "parameters": {}}'
    assert client.post("/sweeps", content=raw, headers={"Content-Type": "application/json"}).status_code == 422
    for body in bodies:  # as JSON text: a lone surrogate travels as its escape
        r = client.post("/sweeps", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
    assert client.get("/sweeps").json()["data"] == [] and client.get("/jobs").json()["data"] == []


def test_a_trial_past_the_services_limits_is_named_with_its_field(
    client: AuthedClient, settings: Settings, db: Database, tokens: dict[str, str]
) -> None:
    huge = [[32], [4096, 4096]]
    body = {"base": finetune_body(), "parameters": {"model.hidden": {"values": huge}}}
    with client_with(settings, db, tokens, max_params=1_000_000) as small:
        r = small.post("/sweeps", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"].startswith("trial 1 (model.hidden=[4096, 4096]): base: ")
    assert "TRAINJOBS_MAX_PARAMS" in r.json()["detail"][0]["msg"]
    r = client.post("/sweeps", json=grid(parameters={"dataset.name": {"values": ["digits", "mnist3"]}}))
    assert r.status_code == 422 and r.json()["detail"][0]["msg"].startswith(
        'trial 2 (dataset.name="mnist3", seed=0): base.dataset:'
    )
    assert r.json()["detail"][0]["loc"][:3] == ["body", "base", "dataset"]


def test_metric_values_too_large_to_average_leave_the_mean_empty_not_the_page_broken(client: AuthedClient) -> None:
    sweep = submit_sweep(client, grid(parameters={}, seeds=[0, 1]))
    for _ in range(2):
        job = claim(client)
        assert job is not None
        finish(client, job["id"], job["lease_token"], result={"test_accuracy": 1.5e308})
    r = client.get(f"/sweeps/{sweep['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["settings"][0]["count"] == 2 and r.json()["best_trial"]["value"] == 1.5e308


def test_cancel_of_a_finished_sweep_is_a_409_and_a_retry_note_opens_the_new_attempts_log(
    client: AuthedClient,
) -> None:
    sweep = submit_sweep(client, grid(parameters={}, seeds=[0]))
    failed = run_next(client, None)
    assert client.post(f"/sweeps/{sweep['id']}/cancel").status_code == 409
    assert client.get(f"/sweeps/{sweep['id']}").json()["status"] == "failed"
    assert client.post(f"/sweeps/{sweep['id']}/retry").status_code == 200
    again = claim(client)
    assert again is not None and again["id"] == failed["id"]
    second = client.get(f"/jobs/{failed['id']}/logs", params={"attempt": 2}).json()["lines"]
    assert any(f"retry of sweep {sweep['id']}" in line["text"] for line in second), second
