"""Pretrain jobs: an autoencoder learns to reconstruct (optionally denoise) unlabelled images."""

from __future__ import annotations

from typing import Any

import torch

from app.core.specs import PretrainSpec, dataset_input_shape

from .context import TrainingContext
from .data import load_dataset
from .loop import Task, fit
from .nets import build_autoencoder


def run_pretrain(spec: PretrainSpec, ctx: TrainingContext) -> dict[str, Any]:
    """Train the spec's autoencoder; the result's primary metric is ``test_loss`` (MSE, lower is better).

    Labels are loaded with the images but never used.
    """
    splits = load_dataset(spec.dataset, ctx.data_dir, spec.train.seed)
    torch.manual_seed(spec.train.seed)
    with torch.device(ctx.device):
        model = build_autoencoder(spec.model, dataset_input_shape(spec.dataset))
    task = Task(model=model, trainable=list(model.parameters()), classify=False, noise=spec.model.noise)
    return fit(spec, ctx, task, splits)
