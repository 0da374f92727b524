"""``python -m bench --gpu`` (``make bench-gpu``): the GPU run, ready for a machine with one (issue 16, target 6).

On one GPU, in about 8 minutes at most, it records:

- **ResNet-18 at 32x32 and at 224x224** on synthetic CIFAR-shaped and ImageNet-shaped images: the article's
  loop (``bench/reference_loop.py``: PIL images, per-sample transforms, ``DataLoader(batch_size=100,
  num_workers=2)``, ``loss.item()`` every step) against trainjobs' ``run_training`` (data on the device,
  bf16 autocast, ``channels_last``) with ``train.compile`` off and on: training samples/s of each, and
  trainjobs / the article (target at least 5x at 32x32);
- **the article's autoencoder** (``seed_mlp_autoencoder``, 720M parameters): optimizer steps/s and the
  peak GPU memory of its run;
- **a whole job through the service** on a GPU worker (an API process on SQLite, a real worker with
  ``--device cuda``) against the same job called directly: service / direct (target at most 1.05).

Without a GPU it runs the same code on the CPU at tiny sizes (the test suite does, so it cannot rot): the
article's autoencoder is replaced by a small one there (720M parameters do not fit a test's time), and
``compile`` on is left out (its compile time alone is minutes on a CPU). The JSON goes to
``bench/results/<date>-<host>-gpu.json`` with every sample.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.specs import parse_job_spec
from devtools.servers import ApiServer
from worker.training import MetricPoint, TrainingContext, run_training

from .dispatch import TINY_JOB
from .reference_loop import train_reference
from .servers import settle, start_worker, submit, wait_for_status
from .service import run_direct, through_service
from .stats import Result, at_least, at_most, interleave, ratios

BATCH = 100


def resnet_job(size: int, images: int, epochs: int, compile: bool) -> dict[str, Any]:
    shape = [3, size, size]
    return {
        "kind": "finetune",
        "name": f"bench-gpu-resnet18-{size}",
        "dataset": {"name": "synthetic", "num_samples": images * 5 // 4, "image_shape": shape, "num_classes": 10},
        "model": {"arch": "resnet18", "num_classes": 10, "init": {"from": "scratch"}, "small_input": size == 32},
        "train": {
            "epochs": epochs,
            "batch_size": BATCH,
            "optimizer": "sgd",
            "lr": 1e-3,
            "momentum": 0.9,
            "compile": compile,
            "checkpoint_every_epochs": epochs,
        },
    }


def trainjobs_rate(body: dict[str, Any], device: str) -> tuple[float, float]:
    """(training samples/s of the run's last epoch, peak device memory in GiB) of ``run_training``."""
    spec = parse_job_spec(body)
    points: list[MetricPoint] = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        ctx = TrainingContext(
            device=device, data_dir=Path(tmp) / "data", work_dir=Path(tmp) / "run", report_metrics=points.extend
        )
        run_training(spec, ctx)
    rates = [p["value"] for p in points if p["name"] == "samples_per_second"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    return rates[-1], peak  # the last epoch: compilation and cuDNN's autotuning are behind it


def reference_rate(size: int, images: int, epochs: int, device: str) -> float:
    """Training samples/s of the article's loop on ``images`` random images of size x size."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, images).tolist()
    run = train_reference("resnet18", data, labels, epochs=epochs, device=device)
    return run.samples / run.train_seconds


def bench_resnet(result: Result, size: int, *, images: int, epochs: int, device: str, pairs: int) -> None:
    cuda = device.startswith("cuda")
    variants = {"reference": lambda: reference_rate(size, images, epochs, device)}
    variants["trainjobs"] = lambda: trainjobs_rate(resnet_job(size, images, epochs, False), device)[0]
    if cuda:
        variants["trainjobs compiled"] = lambda: trainjobs_rate(resnet_job(size, images, epochs, True), device)[0]
    runs = interleave(variants, pairs)
    label = f"ResNet-18 {size}x{size}"
    for name, rates in runs.items():
        result.add(f"{label}: {name} samples/s", "samples/s", rates)
    target = 5.0 if size == 32 and cuda else None
    for name in [n for n in runs if n != "reference"]:
        result.add(
            f"{label}: {name} / the article's loop (pair by pair)",
            "x",
            ratios(runs[name], runs["reference"]),
            f">= {target:g}" if target else None,
            check=at_least(target) if target else None,
        )


def bench_autoencoder(result: Result, device: str) -> None:
    cuda = device.startswith("cuda")
    model = {"arch": "seed_mlp_autoencoder"} if cuda else {"arch": "mlp_autoencoder", "hidden": [256], "bottleneck": 32}
    images = 5_000 if cuda else 200
    body = {
        "kind": "pretrain",
        "dataset": {"name": "synthetic", "num_samples": images * 5 // 4, "image_shape": [3, 32, 32]},
        "model": model,
        "train": {"epochs": 2, "batch_size": BATCH, "optimizer": "adam", "lr": 1e-3, "checkpoint_every_epochs": 2},
    }
    rate, peak = trainjobs_rate(body, device)
    label = "the article's autoencoder (720M parameters)" if cuda else "a small MLP autoencoder (CPU stand-in)"
    result.add(f"{label}: optimizer steps/s", "steps/s", [rate / BATCH])
    if cuda:
        result.add(f"{label}: peak GPU memory", "GiB", [peak])


def bench_service(result: Result, device: str, *, quick: bool, pairs: int) -> None:
    target = device.startswith("cuda")  # on a CPU at tiny size the process start-up is the job: no target
    body = resnet_job(32, 200 if quick else 20_000, 1 if quick else 3, False)
    body["name"] = "bench-gpu-service"
    with (
        tempfile.TemporaryDirectory(prefix="bench-gpu-service-") as tmp,
        ApiServer(Path(tmp) / "api") as api,
        start_worker(api.url, Path(tmp) / "worker", device=device) as worker,
        api.client(timeout=30) as http,
    ):
        wait_for_status(http, submit(http, TINY_JOB)["id"], {"succeeded"}, timeout=300)  # up, imports done

        def service() -> float:
            settle(worker.pid)
            return through_service(http, body, timeout=1800)

        runs = interleave({"direct": lambda: run_direct(body, device), "service": service}, pairs)
    result.add("whole job: direct run_training wall", "s", runs["direct"])
    result.add("whole job: through the service (submit -> succeeded)", "s", runs["service"])
    result.add(
        "whole job: service / direct (pair by pair)",
        "x",
        ratios(runs["service"], runs["direct"]),
        "<= 1.05" if target else None,
        check=at_most(1.05) if target else None,
    )


def run(*, quick: bool, device: str) -> Result:
    cuda = device.startswith("cuda")
    tiny = quick or not cuda
    pairs = 3 if cuda and not quick else 2 if cuda else 1
    sizes = {32: (200, 1) if tiny else (20_000, 2), 224: (16, 1) if tiny else (2_000, 2)}
    result = Result(
        "gpu",
        "On the GPU: ResNet-18 against the article's loop, the article's 720M autoencoder, a job through the service",
        {"device": device, "gpu": torch.cuda.get_device_name(device) if cuda else None, "sizes": sizes, "pairs": pairs},
    )
    started = time.perf_counter()
    for size, (images, epochs) in sizes.items():
        bench_resnet(result, size, images=images, epochs=epochs, device=device, pairs=pairs)
    bench_autoencoder(result, device)
    bench_service(result, device, quick=tiny, pairs=pairs)
    result.add("whole GPU run", "s", [time.perf_counter() - started], "<= 480" if cuda else None)
    if not cuda:
        result.notes.append(
            "no GPU here: the CPU fallback at tiny sizes (no compile, a small autoencoder); the numbers say "
            "only that the run works"
        )
    return result
