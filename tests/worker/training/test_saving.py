"""When checkpoints are written: not within ``checkpoint_min_seconds`` of the last one, a new best held meanwhile.

A long run of short epochs spent most of its time writing checkpoints (issue 16, target 7); these tests
hold the rule to what a user relies on: the final checkpoint is always there, the best one is the best
epoch's, a stop request loses nothing, and a resumed run never refers to a best that was not written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.training.helpers import Recorder, pretrain, synthetic
from worker.training import StopRequested, run_training, saving

SMALL = synthetic(num_samples=40)  # 32 training images: 2 steps of 16
MLP = {"arch": "mlp_autoencoder", "hidden": [32], "bottleneck": 8}


def written(recorder: Recorder) -> list[tuple[str, int]]:
    return [(tag, epoch) for tag, path, epoch, _, _ in recorder.checkpoints if path.suffix == ".pt"]


def test_a_fast_run_writes_its_best_and_its_last_once_at_the_end(tmp_path: Path) -> None:
    every = Recorder(tmp_path / "data", tmp_path / "every")
    rare = Recorder(tmp_path / "data", tmp_path / "rare")
    spec = pretrain(MLP, SMALL, epochs=6, optimizer="adam", lr=0.01)
    expected = run_training(spec, every.context())
    result = run_training(
        spec.model_copy(update={"train": spec.train.model_copy(update={"checkpoint_min_seconds": 30})}), rare.context()
    )
    assert result == expected  # when checkpoints are written changes nothing of the training
    best = result["best_epoch"]
    assert written(rare) == [("best", best), ("last", 6)]
    assert len(written(every)) > 2
    kept = torch.load(rare.work_dir / "best.pt", weights_only=True)
    each = torch.load(every.work_dir / "best.pt", weights_only=True)
    assert kept["epoch"] == best and all(torch.equal(kept["model"][k], v) for k, v in each["model"].items())


def test_last_comes_once_the_time_since_the_previous_write_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(tmp_path / "data", tmp_path / "work")

    class Clock:  # ten seconds an epoch: the epochs reported so far
        @staticmethod
        def monotonic() -> float:
            return 10.0 * sum(1 for p in recorder.metrics if p["name"] == "epoch_seconds")

    monkeypatch.setattr(saving, "time", Clock)
    spec = pretrain(MLP, SMALL, epochs=7, checkpoint_min_seconds=25)
    run_training(spec, recorder.context())
    assert [epoch for tag, epoch in written(recorder) if tag == "last"] == [3, 6, 7]
    sequence = written(recorder)
    for i, (tag, epoch) in enumerate(sequence):  # a best goes out with the next last, never on its own
        assert tag == "last" or (sequence[i + 1][0] == "last" and epoch <= sequence[i + 1][1])


def test_a_stop_request_writes_the_held_best_then_its_last(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "data", tmp_path / "work")
    recorder.stop_after_step = 7  # in epoch 4
    spec = pretrain(MLP, SMALL, epochs=6, checkpoint_min_seconds=3600)
    with pytest.raises(StopRequested):
        run_training(spec, recorder.context())
    (best_tag, best_epoch), (last_tag, last_epoch) = written(recorder)
    assert (best_tag, last_tag, last_epoch) == ("best", "last", 4) and 1 <= best_epoch <= 3
    last = torch.load(recorder.work_dir / "last.pt", weights_only=True)
    assert last["step"] == 7 and last["best_epoch"] == best_epoch  # the best it names is the one written


def test_weights_too_large_to_hold_are_written_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saving, "HOLD_BYTES", 0)
    recorder = Recorder(tmp_path / "data", tmp_path / "work")
    spec = pretrain(MLP, SMALL, epochs=4, optimizer="adam", lr=0.01, checkpoint_min_seconds=3600)
    result = run_training(spec, recorder.context())
    bests = [epoch for tag, epoch in written(recorder) if tag == "best"]
    assert bests[-1] == result["best_epoch"] and len(bests) >= 2  # each improvement, as it came


def test_a_run_resumed_from_a_best_without_optimizer_state_trains_on_from_its_weights(tmp_path: Path) -> None:
    first = Recorder(tmp_path / "data", tmp_path / "first")
    spec = pretrain(MLP, SMALL, epochs=4, optimizer="adam", lr=0.01)
    run_training(spec, first.context())
    best: dict[str, Any] = torch.load(first.work_dir / "best.pt", weights_only=True)
    assert "optimizer" not in best
    again = Recorder(tmp_path / "data", tmp_path / "again")
    longer = pretrain(MLP, SMALL, epochs=6, optimizer="adam", lr=0.01)
    result = run_training(longer, again.context(resume_from=first.work_dir / "best.pt"))
    assert result["epochs"] == 6 and again.values("train_loss")[0][1] == best["epoch"] + 1
