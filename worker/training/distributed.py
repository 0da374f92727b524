"""Data-parallel training on torch.distributed: where a process stands among its job's ranks, and what the
loop and the tasks need from the others.

Every rank draws the same shuffled global batches (``epoch_batches`` is seeded by the job, not the rank),
normalises and augments the whole batch with the step's generator, then trains on its own contiguous rows
of it (``Ranks.rows``). Each rank's loss is scaled by ``world * rows / batch`` (``Batch.backward``), so the
gradient DDP averages is the whole batch's mean gradient, as one process would compute it: an N-rank run
follows the one-process run's curve up to the order of float additions. BatchNorm is synchronised
(``sync_batchnorm``): its statistics are the whole batch's, as one process's are. A checkpoint holds the
plain network and the optimizer state every rank shares, and, taken at a stop, the unfinished epoch's
sums of every rank (``Progress.combine``), which rank 0 alone takes back on resume.

The ranks make every decision together: sums are added across ranks before anything is reported or
compared (the NaN check, the best checkpoint, early stopping), and a stop request is agreed on every
``STOP_EVERY`` steps, so no rank leaves a collective the others are in. Rank 0 alone reports metrics and
writes checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

STOP_EVERY = 10
"""Steps between the collective checks of a stop request (each is one tiny all-reduce and a sync)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among its job's ranks; the default is a job of one process."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """As torch.distributed's launcher sets them (RANK, WORLD_SIZE, LOCAL_RANK)."""
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))

    @property
    def chief(self) -> bool:
        """Rank 0: it reports metrics and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def rows(self, n: int) -> slice:
        """This rank's rows of a batch of ``n``: contiguous, sizes differ by at most one."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def all_sum(self, values: Tensor) -> Tensor:
        """``values`` added up across ranks (in place); as it is in a job of one process."""
        if self.distributed:
            torch.distributed.all_reduce(values)
        return values

    def sums(self, values: dict[str, Tensor]) -> dict[str, float]:
        """Each value added up across ranks, read in one sync (counts stay exact up to 2**53)."""
        if not self.distributed:
            return {name: value.item() for name, value in values.items()}
        totals = self.all_sum(torch.stack([value.double() for value in values.values()])).tolist()
        return dict(zip(values, totals, strict=True))

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether any rank's ``flag`` is set (a collective: every rank must ask)."""
        if not self.distributed:
            return flag
        return bool(self.all_sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def agreed_stop(self, should_stop: Callable[[], bool], device: str) -> Callable[[], bool]:
        """``should_stop`` as every rank answers it: polled once a step on each rank, decided together every
        STOP_EVERY polls (ranks poll equally often, so they meet in the same all-reduce)."""
        if not self.distributed:
            return should_stop
        polls = 0

        def agreed() -> bool:
            nonlocal polls
            polls += 1
            return polls % STOP_EVERY == 0 and self.any(should_stop(), torch.device(device))

        return agreed


class ParallelForward:
    """A model's forward through DistributedDataParallel while gradients are on (training steps: DDP averages
    the gradients), and the plain model's when they are off (evaluation: no collective, so ranks may run
    different numbers of batches). Build it again when the set of trainable parameters changes."""

    def __init__(self, model: nn.Module, device: torch.device, compile: bool) -> None:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.train_forward = torch.compile(ddp) if compile else ddp
        self.eval_forward = torch.compile(model) if compile else model

    def __call__(self, x: Tensor) -> Tensor:
        forward = self.train_forward if torch.is_grad_enabled() else self.eval_forward
        out: Tensor = forward(x)
        return out


PEER_LOST = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "Timed out",
    "timed out",
    "communicator was aborted",
)
"""What gloo's and NCCL's errors say when another rank went away or stopped answering."""


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says another rank went away: a collective that broke off or timed out."""
    return isinstance(exc, torch.distributed.DistError) or (
        isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in PEER_LOST)
    )


def sync_batchnorm(model: nn.Module, device: torch.device) -> None:
    """BatchNorm layers whose statistics are the whole batch's, over all ranks, so N ranks train as one process
    would: torch's SyncBatchNorm on CUDA, ``SyncBatchNorm`` here on the CPU (torch's is CUDA-only). The state
    dict keeps its keys: checkpoints load into the plain network. In place."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, nn.SyncBatchNorm | SyncBatchNorm
        ):
            setattr(model, name, _torch_sync(child) if device.type == "cuda" else SyncBatchNorm.of(child))
        else:
            sync_batchnorm(child, device)


def _torch_sync(bn: nn.Module) -> nn.Module:
    synced: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(bn)  # type: ignore[no-untyped-call]
    return synced


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (affine, tracking running statistics) whose training statistics are summed over all ranks."""

    @classmethod
    def of(cls, bn: nn.modules.batchnorm._BatchNorm) -> SyncBatchNorm:
        synced = cls(bn.num_features, bn.eps, bn.momentum, affine=True, track_running_stats=True)
        synced.load_state_dict(bn.state_dict())
        synced.train(bn.training)
        synced.requires_grad_(bn.weight.requires_grad)
        return synced.to(bn.weight.device)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        assert self.running_mean is not None and self.running_var is not None
        if not self.training:
            return torch.nn.functional.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        out, mean, var = _SyncBatchNorm.apply(input, self.weight, self.bias, self.eps)
        with torch.no_grad():
            momentum = self.momentum if self.momentum is not None else 0.1
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_(var.to(self.running_var.dtype), momentum)
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        result: Tensor = out
        return result


class _SyncBatchNorm(torch.autograd.Function):
    """BatchNorm's training step with each channel's sums added up over the ranks, forward and backward (the
    weight's and bias's gradients stay this rank's: DDP averages them)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims), (x * x).sum(dims)]).double()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        totals = torch.cat([local, count])
        torch.distributed.all_reduce(totals)
        n = totals[-1]
        mean, square = totals[:-1].view(2, -1) / n
        var = (square - mean * mean).clamp_min(0.0)
        invstd = (var + eps).rsqrt().to(x.dtype)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.dims, ctx.shape, ctx.count = dims, shape, float(n)
        unbiased = var * n / (n - 1).clamp_min(1.0)
        ctx.mark_non_differentiable(mean, unbiased)
        return xhat * weight.view(shape) + bias.view(shape), mean, unbiased

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _mean: Tensor, _var: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        xhat, weight, invstd = ctx.saved_tensors
        dims, shape, n = ctx.dims, ctx.shape, ctx.count
        grad_bias, grad_weight = grad.sum(dims), (grad * xhat).sum(dims)
        totals = torch.cat([grad_bias, grad_weight])
        torch.distributed.all_reduce(totals)
        sum_grad, sum_grad_xhat = totals.view(2, -1)
        scale = (weight * invstd / n).view(shape)
        grad_input = scale * (n * grad - sum_grad.view(shape) - xhat * sum_grad_xhat.view(shape))
        return grad_input, grad_weight, grad_bias, None
