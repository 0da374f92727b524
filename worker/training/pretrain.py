"""Pretrain jobs: an autoencoder learns to reconstruct (optionally denoise) unlabelled images (a DCGAN's
task, which learns to tell them from generated ones: dcgan.py).

The primary metric is ``test_loss``, the reconstruction MSE on clean inputs (lower is better).
Labels are loaded with the images but never used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from app.core.specs import AnyJobSpec, DcganModel, PretrainSpec
from app.core.states import JobKind

from .context import TrainingContext
from .data import Splits
from .dcgan import dcgan_task
from .nets import Autoencoder, build_model
from .task import TASKS, Batch, Runtime, Task, make_optimizer


class ReconstructionTask(Task):
    """MSE between the autoencoder's output and its clean input; with ``noise``, a denoising autoencoder."""

    primary = "test_loss"
    higher_is_better = False

    def __init__(self, model: Autoencoder, runtime: Runtime, optimizer: torch.optim.Optimizer, noise: float) -> None:
        self.model, self.runtime, self.optimizer = model, runtime, optimizer
        self.noise = noise
        """Std of Gaussian noise added to the normalised inputs ([-1, 1] scale)."""
        self.forward = runtime.compiled(model)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        x = target = batch.x
        if self.noise > 0:
            x = x + self.noise * batch.noise()
        with self.runtime.autocast():
            out = self.forward(self.runtime.prepare(x))
        loss = F.mse_loss(out.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        batch.backward(loss)
        self.optimizer.step()
        return {"train_loss": loss.detach() * len(batch)}

    def eval_step(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        with self.runtime.autocast():
            out = self.forward(self.runtime.prepare(x)).float()
        return {"loss": F.mse_loss(out, x, reduction="sum") / x[0].numel()}


@TASKS.register(JobKind.PRETRAIN)
def reconstruction_task(spec: AnyJobSpec, ctx: TrainingContext, splits: Splits) -> Task:
    assert isinstance(spec, PretrainSpec)
    if isinstance(spec.model, DcganModel):
        return dcgan_task(spec, ctx, splits)
    torch.manual_seed(spec.train.seed)
    with torch.device(ctx.device):
        model = build_model(spec)
    assert isinstance(model, Autoencoder)
    runtime = Runtime.of(spec.train, ctx.device, model, ranks=ctx.ranks)
    optimizer = make_optimizer(model.parameters(), spec.train, runtime.device)
    return ReconstructionTask(model, runtime, optimizer, spec.model.noise)
