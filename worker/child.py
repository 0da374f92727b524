"""The child process that runs one job's training.

Started with the ``spawn`` method (or from a clean forkserver), so it shares nothing with the
worker but what it is handed: a pipe on which its one job's payload arrives, the write end of a
pipe for messages to the parent, and an event that asks it to stop. It is usually started ahead
of its job, while the worker is idle: it imports torch (and ``torch._dynamo``, which every
optimizer imports, about 3 s of CPU) and then waits for the payload, so a job starts training at
once. It touches no GPU before its job arrives. It dies with the parent (Linux
``PR_SET_PDEATHSIG``; elsewhere it stops when it sees it has been orphaned). When it exits,
every byte of GPU memory it held goes back to the driver.

Messages, in order, are tuples: ``("metrics", points)``, ``("progress", epoch, epochs, step)``,
``("checkpoint", tag, format, staged_path, epoch, step, metric)``, then one of
``("done", result)``, ``("stopped",)`` or ``("failed", reason, traceback_tail)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

TRACEBACK_LINES = 12


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if _is_training_error(exc):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _is_training_error(exc: BaseException) -> bool:
    try:
        from worker.training import TrainingError
    except Exception:  # a broken install: the error at hand is what to report
        return False
    return isinstance(exc, TrainingError)


def traceback_tail(exc: BaseException) -> str:
    """The traceback's last lines, under its usual header."""
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    if len(lines) <= TRACEBACK_LINES + 1:
        return "\n".join(lines)
    return "\n".join([lines[0], "  ...", *lines[-TRACEBACK_LINES:]])


def preload() -> None:
    """Everything a job imports, before the job arrives; no device is touched."""
    import torch
    import torch._dynamo  # noqa: F401  # optimizers import it on first use

    import worker.training  # noqa: F401


def run_child(inbox: Connection, out: Connection, stop: Event) -> None:
    """Entry point of the child process: preload, wait for the job's payload, train."""
    die_with_parent()
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches the whole group: the parent decides
    try:
        broken: Exception | None = None
        try:
            preload()
        except Exception as exc:  # reported as the job's failure, once there is a job
            broken = exc
        try:
            payload = inbox.recv()
        except EOFError:
            return  # the worker stopped before it had a job for this process
        finally:
            inbox.close()
        if broken is not None:
            out.send(("failed", one_line(broken), traceback_tail(broken)))
            return
        _train(payload, out, stop, parent)
    finally:
        out.close()


def _train(payload: dict[str, Any], out: Connection, stop: Event, parent: int) -> None:
    import torch

    from app.core.specs import parse_job_spec
    from worker.training import StopRequested, TrainingContext, run_training

    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    work_dir = Path(payload["work_dir"])
    outbox = work_dir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    sequence = itertools.count()

    def report_metrics(points: list[Any]) -> None:
        now = time.time()
        out.send(("metrics", [{**p, "time": now} for p in points]))

    def on_checkpoint(tag: str, path: Path, epoch: int, step: int, metric: float | None) -> None:
        # The training loop overwrites last.pt at the next checkpoint; hand the parent a name of its own.
        staged = outbox / f"{next(sequence):06d}-{path.name}"
        try:
            os.link(path, staged)
        except OSError:
            shutil.copyfile(path, staged)
        fmt = "safetensors" if path.suffix == ".safetensors" else "pt"
        out.send(("checkpoint", tag, fmt, str(staged), epoch, step, metric))

    ctx = TrainingContext(
        device=payload["device"],
        data_dir=Path(payload["data_dir"]),
        work_dir=work_dir / "run",
        resume_from=Path(payload["resume_from"]) if payload.get("resume_from") else None,
        init_from=Path(payload["init_from"]) if payload.get("init_from") else None,
        report_metrics=report_metrics,
        on_checkpoint=on_checkpoint,
        on_progress=lambda epoch, epochs, step: out.send(("progress", epoch, epochs, step)),
        should_stop=lambda: stop.is_set() or os.getppid() != parent,
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        spec = parse_job_spec(payload["spec"])
        result = run_training(spec, ctx)
    except StopRequested:
        out.send(("stopped",))
    except Exception as exc:
        out.send(("failed", one_line(exc), traceback_tail(exc)))
    else:
        out.send(("done", result))
