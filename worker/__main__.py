"""``trainjobs-worker`` / ``python -m worker``: run jobs from a trainjobs service on one device."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import sys
from pathlib import Path

from worker.agent import Agent, default_worker_id, resolve_device
from worker.client import WorkerClient
from worker.runner import WorkerConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="trainjobs-worker", description="Run trainjobs jobs on one device (one worker per GPU)."
    )
    p.add_argument(
        "--api", default=env("TRAINJOBS_API_URL", "http://127.0.0.1:8000"), help="service URL (TRAINJOBS_API_URL)"
    )
    p.add_argument("--token", default=env("TRAINJOBS_WORKER_TOKEN"), help="worker token (TRAINJOBS_WORKER_TOKEN)")
    p.add_argument("--device", default=env("TRAINJOBS_DEVICE", "auto"), help="auto|cpu|cuda|cuda:N|mps (default auto)")
    p.add_argument("--worker-id", default=None, help="default host:pid")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument(
        "--once", action="store_true", help="run at most one job, then exit (exits at once if none is queued)"
    )
    p.add_argument(
        "--work-dir", type=Path, default=Path(env("TRAINJOBS_WORK_DIR", "./var/worker")), help="local scratch"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("TRAINJOBS_DATA_DIR", "./var/data")),
        help="datasets (TRAINJOBS_DATA_DIR)",
    )
    p.add_argument("--grace-seconds", type=float, default=60.0, help="on SIGTERM, how long the job may take to stop")
    p.add_argument("--poll-seconds", type=float, default=5.0, help="long-poll length of each claim")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of each job (default: torch's)")
    p.add_argument(
        "--start-method",
        choices=["spawn", "forkserver"],
        default=env("TRAINJOBS_START_METHOD", "spawn"),
        help="how each job's process starts: spawn (default) or forkserver (torch imported once; faster starts)",
    )
    p.add_argument(
        "--prestart",
        action=argparse.BooleanOptionalAction,
        default=env("TRAINJOBS_PRESTART", "1").strip().lower() not in ("0", "false", "no", "off"),
        help="start the next job's process while idle, its imports done (default on; TRAINJOBS_PRESTART=0 is off)",
    )
    p.add_argument("--log-level", default=env("TRAINJOBS_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    worker_id = args.worker_id or default_worker_id()
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)
    config = WorkerConfig(
        worker_id=worker_id,
        device=resolve_device(args.device),
        work_dir=args.work_dir / safe_id,
        data_dir=args.data_dir,
        grace_seconds=args.grace_seconds,
        threads=args.threads,
        start_method=args.start_method,
        prestart=args.prestart,
    )
    if args.start_method == "forkserver":
        # torch._dynamo: every optimizer imports it on first use, about 3 s of CPU a job otherwise.
        multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", "worker.child", "worker.training"])
    client = WorkerClient(args.api, args.token)
    agent = Agent(client, config, poll_seconds=args.poll_seconds, max_jobs=args.max_jobs, once=args.once)
    agent.install_signal_handlers()
    try:
        return agent.run()
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
