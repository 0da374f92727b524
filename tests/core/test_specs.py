"""Job specs: presets, defaults and the cross-field rules the training relies on."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.core.specs import FinetuneSpec, PretrainSpec, parse_job_spec
from tests.conftest import finetune_body, pretrain_body


def error_locs(body: dict[str, Any]) -> list[str]:
    """Where each error points: its location and, for cross-field rules, the field its message names."""
    with pytest.raises(ValidationError) as info:
        parse_job_spec(body)
    return [".".join(map(str, e["loc"])) + " " + e["msg"] for e in info.value.errors()]


def test_seed_presets_are_the_articles_hyperparameters() -> None:
    pre = parse_job_spec({"kind": "pretrain", "preset": "seed"})
    assert isinstance(pre, PretrainSpec)
    assert (pre.dataset.name, pre.model.arch) == ("cifar10", "seed_mlp_autoencoder")
    assert (pre.train.optimizer, pre.train.lr, pre.train.batch_size, pre.train.epochs) == ("adam", 1e-3, 100, 10)
    ft = parse_job_spec({"kind": "finetune", "preset": "seed"})
    assert isinstance(ft, FinetuneSpec)
    assert (ft.model.arch, ft.model.init.from_, ft.model.num_classes) == ("resnet18", "imagenet", 10)
    assert (ft.train.optimizer, ft.train.lr, ft.train.momentum, ft.train.batch_size) == ("sgd", 1e-3, 0.9, 100)


def test_user_fields_override_the_preset() -> None:
    ft = parse_job_spec({"kind": "finetune", "preset": "seed", "train": {"epochs": 2}, "dataset": {"name": "digits"}})
    assert isinstance(ft, FinetuneSpec)
    assert ft.train.epochs == 2 and ft.train.momentum == 0.9
    assert ft.dataset.name == "digits" and ft.model.num_classes == 10


def test_stored_specs_parse_back_to_the_same_spec() -> None:
    spec = parse_job_spec({"kind": "finetune", "preset": "seed"})
    again = parse_job_spec(spec.model_dump(mode="json", by_alias=True))
    assert again == spec


@pytest.mark.parametrize(
    ("change", "loc_part"),
    [
        ({"train": {"optimizer": "adam", "momentum": 0.9}}, "momentum"),
        ({"train": {"optimizer": "sgd", "momentum": 0, "nesterov": True}}, "nesterov"),
        ({"train": {"epochs": 2, "warmup_epochs": 2}}, "warmup_epochs"),
        ({"train": {"lr": 0}}, "lr"),
        ({"train": {"batch_size": 0}}, "batch_size"),
        ({"dataset": {"name": "digits", "labels_per_class": 5, "label_fraction": 0.1}}, "label_fraction"),
        ({"dataset": {"name": "nope"}}, "dataset"),
        ({"dataset": {"name": "imagefolder", "path": "../x"}}, "path"),
        ({"dataset": {"name": "imagefolder", "path": "/etc"}}, "path"),
        ({"model": {"arch": "small_cnn", "init": {"from": "imagenet"}}}, "imagenet"),
        ({"model": {"arch": "small_cnn", "hidden": [8]}}, "hidden"),
        ({"model": {"arch": "mlp", "init": {"from": "scratch", "job_id": 3}}}, "job_id"),
        ({"model": {"arch": "mlp", "init": {"from": "job"}}}, "job_id"),
        ({"model": {"arch": "mlp", "num_classes": 3}}, "num_classes"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_finetune_specs_name_the_field(change: dict[str, Any], loc_part: str) -> None:
    body = finetune_body()
    for key, value in change.items():
        body[key] = {**body[key], **value} if key == "train" else value
    locs = error_locs(body)
    assert any(loc_part in loc for loc in locs), locs


def test_seed_autoencoder_needs_cifar_shaped_images() -> None:
    locs = error_locs({"kind": "pretrain", "preset": "seed", "dataset": {"name": "digits"}})
    assert locs


def test_encoders_match_between_pretrain_and_finetune() -> None:
    pre = parse_job_spec(pretrain_body())
    assert pre.encoder() == parse_job_spec(finetune_body(1)).encoder()
    other = finetune_body(1)
    other["model"]["hidden"] = [64]
    assert pre.encoder() != parse_job_spec(other).encoder()
    conv_pre = parse_job_spec(pretrain_body(model={"arch": "conv_autoencoder", "backbone": "small_cnn"}))
    conv_ft = parse_job_spec(finetune_body(1, model={"arch": "small_cnn", "init": {"from": "job", "job_id": 1}}))
    assert conv_pre.encoder() == conv_ft.encoder()
