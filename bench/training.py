"""Benchmark 1: trainjobs' training functions against the article's loop, and against the limit.

Three variants train the same model on the same images (trainjobs' ``synthetic`` dataset at
CIFAR-10's shape), run in turn:

- ``reference``: ``bench/reference_loop.py``, the article's loop (PIL images, per-sample
  transforms, ``DataLoader(batch_size=100, shuffle=True, num_workers=2)``);
- ``trainjobs``: ``run_training(spec, ctx)``, the function the worker's child process calls;
- ``limit``: the same model and optimizer as trainjobs taking the same number of steps on one
  batch held fixed on the device: no data path at all, the most any data path can reach.

Samples per second count training time only: the epoch loops of the reference, the training
phase of each trainjobs epoch (its ``samples_per_second`` metric; evaluation and checkpoints are
left out, as the reference does neither), the steps of the limit. The end-to-end wall time of
trainjobs (data, model, per-epoch evaluation and checkpoints) is reported next to it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.core.specs import FinetuneSpec, PretrainSpec, parse_job_spec
from worker.training import MetricPoint, TrainingContext, run_training
from worker.training.data import load_dataset, normalize, steps_per_epoch
from worker.training.nets import build_autoencoder, build_classifier
from worker.training.task import make_optimizer, use_channels_last

from .reference_loop import Arch, train_reference
from .stats import Result, at_least, at_most, interleave, ratios

BATCH = 100


@dataclass
class Run:
    samples_per_second: float
    final_loss: float
    wall_seconds: float


def job_body(arch: Arch, num_images: int, epochs: int) -> dict[str, Any]:
    """The trainjobs job that trains what the reference trains: ``num_images`` training images, batch 100."""
    # synthetic keeps a fifth of its samples as the test split
    dataset = {"name": "synthetic", "num_samples": num_images * 5 // 4, "image_shape": [3, 32, 32], "num_classes": 10}
    if arch == "autoencoder":
        return {
            "kind": "pretrain",
            "dataset": dataset,
            "model": {"arch": "mlp_autoencoder", "hidden": [1024, 512], "bottleneck": 256},
            "train": {"epochs": epochs, "batch_size": BATCH, "optimizer": "adam", "lr": 1e-3},
        }
    return {
        "kind": "finetune",
        "dataset": dataset,
        "model": {"arch": "resnet18", "num_classes": 10, "init": {"from": "scratch"}},
        "train": {"epochs": epochs, "batch_size": BATCH, "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9},
    }


def run_trainjobs(spec: PretrainSpec | FinetuneSpec, device: str) -> Run:
    points: list[MetricPoint] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        ctx = TrainingContext(
            device=device, data_dir=Path(tmp) / "data", work_dir=Path(tmp) / "run", report_metrics=points.extend
        )
        started = time.perf_counter()
        result = run_training(spec, ctx)
        wall = time.perf_counter() - started
    # Each epoch reports its training images per second; the reference is timed the same way.
    rates = [p["value"] for p in points if p["name"] == "samples_per_second"]
    per_epoch = spec.dataset.num_samples - spec.dataset.num_samples // 5  # type: ignore[union-attr]
    seconds = sum(per_epoch / rate for rate in rates)
    return Run(len(rates) * per_epoch / seconds, float(result["train_loss"]), wall)


def run_limit(spec: PretrainSpec | FinetuneSpec, device: str, steps: int) -> Run:
    """trainjobs' model and optimizer, ``steps`` steps on one batch that never changes, already on the device."""
    shape = spec.dataset.input_shape()
    torch.manual_seed(spec.train.seed)
    started = time.perf_counter()
    with torch.device(device):
        if isinstance(spec, PretrainSpec):
            model: torch.nn.Module = build_autoencoder(spec.model, shape)
        else:
            model = build_classifier(spec.model, shape, 10)
    optimizer = make_optimizer(list(model.parameters()), spec.train, torch.device(device))
    x = normalize(torch.randint(0, 256, (BATCH, *shape), dtype=torch.uint8)).to(device)
    if use_channels_last(spec.train, torch.device(device), model):  # as trainjobs' loop does
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,)).to(device)
    model.train()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    steps_started = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(steps):
        out = model(x)
        loss = F.mse_loss(out, x) if isinstance(spec, PretrainSpec) else F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = float(loss.item())  # also waits for the device
    ended = time.perf_counter()
    return Run(steps * BATCH / (ended - steps_started), final, ended - started)


