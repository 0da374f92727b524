"""The public jobs API: submit (validation, presets, base jobs, idempotency), list, get, cancel, delete, health."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from app.core.config import Settings
from app.core.db import Database
from app.core.models import IdempotencyKey, MetricPoint, utcnow
from tests.api.helpers import (
    assert_invalid,
    claim,
    claim_job,
    files_of_job,
    finish,
    heartbeat,
    post_points,
    put_checkpoint,
    run_job,
    start,
    submit,
)
from tests.conftest import finetune_body, pretrain_body

# --- POST /jobs: accepted -------------------------------------------------------------


def test_submit_pretrain_returns_201_location_and_the_job(client: TestClient) -> None:
    r = client.post("/jobs", json=pretrain_body(name="ae-1", priority=5))

    assert r.status_code == 201
    job = r.json()
    assert r.headers["Location"] == f"/jobs/{job['id']}"
    assert job["kind"] == "pretrain"
    assert job["name"] == "ae-1"
    assert job["status"] == "queued"
    assert job["priority"] == 5
    assert job["attempt"] == 0
    assert job["depends_on"] is None
    assert job["progress"] == {"epoch": 0, "epochs": 2, "step": 0}
    assert job["spec"]["model"] == {"arch": "mlp_autoencoder", "hidden": [32], "bottleneck": 8, "noise": 0.0}
    assert job["spec"]["train"]["epochs"] == 2
    assert job["spec"]["train"]["optimizer"] == "adam"  # a default, filled in
    got = client.get(r.headers["Location"]).json()
    assert got.pop("waiting_for") == "no worker is connected" and job.pop("waiting_for") is None  # GET says why
    assert got == job


def test_fields_added_later_are_stored_only_when_they_differ_from_their_defaults(client: TestClient) -> None:
    # A worker of the release before reads the stored spec (unknown fields are an error to it), and a
    # submit retried across an upgrade keeps its idempotency hash: a later field at its default is left out.
    plain = client.post("/jobs", json=pretrain_body()).json()["spec"]
    assert "image_size" not in plain["dataset"] and "width" not in plain["model"]
    assert "checkpoint_min_seconds" not in plain["train"] and plain["train"]["epochs"] == 2
    train = {"epochs": 2, "batch_size": 64, "checkpoint_min_seconds": 5}
    asked = client.post("/jobs", json=pretrain_body(train=train)).json()["spec"]
    assert asked["train"]["checkpoint_min_seconds"] == 5


def test_submit_finetune_from_scratch_fills_num_classes_from_the_dataset(client: TestClient) -> None:
    body = finetune_body()
    del body["model"]["num_classes"]

    job = submit(client, body)

    assert job["kind"] == "finetune"
    assert job["depends_on"] is None
    assert job["spec"]["model"]["num_classes"] == 10
    assert job["spec"]["model"]["init"] == {"from": "scratch", "job_id": None}
    assert job["spec"]["train"]["momentum"] == 0.9


def test_submit_finetune_from_a_pretrain_job(client: TestClient) -> None:
    base = submit(client, pretrain_body())

    r = client.post("/jobs", json=finetune_body(base["id"]))

    assert r.status_code == 201
    assert r.headers["Location"] == f"/jobs/{r.json()['id']}"
    assert r.json()["depends_on"] == base["id"]
    assert r.json()["spec"]["model"]["init"] == {"from": "job", "job_id": base["id"]}


def test_submit_finetune_from_a_conv_autoencoder_with_the_same_backbone(client: TestClient) -> None:
    base = submit(client, pretrain_body(model={"arch": "conv_autoencoder", "backbone": "small_cnn"}))
    body = finetune_body(base["id"])
    body["model"] = {"arch": "small_cnn", "init": {"from": "job", "job_id": base["id"]}}

    assert submit(client, body)["depends_on"] == base["id"]


def test_seed_preset_fills_the_articles_pretrain_hyperparameters(client: TestClient) -> None:
    job = submit(client, {"kind": "pretrain", "preset": "seed"})

    spec = job["spec"]
    assert spec["preset"] == "seed"
    assert spec["dataset"]["name"] == "cifar10"
    assert spec["model"]["arch"] == "seed_mlp_autoencoder"
    train = spec["train"]
    assert (train["epochs"], train["batch_size"], train["optimizer"], train["lr"]) == (10, 100, "adam", 1e-3)


def test_seed_preset_fills_the_articles_finetune_hyperparameters(client: TestClient) -> None:
    job = submit(client, {"kind": "finetune", "preset": "seed"})

    spec = job["spec"]
    assert spec["dataset"]["name"] == "cifar10"
    assert spec["model"]["arch"] == "resnet18"
    assert spec["model"]["num_classes"] == 10
    assert spec["model"]["init"]["from"] == "imagenet"
    train = spec["train"]
    assert (train["optimizer"], train["lr"], train["momentum"], train["batch_size"]) == ("sgd", 1e-3, 0.9, 100)


def test_fields_given_with_a_preset_override_it(client: TestClient) -> None:
    job = submit(
        client,
        {"kind": "pretrain", "preset": "seed", "name": "mine", "train": {"epochs": 3}, "model": {"noise": 0.1}},
    )

    spec = job["spec"]
    assert spec["name"] == "mine"
    assert spec["train"]["epochs"] == 3
    assert spec["train"]["batch_size"] == 100  # the rest of the preset's train section stays
    assert spec["model"] == {"arch": "seed_mlp_autoencoder", "noise": 0.1}
    assert job["progress"]["epochs"] == 3


def test_choosing_another_optimizer_over_the_finetune_preset_drops_its_sgd_momentum(client: TestClient) -> None:
    # The user never gave momentum: the preset did. Choosing adam must not be refused for it.
    r = client.post("/jobs", json={"kind": "finetune", "preset": "seed", "train": {"optimizer": "adam"}})

    assert r.status_code == 201, r.text
    train = r.json()["spec"]["train"]
    assert train["optimizer"] == "adam"
    assert train["momentum"] is None
    assert train["epochs"] == 10


def test_an_imagefolder_path_inside_data_dir_is_accepted(client: TestClient, settings: Settings) -> None:
    (settings.data_dir / "pets" / "cats").mkdir(parents=True)
    (settings.data_dir / "alias").symlink_to(settings.data_dir / "pets")

    for path in ["pets", "pets/cats", "alias"]:
        job = submit(client, pretrain_body(dataset={"name": "imagefolder", "path": path, "image_size": 16}))
        assert job["spec"]["dataset"]["path"] == path


# --- POST /jobs: refused --------------------------------------------------------------


UNKNOWN_FIELDS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "top": (pretrain_body(colour="blue"), ["body", "pretrain", "colour"]),
    "train": (pretrain_body(train={"epochs": 2, "speed": "fast"}), ["body", "pretrain", "train", "speed"]),
    "dataset": (
        pretrain_body(dataset={"name": "digits", "split": "a"}),
        ["body", "pretrain", "dataset", "digits", "split"],
    ),
    "model": (finetune_body(model={"arch": "mlp", "depth": 3}), ["body", "finetune", "model", "depth"]),
}


def test_unknown_fields_are_422_naming_them(client: TestClient, subtests: pytest.Subtests) -> None:
    for case, (body, loc) in UNKNOWN_FIELDS.items():
        with subtests.test(case):
            assert_invalid(client.post("/jobs", json=body), loc, "Extra inputs")
    assert client.get("/jobs").json()["data"] == []


# Each rule: the body, where the error is reported, and the words its message must contain.
CROSS_FIELD_RULES: dict[str, tuple[dict[str, Any], list[str], list[str]]] = {
    "momentum-with-adam": (
        pretrain_body(train={"optimizer": "adam", "momentum": 0.9}),
        ["body", "pretrain", "train", "momentum"],
        ["momentum", "sgd"],
    ),
    "nesterov-without-momentum": (
        pretrain_body(train={"optimizer": "sgd", "nesterov": True}),
        ["body", "pretrain", "train", "nesterov"],
        ["nesterov", "momentum"],
    ),
    "nesterov-with-zero-momentum": (
        pretrain_body(train={"optimizer": "sgd", "momentum": 0.0, "nesterov": True}),
        ["body", "pretrain", "train", "nesterov"],
        ["nesterov", "momentum"],
    ),
    "warmup-not-below-epochs": (
        pretrain_body(train={"epochs": 3, "warmup_epochs": 3}),
        ["body", "pretrain", "train", "warmup_epochs"],
        ["warmup_epochs", "epochs"],
    ),
    "labels-per-class-and-fraction": (
        finetune_body(dataset={"name": "digits", "labels_per_class": 10, "label_fraction": 0.5}),
        ["body", "finetune", "dataset", "digits", "label_fraction"],
        ["labels_per_class", "label_fraction"],
    ),
    "imagenet-init-non-resnet": (
        finetune_body(model={"arch": "mlp", "init": {"from": "imagenet"}}),
        ["body", "finetune", "model", "init"],
        ["imagenet", "resnet18"],
    ),
    "hidden-on-non-mlp": (
        finetune_body(model={"arch": "small_cnn", "hidden": [32]}),
        ["body", "finetune", "model", "hidden"],
        ["hidden", "mlp"],
    ),
    "small-input-on-non-resnet": (
        finetune_body(model={"arch": "mlp", "small_input": True}),
        ["body", "finetune", "model", "small_input"],
        ["small_input", "resnet18"],
    ),
    "job-id-without-from-job": (
        finetune_body(model={"arch": "mlp", "init": {"from": "scratch", "job_id": 1}}),
        ["body", "finetune", "model", "init", "job_id"],
        ["job_id", "from=job"],
    ),
    "from-job-without-job-id": (
        finetune_body(model={"arch": "mlp", "init": {"from": "job"}}),
        ["body", "finetune", "model", "init", "job_id"],
        ["job_id"],
    ),
    "fewer-classes-than-dataset": (
        finetune_body(model={"arch": "mlp", "num_classes": 5}),
        ["body", "finetune", "model"],
        ["num_classes"],
    ),
    "seed-autoencoder-on-8x8": (
        pretrain_body(dataset={"name": "digits"}, model={"arch": "seed_mlp_autoencoder"}),
        ["body", "pretrain", "model"],
        ["seed_mlp_autoencoder", "3x32x32"],
    ),
}


def test_cross_field_rules_are_422_naming_the_fields(client: TestClient, subtests: pytest.Subtests) -> None:
    for case, (body, loc, mentions) in CROSS_FIELD_RULES.items():
        with subtests.test(case):
            assert_invalid(client.post("/jobs", json=body), loc, *mentions)
    assert client.get("/jobs").json()["data"] == []


BAD_VALUES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "kind": (pretrain_body(kind="evaluate"), ["body"]),
    "optimizer": (pretrain_body(train={"optimizer": "rmsprop"}), ["body", "pretrain", "train", "optimizer"]),
    "schedule": (pretrain_body(train={"schedule": "step"}), ["body", "pretrain", "train", "schedule"]),
    "lr-zero": (pretrain_body(train={"lr": 0}), ["body", "pretrain", "train", "lr"]),
    "epochs-zero": (pretrain_body(train={"epochs": 0}), ["body", "pretrain", "train", "epochs"]),
    "batch-size-negative": (pretrain_body(train={"batch_size": -1}), ["body", "pretrain", "train", "batch_size"]),
    "epochs-not-a-number": (pretrain_body(train={"epochs": "many"}), ["body", "pretrain", "train", "epochs"]),
    "priority-too-high": (pretrain_body(priority=5000), ["body", "pretrain", "priority"]),
    "max-attempts-zero": (pretrain_body(max_attempts=0), ["body", "pretrain", "max_attempts"]),
    "name-too-long": (pretrain_body(name="x" * 201), ["body", "pretrain", "name"]),
    "preset": (pretrain_body(preset="best"), ["body", "pretrain", "preset"]),
    "preset-object": (pretrain_body(preset={}), ["body", "pretrain", "preset"]),
    "preset-list": (finetune_body(preset=["seed"]), ["body", "finetune", "preset"]),
    "arch": (pretrain_body(model={"arch": "vit"}), ["body", "pretrain", "model"]),
    "dataset": (pretrain_body(dataset={"name": "imagenet"}), ["body", "pretrain", "dataset"]),
    "labels-per-class-zero": (
        finetune_body(dataset={"name": "digits", "labels_per_class": 0}),
        ["body", "finetune", "dataset", "digits", "labels_per_class"],
    ),
    "job-id-zero": (
        finetune_body(model={"arch": "mlp", "init": {"from": "job", "job_id": 0}}),
        ["body", "finetune", "model", "init", "job_id"],
    ),
}


def test_bad_enums_and_ranges_are_422_naming_the_field(client: TestClient, subtests: pytest.Subtests) -> None:
    for case, (body, loc) in BAD_VALUES.items():
        with subtests.test(case):
            r = client.post("/jobs", json=body)
            assert r.status_code == 422, r.text
            assert loc in [e["loc"] for e in r.json()["detail"]]
    assert client.get("/jobs").json()["data"] == []


def test_a_body_that_is_not_json_is_422(client: TestClient) -> None:
    r = client.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})

    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][0] == "body"


def test_an_imagefolder_path_that_is_absolute_or_climbs_out_is_422(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    for path in ["/etc/passwd", "a/../../outside", "..", "~/data", "a\\..\\b"]:
        with subtests.test(path):
            r = client.post("/jobs", json=pretrain_body(dataset={"name": "imagefolder", "path": path}))
            assert_invalid(r, ["body", "pretrain", "dataset", "imagefolder", "path"], "path")


def test_an_imagefolder_path_through_a_symlink_leading_outside_data_dir_is_422(
    client: TestClient, settings: Settings, tmp_path: Path, subtests: pytest.Subtests
) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (settings.data_dir / "nested").mkdir(parents=True)
    (settings.data_dir / "escape").symlink_to(outside)
    (settings.data_dir / "nested" / "escape").symlink_to(outside)

    for path in ["escape", "escape/sub", "nested/escape"]:
        with subtests.test(path):
            r = client.post("/jobs", json=pretrain_body(dataset={"name": "imagefolder", "path": path}))
            assert_invalid(r, ["body", "dataset", "path"], "dataset.path", "DATA_DIR")
    assert client.get("/jobs").json()["data"] == []


def test_a_nul_character_in_a_string_is_a_422_not_a_server_error(client: TestClient) -> None:
    # PostgreSQL cannot store NUL in text: the API must refuse it on both backends, not answer 500 on one.
    r = client.post("/jobs", json=pretrain_body(name="a\x00b"))

    assert r.status_code == 422, r.text
    assert ["body", "pretrain", "name"] in [e["loc"] for e in r.json()["detail"]]


# --- POST /jobs: finetunes and their base job ---------------------------------------------


def test_finetune_from_a_job_that_does_not_exist_is_422(client: TestClient) -> None:
    r = client.post("/jobs", json=finetune_body(999))

    assert_invalid(r, ["body", "model", "init", "job_id"], "999", "does not exist")


def test_finetune_from_a_finetune_job_is_422(client: TestClient) -> None:
    other = submit(client, finetune_body())

    r = client.post("/jobs", json=finetune_body(other["id"]))

    assert_invalid(r, ["body", "model", "init", "job_id"], "finetune", "pretrain")


MISFITS: dict[str, dict[str, Any]] = {
    "hidden": {"model": {"arch": "mlp", "num_classes": 10, "hidden": [64], "bottleneck": 8}},
    "bottleneck": {"model": {"arch": "mlp", "num_classes": 10, "hidden": [32], "bottleneck": 16}},
    "image-shape": {"dataset": {"name": "mnist"}},
    "arch": {"model": {"arch": "small_cnn", "num_classes": 10}},
}


def test_finetune_whose_encoder_does_not_fit_the_base_is_422(client: TestClient, subtests: pytest.Subtests) -> None:
    base = submit(client, pretrain_body())  # mlp on 1x8x8 digits, hidden [32], bottleneck 8

    for case, change in MISFITS.items():
        with subtests.test(case):
            body = finetune_body(base["id"])
            body.update(copy.deepcopy(change))
            body["model"]["init"] = {"from": "job", "job_id": base["id"]}
            r = client.post("/jobs", json=body)
            assert_invalid(r, ["body", "model", "init", "job_id"], f"job {base['id']}'s encoder", "mlp on 1x8x8")
    assert len(client.get("/jobs").json()["data"]) == 1


@pytest.mark.parametrize("base_status", ["failed", "cancelled"])
def test_finetune_from_a_failed_or_cancelled_base_is_422(client: TestClient, base_status: str) -> None:
    base_id = run_job(client, pretrain_body(), base_status)

    r = client.post("/jobs", json=finetune_body(base_id))

    assert_invalid(r, ["body", "model", "init", "job_id"], base_status)


def test_finetune_from_a_queued_base_waits_for_it_then_starts_from_its_checkpoint(client: TestClient) -> None:
    base = submit(client, pretrain_body())
    tuned = submit(client, finetune_body(base["id"]))
    assert tuned["status"] == "queued"

    token = claim_job(client, base["id"])
    assert claim(client, "w2") is None  # the finetune waits for its base
    weights = b"encoder weights" * 10
    assert put_checkpoint(client, base["id"], token, weights, "best").status_code == 201
    assert claim(client, "w2") is None
    assert finish(client, base["id"], token).status_code == 200

    claimed = claim(client, "w2")
    assert claimed is not None
    assert claimed["id"] == tuned["id"]
    init = claimed["init_checkpoint"]
    assert init["job_id"] == base["id"]
    assert init["tag"] == "best"
    assert init["size"] == len(weights)
    assert init["url"] == f"/worker/jobs/{base['id']}/checkpoints/best?format=pt"
    assert client.get(init["url"], headers={"X-Lease-Token": claimed["lease_token"]}).content == weights


def end_base(client: TestClient, base_id: int, how: str) -> None:
    if how == "cancelled-while-queued":
        assert client.post(f"/jobs/{base_id}/cancel").status_code == 200
        return
    token = claim_job(client, base_id)
    if how == "failed":
        assert finish(client, base_id, token, "failed", error="CUDA out of memory").status_code == 200
    else:
        assert client.post(f"/jobs/{base_id}/cancel").status_code == 200
        assert finish(client, base_id, token, "cancelled").status_code == 200


@pytest.mark.parametrize("how", ["failed", "cancelled-while-queued", "cancelled-while-running"])
def test_a_waiting_finetune_fails_naming_its_base_when_the_base_does_not_succeed(client: TestClient, how: str) -> None:
    base = submit(client, pretrain_body())
    tuned = submit(client, finetune_body(base["id"]))

    end_base(client, base["id"], how)

    job = client.get(f"/jobs/{tuned['id']}").json()
    assert job["status"] == "failed"
    assert f"base job {base['id']}" in job["error"]
    assert job["finished_at"] is not None
    assert claim(client) is None


# --- Idempotency-Key ---------------------------------------------------------------------


def test_same_idempotency_key_and_body_returns_the_first_job_with_200(client: TestClient) -> None:
    first = client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-1"})
    again = client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-1"})

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert [j["id"] for j in client.get("/jobs").json()["data"]] == [first.json()["id"]]


def test_same_idempotency_key_with_another_body_is_409(client: TestClient) -> None:
    client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-1"})

    r = client.post("/jobs", json=pretrain_body(name="other"), headers={"Idempotency-Key": "k-1"})

    assert r.status_code == 409
    assert "Idempotency-Key" in r.json()["detail"]
    assert len(client.get("/jobs").json()["data"]) == 1


def test_a_refused_request_does_not_use_up_its_idempotency_key(client: TestClient) -> None:
    bad = client.post("/jobs", json=pretrain_body(train={"lr": 0}), headers={"Idempotency-Key": "k-1"})

    good = client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-1"})

    assert (bad.status_code, good.status_code) == (422, 201)


def test_different_idempotency_keys_make_different_jobs(client: TestClient) -> None:
    a = client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-1"})
    b = client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-2"})

    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


def test_an_idempotency_key_older_than_its_ttl_makes_a_new_job(client: TestClient, db: Database) -> None:
    first = client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-1"}).json()
    with db.write() as session:
        session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))

    r = client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-1"})

    assert r.status_code == 201
    assert r.json()["id"] != first["id"]
    again = client.post("/jobs", json=pretrain_body(), headers={"Idempotency-Key": "k-1"})
    assert (again.status_code, again.json()["id"]) == (200, r.json()["id"])


# --- GET /jobs -----------------------------------------------------------------------------


def test_list_is_newest_first(client: TestClient) -> None:
    ids = [submit(client, pretrain_body(name=f"j{i}"))["id"] for i in range(3)]

    page = client.get("/jobs").json()

    assert [j["id"] for j in page["data"]] == ids[::-1]
    assert page["next_cursor"] is None


def test_list_filters_by_status_and_kind(client: TestClient) -> None:
    done = run_job(client, pretrain_body())
    queued_pretrain = submit(client, pretrain_body())["id"]
    queued_finetune = submit(client, finetune_body(done))["id"]
    cancelled = submit(client, finetune_body())["id"]
    client.post(f"/jobs/{cancelled}/cancel")

    def ids(**query: str) -> list[int]:
        r = client.get("/jobs", params=query)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]]

    assert ids(status="queued") == [queued_finetune, queued_pretrain]
    assert ids(status="succeeded") == [done]
    assert ids(status="cancelled") == [cancelled]
    assert ids(status="running") == []
    assert ids(kind="pretrain") == [queued_pretrain, done]
    assert ids(kind="finetune") == [cancelled, queued_finetune]
    assert ids(status="queued", kind="finetune") == [queued_finetune]


def test_cursor_pagination_visits_every_job_once(client: TestClient) -> None:
    ids = [submit(client, pretrain_body(name=f"j{i}"))["id"] for i in range(7)]

    seen: list[int] = []
    pages = 0
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = client.get("/jobs", params=params).json()
        pages += 1
        assert len(page["data"]) <= 3
        seen += [j["id"] for j in page["data"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]

    assert seen == sorted(ids, reverse=True)
    assert pages == 3


def test_cursor_pagination_with_a_filter(client: TestClient) -> None:
    pretrains = []
    for i in range(5):
        pretrains.append(submit(client, pretrain_body(name=f"p{i}"))["id"])
        submit(client, finetune_body())

    first = client.get("/jobs", params={"kind": "pretrain", "limit": 2}).json()
    second = client.get("/jobs", params={"kind": "pretrain", "limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/jobs", params={"kind": "pretrain", "limit": 2, "cursor": second["next_cursor"]}).json()

    got = [j["id"] for page in (first, second, third) for j in page["data"]]
    assert got == pretrains[::-1]
    assert third["next_cursor"] is None


def test_a_page_that_ends_exactly_at_the_last_job_has_no_next_cursor(client: TestClient) -> None:
    for _ in range(3):
        submit(client, pretrain_body())

    assert client.get("/jobs", params={"limit": 3}).json()["next_cursor"] is None


BAD_LIST_PARAMETERS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "limit-501": ({"limit": 501}, ["query", "limit"]),
    "limit-0": ({"limit": 0}, ["query", "limit"]),
    "status": ({"status": "done"}, ["query", "status"]),
    "kind": ({"kind": "eval"}, ["query", "kind"]),
    "cursor-text": ({"cursor": "abc"}, ["query", "cursor"]),
    "cursor-negative": ({"cursor": "-3"}, ["query", "cursor"]),
    "cursor-zero": ({"cursor": "0"}, ["query", "cursor"]),
    "cursor-huge": ({"cursor": "99999999999"}, ["query", "cursor"]),
    "cursor-superscript-digit": ({"cursor": "²"}, ["query", "cursor"]),  # str.isdigit() is true for it
    "cursor-too-long": ({"cursor": "1" * 21}, ["query", "cursor"]),
}


def test_bad_list_parameters_are_422(client: TestClient, subtests: pytest.Subtests) -> None:
    for case, (params, loc) in BAD_LIST_PARAMETERS.items():
        with subtests.test(case):
            r = client.get("/jobs", params=params)
            assert r.status_code == 422, r.text
            assert loc in [e["loc"] for e in r.json()["detail"]]


def test_limit_500_is_allowed(client: TestClient) -> None:
    assert client.get("/jobs", params={"limit": 500}).status_code == 200


# --- GET /jobs/{id} ---------------------------------------------------------------------------


def test_get_job_shows_state_progress_and_result(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    heartbeat(client, job_id, token, {"epoch": 1, "epochs": 2, "step": 29})

    running = client.get(f"/jobs/{job_id}").json()
    assert running["status"] == "running"
    assert running["attempt"] == 1
    assert running["progress"] == {"epoch": 1, "epochs": 2, "step": 29}
    assert running["worker"] == "w1"
    assert running["device"] == "cpu"
    assert running["started_at"] is not None
    assert running["finished_at"] is None

    finish(client, job_id, token, result={"test_accuracy": 0.93})
    job = client.get(f"/jobs/{job_id}").json()

    expected = {
        "id", "kind", "name", "status", "spec", "created_at", "updated_at", "started_at", "finished_at",
        "attempt", "progress", "error", "result", "depends_on",
    }  # fmt: skip
    assert expected <= job.keys()
    assert job["status"] == "succeeded"
    assert job["result"] == {"test_accuracy": 0.93}
    assert job["error"] is None
    created, started, finished = (datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at"))
    assert created <= started <= finished


def test_get_unknown_job_is_404_with_a_message(client: TestClient) -> None:
    r = client.get("/jobs/12345")

    assert r.status_code == 404
    assert r.json() == {"detail": "job 12345 not found"}


def test_a_job_id_out_of_range_is_422_not_500(client: TestClient, subtests: pytest.Subtests) -> None:
    for job_id in ["0", "-1", str(2**31), str(10**30), "abc", "1.5"]:
        for method, path in [
            ("GET", f"/jobs/{job_id}"),
            ("POST", f"/jobs/{job_id}/cancel"),
            ("DELETE", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/metrics"),
            ("GET", f"/jobs/{job_id}/checkpoints"),
            ("GET", f"/jobs/{job_id}/checkpoint"),
        ]:
            with subtests.test(f"{method} {path}"):
                r = client.request(method, path)
                assert r.status_code == 422
                assert r.json()["detail"][0]["loc"] == ["path", "job_id"]


# --- POST /jobs/{id}/cancel ----------------------------------------------------------------------


def test_cancel_a_queued_job_cancels_it_at_once(client: TestClient) -> None:
    job_id = submit(client, pretrain_body())["id"]

    r = client.post(f"/jobs/{job_id}/cancel")

    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    assert claim(client) is None


def test_cancel_a_running_job_requests_it_and_the_next_heartbeat_says_so(client: TestClient) -> None:
    job_id, token = start(client, pretrain_body())
    assert heartbeat(client, job_id, token).json() == {"cancel_requested": False}

    r = client.post(f"/jobs/{job_id}/cancel")

    assert r.status_code == 200
    assert r.json()["status"] == "running"
    assert r.json()["cancel_requested"] is True
    assert heartbeat(client, job_id, token).json() == {"cancel_requested": True}
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200  # asking twice is harmless
    assert finish(client, job_id, token, "cancelled").status_code == 200
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_a_finished_job_is_409(client: TestClient, status: str) -> None:
    job_id = run_job(client, pretrain_body(), status)

    r = client.post(f"/jobs/{job_id}/cancel")

    assert r.status_code == 409
    assert status in r.json()["detail"]
    assert client.get(f"/jobs/{job_id}").json()["status"] == status


def test_cancel_an_unknown_job_is_404(client: TestClient) -> None:
    r = client.post("/jobs/999/cancel")

    assert r.status_code == 404
    assert r.json()["detail"] == "job 999 not found"


# --- DELETE /jobs/{id} ----------------------------------------------------------------------------


def metric_rows(db: Database, job_id: int) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(MetricPoint).where(MetricPoint.job_id == job_id)) or 0


def test_delete_a_finished_job_removes_it_its_metrics_and_its_checkpoint_files(
    client: TestClient, settings: Settings, db: Database
) -> None:
    job_id, token = start(client, pretrain_body())
    post_points(client, job_id, token, [{"name": "train_loss", "step": s, "value": 1.0 / (s + 1)} for s in range(5)])
    assert put_checkpoint(client, job_id, token, b"last" * 20, "last").status_code == 201
    assert put_checkpoint(client, job_id, token, b"best" * 20, "best").status_code == 201
    assert put_checkpoint(client, job_id, token, b"st" * 20, "best", fmt="safetensors").status_code == 201
    finish(client, job_id, token)
    assert len(files_of_job(settings.artifacts_dir, job_id)) == 3
    assert metric_rows(db, job_id) == 5
    other = submit(client, pretrain_body())["id"]

    r = client.delete(f"/jobs/{job_id}")

    assert r.status_code == 204
    assert r.content == b""
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/jobs/{job_id}/metrics").status_code == 404
    assert client.get(f"/jobs/{job_id}/checkpoint").status_code == 404
    assert not (settings.artifacts_dir / "jobs" / str(job_id)).exists()
    assert metric_rows(db, job_id) == 0
    assert [j["id"] for j in client.get("/jobs").json()["data"]] == [other]
    assert client.delete(f"/jobs/{job_id}").status_code == 404


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_delete_a_failed_or_cancelled_job(client: TestClient, status: str) -> None:
    job_id = run_job(client, pretrain_body(), status)

    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_delete_a_queued_or_running_job_is_409(client: TestClient) -> None:
    running, _ = start(client, pretrain_body())
    queued = submit(client, pretrain_body())["id"]

    for job_id, status in [(queued, "queued"), (running, "running")]:
        r = client.delete(f"/jobs/{job_id}")
        assert r.status_code == 409
        assert status in r.json()["detail"]
        assert "cancel" in r.json()["detail"]
        assert client.get(f"/jobs/{job_id}").json()["status"] == status


def test_delete_the_finished_base_of_a_queued_finetune_is_409(client: TestClient) -> None:
    base = run_job(client, pretrain_body())
    tuned = submit(client, finetune_body(base))["id"]

    r = client.delete(f"/jobs/{base}")

    assert r.status_code == 409
    assert str(tuned) in r.json()["detail"]
    assert client.get(f"/jobs/{base}").status_code == 200


def test_delete_the_base_of_a_finished_finetune(client: TestClient) -> None:
    base, token = start(client, pretrain_body())
    assert put_checkpoint(client, base, token, b"encoder", "best").status_code == 201
    assert finish(client, base, token).status_code == 200
    tuned = run_job(client, finetune_body(base))

    assert client.delete(f"/jobs/{base}").status_code == 204
    assert client.get(f"/jobs/{tuned}").json()["status"] == "succeeded"


def test_a_deleted_jobs_id_is_not_given_to_a_new_job(client: TestClient) -> None:
    # Old links (Location: /jobs/<id>) must not start pointing at someone else's job.
    run_job(client, pretrain_body())
    newest = run_job(client, pretrain_body(name="doomed"))
    assert client.delete(f"/jobs/{newest}").status_code == 204

    new = submit(client, pretrain_body(name="new"))

    assert new["id"] != newest
    assert client.get(f"/jobs/{newest}").status_code == 404


def test_delete_an_unknown_job_is_404(client: TestClient) -> None:
    r = client.delete("/jobs/999")

    assert r.status_code == 404
    assert r.json()["detail"] == "job 999 not found"


# --- health ----------------------------------------------------------------------------------------


def test_healthz(client: TestClient, db: Database) -> None:
    r = client.get("/healthz")

    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["database"] == db.backend


def test_an_unknown_kind_arch_or_dataset_is_422_naming_the_known_ones(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    cases = {
        "kind": (pretrain_body(kind="gan"), "kind must be one of: pretrain, finetune"),
        "arch": (
            pretrain_body(model={"arch": "vae"}),
            "'mlp_autoencoder', 'seed_mlp_autoencoder', 'conv_autoencoder', 'dcgan'",
        ),
        "finetune arch": (
            finetune_body(model={"arch": "vit"}),
            "'mlp', 'small_cnn', 'resnet18' or 'dcgan_discriminator'",
        ),
        "dataset": (pretrain_body(dataset={"name": "imagenet"}), "'digits', 'cifar10'"),
    }
    for case, (body, known) in cases.items():
        with subtests.test(case):
            r = client.post("/jobs", json=body)
            assert r.status_code == 422, r.text
            assert any(known in e["msg"] for e in r.json()["detail"]), r.json()
    assert client.get("/jobs").json()["data"] == []


def test_list_filters_by_a_part_of_the_name_in_any_case_wildcards_taken_literally(client: TestClient) -> None:
    ids = {name: submit(client, pretrain_body(name=name))["id"] for name in ("Digits-AE", "digits_clf", "cifar 100%")}
    submit(client, pretrain_body(name=None))

    def named(part: str) -> list[int]:
        r = client.get("/jobs", params={"name": part})
        assert r.status_code == 200, r.text
        return [job["id"] for job in r.json()["data"]]

    assert named("DIGITS") == [ids["digits_clf"], ids["Digits-AE"]]
    assert named("s_c") == [ids["digits_clf"]]  # "_" is an underscore, not any character ("s-A" is not found)
    assert named("0%") == [ids["cifar 100%"]]
    assert named("%") == [ids["cifar 100%"]]
    assert named("nothing") == []


def test_early_stopping_on_a_metric_the_job_does_not_report_is_a_422_that_names_the_choices(
    client: TestClient,
) -> None:
    r = client.post("/jobs", json=pretrain_body(train={"epochs": 5, "early_stopping": {"metric": "val_loss"}}))
    assert r.status_code == 422
    message = r.json()["detail"][0]["msg"]
    assert "early_stopping.metric: 'val_loss' is not a metric of this job" in message
    assert "test_loss" in message and "val_fraction" in message
    ok = pretrain_body(train={"epochs": 5, "early_stopping": {"metric": "test_loss", "patience": 2}})
    job = submit(client, ok)
    assert job["spec"]["train"]["early_stopping"] == {
        "metric": "test_loss",
        "mode": None,
        "patience": 2,
        "min_delta": 0.0,
        "target": None,
    }
