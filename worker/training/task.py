"""The task protocol: what ``loop.fit`` drives, so that one loop trains every kind of job.

A ``Task`` owns its networks and optimizers. The loop owns everything else: the epochs and their
batches, the learning-rate schedule (applied to every optimizer the task has), stop requests,
the metric windows and NaN checks, evaluation passes, checkpoints and resume. A task:

- ``train_step(batch)``: one optimizer step (or one step of each of its optimizers) on a batch;
  returns the batch's *sum* over its images of each training metric (a mean loss times the batch
  size, a count of right answers), as 0-dim tensors left on the device; the loop divides by the
  number of images (exactly, for counts);
- ``eval_step(x, labels)``: the same sums for each evaluation metric (the loop prefixes ``test_``
  / ``val_``);
- names its ``primary`` metric and whether higher is better, and which training metrics are
  reported at log steps (``logged``; each one is also checked for NaN);
- ``state_dict()`` / ``load_state_dict()``: its whole state for a checkpoint (``model`` holds the
  weights users download; the rest is the task's).

``TASKS`` maps a job kind to the function that builds its task.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from app.core.registry import Registry
from app.core.specs import AnyJobSpec, TrainSpec

from .context import TrainingContext
from .data import Splits, step_generator
from .distributed import ParallelForward, Ranks, sync_batchnorm
from .errors import TrainingError
from .nets import is_conv


@dataclass(frozen=True)
class Runtime:
    """How a run uses its device: placement, bf16 autocast, memory format, compilation, and the other ranks."""

    device: torch.device
    bf16: bool
    channels_last: bool
    compile: bool
    ranks: Ranks = field(default_factory=Ranks)

    @classmethod
    def of(cls, train: TrainSpec, device: str, *models: nn.Module, ranks: Ranks | None = None) -> Runtime:
        """Move ``models`` to the device (NHWC for conv nets where that is faster; BatchNorm synchronised across
        ranks) and say how to feed them."""
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        channels_last = any(use_channels_last(train, dev, m) for m in models)
        ranks = ranks or Ranks()
        for model in models:
            model.to(dev)
            if channels_last:
                model.to(memory_format=torch.channels_last)
            if ranks.distributed:  # before any optimizer holds the parameters
                sync_batchnorm(model, dev)
        bf16 = dev.type == "cuda" and train.precision == "auto"
        return cls(dev, bf16, channels_last, train.compile, ranks)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, x: Tensor) -> Tensor:
        """A batch laid out as the network wants it."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def compiled(self, model: nn.Module) -> Callable[[Tensor], Tensor]:
        """The model's forward: compiled if asked, through DDP on more than one rank (build it again when the
        trainable parameters change)."""
        if self.ranks.distributed:
            return ParallelForward(model, self.device, self.compile)
        return cast(Callable[[Tensor], Tensor], torch.compile(model) if self.compile else model)


def use_channels_last(train: TrainSpec, device: torch.device, model: nn.Module) -> bool:
    """NHWC for conv nets on CUDA and on CPU, where oneDNN's convolutions run 5-30% faster that way."""
    return train.channels_last and device.type in ("cuda", "cpu") and is_conv(model)


class Batch:
    """One training batch: normalised (and augmented) images, labels, and the step's random generator; on a
    rank of a distributed job, that rank's rows of the whole batch (``shard``)."""

    def __init__(self, x: Tensor, labels: Tensor, seed: int, epoch: int, step: int) -> None:
        self.x, self.labels = x, labels
        self._key = (seed, epoch, step)
        self._generator: torch.Generator | None = None
        self.size = int(labels.shape[0])
        """Images in the whole batch, over all ranks."""
        self.rows, self.scale = slice(None), 1.0

    def shard(self, ranks: Ranks) -> Batch:
        """Keep this rank's rows; its loss is then scaled so DDP's average is the whole batch's gradient."""
        if ranks.distributed:
            self.rows = ranks.rows(self.size)
            self.x, self.labels = self.x[self.rows], self.labels[self.rows]
            self.scale = ranks.world * len(self) / self.size
        return self

    def backward(self, loss: Tensor) -> None:
        """Backpropagate this rank's mean loss, weighted by its share of the batch."""
        (loss * self.scale if self.scale != 1.0 else loss).backward()  # type: ignore[no-untyped-call]

    def noise(self) -> Tensor:
        """Standard normal noise for each image, drawn for the whole batch (so every rank draws what one process
        would) by the step's generator."""
        whole = torch.randn((self.size, *self.x.shape[1:]), generator=self.rng(), device=self.x.device)
        return whole[self.rows]

    def rng(self) -> torch.Generator:
        """The step's generator, seeded by (seed, epoch, step): made on first use, then the same one."""
        if self._generator is None:
            seed, epoch, step = self._key
            self._generator = step_generator(seed, epoch, step, self.x.device)
        return self._generator

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Task(ABC):
    """One kind of training, as the loop sees it."""

    primary: str
    """The metric that picks the best checkpoint and leads the result (e.g. ``test_accuracy``)."""
    higher_is_better: bool
    logged: tuple[str, ...] = ("train_loss",)
    """Training metrics reported at log steps, and checked for NaN there."""
    model: nn.Module
    """The network whose weights are the job's product (``model`` in a checkpoint, the .safetensors file)."""
    runtime: Runtime

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]: ...

    @abstractmethod
    def train_step(self, batch: Batch) -> dict[str, Tensor]: ...

    @abstractmethod
    def eval_step(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]: ...

    def train_mode(self) -> None:
        self.model.train()

    def eval_mode(self) -> None:
        self.model.eval()

    def enter_phase(self, train: TrainSpec, freeze_backbone: bool) -> None:
        """Start a phase (``phases.py``): a fresh optimizer over what it trains."""
        raise TrainingError("phases are for finetune jobs")

    def epoch_artifacts(self, work_dir: Path, epoch: int) -> list[tuple[str, Path]]:
        """Files the task makes at an epoch's end (a GAN's samples): (name, path in ``work_dir``) each."""
        return []

    def improves(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.higher_is_better else value < best)

    def state_dict(self) -> dict[str, Any]:
        (optimizer,) = self.optimizers()
        return {"model": self.model.state_dict(), "optimizer": optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The weights, and the optimizer's state where there is one (a ``best`` checkpoint has none)."""
        (optimizer,) = self.optimizers()
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])


TaskBuilder = Callable[[AnyJobSpec, TrainingContext, Splits], Task]
TASKS: Registry[TaskBuilder] = Registry("job kind")
"""Job kind -> the function that builds its task (its networks, optimizers and initial weights)."""


def make_optimizer(
    params: Iterator[nn.Parameter] | list[nn.Parameter], train: TrainSpec, device: torch.device
) -> torch.optim.Optimizer:
    """The spec's optimizer over ``params``, with fused kernels on CPU and CUDA (about 4x faster steps on CPU)."""
    params = list(params)
    fused = True if device.type in ("cpu", "cuda") else None
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=train.lr,
            momentum=train.momentum or 0.0,
            nesterov=train.nesterov,
            weight_decay=train.weight_decay,
            fused=fused,
        )
    adam = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=train.lr, weight_decay=train.weight_decay, fused=fused)
