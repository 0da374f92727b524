"""Early stopping (``train.early_stopping``): the rule, a plateau, a target, resume, and the 422 for a
metric the job does not report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.specs.jobs import EarlyStopping
from tests.worker.training.helpers import Recorder, finetune, pretrain, synthetic
from worker.training import StopRequested, run_training
from worker.training.stopping import StoppingState, fires

MODEL = {"arch": "mlp_autoencoder", "hidden": [16], "bottleneck": 4}
SMALL = synthetic(num_samples=40)  # 32 training images: 2 steps of 16


def test_the_rule_fires_after_patience_epochs_without_a_big_enough_improvement() -> None:
    rule = EarlyStopping(metric="test_accuracy", patience=2, min_delta=0.01)
    state = StoppingState()
    seen = [fires(rule, state, {"test_accuracy": v}, epoch) for epoch, v in enumerate([0.5, 0.7, 0.705, 0.69], 1)]
    assert seen == [False, False, False, True]  # 0.705 is not 0.01 better than 0.7: two epochs without
    assert state.best == 0.7 and state.stopped_epoch == 4
    loss = EarlyStopping(metric="test_loss", patience=1, target=0.2)
    assert fires(loss, StoppingState(), {"test_loss": 0.19}, 1)  # min by default: at or below the target
    assert not fires(EarlyStopping(metric="test_loss", mode="max", patience=3), StoppingState(), {"test_loss": 0.1}, 1)


def test_a_plateau_stops_the_job_with_its_best_checkpoint_and_says_so(recorder: Recorder) -> None:
    rule = {"metric": "test_loss", "patience": 2, "min_delta": 0.05}
    spec = pretrain(MODEL, SMALL, epochs=50, lr=1e-7, early_stopping=rule)  # the loss cannot move
    result = run_training(spec, recorder.context())
    assert result["stopped_early"] is True and result["stopped_epoch"] == 3 and result["epochs"] == 3
    assert max(epoch for _, epoch, _ in recorder.values("test_loss")) == 3
    tags = {(tag, epoch) for tag, path, epoch, _, _ in recorder.checkpoints if path.suffix == ".pt"}
    assert ("best", 1) in tags and ("last", 3) in tags


def test_a_target_reached_stops_at_once_and_no_rule_firing_runs_every_epoch(recorder: Recorder, tmp_path: Path) -> None:
    reached = run_training(
        pretrain(MODEL, SMALL, epochs=5, early_stopping={"metric": "train_loss", "target": 100.0}), recorder.context()
    )
    assert reached["stopped_epoch"] == 1
    patient = Recorder(tmp_path / "data", tmp_path / "patient")
    whole = run_training(
        pretrain(MODEL, SMALL, epochs=3, early_stopping={"metric": "test_loss", "patience": 10}), patient.context()
    )
    assert whole["stopped_early"] is False and whole["epochs"] == 3 and whole["stopped_epoch"] is None


def test_a_resumed_run_stops_where_the_whole_run_did(tmp_path: Path) -> None:
    spec = pretrain(
        MODEL, SMALL, epochs=50, lr=1e-7, early_stopping={"metric": "test_loss", "patience": 3, "min_delta": 0.05}
    )
    whole = run_training(spec, Recorder(tmp_path / "data", tmp_path / "whole").context())
    parts = Recorder(tmp_path / "data", tmp_path / "parts")
    parts.stop_after_step = 5  # mid-epoch 3: the state of epochs 1 and 2 is in the checkpoint
    with pytest.raises(StopRequested):
        run_training(spec, parts.context())
    parts.stop_after_step = None
    resumed = run_training(spec, parts.context(resume_from=parts.work_dir / "last.pt"))
    assert resumed == whole and whole["stopped_epoch"] == 4


@pytest.mark.parametrize(
    ("kind", "metric", "dataset"),
    [
        ("pretrain", "val_loss", SMALL),  # no validation split
        ("pretrain", "test_accuracy", SMALL),  # an autoencoder has no accuracy
        ("finetune", "bogus", SMALL),
    ],
)
def test_a_metric_the_job_does_not_report_is_refused_at_submit(kind: str, metric: str, dataset: dict[str, Any]) -> None:
    make = pretrain if kind == "pretrain" else finetune
    model = MODEL if kind == "pretrain" else {"arch": "mlp", "hidden": [16], "bottleneck": 4}
    with pytest.raises(ValidationError, match=f"early_stopping.metric: '{metric}' is not a metric of this job"):
        make(model, dataset, early_stopping={"metric": metric})
    if metric == "val_loss":
        assert make(model, synthetic(num_samples=40, val_fraction=0.25), early_stopping={"metric": metric})


def test_a_metric_that_never_came_is_a_reason_and_a_rule_at_the_last_epoch_stopped_nothing(recorder: Recorder) -> None:
    from worker.training import TrainingError

    with pytest.raises(TrainingError, match=r"early_stopping\.metric 'val_loss' was not reported"):
        fires(EarlyStopping(metric="val_loss"), StoppingState(), {"test_loss": 0.1}, 1)
    last = run_training(
        pretrain(MODEL, SMALL, epochs=1, early_stopping={"metric": "train_loss", "target": 100.0}), recorder.context()
    )
    assert last["stopped_early"] is False and last["epochs"] == 1
