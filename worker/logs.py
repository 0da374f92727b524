"""A job's output, line by line: the child's stdout and stderr (fd 1 and 2, so native libraries' writes
too), read from pipes, split on ``\\n`` and ``\\r`` (a progress bar's updates become lines), each line cut
at 8 KiB; and the worker's own notes on the job (``system``). Numbered within the attempt and sent in
batches (1,000 lines or 1 s), fenced by the lease; a batch sent again stores nothing twice.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from collections import deque
from typing import Any

MAX_LINE_BYTES = 8 * 1024
BUFFER_MAX = 100_000
"""Lines kept while the service is away; older ones are dropped (and a line says how many)."""
LINE_END = re.compile(rb"\r\n|\r|\n")


class LineSplitter:
    """Bytes in, complete lines out; a line longer than ``MAX_LINE_BYTES`` is cut there, its rest dropped."""

    def __init__(self) -> None:
        self.partial = bytearray()
        self.cutting = False
        self.after_cr = False

    def feed(self, data: bytes) -> list[str]:
        if self.after_cr and data.startswith(b"\n"):
            data = data[1:]  # the \n of a \r\n split across two reads
        self.after_cr = data.endswith(b"\r")
        lines: list[str] = []
        pieces = LINE_END.split(data)
        for piece in pieces[:-1]:
            lines.extend(self._add(piece, ended=True))
        lines.extend(self._add(pieces[-1], ended=False))
        return lines

    def _add(self, piece: bytes, *, ended: bool) -> list[str]:
        out: list[str] = []
        if not self.cutting:
            self.partial += piece
            if len(self.partial) > MAX_LINE_BYTES:
                out.append(decode(bytes(self.partial[:MAX_LINE_BYTES])))
                self.partial.clear()
                self.cutting = True
        if ended:
            if not self.cutting and self.partial:  # empty lines (and the start of a \r redraw) are left out
                out.append(decode(bytes(self.partial)))
            self.partial.clear()
            self.cutting = False
        return out

    def flush(self) -> list[str]:
        """What is left once the stream has ended (a last line with no newline)."""
        rest = [] if self.cutting or not self.partial else [decode(bytes(self.partial))]
        self.partial.clear()
        return rest


BATCH_BYTES = 2 * 1024 * 1024
"""A batch's size as JSON, at most (the service takes 4 MiB a request from workers)."""


def storable(text: str) -> str:
    """Text the service stores: valid UTF-8 (no lone surrogates), no NUL, at most ``MAX_LINE_BYTES``."""
    data = text.encode("utf-8", "replace").replace(b"\x00", b"?")
    return decode(data[:MAX_LINE_BYTES]) if len(data) > MAX_LINE_BYTES else data.decode("utf-8")


def decode(line: bytes) -> str:
    return line.decode("utf-8", "replace").replace("\x00", "\ufffd")


class Captured:
    """Lines read from a child's stdout and stderr pipes by two threads, waiting to be taken."""

    def __init__(self) -> None:
        self.lines: deque[tuple[str, float, str]] = deque(maxlen=BUFFER_MAX)
        self.threads: list[threading.Thread] = []

    def read(self, fd: int, stream: str) -> None:
        thread = threading.Thread(target=self._read, args=(fd, stream), name=f"child-{stream}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _read(self, fd: int, stream: str) -> None:
        splitter = LineSplitter()
        try:
            while chunk := os.read(fd, 65536):
                now = time.time()
                self.lines.extend((stream, now, text) for text in splitter.feed(chunk))
        except OSError:
            pass
        finally:
            self.lines.extend((stream, time.time(), text) for text in splitter.flush())
            os.close(fd)

    def take(self) -> list[tuple[str, float, str]]:
        taken = []
        while self.lines:
            taken.append(self.lines.popleft())
        return taken

    def join(self, timeout: float = 5) -> None:
        """Until both pipes have ended (the child and every process it started have exited)."""
        for thread in self.threads:
            thread.join(timeout)


class JobLog:
    """One attempt's lines, numbered, waiting to go to the service."""

    def __init__(self, first_seq: int = 0) -> None:
        self.pending: deque[dict[str, Any]] = deque()
        self.next_seq = first_seq
        """Each node of a multi-node job numbers its lines from its own base, so none is taken for another's."""
        self.dropped = 0
        self.lock = threading.Lock()

    def add(self, stream: str, text: str, at: float | None = None) -> None:
        text = storable(text)
        with self.lock:
            self.pending.append({"seq": self.next_seq, "stream": stream, "time": at or time.time(), "text": text})
            self.next_seq += 1
            if len(self.pending) > BUFFER_MAX:
                self.pending.popleft()
                self.dropped += 1

    def system(self, text: str) -> None:
        self.add("system", text)

    def batch(self, size: int = 1000, max_bytes: int = BATCH_BYTES) -> list[dict[str, Any]]:
        """The next lines to send: at most ``size``, and about ``max_bytes`` as JSON (escapes included)."""
        taken: list[dict[str, Any]] = []
        total = 0
        with self.lock:
            for line in itertools.islice(self.pending, size):
                total += len(json.dumps(line["text"])) + 80
                if taken and total > max_bytes:
                    break
                taken.append(line)
        return taken

    def sent(self, count: int) -> None:
        with self.lock:
            for _ in range(min(count, len(self.pending))):
                self.pending.popleft()
