"""What crosses the pipes between a worker and its job's child process: named, typed messages.

The runner hands the child one ``JobPayload``; the child answers with ``Metrics``, ``Progress``,
``CheckpointReady`` and ``ArtifactReady`` while it trains, then an end: ``Done``, ``Stopped`` or ``Failed`` (on a node of
a multi-node job without rank 0, ``MemberDone``; the first end that arrives counts).
They are pickled by multiprocessing, so they hold only plain values and the job's spec model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.core.protocol import MetricPoint, Result
from app.core.specs import AnyJobSpec
from app.core.states import CheckpointFormat, CheckpointTag, ErrorClass


@dataclass(frozen=True)
class Launch:
    """How this node's ranks of a job of several ranks start (worker/launch.py)."""

    ranks_per_node: int
    nodes: int = 1
    node: int = 0
    rendezvous: str | None = None
    """host:port of the job's c10d rendezvous (node 0 hosts it); None: one node, a rendezvous of its own."""
    run_id: str = ""
    """The same on every node of the job (and new at each attempt)."""
    node_address: str | None = None
    """This machine's address as the other nodes reach it."""
    collective_timeout: float = 600.0
    """Seconds a collective may wait for the other ranks before it fails (no hung NCCL calls)."""


@dataclass(frozen=True)
class JobPayload:
    """Everything the child needs to train one job."""

    spec: AnyJobSpec
    device: str
    data_dir: Path
    work_dir: Path
    resume_from: Path | None = None
    init_from: Path | None = None
    threads: int | None = None
    visible_devices: str | None = None
    """CUDA_VISIBLE_DEVICES of the job (the GPUs the worker gave it); then ``device`` is counted among those."""
    launch: Launch | None = None
    """A job of several ranks (resources); None: one process trains it."""


@dataclass(frozen=True)
class Metrics:
    points: list[MetricPoint]
    time: float
    """Unix time when the training loop reported them."""


@dataclass(frozen=True)
class Progress:
    epoch: int
    epochs: int
    step: int


@dataclass(frozen=True)
class CheckpointReady:
    """A complete checkpoint file, staged under a name of its own for the runner to upload, then delete."""

    tag: CheckpointTag
    format: CheckpointFormat
    path: Path
    epoch: int
    step: int
    metric: float | None
    sha256: str | None = None
    """Computed as the file was written (None: the runner hashes it)."""


@dataclass(frozen=True)
class ArtifactReady:
    """A file the job made besides its checkpoints (a GAN's samples), staged for the runner to upload, then delete."""

    name: str
    path: Path


@dataclass(frozen=True)
class Done:
    result: Result


@dataclass(frozen=True)
class Stopped:
    """The loop saved a resumable ``last`` checkpoint at the step where a stop was asked for."""


@dataclass(frozen=True)
class MemberDone:
    """This node's ranks ended well, and rank 0 (the job's report) ran on another node of the job."""


@dataclass(frozen=True)
class Failed:
    reason: str
    """One line: what went wrong and what to change."""
    traceback: str = ""
    """The traceback's last lines; empty for a failure that needs none (a job this worker cannot run)."""
    error_class: ErrorClass = ErrorClass.USER
    """user (the job's data, code or numbers), oom (out of device memory), crash (a rank died), infra (another
    node of the job was lost)."""


ChildMessage = Metrics | Progress | CheckpointReady | ArtifactReady
Ending = Done | Stopped | Failed | MemberDone
