"""Wakes long-polling claims when a job may have become claimable in this process.

A claim captures the current event before it looks for a job, so a job
submitted while it looks is never missed: the event is already set when it
goes to wait. Jobs made claimable by another API process are found by the
claim's periodic re-check (``claim_poll_seconds``).
"""

from __future__ import annotations

import asyncio


class Wakeup:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def current(self) -> asyncio.Event:
        return self._event

    def _fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def notify(self) -> None:
        """Safe from any thread (sync routes run in a thread pool)."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._fire()
        else:
            self._loop.call_soon_threadsafe(self._fire)

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
