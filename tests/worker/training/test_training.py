"""Training runs end to end on CPU: every arch, the metric and checkpoint contract, resume, init, NaN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from app.core.specs import FinetuneSpec, PretrainSpec
from tests.worker.training.helpers import Recorder, finetune, pretrain, synthetic
from worker.training import StopRequested, TrainingError, run_training
from worker.training.data import load_dataset
from worker.training.finetune import ClassificationTask
from worker.training.loop import fit
from worker.training.nets import build_classifier, encoder_state_dict
from worker.training.task import Runtime, make_optimizer

EPOCH_METRICS = {"train_loss", "test_loss", "lr", "epoch_seconds", "samples_per_second"}
CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "epoch",
    "step",
    "rng",
    "best_metric",
    "spec",
    "trainjobs_version",
    "step_in_epoch",
}
SMALL = synthetic(num_samples=40)  # 32 training images: 2 steps of 16


def load_pt(path: Path) -> dict[str, Any]:
    checkpoint = torch.load(path, weights_only=True)
    assert isinstance(checkpoint, dict)
    return checkpoint


def assert_same_tensors(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "model",
    [
        {"arch": "mlp_autoencoder", "hidden": [64, 32], "bottleneck": 16, "noise": 0.1},
        {"arch": "conv_autoencoder", "backbone": "small_cnn"},
        {"arch": "conv_autoencoder", "backbone": "resnet18", "small_input": True},
        {"arch": "conv_autoencoder", "backbone": "resnet18", "small_input": False},
    ],
    ids=lambda m: "-".join(str(v) for v in m.values())[:40],
)
def test_every_pretrain_arch_runs_an_epoch(recorder: Recorder, model: dict[str, Any]) -> None:
    spec = pretrain(model, SMALL)
    result = run_training(spec, recorder.context())
    assert result["primary_metric"] == "test_loss" and result["best_epoch"] == 1 and result["steps"] == 2
    assert result["test_loss"] == result["best_test_loss"] > 0
    assert {p["name"] for p in recorder.metrics} == EPOCH_METRICS
    check_checkpoint_files(recorder, spec.model_dump(mode="json", by_alias=True))


@pytest.mark.parametrize(
    "model",
    [
        {"arch": "mlp", "hidden": [64], "bottleneck": 32},
        {"arch": "small_cnn"},
        {"arch": "resnet18", "small_input": True},
        {"arch": "resnet18"},
    ],
    ids=lambda m: "-".join(str(v) for v in m.values()),
)
def test_every_finetune_arch_runs_an_epoch(recorder: Recorder, model: dict[str, Any]) -> None:
    spec = finetune(model, SMALL, optimizer="sgd", momentum=0.9, lr=0.01)
    result = run_training(spec, recorder.context())
    assert result["primary_metric"] == "test_accuracy" and 0 <= result["test_accuracy"] <= 1
    names = {p["name"] for p in recorder.metrics}
    assert names == EPOCH_METRICS | {"train_accuracy", "test_accuracy"}
    check_checkpoint_files(recorder, spec.model_dump(mode="json", by_alias=True))


def check_checkpoint_files(recorder: Recorder, spec: dict[str, Any]) -> None:
    """best and last, each as .pt then .safetensors, loadable without pickle."""
    assert [(tag, path.name) for tag, path, *_ in recorder.checkpoints] == [
        ("best", "best.pt"),
        ("best", "best.safetensors"),
        ("last", "last.pt"),
        ("last", "last.safetensors"),
    ]
    checkpoint = load_pt(recorder.work_dir / "last.pt")
    assert checkpoint.keys() >= CHECKPOINT_KEYS
    assert checkpoint["spec"] == spec and checkpoint["epoch"] == 1 and checkpoint["step"] == 2
    assert_same_tensors(load_file(recorder.work_dir / "last.safetensors"), checkpoint["model"])
    assert sorted(p.name for p in recorder.work_dir.iterdir()) == [
        "best.pt",
        "best.safetensors",
        "last.pt",
        "last.safetensors",
    ]  # no temporary files left behind
    best = load_pt(recorder.work_dir / "best.pt")  # the weights and where: no optimizer state (only last resumes)
    assert best.keys() >= CHECKPOINT_KEYS - {"optimizer"} and "optimizer" not in best
    assert_same_tensors(best["model"], checkpoint["model"])  # the one epoch was the best
    assert (recorder.work_dir / "best.pt").stat().st_size < (recorder.work_dir / "last.pt").stat().st_size


def test_metrics_steps_epochs_and_checkpoint_schedule(recorder: Recorder) -> None:
    # 48 training images in batches of 10: 5 steps per epoch (the last one of 8), logged every 2 steps.
    spec = finetune(
        {"arch": "mlp", "hidden": [32], "bottleneck": 16},
        synthetic(num_samples=60),
        epochs=3,
        batch_size=10,
        log_every_steps=2,
        checkpoint_every_epochs=2,
        schedule="cosine",
        warmup_epochs=1,
    )
    result = run_training(spec, recorder.context())
    train_loss = recorder.values("train_loss")
    assert [(s, e) for s, e, _ in train_loss] == [
        (2, 1),
        (4, 1),
        (5, 1),
        (6, 2),
        (8, 2),
        (10, 2),
        (12, 3),
        (14, 3),
        (15, 3),
    ]
    for name in EPOCH_METRICS - {"train_loss"} | {"train_accuracy", "test_accuracy"}:
        assert [(s, e) for s, e, _ in recorder.values(name)] == [(5, 1), (10, 2), (15, 3)], name
    lrs = [v for _, _, v in recorder.values("lr")]
    assert lrs[0] == pytest.approx(1e-3) and lrs[0] > lrs[1] > lrs[2]  # warmup ends at step 5, cosine after
    assert result["test_accuracy"] == recorder.values("test_accuracy")[-1][2]
    best_epoch = max(range(3), key=lambda i: (recorder.values("test_accuracy")[i][2], -i)) + 1
    assert result["best_epoch"] == best_epoch
    assert recorder.progress[-1] == (3, 3, 15) and (1, 3, 2) in recorder.progress
    pt = [(tag, epoch, step) for tag, path, epoch, step, _ in recorder.checkpoints if path.suffix == ".pt"]
    assert ("last", 2, 10) in pt and ("last", 3, 15) in pt and ("last", 1, 5) not in pt and ("best", 1, 5) in pt
    assert all(metric is not None for *_, metric in recorder.checkpoints)


def test_same_seed_same_metrics_and_weights(tmp_path: Path) -> None:
    spec = finetune({"arch": "small_cnn"}, synthetic(num_samples=40, augment="flip_crop"), epochs=2, log_every_steps=1)
    runs = [Recorder(tmp_path / "data", tmp_path / f"work{i}") for i in range(2)]
    for r in runs:
        run_training(spec, r.context())
    assert runs[0].stable_metrics() == runs[1].stable_metrics()
    assert_same_tensors(load_pt(runs[0].work_dir / "last.pt")["model"], load_pt(runs[1].work_dir / "last.pt")["model"])
    other = Recorder(tmp_path / "data", tmp_path / "work-seed1")
    run_training(finetune({"arch": "small_cnn"}, synthetic(num_samples=40), epochs=2, seed=1), other.context())
    assert other.values("train_loss") != runs[0].values("train_loss")


RESUME_CASES: dict[str, PretrainSpec | FinetuneSpec] = {
    "finetune-sgd-flipcrop": finetune(
        {"arch": "mlp", "hidden": [48], "bottleneck": 24},
        synthetic(num_samples=60, augment="flip_crop"),
        epochs=4,
        batch_size=10,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-3,
        schedule="cosine",
        warmup_epochs=1,
        log_every_steps=3,
        lr=0.05,
    ),
    "pretrain-adam-denoising": pretrain(
        {"arch": "mlp_autoencoder", "hidden": [48], "bottleneck": 12, "noise": 0.2},
        synthetic(num_samples=60),
        epochs=4,
        batch_size=10,
        schedule="onecycle",
        log_every_steps=3,
    ),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_stop_and_resume_is_bit_identical(tmp_path: Path, case: str) -> None:
    spec = RESUME_CASES[case]  # 5 steps per epoch, 20 in all
    whole = Recorder(tmp_path / "data", tmp_path / "whole")
    whole_result = run_training(spec, whole.context())

    parts = Recorder(tmp_path / "data", tmp_path / "parts")
    parts.stop_after_step = 7  # mid-epoch 2, mid log window
    with pytest.raises(StopRequested):
        run_training(spec, parts.context())
    assert parts.checkpoints[-2][0] == "last" and parts.checkpoints[-2][2:] == (2, 7, None)
    assert max(p["step"] for p in parts.metrics) == 6
    last = parts.work_dir / "last.pt"
    assert load_pt(last)["step_in_epoch"] == 2

    parts.polls, parts.stop_after_step = 0, 3  # then stop again at the end of epoch 2 (step 10)
    with pytest.raises(StopRequested):
        run_training(spec, parts.context(resume_from=last))
    assert load_pt(last)["step"] == 10

    parts.stop_after_step = None
    result = run_training(spec, parts.context(resume_from=last))

    assert parts.stable_metrics() == whole.stable_metrics()  # no gap, no duplicate, same values
    final_whole, final_parts = load_pt(whole.work_dir / "last.pt"), load_pt(last)
    assert_same_tensors(final_whole["model"], final_parts["model"])
    for a, b in zip(
        final_whole["optimizer"]["state"].values(), final_parts["optimizer"]["state"].values(), strict=True
    ):
        assert_same_tensors(a, b)
    assert result == whole_result


def test_pretrained_encoder_initialises_finetune_and_freezing_keeps_it(recorder: Recorder, tmp_path: Path) -> None:
    mlp = {"hidden": [64, 32], "bottleneck": 16}
    run_training(pretrain({"arch": "mlp_autoencoder", **mlp}, SMALL), recorder.context())
    base = recorder.work_dir / "best.pt"
    encoder = encoder_state_dict(load_pt(base)["model"])
    job = {"from": "job", "job_id": 1}

    # Stopping before the first step saves the starting weights: they are the pretrain encoder's.
    start = Recorder(tmp_path / "data", tmp_path / "start", stop_after_step=0)
    with pytest.raises(StopRequested):
        run_training(finetune({"arch": "mlp", "init": job, **mlp}, SMALL), start.context(init_from=base))
    assert_same_tensors(encoder_state_dict(load_pt(start.work_dir / "last.pt")["model"]), encoder)

    frozen = Recorder(tmp_path / "data", tmp_path / "frozen")
    spec = finetune({"arch": "mlp", "init": job, "freeze_backbone": True, **mlp}, SMALL, epochs=2, lr=0.01)
    run_training(spec, frozen.context(init_from=base))
    trained = load_pt(frozen.work_dir / "last.pt")["model"]
    assert_same_tensors(encoder_state_dict(trained), encoder)  # weights and BatchNorm statistics
    assert not torch.equal(trained["head.weight"], load_pt(start.work_dir / "last.pt")["model"]["head.weight"])

    wrong = finetune({"arch": "mlp", "init": job, "hidden": [64], "bottleneck": 16}, SMALL)
    with pytest.raises(TrainingError, match="does not fit"):
        run_training(wrong, Recorder(tmp_path / "data", tmp_path / "wrong").context(init_from=base))


def test_conv_autoencoder_encoder_initialises_small_cnn(recorder: Recorder, tmp_path: Path) -> None:
    run_training(pretrain({"arch": "conv_autoencoder", "backbone": "small_cnn"}, SMALL), recorder.context())
    base = recorder.work_dir / "best.safetensors"  # the weights-only file works as well
    start = Recorder(tmp_path / "data", tmp_path / "start", stop_after_step=0)
    spec = finetune({"arch": "small_cnn", "init": {"from": "job", "job_id": 1}}, SMALL)
    with pytest.raises(StopRequested):
        run_training(spec, start.context(init_from=base))
    started = encoder_state_dict(load_pt(start.work_dir / "last.pt")["model"])
    assert_same_tensors(started, encoder_state_dict(load_file(base)))


def test_nan_from_a_broken_base_checkpoint_fails_at_step_1(recorder: Recorder, tmp_path: Path) -> None:
    # BatchNorm and Tanh keep these nets finite even at lr=10, so the NaN comes from the weights.
    mlp = {"hidden": [32], "bottleneck": 8}
    run_training(pretrain({"arch": "mlp_autoencoder", **mlp}, SMALL), recorder.context())
    checkpoint = load_pt(recorder.work_dir / "best.pt")
    checkpoint["model"]["encoder.1.weight"][0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "broken.pt")
    spec = finetune({"arch": "mlp", "init": {"from": "job", "job_id": 1}, **mlp}, SMALL, log_every_steps=50)
    with pytest.raises(TrainingError, match=r"^loss became NaN at epoch 1, step 1$"):
        run_training(spec, Recorder(tmp_path / "data", tmp_path / "ft").context(init_from=tmp_path / "broken.pt"))


class TurnsNaN(nn.Module):
    """Wraps a classifier; its training forward passes return NaN from call ``at`` on."""

    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.at:
                return out * float("nan")
        return out


def test_nan_mid_window_names_its_exact_step(recorder: Recorder) -> None:
    spec = finetune({"arch": "mlp", "hidden": [16]}, synthetic(num_samples=60), epochs=3, batch_size=10)
    spec.train.log_every_steps = 4
    splits = load_dataset(spec.dataset, recorder.data_dir, seed=0)
    model = TurnsNaN(build_classifier(spec.model, (3, 16, 16), 4), at=7)
    runtime = Runtime.of(spec.train, "cpu", model)
    task = ClassificationTask(model, runtime, make_optimizer(model.parameters(), spec.train, runtime.device), False)
    with pytest.raises(TrainingError, match=r"^loss became NaN at epoch 2, step 7$"):
        fit(spec, recorder.context(), task, splits)
    assert [p["step"] for p in recorder.metrics if p["name"] == "train_loss"] == [4, 5]
    assert all(tag != "last" or epoch == 1 for tag, _, epoch, *_ in recorder.checkpoints)


def test_digits_mlp_from_scratch_reaches_97_percent(recorder: Recorder) -> None:
    spec = finetune(
        {"arch": "mlp"},
        {"name": "digits"},
        epochs=10,
        batch_size=32,
        lr=2e-3,
        schedule="cosine",
        checkpoint_every_epochs=10,
    )
    result = run_training(spec, recorder.context())
    assert result["test_accuracy"] >= 0.97, result


def test_validation_split_adds_val_metrics(recorder: Recorder) -> None:
    spec = finetune({"arch": "mlp", "hidden": [16]}, synthetic(num_samples=60, val_fraction=0.25))
    result = run_training(spec, recorder.context())
    names = {p["name"] for p in recorder.metrics}
    assert {"val_loss", "val_accuracy"} <= names and "val_accuracy" in result


def test_channels_last_on_cpu_trains_the_same_as_contiguous(tmp_path: Path) -> None:
    """Conv nets run NHWC on CPU too (faster oneDNN convolutions); the training is the same up to rounding."""
    results, weights = [], []
    for channels_last in (True, False):
        recorder = Recorder(data_dir=tmp_path / "data", work_dir=tmp_path / str(channels_last))
        spec = finetune(
            {"arch": "small_cnn"}, SMALL, optimizer="sgd", momentum=0.9, lr=0.01, channels_last=channels_last
        )
        results.append(run_training(spec, recorder.context()))
        weights.append(load_file(recorder.work_dir / "last.safetensors"))
    fast, plain = results
    assert fast["test_loss"] == pytest.approx(plain["test_loss"], rel=1e-4)
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-4, atol=1e-5)


def test_channels_last_is_used_for_conv_nets_on_cuda_and_cpu_only() -> None:
    from worker.training.task import use_channels_last

    cnn = build_classifier(finetune({"arch": "small_cnn"}).model, (3, 16, 16), 4)
    mlp = build_classifier(finetune({"arch": "mlp", "hidden": [8], "bottleneck": 4}).model, (3, 16, 16), 4)
    on, off = finetune({"arch": "small_cnn"}).train, finetune({"arch": "small_cnn"}, channels_last=False).train
    assert use_channels_last(on, torch.device("cpu"), cnn)
    assert use_channels_last(on, torch.device("cuda"), cnn)
    assert not use_channels_last(on, torch.device("mps"), cnn)
    assert not use_channels_last(on, torch.device("cpu"), mlp)
    assert not use_channels_last(off, torch.device("cpu"), cnn)


def test_a_checkpoint_in_the_first_layout_resumes(tmp_path: Path) -> None:
    """A job a worker of trainjobs 0.1 saved mid-epoch (rolling upgrade) resumes on this one."""
    spec = RESUME_CASES["finetune-sgd-flipcrop"]
    whole = Recorder(tmp_path / "data", tmp_path / "whole")
    whole_result = run_training(spec, whole.context())
    parts = Recorder(tmp_path / "data", tmp_path / "parts", stop_after_step=7)
    with pytest.raises(StopRequested):
        run_training(spec, parts.context())
    last = parts.work_dir / "last.pt"
    checkpoint = load_pt(last)
    partial = checkpoint["partial"]
    window = partial.pop("window")
    sums = partial.pop("epoch_sums")
    checkpoint["partial"] = {  # the first layout, as 0.1 wrote it
        **partial,
        "epoch_loss": sums["train_loss"],
        "epoch_correct": sums["train_accuracy"],
        "window_epochs": [w["epoch"] for w in window],
        "window_steps": [w["step"] for w in window],
        "window_losses": [w["values"]["train_loss"] / w["n"] for w in window],
        "window_sizes": [w["n"] for w in window],
    }
    checkpoint["scheduler"] = {"last_epoch": 7}
    torch.save(checkpoint, last)
    parts.stop_after_step = None
    result = run_training(spec, parts.context(resume_from=last))
    got, want = parts.stable_metrics(), whole.stable_metrics()
    assert [m[:3] for m in got] == [m[:3] for m in want]  # no gap, no duplicate
    assert [m[3] for m in got] == pytest.approx([m[3] for m in want], rel=1e-6)
    assert result["test_accuracy"] == whole_result["test_accuracy"]


def test_a_checkpoint_this_worker_cannot_read_fails_with_a_reason(recorder: Recorder, tmp_path: Path) -> None:
    spec = finetune({"arch": "mlp", "hidden": [16]}, SMALL)
    run_training(spec, recorder.context())
    checkpoint = load_pt(recorder.work_dir / "last.pt")
    del checkpoint["partial"]
    torch.save(checkpoint, tmp_path / "odd.pt")
    again = Recorder(tmp_path / "data", tmp_path / "again")
    with pytest.raises(TrainingError, match=r"^the checkpoint to resume from is not one this worker can read"):
        run_training(spec, again.context(resume_from=tmp_path / "odd.pt"))
