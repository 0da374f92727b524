"""Counting failures per key over a sliding window, for throttling password guesses.

Kept in the memory of one API process: several processes each count their own, so the limit is
per process (README's Security section says so). Thread-safe: routes run in a thread pool.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable


class FailureThrottle:
    MAX_KEYS = 100_000
    """Keys remembered at most (the oldest are forgotten first), so made-up names cannot fill the memory."""

    def __init__(self, max_failures: int, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window, self.clock = max_failures, window_seconds, clock
        self._failures: dict[Hashable, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: Hashable, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, key: Hashable) -> float | None:
        """Seconds until ``key`` may try again, or None if it may now."""
        with self._lock:
            now = self.clock()
            times = self._recent(key, now)
            if len(times) < self.max_failures:
                return None
            return max(0.0, times[0] + self.window - now)

    def fail(self, key: Hashable) -> None:
        with self._lock:
            now = self.clock()
            self._recent(key, now)
            self._failures.setdefault(key, deque()).append(now)
            while len(self._failures) > self.MAX_KEYS:
                del self._failures[next(iter(self._failures))]

    def clear(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)
