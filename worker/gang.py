"""A job of several ranks as its worker starts it: the devices it runs on, how its ranks launch, and for a
node of a multi-node job, where the job's ranks meet (node 0 publishes its address through the service;
the others wait for it)."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

from app.core.protocol import ClaimedJob
from app.core.specs import AnyJobSpec
from worker.client import LeaseGone, ServiceUnavailable, WorkerClient
from worker.messages import Launch
from worker.settings import WorkerSettings

POLL_SECONDS = 0.25


def placement(devices: list[str]) -> tuple[str, str | None]:
    """The job's device as its process names it, and its CUDA_VISIBLE_DEVICES (None: left as it is): GPUs given
    by index are the only ones the job sees, counted from 0."""
    indices = [d.split(":", 1)[1] for d in devices if d.startswith("cuda:")]
    if indices and len(indices) == len(devices):
        return "cuda:0", ",".join(indices)
    return devices[0], None


def own_address(settings: WorkerSettings) -> str:
    """This machine's address as the other nodes reach it: the setting, else the one it reaches the service from."""
    if settings.node_address:
        return settings.node_address
    url = urlsplit(settings.api_url)
    host, port = url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)
    family = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0][0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:  # connect() on UDP sends nothing: it picks a route
        probe.connect((host, port))
        return str(probe.getsockname()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def launch_of(job: ClaimedJob, spec: AnyJobSpec, settings: WorkerSettings, rendezvous: str | None) -> Launch | None:
    """How this node's ranks start; None for a job of one process."""
    resources = spec.resources
    if resources.world_size == 1:
        return None
    return Launch(
        ranks_per_node=resources.ranks_per_node,
        nodes=resources.nodes,
        node=job.node or 0,
        rendezvous=rendezvous,
        run_id=f"trainjobs-job-{job.id}-attempt-{job.attempt}",
        node_address=own_address(settings) if resources.nodes > 1 else None,
        collective_timeout=settings.collective_timeout_seconds,
    )


def meet(
    client: WorkerClient,
    job: ClaimedJob,
    settings: WorkerSettings,
    lease_lost: threading.Event,
    shutting_down: threading.Event,
    deadline: float,
) -> str:
    """Where this multi-node job's ranks meet (host:port): node 0 picks it and publishes it; the other nodes
    ask until it is there. Raises LeaseGone when the job is taken away meanwhile, TimeoutError after
    ``deadline`` (monotonic seconds) or when the worker is shutting down."""
    node = job.node or 0
    mine = f"{own_address(settings)}:{settings.rendezvous_port or free_port()}" if node == 0 else None
    while True:
        if lease_lost.is_set():
            raise LeaseGone(f"job {job.id} was taken away before its nodes met")
        if shutting_down.is_set():
            raise TimeoutError(f"the worker is shutting down before the nodes of job {job.id} met")
        try:
            met = client.rendezvous(job.id, job.lease_token, node, mine)
        except ServiceUnavailable:
            met = None
        if met is not None and met.address:
            return met.address
        if time.monotonic() > deadline:
            raise TimeoutError(f"node 0 of job {job.id} did not publish where its ranks meet in time")
        time.sleep(POLL_SECONDS)
