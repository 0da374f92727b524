"""Presets: a job body filled in with the article's hyperparameters; the fields a user gives win."""

from __future__ import annotations

import copy
from typing import Any

from app.core.states import JobKind

# The article's hyperparameters (section 4); user fields override them.
PRESETS: dict[str, dict[JobKind, dict[str, Any]]] = {
    "seed": {
        JobKind.PRETRAIN: {
            "dataset": {"name": "cifar10"},
            "model": {"arch": "seed_mlp_autoencoder"},
            "train": {"epochs": 10, "batch_size": 100, "optimizer": "adam", "lr": 1e-3},
        },
        JobKind.FINETUNE: {
            "dataset": {"name": "cifar10"},
            "model": {"arch": "resnet18", "num_classes": 10, "init": {"from": "imagenet"}},
            "train": {"epochs": 10, "batch_size": 100, "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9},
        },
    }
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # A different dataset or arch starts from that one's defaults, not the preset's options.
            discriminator = {"dataset": "name", "model": "arch"}.get(key)
            if discriminator and value.get(discriminator, out[key].get(discriminator)) != out[key].get(discriminator):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_preset(body: Any) -> Any:
    """Fill a raw job body from its preset; fields the user gave win."""
    if not isinstance(body, dict) or body.get("preset") is None:
        return body
    preset, kind = body["preset"], body.get("kind")
    if not isinstance(preset, str) or preset not in PRESETS or kind not in PRESETS[preset]:
        return body  # validation reports the bad value
    base = PRESETS[preset][JobKind(kind)]
    train = body.get("train")
    if isinstance(train, dict) and train.get("optimizer", "sgd") != "sgd":
        # Choosing another optimizer drops the preset's sgd-only options the user did not give.
        base = copy.deepcopy(base)
        for option in ("momentum", "nesterov"):
            base["train"].pop(option, None)
    merged = _merge(base, body)
    if isinstance(train, dict) and "phases" in train and "epochs" not in train:
        merged["train"].pop("epochs", None)  # the phases' sum, not the preset's epochs
    return merged
