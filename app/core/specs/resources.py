"""What a job needs to run: devices on each node, and nodes. More than one rank is data-parallel training on
torch.distributed (worker/training/distributed.py); docs/scaling.md says how to run it on a cluster."""

from __future__ import annotations

from pydantic import Field, model_validator

from app.core.specs.base import Strict

MAX_GPUS, MAX_PROCESSES, MAX_NODES = 16, 64, 64


class Resources(Strict):
    """Devices per node and nodes. The default, one device on one node, is a job as it always was: on a GPU
    where the worker has one, else on its CPU."""

    gpus: int = Field(
        1,
        ge=1,
        le=MAX_GPUS,
        description="GPUs on each node, one rank each (NCCL). 1: one device, a GPU or, on a worker without one, "
        "the CPU.",
    )
    processes: int | None = Field(
        None,
        ge=1,
        le=MAX_PROCESSES,
        description="CPU ranks on each node (gloo) instead of GPUs: for machines without GPUs, and for tests.",
    )
    nodes: int = Field(
        1, ge=1, le=MAX_NODES, description="Machines: this many workers run the job together, all or none."
    )

    @model_validator(mode="after")
    def _gpus_or_processes(self) -> Resources:
        if self.processes is not None and self.gpus != 1:
            raise ValueError("give resources.gpus or resources.processes, not both: processes are CPU ranks")
        return self

    @property
    def ranks_per_node(self) -> int:
        return self.processes or self.gpus

    @property
    def world_size(self) -> int:
        """Ranks in all: each trains on batch_size / world_size images of every batch."""
        return self.nodes * self.ranks_per_node

    @property
    def gpus_per_node(self) -> int:
        """What a worker must have free to take a node of this job: GPUs, or 0 for CPU ranks."""
        return 0 if self.processes is not None else self.gpus

    @property
    def is_default(self) -> bool:
        return self.gpus == 1 and self.processes is None and self.nodes == 1
