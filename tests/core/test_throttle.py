"""Failed logins counted per key over a sliding window: limits hold, also for attempts sent at once."""

from __future__ import annotations

import threading

from app.core import throttle
from app.core.throttle import FailureThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_at_its_limit_waits_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    guard = FailureThrottle(3, 60, clock)
    for second in (0, 10, 20):
        clock.now = 1000 + second
        assert throttle.attempt([(guard, "bob")]) is None
    clock.now = 1030
    assert throttle.attempt([(guard, "bob")]) == 30  # the failure at 1000 leaves at 1060
    assert guard.retry_after("alice") is None  # other keys are free
    clock.now = 1061
    assert throttle.attempt([(guard, "bob")]) is None


def test_a_success_is_given_back() -> None:
    guard = FailureThrottle(2, 60, Clock())
    for _ in range(5):
        assert throttle.attempt([(guard, "bob")]) is None
        guard.forgive("bob")


def test_attempts_sent_at_once_never_pass_the_limit() -> None:
    by_name, by_address = FailureThrottle(5, 60), FailureThrottle(20, 60)
    passed: list[int] = []
    start = threading.Barrier(40)

    def guess(n: int) -> None:
        start.wait()
        if throttle.attempt([(by_name, f"user{n % 2}"), (by_address, "10.0.0.9")]) is None:
            passed.append(n)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(passed) == 10  # 5 per name, well under the address's 20


def test_made_up_names_cannot_fill_the_memory_and_the_busiest_key_is_kept() -> None:
    guard = FailureThrottle(3, 60, Clock())
    guard.MAX_KEYS = 100
    for _ in range(3):
        guard.fail("admin")
    for i in range(500):
        guard.fail(f"made-up-{i}")
        if i % 50 == 0:
            guard.fail("admin")  # still attacked: it stays
    assert len(guard._times) == 100
    assert guard.retry_after("admin") is not None
