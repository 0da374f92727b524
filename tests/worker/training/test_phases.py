"""Phases (``train.phases``): a linear probe then a full finetune in one job; the backbone trains only in
the second phase; resume across the boundary (and inside each phase) is bit-exact; the spec's rules."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from tests.worker.training.helpers import Recorder, finetune, pretrain, synthetic
from worker.training import StopRequested, run_training

MODEL = {"arch": "mlp", "hidden": [16], "bottleneck": 4}
SMALL = synthetic(num_samples=40)  # 32 training images: 2 steps of 16
PHASES = [
    {"epochs": 2, "freeze_backbone": True, "lr": 0.1},
    {"epochs": 2, "freeze_backbone": False, "lr": 0.01, "optimizer": "sgd", "schedule": "cosine"},
]


def encoder(path: Path) -> dict[str, torch.Tensor]:
    model = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in model.items() if k.startswith("encoder.")}


def head(path: Path) -> dict[str, torch.Tensor]:
    model = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in model.items() if not k.startswith("encoder.")}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_probe_then_a_finetune_trains_the_backbone_only_in_the_second_phase_and_resumes_bit_exact(
    tmp_path: Path,
) -> None:
    spec = finetune(MODEL, SMALL, epochs=4, phases=PHASES, optimizer="adam")
    whole = Recorder(tmp_path / "data", tmp_path / "whole")
    kept: dict[int, Path] = {}

    def keep(tag: str, path: Path, epoch: int, step: int, metric: float | None, _sha256: str) -> None:
        whole.checkpoints.append((tag, path, epoch, step, metric))
        if tag == "last" and path.suffix == ".pt":  # each epoch's end: copied before the next overwrites it
            kept[epoch] = Path(shutil.copy(path, tmp_path / f"epoch-{epoch}.pt"))

    whole_result = run_training(spec, replace(whole.context(), on_checkpoint=keep))
    final = whole.work_dir / "last.pt"
    assert [torch.load(kept[e], weights_only=True)["phase"] for e in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert same(encoder(kept[1]), encoder(kept[2]))  # phase one: the backbone did not move
    assert not same(head(kept[1]), head(kept[2]))  # ... the head did
    assert not same(encoder(kept[2]), encoder(kept[3]))  # phase two trains the backbone
    lrs = [v for _, _, v in whole.values("lr")]
    assert lrs[:2] == [0.1, 0.1] and lrs[2] < 0.01 and lrs[3] < lrs[2]  # cosine over phase two's own steps

    boundary = Recorder(tmp_path / "data", tmp_path / "boundary")  # from the end of phase one
    assert run_training(spec, boundary.context(resume_from=kept[2])) == whole_result
    inside = Recorder(tmp_path / "data", tmp_path / "inside")
    inside.stop_after_step = 5  # mid-epoch 3: inside phase two
    with pytest.raises(StopRequested):
        run_training(spec, inside.context())
    inside.stop_after_step = None
    assert run_training(spec, inside.context(resume_from=inside.work_dir / "last.pt")) == whole_result
    assert inside.stable_metrics() == whole.stable_metrics()
    for other in (boundary.work_dir / "last.pt", inside.work_dir / "last.pt"):
        a, b = torch.load(final, weights_only=True), torch.load(other, weights_only=True)
        assert same(a["model"], b["model"])
        for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
            assert same(x, y)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"epochs": 3, "phases": PHASES}, "the phases add up to 4"),
        ({"warmup_epochs": 1, "epochs": 4, "phases": PHASES}, "warmup_epochs does not go with phases"),
        ({"optimizer": "sgd", "momentum": 0.9, "phases": [{"epochs": 1, "lr": 0.1, "optimizer": "adam"}]}, "momentum"),
        ({"phases": []}, "at least 1 item"),
    ],
)
def test_phases_that_do_not_fit_the_job_are_refused(train: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        finetune(MODEL, SMALL, **train)


def test_epochs_left_out_are_the_phases_sum() -> None:
    from app.core.specs import parse_job_spec

    body = {"kind": "finetune", "dataset": SMALL, "model": MODEL, "train": {"batch_size": 16, "phases": PHASES}}
    assert parse_job_spec(body).train.epochs == 4


def test_phases_are_for_finetune_jobs() -> None:
    with pytest.raises(ValidationError, match="phases are for finetune jobs"):
        pretrain({"arch": "mlp_autoencoder", "hidden": [16], "bottleneck": 4}, SMALL, epochs=4, phases=PHASES)


def test_the_article_preset_takes_phases_and_a_model_level_freeze_does_not_go_with_them() -> None:
    from app.core.specs import parse_job_spec

    body = {"kind": "finetune", "preset": "seed", "train": {"phases": PHASES}}
    assert parse_job_spec(body).train.epochs == 4
    with pytest.raises(ValidationError, match=r"model\.freeze_backbone does not go with train\.phases"):
        finetune({**MODEL, "freeze_backbone": True}, SMALL, epochs=4, phases=PHASES)


def test_early_stopping_applies_to_the_last_phase_alone(recorder: Recorder) -> None:
    # lr so small nothing moves: patience 1 would fire in phase one's second epoch; it waits for phase two
    flat = [{"epochs": 2, "freeze_backbone": True, "lr": 1e-7}, {"epochs": 3, "lr": 1e-7}]
    rule = {"metric": "test_loss", "patience": 1, "min_delta": 0.5}
    result = run_training(finetune(MODEL, SMALL, epochs=5, phases=flat, early_stopping=rule), recorder.context())
    assert result["stopped_early"] is True and result["stopped_epoch"] == 4  # phase two's second epoch
