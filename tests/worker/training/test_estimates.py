"""The estimates the API refuses jobs by are right: every arch's parameter count, from the spec alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.core.estimates import estimate, params_of
from tests.worker.training.helpers import finetune, pretrain, synthetic
from worker.training.nets import build_model, count_parameters

SHAPES = [synthetic(image_shape=[3, 32, 32]), synthetic(image_shape=[1, 28, 28]), {"name": "digits"}]
PRETRAIN = [
    {"arch": "mlp_autoencoder", "hidden": [64, 32], "bottleneck": 16},
    {"arch": "conv_autoencoder", "backbone": "small_cnn"},
    {"arch": "conv_autoencoder", "backbone": "resnet18", "small_input": True},
    {"arch": "conv_autoencoder", "backbone": "resnet18", "small_input": False},
]
FINETUNE = [
    {"arch": "mlp", "hidden": [64], "bottleneck": 32},
    {"arch": "small_cnn"},
    {"arch": "resnet18", "small_input": True},
    {"arch": "resnet18"},
]


@pytest.mark.parametrize("dataset", SHAPES, ids=lambda d: str(d.get("image_shape", d["name"])))
@pytest.mark.parametrize("model", PRETRAIN + FINETUNE, ids=lambda m: "-".join(map(str, m.values()))[:40])
def test_the_parameter_count_of_every_arch_is_exact(model: dict[str, Any], dataset: dict[str, Any]) -> None:
    kind = pretrain if model["arch"] in {m["arch"] for m in PRETRAIN} else finetune
    if model["arch"] == "conv_autoencoder" and dataset["name"] == "digits":
        dataset = synthetic(image_shape=[1, 8, 8])
    spec = kind(model, dataset)
    with torch.device("meta"):
        assert params_of(spec) == count_parameters(build_model(spec))


def test_the_articles_autoencoder_is_counted_without_building_it() -> None:
    spec = pretrain({"arch": "seed_mlp_autoencoder"}, synthetic(image_shape=[3, 32, 32]))
    est = estimate(spec)
    assert 720e6 < est.params < 722e6
    assert est.memory_bytes > 4 * est.params * 4  # weights, gradients and Adam's two moments


def test_a_job_that_cannot_fit_its_device_fails_before_it_loads_anything(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.worker.training.helpers import Recorder
    from worker.training import DoesNotFit, memory, run_training

    spec = pretrain({"arch": "seed_mlp_autoencoder"}, {"name": "cifar10"})  # 721M parameters; no CIFAR here
    monkeypatch.setattr(memory, "free_memory", lambda device: 2 * 1024**3)
    recorder = Recorder(tmp_path / "data", tmp_path / "work")
    with pytest.raises(
        DoesNotFit, match=r"^does not fit: the job needs at least 1\d\.\d GiB on cpu .* 2\.0 GiB are free"
    ):
        run_training(spec, recorder.context())  # not "CIFAR-10 not found": nothing was loaded
    assert recorder.metrics == [] and not list((tmp_path / "work").glob("*"))
