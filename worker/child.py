"""The child process that runs one job's training.

Started with the ``spawn`` method (or from a clean forkserver), so it shares nothing with the
worker but what it is handed: a pipe on which its one job's payload arrives, the write end of a
pipe for messages to the parent, and an event that asks it to stop. It is usually started ahead
of its job, while the worker is idle: it imports torch (and ``torch._dynamo``, which every
optimizer imports, about 3 s of CPU) and then waits for the payload, so a job starts training at
once. It touches no GPU before its job arrives. It dies with the parent (Linux
``PR_SET_PDEATHSIG``; elsewhere it stops when it sees it has been orphaned). When it exits,
every byte of GPU memory it held goes back to the driver.

It receives one ``JobPayload`` and sends the messages of worker/messages.py: ``Metrics``,
``Progress`` and ``CheckpointReady`` while it trains, then one of ``Done``, ``Stopped``, ``Failed``. A job
of several ranks is started from here by torch.distributed's launcher (worker/launch.py), each rank in
a process of its own that trains with ``train``; the child leads a process group, so the worker ends
it together with every rank.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.errors import first_line
from app.core.files import link_or_copy
from app.core.protocol import MetricPoint, Result
from app.core.registry import UnknownName
from app.core.states import CheckpointFormat, CheckpointTag, ErrorClass
from worker.messages import (
    ArtifactReady,
    CheckpointReady,
    Done,
    Ending,
    Failed,
    JobPayload,
    Metrics,
    Progress,
    Stopped,
)

if TYPE_CHECKING:
    from worker.training import TrainingContext
    from worker.training.distributed import Ranks

TRACEBACK_LINES = 12


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def describe(exc: BaseException) -> str:
    """The one line a failed job shows: a TrainingError's own message, else 'Type: first line'."""
    if _is_training_error(exc) or not str(exc).strip():
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


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

    with contextlib.suppress(ImportError):  # the digits dataset and the 80/20 split: 1.3 s of imports
        import sklearn.datasets
        import sklearn.model_selection  # noqa: F401


def redirect_output(stdout: Connection, stderr: Connection) -> None:
    """Send fd 1 and 2 (Python's prints and native libraries' writes alike) to the worker, a line at a time."""
    for pipe, fd in ((stdout, 1), (stderr, 2)):
        os.dup2(pipe.fileno(), fd)
        pipe.close()
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def epoch_line(points: list[MetricPoint], epochs: int) -> str | None:
    """The loop's line for an epoch that just ended (its points include ``epoch_seconds``), else None."""
    ended = {p["name"]: p for p in points if p.get("epoch") is not None}
    if "epoch_seconds" not in ended:
        return None
    epoch = ended["epoch_seconds"]["epoch"]
    values = " ".join(f"{name}={p['value']:.4g}" for name, p in ended.items() if p["epoch"] == epoch)
    return f"epoch {epoch}/{epochs}: {values}"


def run_child(inbox: Connection, out: Connection, stop: Event, stdout: Connection, stderr: Connection) -> None:
    """Entry point of the child process: preload, wait for the job's payload, train (or start its ranks)."""
    redirect_output(stdout, stderr)
    die_with_parent()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a group of its own: the worker ends it with every rank it started (Child.discard)
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
            out.send(Failed(describe(broken), traceback_tail(broken)))
            return
        if payload.visible_devices is not None:  # before anything touches CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = payload.visible_devices
        if payload.launch is not None:
            from worker.launch import launch_ranks

            launch_ranks(payload, out, stop)
        else:
            train(payload, out, stop, parent)
    finally:
        out.close()
    exit_now()


def exit_now() -> None:
    """Exit at once, the job's end sent and its output flushed: the interpreter's teardown with torch, its
    compiler and scikit-learn loaded takes a second, and the worker reports the end when this process is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train(payload: JobPayload, out: Connection, stop: Event, parent: int, ranks: Ranks | None = None) -> Ending | None:
    """Train the job in this process, one of its ``ranks``: rank 0 alone reports (metrics, checkpoints, the
    end), any rank its own failure. Returns the end it came to."""
    import torch

    from worker.training import run_training
    from worker.training.distributed import Ranks

    ranks = ranks or Ranks()
    if payload.threads:
        torch.set_num_threads(payload.threads)
    ctx = _context(payload, out, stop, parent, ranks)
    ending = _run(lambda: run_training(payload.spec, ctx), ranks)
    if ranks.chief or isinstance(ending, Failed):
        out.send(ending)
    return ending


def _context(payload: JobPayload, out: Connection, stop: Event, parent: int, ranks: Ranks) -> TrainingContext:
    """The run's context: rank 0's callbacks relay to the worker; the other ranks' report nothing."""
    from worker.training import TrainingContext

    outbox = payload.work_dir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    sequence = itertools.count()

    def report_metrics(points: list[MetricPoint]) -> None:
        out.send(Metrics(list(points), time.time()))
        line = epoch_line(points, payload.spec.train.epochs)
        if line is not None:
            print(line, flush=True)

    def on_checkpoint(
        tag: CheckpointTag, path: Path, epoch: int, step: int, metric: float | None, sha256: str | None = None
    ) -> None:
        # The training loop overwrites last.pt at the next checkpoint; hand the parent a name of its own.
        staged = outbox / f"{next(sequence):06d}-{path.name}"
        link_or_copy(path, staged)
        fmt = (
            CheckpointFormat.SAFETENSORS if path.suffix == CheckpointFormat.SAFETENSORS.suffix else CheckpointFormat.PT
        )
        out.send(CheckpointReady(tag, fmt, staged, epoch, step, metric, sha256))

    def on_artifact(name: str, path: Path) -> None:
        staged = outbox / f"{next(sequence):06d}-{name}"
        os.replace(path, staged)
        out.send(ArtifactReady(name, staged))

    ctx = TrainingContext(
        device=payload.device,
        data_dir=payload.data_dir,
        work_dir=payload.work_dir / "run",
        resume_from=payload.resume_from,
        init_from=payload.init_from,
        should_stop=ranks.agreed_stop(lambda: stop.is_set() or os.getppid() != parent, payload.device),
        ranks=ranks,
    )
    if ranks.chief:
        ctx.report_metrics, ctx.on_checkpoint, ctx.on_artifact = report_metrics, on_checkpoint, on_artifact
        ctx.on_progress = lambda epoch, epochs, step: out.send(Progress(epoch, epochs, step))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def _run(training: Callable[[], Result], ranks: Ranks) -> Ending:
    """How the training ended, as the message that says so; another rank's failure seen here is re-raised."""
    import torch

    from worker.training import DoesNotFit, StopRequested
    from worker.training.distributed import peer_lost
    from worker.training.errors import OutOfMemory

    try:
        result = training()
    except StopRequested:
        return Stopped()
    except DoesNotFit as exc:  # found before anything ran: the reason is all there is
        return Failed(str(exc), error_class=ErrorClass.OOM)
    except (OutOfMemory, torch.OutOfMemoryError) as exc:  # in the loop, or loading data, model, checkpoint
        return Failed(describe(exc), traceback_tail(exc), ErrorClass.OOM)
    except UnknownName as exc:  # a name the spec allows and this worker's registries lack: no traceback to read
        return Failed(f"this worker cannot run this job (upgrade it to the service's version): {exc}")
    except Exception as exc:
        if ranks.distributed and peer_lost(exc):
            raise  # another rank's failure, which that rank (or the launcher) reports
        return Failed(describe(exc), traceback_tail(exc))
    return Done(result)
