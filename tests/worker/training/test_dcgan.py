"""The DCGAN pretrain: its networks' shapes and sizes at 32 and 64, a short run's losses and sample grids,
resume bit-exact with both networks and both optimizers, and a finetune from its discriminator."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from app.core.estimates import params_of
from app.core.specs import parse_job_spec
from tests.worker.training.helpers import Recorder, finetune, pretrain, synthetic
from worker.training import StopRequested, run_training
from worker.training.dcgan import Dcgan
from worker.training.nets import build_model, count_parameters, encoder_state_dict


def load_pt(path: Path) -> dict[str, Any]:
    return dict(torch.load(path, weights_only=True))


@pytest.mark.parametrize(
    ("size", "channels", "params", "features"),
    # pytorch/examples' dcgan at 64x64 RGB, width 64, latent 100: G 3,576,704 + D 2,765,568 parameters.
    [(64, 3, 3_576_704 + 2_765_568, 512 * 16), (32, 1, None, 256 * 16)],
)
def test_networks_have_the_papers_shapes_and_sizes(size: int, channels: int, params: int | None, features: int) -> None:
    spec = pretrain({"arch": "dcgan"}, synthetic(image_shape=[channels, size, size]))
    model = build_model(spec)
    assert isinstance(model, Dcgan)
    assert count_parameters(model) == params_of(spec)
    if params is not None:
        assert count_parameters(model) == params
    z = torch.randn(5, 100)
    images = model(z)
    assert images.shape == (5, channels, size, size) and images.abs().max() <= 1.0  # Tanh
    assert model.encoder(images).shape == (5, features)
    assert model.discriminate(images).shape == (5,)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert abs(float(torch.cat([c.weight.detach().flatten() for c in convs]).std()) - 0.02) < 0.002  # N(0, 0.02)
    assert spec.train.lr == 2e-4


def test_a_dcgan_needs_square_32_or_64_images_and_adam() -> None:
    with pytest.raises(ValidationError, match="32x32 or 64x64"):
        pretrain({"arch": "dcgan"}, {"name": "digits"})
    with pytest.raises(ValidationError, match="with adam"):
        pretrain({"arch": "dcgan"}, {"name": "digits", "image_size": 32}, optimizer="sgd")
    with pytest.raises(ValidationError, match="32x32 or 64x64"):
        finetune({"arch": "dcgan_discriminator"}, synthetic(image_shape=[3, 16, 16]))
    assert pretrain({"arch": "dcgan"}, {"name": "digits", "image_size": 32}, lr=1e-3).train.lr == 1e-3


def test_a_short_run_reports_finite_losses_and_writes_a_sample_grid_each_epoch(tmp_path: Path) -> None:
    artifacts: list[tuple[str, bytes]] = []
    recorder = Recorder(tmp_path / "data", tmp_path / "work")
    ctx = recorder.context()
    ctx.on_artifact = lambda name, path: artifacts.append((name, path.read_bytes()))
    spec = pretrain({"arch": "dcgan", "width": 8, "latent_dim": 16}, synthetic(num_samples=48, image_shape=[1, 32, 32]))
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 2, "log_every_steps": 1})})
    result = run_training(spec, ctx)

    for name in ("d_loss", "g_loss", "d_real", "d_fake", "test_d_loss", "test_d_real", "test_d_fake"):
        values = [v for _, _, v in recorder.values(name)]
        assert values and all(torch.isfinite(torch.tensor(values))), name
    assert all(0.0 <= v <= 1.0 for _, _, v in recorder.values("d_real") + recorder.values("d_fake"))
    assert result["primary_metric"] == "test_d_loss" and {"g_loss", "d_loss"} <= set(result)
    assert [name for name, _ in artifacts] == ["samples-epoch-1.png", "samples-epoch-2.png"]
    image = Image.open(io.BytesIO(artifacts[-1][1]))
    assert image.format == "PNG" and image.size == (2 + 8 * 34, 2 + 8 * 34) and image.mode == "L"  # 8x8 of 32x32
    assert artifacts[0][1] != artifacts[1][1]  # the generator learned something between epochs
    tags = {tag for tag, *_ in recorder.checkpoints}
    assert {"best", "last"} <= tags


def test_stop_and_resume_is_bit_identical_for_both_networks_and_both_optimizers(tmp_path: Path) -> None:
    spec = pretrain(
        {"arch": "dcgan", "width": 8, "latent_dim": 8},
        synthetic(num_samples=40, image_shape=[3, 32, 32]),
        epochs=2,
        batch_size=10,
        log_every_steps=2,
    )
    whole = Recorder(tmp_path / "data", tmp_path / "whole")
    expected = run_training(spec, whole.context())
    parts = Recorder(tmp_path / "data", tmp_path / "parts", stop_after_step=5)  # mid-epoch 2
    with pytest.raises(StopRequested):
        run_training(spec, parts.context())
    parts.stop_after_step = None
    got = run_training(spec, parts.context(resume_from=parts.work_dir / "last.pt"))
    assert got == expected
    assert parts.stable_metrics() == whole.stable_metrics()
    a, b = load_pt(whole.work_dir / "last.pt"), load_pt(parts.work_dir / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in ("optimizer", "g_optimizer"):
        for x, y in zip(a[key]["state"].values(), b[key]["state"].values(), strict=True):
            assert all(torch.equal(x[k], y[k]) for k in x)


def test_a_finetune_starts_from_the_discriminator_and_a_probe_keeps_it(tmp_path: Path) -> None:
    data = synthetic(num_samples=48, image_shape=[1, 32, 32], num_classes=3)
    base = Recorder(tmp_path / "data", tmp_path / "gan")
    run_training(pretrain({"arch": "dcgan", "width": 8, "latent_dim": 8}, data), base.context())
    encoder = encoder_state_dict(load_pt(base.work_dir / "best.pt")["model"])
    body = {
        "kind": "finetune",
        "dataset": data,
        "model": {
            "arch": "dcgan_discriminator",
            "width": 8,
            "init": {"from": "job", "job_id": 1},
            "freeze_backbone": True,
        },
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
    }
    probe = Recorder(tmp_path / "data", tmp_path / "probe")
    result = run_training(parse_job_spec(body), probe.context(init_from=base.work_dir / "best.pt"))
    trained = load_pt(probe.work_dir / "last.pt")["model"]
    assert all(torch.equal(encoder_state_dict(trained)[k], encoder[k]) for k in encoder)  # frozen: untouched
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert trained["head.weight"].shape == (3, 8 * 4 * 16)
