"""A job of several ranks on this node: torch.distributed's elastic launcher starts them, a process each.

``launch_ranks`` runs in the job's child process (worker/child.py), which becomes the node's elastic
agent: with ``--standalone``'s rendezvous (its own, on a free port) for a job of one node; at the c10d
rendezvous node 0 hosts and published through the service for a job of several. Each rank
(``rank_main``) ties its life to the agent's, joins the process group (NCCL on CUDA, gloo on CPU, with the
collective time-out) and trains (``child.train``): rank 0 reports metrics, checkpoints and the end on the
child's pipe, any rank its own failure; every rank's output reaches the job's log as ``[rank k] ...``.
When a rank dies the agent stops the others (SIGTERM, then SIGKILL after 5 s; no restarts) and this
reports why, in one line with a failure class: a rank killed (crash, or oom when the kernel's OOM killer
struck), or a rank that lost contact with another node (infra: that node's worker reports its own end).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from app.core.states import ErrorClass
from worker.child import describe, die_with_parent, traceback_tail, train
from worker.messages import Failed, JobPayload, Launch, MemberDone
from worker.process import describe_exit, exit_class, oom_kills

PEER_LOST_EXIT = 75
"""A rank's exit code when a collective broke off because another rank or node went away."""
MONITOR_SECONDS = 0.5
"""How often the agent looks at its ranks: a rank that dies takes the others with it within about this."""
STOP_GRACE_SECONDS = 5
"""How long the agent lets the other ranks end after one died, before SIGKILL."""


def launch_ranks(payload: JobPayload, out: Connection, stop: Event) -> None:
    """Run this node's ranks of the job to their end, then send the end the ranks did not (a rank's death, a
    rendezvous that failed, or ``MemberDone`` on a node without rank 0)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = payload.launch
    assert launch is not None
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the one line below says it
    several = launch.nodes > 1
    config = LaunchConfig(
        min_nodes=launch.nodes,
        max_nodes=launch.nodes,
        nproc_per_node=launch.ranks_per_node,
        run_id=launch.run_id or f"trainjobs-{uuid.uuid4().hex}",
        rdzv_backend="c10d",
        rdzv_endpoint=launch.rendezvous if several and launch.rendezvous else "localhost:0",
        rdzv_configs={"is_host": launch.node == 0, "timeout": int(launch.collective_timeout)} if several else {},
        max_restarts=0,
        monitor_interval=MONITOR_SECONDS,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(payload.work_dir / "ranks"), redirects=Std.ALL, tee=Std.ALL),
        log_line_prefix_template="[rank ${rank}] ",
        local_addr=launch.node_address,
        shutdown_timeout=STOP_GRACE_SECONDS,
    )
    if not prepare_dataset(payload, out):
        return
    kills = oom_kills()
    try:
        returned = elastic_launch(config, rank_main)(payload, out, stop, os.getpid())
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        out.send(rank_failure(rank, failure.exitcode, launch, kills))
        return
    except Exception as exc:  # the rendezvous: a node that never came, or went away while they met
        error = f"the job's ranks could not meet: {describe(exc)}"
        out.send(Failed(error, traceback_tail(exc), ErrorClass.INFRA if several else ErrorClass.CRASH))
        return
    if 0 not in returned:
        out.send(MemberDone())


def prepare_dataset(payload: JobPayload, out: Connection) -> bool:
    """Load the job's dataset once on this node before its ranks start, so that a download or a cache is made
    by one process, not by every rank at once; False (the failure sent) if it cannot be loaded."""
    from worker.training import DatasetError
    from worker.training.data import load_dataset

    try:
        load_dataset(payload.spec.dataset, payload.data_dir, payload.spec.train.seed)
    except DatasetError as exc:
        out.send(Failed(str(exc)))
        return False
    return True


def rank_failure(rank: int, exitcode: int, launch: Launch, kills_before: int | None) -> Failed:
    """The end of a job one of whose ranks failed first (a rank that raised has sent its own, which counts)."""
    if exitcode == PEER_LOST_EXIT and launch.nodes > 1:
        error = f"rank {rank} lost contact with another node of the job (it stopped, or the network failed)"
        return Failed(error, error_class=ErrorClass.INFRA)
    if exitcode == PEER_LOST_EXIT:
        return Failed(
            f"rank {rank} lost contact with another rank of the job, which died", error_class=ErrorClass.CRASH
        )
    return Failed(f"rank {rank}: {describe_exit(exitcode)}", error_class=exit_class(exitcode, kills_before))


def rank_main(payload: JobPayload, out: Connection, stop: Event, agent: int) -> int:
    """One rank: dies with its agent, joins the process group, trains; its global rank is its return value."""
    die_with_parent()
    if os.getppid() != agent:  # the agent died before this rank could tie itself to it
        os._exit(1)
    import torch
    import torch.distributed as dist

    from worker.training.distributed import Ranks, peer_lost

    launch = payload.launch
    assert launch is not None
    ranks = Ranks.from_env()
    cuda = payload.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(ranks.local)
    cores = payload.threads or os.cpu_count() or 1
    payload = replace(
        payload,
        device=f"cuda:{ranks.local}" if cuda else "cpu",
        threads=payload.threads if cuda else max(1, cores // launch.ranks_per_node),
    )
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=launch.collective_timeout))
        ending: Any = train(payload, out, stop, agent, ranks)
    except Exception as exc:
        if not peer_lost(exc):
            raise
        print(f"lost contact with the job's other ranks: {describe(exc)}", file=sys.stderr, flush=True)
        time.sleep(3 * MONITOR_SECONDS)  # the agent sees the rank that died first: the root cause it reports
        os._exit(PEER_LOST_EXIT)  # no clean-up that could wait on the ranks that are gone
    if isinstance(ending, Failed):
        sys.exit(1)  # so the agent stops the other ranks, which would wait for this one in their next collective
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    return ranks.rank
