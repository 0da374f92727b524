"""The SDK's own rules, against a stand-in server (httpx.MockTransport): what is retried, what is raised."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

import trainjobs
from trainjobs.cli import set_path
from trainjobs.credentials import resolve, save

JOB = {"id": 7, "kind": "pretrain", "status": "queued", "spec": {}}


def client_of(answers: list[httpx.Response | Exception], calls: list[httpx.Request]) -> trainjobs.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return trainjobs.Client("http://tj", "tj_x_y", retry_seconds=5, transport=httpx.MockTransport(handle))


def test_busy_and_unreachable_are_retried_until_an_answer_and_a_submit_keeps_its_idempotency_key() -> None:
    calls: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "busy"}),
        httpx.ConnectError("refused"),
        httpx.Response(201, json=JOB),
    ]
    with client_of(answers, calls) as tj:
        assert tj.submit({"kind": "pretrain"}).id == 7
    assert len(calls) == 3
    keys = {c.headers["Idempotency-Key"] for c in calls}
    assert len(keys) == 1  # the same key each time: a retry cannot make a second job


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, trainjobs.Unauthorized),
        (404, trainjobs.NotFound),
        (409, trainjobs.Conflict),
        (422, trainjobs.ValidationError),
    ],
)
def test_a_client_error_is_raised_at_once_with_its_status_and_detail(status: int, error: type[Exception]) -> None:
    calls: list[httpx.Request] = []
    detail = [{"loc": ["body", "train", "lr"], "msg": "must be > 0"}] if status == 422 else "no"
    with client_of([httpx.Response(status, json={"detail": detail})], calls) as tj, pytest.raises(error) as raised:
        tj.get(7)
    assert len(calls) == 1
    assert raised.value.status == status and raised.value.detail == detail  # type: ignore[attr-defined]
    if status == 422:
        assert "train.lr: must be > 0" in str(raised.value)


def test_set_edits_any_field_by_its_dotted_path_reading_values_as_json_where_they_are() -> None:
    body: dict[str, object] = {"train": {"lr": 0.1}}
    for assignment in ["train.lr=0.01", "train.optimizer=sgd", "model.hidden=[64, 32]", "dataset.download=true"]:
        set_path(body, assignment)
    assert body == {
        "train": {"lr": 0.01, "optimizer": "sgd"},
        "model": {"hidden": [64, 32]},
        "dataset": {"download": True},
    }


def test_the_argument_beats_the_environment_which_beats_the_credentials_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("TRAINJOBS_SERVER", raising=False)
    monkeypatch.delenv("TRAINJOBS_TOKEN", raising=False)
    path = save("http://file:8000", "tj_file_token")
    assert (path.stat().st_mode & 0o777) == 0o600 and json.loads(path.read_text())["token"] == "tj_file_token"
    assert (resolve().server, resolve().token) == ("http://file:8000", "tj_file_token")
    monkeypatch.setenv("TRAINJOBS_TOKEN", "tj_env_token")
    assert resolve().token == "tj_env_token"
    assert resolve(token="tj_flag_token").token == "tj_flag_token"


def test_a_cancel_is_sent_again_only_when_the_first_never_arrived_or_was_shed() -> None:
    calls: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),  # never arrived
        httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "busy"}),  # shed before anything
        httpx.ReadTimeout("no answer"),  # it may have been done: not sent again
    ]
    with client_of(answers, calls) as tj, pytest.raises(trainjobs.ServiceUnavailable):
        tj.cancel(7)
    assert len(calls) == 3


def test_a_download_whose_partial_file_is_already_whole_is_checked_and_finished(tmp_path: Path) -> None:
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "c.pt.part").write_bytes(data)
    (tmp_path / "c.pt.part.etag").write_text(f'"{digest}"')
    calls: list[httpx.Request] = []
    with client_of([httpx.Response(416, json={"detail": "range"})], calls) as tj:
        path = tj.download_checkpoint(7, tmp_path / "c.pt")
    assert path.read_bytes() == data and calls[0].headers["Range"] == f"bytes={len(data)}-"
    assert not (tmp_path / "c.pt.part").exists()


def test_sweeps_reads_every_page_up_to_its_limit_and_a_sweeps_bests_are_typed() -> None:
    def sweep(i: int) -> dict[str, object]:
        return {"id": i, "status": "running", "counts": {"queued": 1}}

    calls: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.Response(200, json={"data": [sweep(9), sweep(8)], "next_cursor": "8"}),
        httpx.Response(200, json={"data": [sweep(7)], "next_cursor": None}),
        httpx.Response(
            200,
            json={
                **sweep(7),
                "status": "succeeded",
                "best_trial": {"index": 2, "status": "succeeded", "value": 0.9, "job_ids": [3, 4]},
                "settings": [{"params": {"train.lr": 0.1}, "count": 2, "mean": 0.85}],
            },
        ),
    ]
    with client_of(answers, calls) as tj:
        assert [s.id for s in tj.sweeps(limit=None)] == [9, 8, 7]
        done = tj.wait_sweep(7, timeout=5)
    assert done.finished and done.best_trial is not None and done.best_trial.job_ids == [3, 4]
    assert done.settings[0].mean == 0.85
    assert calls[1].url.params["cursor"] == "8" and calls[0].url.params["limit"] == "500"
