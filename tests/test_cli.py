"""The ``trainjobs`` command and SDK against a real API process and a real worker running tiny jobs.

Each command runs as a user would run it (``python -m trainjobs.cli``, not a terminal: plain output);
``--json`` output is parsed, never the tables.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import trainjobs
from devtools.servers import REPO, ApiServer, WorkerProcess
from tests.conftest import TINY_JOB

pytestmark = pytest.mark.slow
DIGITS_PRETRAIN = """\
kind: pretrain
name: digits-ae
dataset: {name: digits}
model: {arch: mlp_autoencoder, hidden: [32], bottleneck: 8}
train: {epochs: 1, batch_size: 64}
"""
DIGITS_FINETUNE = {  # the encoder's widths left out: they come from the pretrain job
    "kind": "finetune",
    "name": "digits-clf",
    "dataset": {"name": "digits", "labels_per_class": 10},
    "model": {"arch": "mlp", "num_classes": 10},
    "train": {"epochs": 1, "batch_size": 32},
}


@dataclass
class Service:
    api: ApiServer
    env: dict[str, str]
    root: Path

    def run(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trainjobs.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.root,
            timeout=180,
        )

    def json(self, *args: str, stdin: str | None = None) -> Any:
        done = self.run(*args, "--json", stdin=stdin)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def client(self) -> trainjobs.Client:
        return trainjobs.Client(self.api.url, self.api.token)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("cli")
    with (
        ApiServer(root / "api") as api,
        WorkerProcess(api.url, root / "worker", poll_seconds=0.2, start_method="forkserver"),
    ):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TRAINJOBS_SERVER": api.url,
            "TRAINJOBS_TOKEN": api.token,
            "XDG_CONFIG_HOME": str(root / "config"),
        }
        yield Service(api, env, root)


def test_login_saves_credentials_readable_by_the_user_alone_and_the_flag_beats_the_env_beats_the_file(
    service: Service,
) -> None:
    no_env = {"TRAINJOBS_SERVER": "", "TRAINJOBS_TOKEN": ""}
    done = service.run("login", "--server", service.api.url, "--token", service.api.token, env=no_env)
    assert done.returncode == 0, done.stderr
    saved = service.root / "config" / "trainjobs" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == {"server": service.api.url, "token": service.api.token}
    me = json.loads(service.run("whoami", "--json", env=no_env).stdout)  # from the file
    assert me["username"] == "admin"
    wrong_env = service.run("whoami", env={"TRAINJOBS_TOKEN": "tj_wrong_token"})  # the env beats the file
    assert wrong_env.returncode == 1 and "401" in wrong_env.stderr
    done = service.run("logout")
    assert done.returncode == 0 and not saved.exists()


def test_submit_yaml_with_set_then_watch_show_list_logs_metrics_and_checkpoints(service: Service) -> None:
    spec = service.root / "ae.yaml"
    spec.write_text(DIGITS_PRETRAIN)
    job = service.json("submit", str(spec), "--set", "train.epochs=2", "--set", "train.lr=0.002", "--name", "cli-ae")
    assert job["spec"]["train"]["epochs"] == 2 and job["spec"]["train"]["lr"] == 0.002 and job["name"] == "cli-ae"
    watched = service.run("watch", str(job["id"]))
    assert watched.returncode == 0, watched.stderr
    assert f"job {job['id']} succeeded" in watched.stdout

    shown = service.json("show", str(job["id"]))
    assert shown["status"] == "succeeded"
    assert shown["progress"]["epoch"] == shown["progress"]["epochs"] == 2  # the final progress, not a stale one
    assert job["id"] in [j["id"] for j in service.json("list", "--status", "succeeded")]

    found = service.json("metrics", str(job["id"]), "--name", "train_loss")
    assert set(found["series"]) == {"train_loss"} and found["series"]["train_loss"]
    csv_out = service.run("metrics", str(job["id"]), "--csv").stdout.splitlines()
    assert csv_out[0] == "name,step,epoch,value,time" and len(csv_out) > 3
    png = service.root / "curves.png"
    assert service.run("metrics", str(job["id"]), "--plot", str(png), "--log-y").returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    tags = {(c["tag"], c["format"]) for c in service.json("checkpoints", str(job["id"]))}
    assert ("best", "pt") in tags and ("last", "safetensors") in tags

    lines = [json.loads(line) for line in service.run("logs", str(job["id"]), "--json").stdout.splitlines()]
    texts = [line["text"] for line in lines]
    assert any(line["stream"] == "system" and "attempt 1 of" in line["text"] for line in lines), texts
    assert any(t.startswith("epoch 2/2") and "train_loss" in t for t in texts), texts
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    tail = [
        json.loads(line) for line in service.run("logs", str(job["id"]), "--tail", "2", "--json").stdout.splitlines()
    ]
    assert tail == lines[-2:]


def test_a_request_the_service_refuses_is_shown_as_its_fields_and_what_is_wrong(service: Service) -> None:
    done = service.run("submit", "-", "--set", "train.lr=-1", "--set", "train.epochs=zero", stdin=json.dumps(TINY_JOB))
    assert done.returncode == 1
    assert "train.lr:" in done.stderr and "train.epochs:" in done.stderr, done.stderr


def test_watch_exits_2_for_a_cancelled_job(service: Service) -> None:
    long_job = {**TINY_JOB, "train": {"epochs": 10_000, "batch_size": 16}}
    job = service.json("submit", "-", stdin=json.dumps(long_job))
    assert service.json("cancel", str(job["id"]))["id"] == job["id"]
    assert service.run("watch", str(job["id"])).returncode == 2


def test_pipeline_follows_both_jobs_and_the_finetune_takes_the_encoder_widths_from_the_pretrain(
    service: Service,
) -> None:
    pretrain, finetune = service.root / "p.yaml", service.root / "f.json"
    pretrain.write_text(DIGITS_PRETRAIN)
    finetune.write_text(json.dumps(DIGITS_FINETUNE))
    done = service.run("pipeline", str(pretrain), str(finetune), "--follow")
    assert done.returncode == 0, done.stderr
    first, second = _ids(done.stdout)
    with service.client() as tj:
        clf = tj.get(second)
        assert clf.status == "succeeded" and clf.depends_on == first
        assert clf.spec["model"]["hidden"] == [32] and clf.spec["model"]["bottleneck"] == 8
        assert "test_accuracy" in (clf.result or {})


def _ids(text: str) -> tuple[int, int]:
    numbers = [int(w) for w in text.replace("(", " ").replace(")", " ").split() if w.isdigit()]
    return numbers[0], numbers[1]


def test_download_resumes_a_truncated_file_and_refuses_a_corrupted_one(service: Service) -> None:
    with service.client() as tj:
        job = tj.submit(TINY_JOB)
        tj.wait(job.id, timeout=120)
    whole = service.root / "whole.pt"
    got = service.json("download", str(job.id), "--tag", "last", "-o", str(whole))
    data = whole.read_bytes()
    assert got["size"] == len(data) > 0
    expected = hashlib.sha256(data).hexdigest()

    resumed = service.root / "resumed.pt"
    (service.root / "resumed.pt.part").write_bytes(data[: len(data) // 2])
    (service.root / "resumed.pt.part.etag").write_text(f'"{expected}"')
    assert service.run("download", str(job.id), "--tag", "last", "-o", str(resumed)).returncode == 0
    assert resumed.read_bytes() == data and not (service.root / "resumed.pt.part").exists()

    corrupted = service.root / "corrupted.pt"
    (service.root / "corrupted.pt.part").write_bytes(b"\0" * (len(data) // 2))
    (service.root / "corrupted.pt.part.etag").write_text(f'"{expected}"')
    done = service.run("download", str(job.id), "--tag", "last", "-o", str(corrupted))
    assert done.returncode == 1 and "checksum" in done.stderr
    assert not corrupted.exists() and not (service.root / "corrupted.pt.part").exists()


def test_the_sdk_lists_every_page_and_raises_typed_errors(service: Service) -> None:
    with service.client() as tj:
        ids = [tj.submit(TINY_JOB, name=f"page-{i}").id for i in range(3)]
        listed = [j.id for j in tj.list(page_size=1)]
        assert set(ids) <= set(listed) and len(listed) == len(set(listed))
        with pytest.raises(trainjobs.NotFound) as missing:
            tj.get(10**9)
        assert missing.value.status == 404
        with pytest.raises(trainjobs.ValidationError) as invalid:
            tj.submit({**TINY_JOB, "train": {"epochs": 0}})
        assert any(e["loc"][-1] == "epochs" for e in invalid.value.errors)
        for job_id in ids:
            tj.wait(job_id, timeout=120)


def test_watch_exits_1_for_a_failed_job_and_shows_its_reason(service: Service) -> None:
    # Weight decay 1 at lr 10 multiplies every weight by -9 each step: inf, then NaN, within 400 steps.
    exploding = {
        **TINY_JOB,
        "train": {"epochs": 200, "batch_size": 16, "optimizer": "sgd", "lr": 10, "weight_decay": 1.0},
    }
    job = service.json("submit", "-", stdin=json.dumps(exploding))
    watched = service.run("watch", str(job["id"]))
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert f"job {job['id']} failed" in watched.stdout and "NaN" in watched.stdout


def test_tokens_are_made_listed_and_revoked_and_a_finished_job_deleted(service: Service) -> None:
    made = service.json("tokens", "create", "ci-laptop", "--expires-in-days", "1")
    assert made["token"].startswith("tj_") and made["name"] == "ci-laptop"
    assert service.run("whoami", env={"TRAINJOBS_TOKEN": made["token"]}).returncode == 0
    assert made["id"] in [t["id"] for t in service.json("tokens", "list")]
    assert service.run("tokens", "revoke", str(made["id"])).returncode == 0
    refused = service.run("whoami", env={"TRAINJOBS_TOKEN": made["token"]})
    assert refused.returncode == 1 and "401" in refused.stderr

    with service.client() as tj:
        job = tj.submit(TINY_JOB)
        tj.wait(job.id, timeout=120)
    assert service.run("delete", str(job.id)).returncode == 0
    missing = service.run("show", str(job.id))
    assert missing.returncode == 1 and "404" in missing.stderr


def test_the_async_client_submits_follows_events_and_downloads(service: Service) -> None:
    import asyncio

    async def run() -> tuple[list[str], int]:
        async with trainjobs.AsyncClient(service.api.url, service.api.token) as tj:
            job = await tj.submit(TINY_JOB)
            names = [event["event"] async for event in tj.events(job.id)]
            done = await tj.wait(job.id, timeout=60)
            assert done.status == "succeeded" and [c.tag for c in await tj.checkpoints(job.id)]
            path = await tj.download_checkpoint(job.id, service.root / "async.pt", tag="last")
            return names, path.stat().st_size

    names, size = asyncio.run(run())
    assert names[0] == "status" and names[-1] == "end" and "log" in names and "metrics" in names
    assert size > 0


SWEEP_YAML = """\
name: cli-sweep
base:
  kind: pretrain
  dataset: {name: synthetic, num_samples: 32, image_shape: [1, 8, 8]}
  model: {arch: mlp_autoencoder, hidden: [16], bottleneck: 4}
  train: {epochs: 1, batch_size: 16}
