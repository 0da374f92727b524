"""Counting attempts per key over a sliding window, for throttling password guesses.

An attempt is counted when it starts (``attempt``), under one lock, so that guesses sent at the
same moment cannot all slip under the limit; a successful one is given back (``forgive``).
Kept in the memory of one API process: several processes each count their own, so the limit is
per process (README's Security section says so).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence


class FailureThrottle:
    MAX_KEYS = 100_000
    """Keys remembered at most; the one idle longest is forgotten first, so made-up names cannot fill the memory."""

    def __init__(self, max_failures: int, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window, self.clock = max_failures, window_seconds, clock
        self._times: OrderedDict[Hashable, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: Hashable, now: float) -> deque[float]:
        times = self._times.get(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def _wait(self, key: Hashable, now: float) -> float | None:
        times = self._recent(key, now)
        return max(0.0, times[0] + self.window - now) if len(times) >= self.max_failures else None

    def retry_after(self, key: Hashable) -> float | None:
        """Seconds until ``key`` may try again, or None if it may now."""
        with self._lock:
            return self._wait(key, self.clock())

    def fail(self, key: Hashable) -> None:
        with self._lock:
            self._record(key, self.clock())

    def _record(self, key: Hashable, now: float) -> None:
        times = self._recent(key, now)
        times.append(now)
        self._times[key] = times
        self._times.move_to_end(key)
        while len(self._times) > self.MAX_KEYS:
            self._times.popitem(last=False)

    def forgive(self, key: Hashable) -> None:
        """Take back the newest attempt of ``key`` (it succeeded)."""
        with self._lock:
            times = self._times.get(key)
            if times:
                times.pop()


def attempt(pairs: Sequence[tuple[FailureThrottle, Hashable]]) -> float | None:
    """Count an attempt for every (throttle, key) at once, or none: the wait of the first key at its limit."""
    locks = sorted({id(t): t for t, _ in pairs}.values(), key=id)
    for throttle in locks:
        throttle._lock.acquire()
    try:
        waits = [wait for throttle, key in pairs if (wait := throttle._wait(key, throttle.clock())) is not None]
        if waits:
            return max(waits)
        for throttle, key in pairs:
            throttle._record(key, throttle.clock())
        return None
    finally:
        for throttle in reversed(locks):
            throttle._lock.release()
