"""A job's process's output reaches the worker line by line: Python's prints, native writes to fd 1 and 2,
a C library's stdio, progress bars redrawn with \\r, lines too long, all from a real spawned process."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from worker.child import redirect_output
from worker.logs import MAX_LINE_BYTES
from worker.process import Child


def noisy_job(inbox: Connection, out: Connection, stop: Event, stdout: Connection, stderr: Connection) -> None:
    """What a training script and its libraries write, as run_child would have them written."""
    redirect_output(stdout, stderr)
    inbox.recv()
    print("from python's print")
    print("a warning on stderr", file=sys.stderr)
    os.write(1, b"straight to fd 1\n")
    os.write(2, b"straight to fd 2\n")
    libc = ctypes.CDLL(None)
    libc.puts(b"from C's puts")
    libc.fflush(None)
    for percent in (25, 50, 100):
        sys.stdout.write(f"\rloading {percent}%")
        sys.stdout.flush()
        time.sleep(0.01)
    print()
    print("x" * (3 * MAX_LINE_BYTES))
    print("the end, without a newline", end="")
    out.close()


def test_every_kind_of_write_of_a_job_process_becomes_its_own_line_in_order() -> None:
    child = Child(mp.get_context("spawn"), target=noisy_job)
    assert child.hand(object())  # type: ignore[arg-type]  # the noisy job reads anything
    child.process.join(60)
    child.output.join()
    lines = child.output.take()
    stdout = [text for stream, _, text in lines if stream == "stdout"]
    stderr = [text for stream, _, text in lines if stream == "stderr"]
    assert stdout == [
        "from python's print",
        "straight to fd 1",
        "from C's puts",
        "loading 25%",
        "loading 50%",
        "loading 100%",
        "x" * MAX_LINE_BYTES,
        "the end, without a newline",
    ]
    assert stderr == ["a warning on stderr", "straight to fd 2"]
    assert all(at > 0 for _, at, _ in lines)
    child.discard()
