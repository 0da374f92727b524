"""Data parallel training's pieces: each rank's rows of a batch, loss weights, noise drawn for the whole batch,
BatchNorm synchronised across ranks, and the errors that mean another rank went away."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn

from worker.training.data import steps_per_epoch
from worker.training.distributed import Ranks, SyncBatchNorm, peer_lost, sync_batchnorm
from worker.training.task import Batch


@pytest.mark.parametrize(("n", "world"), [(64, 2), (37, 2), (100, 3), (5, 4), (1000, 8)])
def test_ranks_split_a_batch_into_contiguous_rows_that_cover_it_once(n: int, world: int) -> None:
    parts = [Ranks(r, world, r).rows(n) for r in range(world)]
    assert [p.start for p in parts] == [0, *[p.stop for p in parts[:-1]]] and parts[-1].stop == n
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_a_last_batch_too_small_for_two_images_a_rank_is_dropped() -> None:
    assert steps_per_epoch(1437, 64) == 23 and steps_per_epoch(1437, 64, ranks=2) == 23  # 29 left: kept
    assert steps_per_epoch(131, 64) == 3 and steps_per_epoch(131, 64, ranks=2) == 2  # 3 left: dropped for 2 ranks
    assert steps_per_epoch(132, 64, ranks=2) == 3  # 4 left: two each
    assert steps_per_epoch(129, 64) == 2  # one process drops a last batch of one image, as it always did


def test_each_rank_trains_on_its_rows_weighted_so_ranks_average_to_the_whole_batch() -> None:
    x, labels = torch.randn(37, 3, 4, 4), torch.arange(37)
    whole = Batch(x, labels, seed=1, epoch=2, step=3)
    shards = [Batch(x, labels, seed=1, epoch=2, step=3).shard(Ranks(r, 2, r)) for r in range(2)]
    assert [len(b) for b in shards] == [18, 19] and all(b.size == 37 for b in shards)
    assert torch.equal(torch.cat([b.labels for b in shards]), labels)
    per_image = torch.rand(37, dtype=torch.float64)  # DDP averages the ranks' weighted means: the whole batch's mean
    averaged = sum(b.scale * per_image[b.rows].mean() for b in shards) / 2
    assert float(averaged) == pytest.approx(float(per_image.mean()), rel=1e-12)
    assert shards[0].scale == pytest.approx(2 * 18 / 37) and whole.scale == 1.0
    # noise is drawn for the whole batch with the step's generator: the ranks' rows are one process's draw
    assert torch.equal(torch.cat([b.noise() for b in shards]), whole.noise())


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A gloo process group of one rank, in this process."""
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("shape", [(37, 16), (9, 8, 5, 5), (6, 4, 7)])
def test_synchronised_batchnorm_computes_what_batchnorm_does(one_rank_group: None, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    plain = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)](shape[1])
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    synced = SyncBatchNorm.of(plain)
    x = torch.randn(*shape) * 3 + 2
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(*shape)
    (plain(x1) * grad).sum().backward()
    (synced(x2) * grad).sum().backward()
    assert x1.grad is not None and x2.grad is not None and plain.weight.grad is not None
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(synced.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(synced.bias.grad, plain.bias.grad)
    torch.testing.assert_close(synced.running_mean, plain.running_mean)
    torch.testing.assert_close(synced.running_var, plain.running_var)
    synced.eval(), plain.eval()
    torch.testing.assert_close(synced(x), plain(x))
    assert synced.state_dict().keys() == plain.state_dict().keys()  # checkpoints load into the plain network


def test_a_network_is_synchronised_in_place_keeping_its_weights() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sync_batchnorm(net, torch.device("cpu"))
    assert isinstance(net[1], SyncBatchNorm) and isinstance(net[2][1], SyncBatchNorm)
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_a_collective_that_broke_off_means_another_rank_went_away() -> None:
    assert peer_lost(RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:25003"))
    assert peer_lost(dist.DistBackendError("NCCL communicator was aborted on rank 1"))
    assert not peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not peer_lost(ValueError("Timed out"))


def test_one_process_decides_alone() -> None:
    ranks = Ranks()
    assert not ranks.distributed and ranks.chief and ranks.rows(10) == slice(0, 10)
    stop = ranks.agreed_stop(lambda: True, "cpu")
    assert stop() is True  # asked every step, not every tenth
    assert ranks.sums({"loss": torch.tensor(2.5), "right": torch.tensor(7)}) == {"loss": 2.5, "right": 7}
