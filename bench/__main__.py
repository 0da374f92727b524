"""``python -m bench [--quick] [--only NAME] [--gpu]``: run the benchmarks, print a markdown table, write the results.

The results go to ``bench/results/<YYYY-MM-DD>-<host>.json`` (``-quick`` and the ``--only`` names
added for a quick or partial run; ``-gpu`` for ``--gpu``, the GPU run of bench/gpu.py alone):
the machine, the settings of each benchmark and every sample. Benchmarks print numbers; the exit
code says only whether they ran (1 when one raised).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import api, checkpoints, dashboard, dispatch, gpu, load, metrics, queue, service, small_job, training
from .report import describe_machine, markdown_table, results_path, started_at, write_results
from .stats import Result

NAMES = ["training", "service", "small-job", "dispatch", "queue", "api", "load", "metrics", "checkpoints", "dashboard"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="trainjobs benchmarks (see docs/benchmarks.md).")
    p.add_argument(
        "--quick", action="store_true", help="one or two pairs and tiny sizes: a smoke run of every benchmark"
    )
    p.add_argument("--only", action="append", choices=NAMES, help="run only this benchmark (repeatable)")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU run alone (bench/gpu.py, about 8 minutes on one GPU; without one, its CPU fallback at tiny sizes)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for every variant (default: all cores)")
    p.add_argument("--loadgen", choices=["auto", "wrk", "httpx"], default="auto", help="API load generator")
    p.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    return p.parse_args(argv)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    threads = args.threads or len(os.sched_getaffinity(0))
    now = started_at()
    machine = describe_machine(device, threads)
    benchmarks: dict[str, Callable[[], Result]] = {
        "training": lambda: training.run(quick=args.quick, device=device, threads=threads),
        "service": lambda: service.run(quick=args.quick, device=device, threads=threads),
        "small-job": lambda: small_job.run(quick=args.quick),
        "dispatch": lambda: dispatch.run(quick=args.quick, device=device, threads=threads),
        "queue": lambda: queue.run(quick=args.quick),
        "api": lambda: api.run(quick=args.quick, loadgen=args.loadgen),
        "load": lambda: load.run(quick=args.quick, loadgen_tool=args.loadgen),
        "metrics": lambda: metrics.run(quick=args.quick),
        "checkpoints": lambda: checkpoints.run(quick=args.quick),
        "dashboard": lambda: dashboard.run(quick=args.quick),
        "gpu": lambda: gpu.run(quick=args.quick, device=device),
    }
    selected = ["gpu"] if args.gpu else [name for name in NAMES if not args.only or name in args.only]
    results: list[Result] = []
    document: dict[str, object] = {
        "date": now.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "benchmarks": {},
        "errors": {},
    }
    failed = False
    for name in selected:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            result = benchmarks[name]()
        except Exception:
            failed = True
            document["errors"][name] = traceback.format_exc()  # type: ignore[index]
            print(f"bench: {name} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            continue
        elapsed = time.perf_counter() - started
        result.extra["elapsed_seconds"] = elapsed
        results.append(result)
        document["benchmarks"][name] = result.as_dict()  # type: ignore[index]
        print(f"bench: {name} done in {elapsed:.0f} s", file=sys.stderr, flush=True)
    machine["load_average_end"] = list(os.getloadavg())

    path = results_path(args.results_dir, now, quick=args.quick, only=selected if args.only or args.gpu else None)
    write_results(path, document)
    load_average = ", ".join(f"{x:.2f}" for x in machine["load_average_start"])  # type: ignore[attr-defined]
    print(
        f"{machine['cpu_model']}, {machine['cpu_cores']} cores, torch {machine['torch']}, device {device}"
        f"{' (' + str(machine['gpu']) + ')' if machine['gpu'] else ''}, {threads} torch threads; "
        f"load average at start {load_average}; {document['mode']} run {document['date']}\n"
    )
    print(markdown_table(results))
    print(f"\nresults: {path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
