"""The job's process as the worker sees it: started (maybe ahead of its job), handed its job, ended.

Also ``Shutdown``, which signals set, and ``describe_exit``, the one line for a process that died
without reporting.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.core.states import ErrorClass
from worker.child import run_child
from worker.logs import Captured
from worker.messages import JobPayload


class Child:
    """A job's training process, started for its job or ahead of it; its job's payload goes in ``inbox``."""

    def __init__(self, context: Any, target: Callable[..., None] = run_child) -> None:
        inbox_end, self.inbox = context.Pipe(duplex=False)
        self.messages, messages_end = context.Pipe(duplex=False)
        stdout, stdout_end = context.Pipe(duplex=False)  # its fd 1 and 2, read raw (worker/logs.py)
        stderr, stderr_end = context.Pipe(duplex=False)
        self.stop = context.Event()
        self.output = Captured()
        """The lines it writes to stdout and stderr, read as they come."""
        self.process = context.Process(
            target=target, args=(inbox_end, messages_end, self.stop, stdout_end, stderr_end), name="trainjobs-job"
        )
        try:
            self.process.start()
        except BaseException:
            for end in (self.inbox, self.messages, stdout, stderr):
                end.close()
            raise
        finally:
            for end in (inbox_end, messages_end, stdout_end, stderr_end):
                end.close()  # our copies of the child's ends: its exit then reads as EOF
        for reader, stream in ((stdout, "stdout"), (stderr, "stderr")):
            self.output.read(os.dup(reader.fileno()), stream)
            reader.close()

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def hand(self, payload: JobPayload) -> bool:
        """Give it its job; False if it is gone (it died while waiting)."""
        try:
            if not self.process.is_alive():
                return False
            self.inbox.send(payload)
            return True
        except OSError:
            return False
        finally:
            self.inbox.close()

    def discard(self) -> None:
        """End a child that has no job, or whose job is over for this worker, and every process it started (the
        ranks of a distributed job, in its process group): it has nothing to save."""
        self.inbox.close()
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the child leads its group (child.run_child)
        except (ProcessLookupError, PermissionError):  # not yet a group of its own, or gone with all of it
            if self.process.is_alive():
                self.process.kill()
        self.process.join()
        self.messages.close()


@dataclass
class Shutdown:
    """Set by signal handlers: the first asks for a graceful stop, the second for an immediate one."""

    requested: threading.Event = field(default_factory=threading.Event)
    immediate: threading.Event = field(default_factory=threading.Event)

    def signal(self) -> None:
        if self.requested.is_set():
            self.immediate.set()
        self.requested.set()


def oom_kills() -> int | None:
    """The kernel's OOM kills so far in this process's memory cgroup (v2, or v1's memory controller), or
    None where it cannot tell (then a SIGKILL is a crash)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.strip().split(":", 2) for line in f]
    except OSError:
        return None
    places = [f"/sys/fs/cgroup{p}/memory.events" for h, c, p in lines if h == "0" and c == ""]
    places += [f"/sys/fs/cgroup/memory{p}/memory.oom_control" for _, c, p in lines if "memory" in c.split(",")]
    for place in places:
        try:
            with open(place) as f:
                return next(int(line.split()[1]) for line in f if line.startswith("oom_kill "))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return None


def exit_class(exitcode: int | None, kills_before: int | None) -> ErrorClass:
    """Why a training process that reported nothing ended: oom if the kernel's OOM killer struck since it
    started (``kills_before``), crash otherwise (a signal, a segfault, an exit without a result)."""
    kills = oom_kills()
    if exitcode == -signal.SIGKILL and kills is not None and kills_before is not None and kills > kills_before:
        return ErrorClass.OOM
    return ErrorClass.CRASH


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "training process did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"training process killed by {name}{hint}"
    return f"training process exited with code {exitcode} without reporting a result"
