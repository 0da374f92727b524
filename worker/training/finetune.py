"""Finetune jobs: a backbone plus a new linear head learn to classify labelled images.

The primary metric is ``test_accuracy`` (higher is better). The backbone starts from scratch, from
ImageNet (resnet18) or from the encoder in ``ctx.init_from`` (a pretrain job's checkpoint); a
resumed run takes everything from ``ctx.resume_from`` instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from app.core.specs import AnyJobSpec, FinetuneSpec, TrainSpec
from app.core.states import JobKind

from .context import TrainingContext
from .data import Splits
from .errors import DatasetError, TrainingError
from .nets import Classifier, build_model, load_encoder, load_imagenet_weights
from .task import TASKS, Batch, Runtime, Task, make_optimizer


class ClassificationTask(Task):
    """Cross-entropy on the labels; with ``frozen_encoder``, a linear probe (the encoder stays in eval mode)."""

    primary = "test_accuracy"
    higher_is_better = True
    model: Classifier

    def __init__(
        self, model: Classifier, runtime: Runtime, optimizer: torch.optim.Optimizer, frozen_encoder: bool
    ) -> None:
        self.model, self.runtime, self.optimizer = model, runtime, optimizer
        self.frozen_encoder = frozen_encoder
        self.forward = runtime.compiled(model)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def enter_phase(self, train: TrainSpec, freeze_backbone: bool) -> None:
        self.model.encoder.requires_grad_(not freeze_backbone)
        self.frozen_encoder = freeze_backbone
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(trainable, train, self.runtime.device)
        if self.runtime.ranks.distributed:  # DDP syncs what was trainable when it was built
            self.forward = self.runtime.compiled(self.model)

    def train_mode(self) -> None:
        self.model.train()
        if self.frozen_encoder:
            self.model.encoder.eval()

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        with self.runtime.autocast():
            out = self.forward(self.runtime.prepare(batch.x))
        loss = F.cross_entropy(out.float(), batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        batch.backward(loss)
        self.optimizer.step()
        correct = (out.detach().argmax(1) == batch.labels).sum()
        return {"train_loss": loss.detach() * len(batch), "train_accuracy": correct}

    def eval_step(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        with self.runtime.autocast():
            out = self.forward(self.runtime.prepare(x)).float()
        return {
            "loss": F.cross_entropy(out, labels, reduction="sum"),
            "accuracy": (out.argmax(1) == labels).sum(),
        }


@TASKS.register(JobKind.FINETUNE)
def classification_task(spec: AnyJobSpec, ctx: TrainingContext, splits: Splits) -> Task:
    assert isinstance(spec, FinetuneSpec)
    num_classes = spec.model.num_classes or splits.num_classes
    if splits.num_classes > num_classes:
        raise DatasetError(
            f"dataset '{spec.dataset.name}' has {splits.num_classes} classes but model.num_classes is {num_classes}"
        )
    torch.manual_seed(spec.train.seed)
    with torch.device(ctx.device):
        model = build_model(spec)
    assert isinstance(model, Classifier)
    init = spec.model.init
    if ctx.resume_from is None and init.from_ == "imagenet":
        load_imagenet_weights(model.encoder, spec.dataset.input_shape()[0], spec.model.small_input)
    elif ctx.resume_from is None and init.from_ == "job":
        if ctx.init_from is None:
            raise TrainingError(f"init from job {init.job_id} needs that job's checkpoint, and none was given")
        load_encoder(model.encoder, ctx.init_from)
    if spec.model.freeze_backbone:
        model.encoder.requires_grad_(False)
    runtime = Runtime.of(spec.train, ctx.device, model, ranks=ctx.ranks)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return ClassificationTask(
        model, runtime, make_optimizer(trainable, spec.train, runtime.device), spec.model.freeze_backbone
    )
