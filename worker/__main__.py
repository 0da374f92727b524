"""``trainjobs-worker`` / ``python -m worker``: run jobs from a trainjobs service on one device, or on the GPUs
``--gpus`` names.

Every option's default comes from ``WorkerSettings`` (the ``TRAINJOBS_*`` variables or ``.env``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
from pathlib import Path

from pydantic import ValidationError

from app.core import structured_logs
from app.core.protocol import summarize
from worker.agent import Agent, default_worker_id, resolve_device, resolve_gpus
from worker.client import WorkerClient
from worker.settings import WorkerConfig, WorkerSettings, insecure_reason


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_device_options(p: argparse.ArgumentParser, defaults: WorkerSettings) -> None:
    """Where jobs run: one device, or the GPUs it manages; and how the nodes of a multi-node job meet."""
    p.add_argument("--device", default=defaults.device, help="auto|cpu|cuda|cuda:N|mps (TRAINJOBS_DEVICE; %(default)s)")
    p.add_argument(
        "--gpus",
        default=defaults.gpus,
        help="GPUs this worker manages, 0,1,2,3 or all: a job on each free GPU, an N-GPU job on N (TRAINJOBS_GPUS)",
    )
    p.add_argument(
        "--node-address",
        default=defaults.node_address,
        help="this machine's address as other nodes of a multi-node job reach it (TRAINJOBS_NODE_ADDRESS)",
    )
    p.add_argument(
        "--rendezvous-port",
        type=positive,
        default=defaults.rendezvous_port,
        help="port where node 0 of a multi-node job serves its rendezvous (TRAINJOBS_RENDEZVOUS_PORT; a free one)",
    )


def parse_args(argv: list[str] | None, defaults: WorkerSettings) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="trainjobs-worker", description="Run trainjobs jobs on one device, or on several GPUs (--gpus)."
    )
    p.add_argument("--api", default=defaults.api_url, help="service URL (TRAINJOBS_API_URL; %(default)s)")
    p.add_argument("--token", default=None, help="worker token (TRAINJOBS_WORKER_TOKEN)")
    add_device_options(p, defaults)
    p.add_argument("--worker-id", default=defaults.worker_id, help="default host:pid (TRAINJOBS_WORKER_ID)")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument(
        "--once", action="store_true", help="run at most one job, then exit (exits at once if none is queued)"
    )
    p.add_argument("--work-dir", type=Path, default=defaults.work_dir, help="local scratch (TRAINJOBS_WORK_DIR)")
    p.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="datasets (TRAINJOBS_DATA_DIR)")
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=defaults.grace_seconds,
        help="on SIGTERM, how long the job may take to stop (TRAINJOBS_GRACE_SECONDS; %(default)s)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=defaults.poll_seconds,
        help="long-poll length of each claim (TRAINJOBS_POLL_SECONDS; %(default)s)",
    )
    p.add_argument(
        "--threads", type=positive, default=defaults.threads, help="torch CPU threads of each job (TRAINJOBS_THREADS)"
    )
    p.add_argument(
        "--start-method",
        choices=["spawn", "forkserver"],
        default=defaults.start_method,
        help="how each job's process starts: spawn or forkserver (torch imported once; faster starts) "
        "(TRAINJOBS_START_METHOD; %(default)s)",
    )
    p.add_argument(
        "--prestart",
        action=argparse.BooleanOptionalAction,
        default=defaults.prestart,
        help="start the next job's process while idle, its imports done (TRAINJOBS_PRESTART; on by default)",
    )
    p.add_argument("--log-level", default=defaults.log_level, help="TRAINJOBS_LOG_LEVEL (%(default)s)")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=defaults.log_format,
        help="TRAINJOBS_LOG_FORMAT (%(default)s); json: one object a line with job_id, attempt, worker",
    )
    p.add_argument(
        "--allow-insecure-http",
        action=argparse.BooleanOptionalAction,
        default=defaults.allow_insecure_http,
        help="send the token over plain http:// to a machine other than this one (TRAINJOBS_ALLOW_INSECURE_HTTP)",
    )
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace, defaults: WorkerSettings) -> WorkerSettings:
    """The environment's settings with the command line's options on top (validated again)."""
    token = args.token if args.token is not None else defaults.worker_token
    return defaults.model_validate(
        {
            **defaults.model_dump(),
            "api_url": args.api,
            "worker_token": token,
            "device": args.device,
            "worker_id": args.worker_id,
            "work_dir": args.work_dir,
            "data_dir": args.data_dir,
            "grace_seconds": args.grace_seconds,
            "poll_seconds": args.poll_seconds,
            "threads": args.threads,
            "start_method": args.start_method,
            "prestart": args.prestart,
            "log_level": args.log_level,
            "log_format": args.log_format,
            "gpus": args.gpus,
            "node_address": args.node_address,
            "rendezvous_port": args.rendezvous_port,
            "allow_insecure_http": args.allow_insecure_http,
        }
    )


def main(argv: list[str] | None = None) -> int:
    try:
        defaults = WorkerSettings()
        args = parse_args(argv, defaults)
        settings = settings_from(args, defaults)
    except ValidationError as exc:
        print(f"trainjobs-worker: bad setting: {summarize(exc)}", file=sys.stderr)
        return 2
    refused = insecure_reason(settings)
    if refused is not None:
        print(f"trainjobs-worker: {refused}", file=sys.stderr)
        return 2
    worker_id = settings.worker_id or default_worker_id()
    structured_logs.configure(settings.log_format, settings.log_level, worker=worker_id)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if settings.gpus:
        devices = resolve_gpus(settings.gpus)
        named = "cuda:" + ",".join(d.split(":")[1] for d in devices)
        config = WorkerConfig.of(
            settings, worker_id, named if len(named) <= 64 else f"cuda ({len(devices)} GPUs)", devices
        )
    else:
        config = WorkerConfig.of(settings, worker_id, resolve_device(settings.device))
    if settings.start_method == "forkserver":
        # torch._dynamo: every optimizer imports it on first use, about 3 s of CPU a job otherwise.
        multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", "worker.child", "worker.training"])
    token = settings.worker_token.get_secret_value() if settings.worker_token else None
    client = WorkerClient(settings.api_url, token)
    agent = Agent(client, config, max_jobs=args.max_jobs, once=args.once)
    agent.install_signal_handlers()
    try:
        return agent.run()
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
