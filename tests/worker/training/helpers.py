"""Helpers for the training tests: specs from dicts and a context that records every callback.

The specs checkpoint at every epoch (``checkpoint_min_seconds`` 0) unless a test says otherwise: most tests
are about what a checkpoint holds, not when it is written (tests/worker/training/test_saving.py is).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.specs import FinetuneSpec, PretrainSpec, parse_job_spec
from worker.training import MetricPoint, TrainingContext

TIMING_METRICS = {"epoch_seconds", "samples_per_second"}


@dataclass
class Recorder:
    """A TrainingContext whose callbacks append to lists."""

    data_dir: Path
    work_dir: Path
    metrics: list[MetricPoint] = field(default_factory=list)
    checkpoints: list[tuple[str, Path, int, int, float | None]] = field(default_factory=list)
    progress: list[tuple[int, int, int]] = field(default_factory=list)
    stop_after_step: int | None = None
    """should_stop turns true once this many steps were reported done (counted by polls)."""
    polls: int = 0

    def context(self, resume_from: Path | None = None, init_from: Path | None = None) -> TrainingContext:
        return TrainingContext(
            device="cpu",
            data_dir=self.data_dir,
            work_dir=self.work_dir,
            resume_from=resume_from,
            init_from=init_from,
            report_metrics=self.metrics.extend,
            on_checkpoint=self._checkpoint,
            on_progress=lambda *args: self.progress.append(args),
            should_stop=self._should_stop,
        )

    def _checkpoint(self, tag: str, path: Path, epoch: int, step: int, metric: float | None, sha256: str) -> None:
        """Record it; the sha256 handed over is the file's (computed as it was written)."""
        assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), path
        self.checkpoints.append((tag, path, epoch, step, metric))

    def _should_stop(self) -> bool:
        self.polls += 1  # polled once before each step: poll k comes after k - 1 steps
        return self.stop_after_step is not None and self.polls > self.stop_after_step

    def values(self, name: str) -> list[tuple[int, int | None, float]]:
        return [(p["step"], p["epoch"], p["value"]) for p in self.metrics if p["name"] == name]

    def stable_metrics(self) -> list[tuple[str, int, int | None, float]]:
        """Every point except the timing ones, in order."""
        return [(p["name"], p["step"], p["epoch"], p["value"]) for p in self.metrics if p["name"] not in TIMING_METRICS]


def synthetic(**options: Any) -> dict[str, Any]:
    return {"name": "synthetic", "num_samples": 60, "image_shape": [3, 16, 16], "num_classes": 4, **options}


def spec_of(
    kind: str, model: dict[str, Any], dataset: dict[str, Any] | None, train: dict[str, Any]
) -> PretrainSpec | FinetuneSpec:
    """A parsed job spec: one epoch in batches of 16 on small synthetic images unless told otherwise."""
    body = {
        "kind": kind,
        "dataset": dataset or synthetic(),
        "model": model,
        "train": {"epochs": 1, "batch_size": 16, "checkpoint_min_seconds": 0, **train},
    }
    return parse_job_spec(body)


def finetune(model: dict[str, Any], dataset: dict[str, Any] | None = None, **train: Any) -> FinetuneSpec:
    spec = spec_of("finetune", model, dataset, train)
    assert isinstance(spec, FinetuneSpec)
    return spec


def pretrain(model: dict[str, Any], dataset: dict[str, Any] | None = None, **train: Any) -> PretrainSpec:
    spec = spec_of("pretrain", model, dataset, train)
    assert isinstance(spec, PretrainSpec)
    return spec