parameters:
  train.lr: {values: [0.01, 0.001]}
seeds: [0, 1]
max_concurrent: 1
"""


def test_a_sweep_from_yaml_is_followed_to_its_table_then_retry_has_nothing_to_do_and_delete_takes_it(
    service: Service,
) -> None:
    spec = service.root / "sweep.yaml"
    spec.write_text(SWEEP_YAML)
    done = service.json("sweep", "submit", str(spec), "--follow")
    assert done["status"] == "succeeded" and done["trial_count"] == 4 and done["metric"] == "test_loss"
    assert len(done["settings"]) == 2 and all(s["count"] == 2 for s in done["settings"])
    best = min(done["settings"], key=lambda s: s["mean"])
    assert done["best_setting"]["params"] == best["params"]
    shown = service.run("sweep", "show", str(done["id"]), "--trials")
    assert shown.returncode == 0 and "best setting: train.lr=" in shown.stdout and "succeeded" in shown.stdout
    assert done["id"] in [s["id"] for s in service.json("sweep", "list")]
    retried = service.run("sweep", "retry", str(done["id"]))
    assert retried.returncode == 1 and "no failed or cancelled trials" in retried.stderr
    with service.client() as tj:
        trials = list(tj.list(sweep=done["id"]))
    assert sorted(j.id for j in trials) == sorted(i for t in done["trials"] for i in t["job_ids"])
    spans = sorted((j.started_at, j.finished_at) for j in trials)
    assert all(a[1] is not None and b[0] is not None and a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert service.run("sweep", "delete", str(done["id"])).returncode == 0
    assert service.run("sweep", "show", str(done["id"])).returncode == 1


def test_the_low_label_study_runs_as_sweeps_and_prints_and_writes_its_table(service: Service) -> None:
    readme = service.root / "README.md"
    readme.write_text("# x\n<!-- low-label:5:start -->\nold table\n<!-- low-label:5:end -->\nafter\n")
    table = service.root / "low-label.md"
    done = service.run(
        "experiment",
        "low-label",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--no-gan",
        "--markdown",
        str(table),
        "--readme",
        str(readme),
    )  # fmt: skip  (the GAN's rows: tests/test_experiments.py plans them; a dcgan job runs in test_worker_processes)
    assert done.returncode == 0, done.stderr
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")][1:]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert names == [
        "`mlp` from scratch",
        "plain autoencoder → full finetune",
        "plain autoencoder → linear probe",
        "denoising autoencoder (`noise` 0.5) → full finetune",
        "denoising autoencoder → linear probe (`freeze_backbone`)",
        "denoising autoencoder → linear probe, then full finetune (`train.phases`)",
        "LogisticRegression",
        "SVC",
    ]
    assert all("%" in row for row in rows)
    assert all("/2 seeds better" in row for row in rows[1:])
    assert "seeds 100-101" in table.read_text() and "--seeds 2 --epochs 1 --no-gan" in table.read_text()
    text = readme.read_text()
    assert "old table" not in text and rows[0] in text and text.endswith("<!-- low-label:5:end -->\nafter\n")
    with service.client() as tj:
        sweeps = tj.sweeps(limit=20)
    study = [s for s in sweeps if (s.name or "").startswith("low-label")]
    assert len(study) == 6 and all(s.status == "succeeded" and s.trial_count == 2 for s in study)


def test_workers_lists_the_worker_that_serves_this_module_with_what_it_can_run(service: Service) -> None:
    with service.client() as tj:
        tj.wait(tj.submit(TINY_JOB).id, timeout=120)  # the worker has claimed since it started
    found = service.json("workers")
    assert len(found) == 1
    me = found[0]
    assert me["lost"] is False and "dcgan" in me["archs"] and me["devices"][0]["name"] == "cpu"
    assert me["succeeded_last_hour"] >= 1
    assert "live" in service.run("workers").stdout