def bench_model(arch: Arch, *, num_images: int, epochs: int, pairs: int, device: str) -> dict[str, list[Run]]:
    spec = parse_job_spec(job_body(arch, num_images, epochs))
    train = load_dataset(spec.dataset, Path("unused"), spec.train.seed).train
    images = train.x.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C), as CIFAR10.data
    labels = train.y.tolist()
    steps = epochs * steps_per_epoch(len(train), BATCH)

    def reference() -> Run:
        r = train_reference(arch, images, labels, epochs=epochs, device=device)
        return Run(r.samples / r.train_seconds, r.final_loss, r.wall_seconds)

    return interleave(
        {
            "reference": reference,
            "trainjobs": lambda: run_trainjobs(spec, device),
            "limit": lambda: run_limit(spec, device, steps),
        },
        pairs,
    )


def run(*, quick: bool, device: str, threads: int) -> Result:
    cuda = device.startswith("cuda")
    num_images = 100 if quick else (50_000 if cuda else 2_000)
    pairs = 2 if quick else 5
    epochs: dict[Arch, int] = {"autoencoder": 1 if quick else 4, "resnet18": 1 if quick else 2}
    torch.set_num_threads(threads)
    result = Result(
        "training",
        "Training throughput: trainjobs vs the article's loop vs the limit",
        {
            "device": device,
            "torch_threads": threads,
            "images": num_images,
            "batch_size": BATCH,
            "epochs": epochs,
            "pairs": pairs,
            "dataloader_workers": 2,
        },
    )
    models: list[tuple[Arch, str]] = [("autoencoder", "MLP AE 3072-1024-512-256"), ("resnet18", "ResNet-18 32x32")]
    for arch, label in models:
        runs = bench_model(arch, num_images=num_images, epochs=epochs[arch], pairs=pairs, device=device)
        rate = {name: [r.samples_per_second for r in rs] for name, rs in runs.items()}
        loss = {name: [r.final_loss for r in rs] for name, rs in runs.items()}
        for name in ("reference", "trainjobs", "limit"):
            result.add(f"{label}: {name} samples/s", "samples/s", rate[name])
        speedup_target = 5.0 if cuda and arch == "resnet18" else 1.15
        result.add(
            f"{label}: trainjobs / reference (pair by pair)",
            "x",
            ratios(rate["trainjobs"], rate["reference"]),
            f">= {speedup_target:g}",
            check=at_least(speedup_target),
        )
        result.add(
            f"{label}: trainjobs / limit (pair by pair)",
            "x",
            ratios(rate["trainjobs"], rate["limit"]),
            ">= 0.95",
            check=at_least(0.95),
        )
        result.add(f"{label}: reference final train loss", "loss", loss["reference"])
        reference_loss = statistics.median(loss["reference"])
        result.add(
            f"{label}: trainjobs final train loss",
            "loss",
            loss["trainjobs"],
            f"<= 1.02 x reference ({reference_loss:.3g})",
            check=at_most(1.02 * reference_loss),
        )
        result.add(f"{label}: limit final loss (one batch, not comparable)", "loss", loss["limit"])
        result.add(
            f"{label}: trainjobs end-to-end wall (eval, checkpoints)", "s", [r.wall_seconds for r in runs["trainjobs"]]
        )
        result.add(f"{label}: reference end-to-end wall", "s", [r.wall_seconds for r in runs["reference"]])
    result.notes.append(
        "samples/s counts training time only on every side; the trainjobs wall time adds data generation, "
        "a test-set evaluation and a checkpoint (.pt + .safetensors, fsynced) every epoch."
    )
    return result
