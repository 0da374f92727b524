"""Finetune jobs: a backbone plus a new linear head learn to classify labelled images."""

from __future__ import annotations

from typing import Any

import torch

from app.core.specs import FinetuneSpec, dataset_input_shape

from .context import TrainingContext
from .data import load_dataset
from .errors import DatasetError, TrainingError
from .loop import Task, fit
from .nets import build_classifier, load_encoder, load_imagenet_weights


def run_finetune(spec: FinetuneSpec, ctx: TrainingContext) -> dict[str, Any]:
    """Train the spec's classifier; the result's primary metric is ``test_accuracy`` (higher is better).

    The backbone starts from scratch, from ImageNet (resnet18) or from the encoder in
    ``ctx.init_from`` (a pretrain job's checkpoint); a resumed run takes everything from
    ``ctx.resume_from`` instead.
    """
    splits = load_dataset(spec.dataset, ctx.data_dir, spec.train.seed)
    num_classes = spec.model.num_classes or splits.num_classes
    if splits.num_classes > num_classes:
        raise DatasetError(
            f"dataset '{spec.dataset.name}' has {splits.num_classes} classes but model.num_classes is {num_classes}"
        )
    shape = dataset_input_shape(spec.dataset)
    torch.manual_seed(spec.train.seed)
    with torch.device(ctx.device):
        model = build_classifier(spec.model, shape, num_classes)
    init = spec.model.init
    if ctx.resume_from is None and init.from_ == "imagenet":
        load_imagenet_weights(model.encoder, shape[0], spec.model.small_input)
    elif ctx.resume_from is None and init.from_ == "job":
        if ctx.init_from is None:
            raise TrainingError(f"init from job {init.job_id} needs that job's checkpoint, and none was given")
        load_encoder(model.encoder, ctx.init_from)
    if spec.model.freeze_backbone:
        model.encoder.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    task = Task(model=model, trainable=trainable, classify=True, frozen_encoder=spec.model.freeze_backbone)
    return fit(spec, ctx, task, splits)
