"""The stored-procedure adapter's statement watchdog: one thread runs every overdue cancel, in order."""

from __future__ import annotations

import threading
import time

from adapters.dbproc import _Watchdog


def test_overdue_actions_run_in_order_and_disarmed_ones_never() -> None:
    watchdog = _Watchdog()
    fired: list[str] = []
    done = threading.Event()
    try:
        watchdog.arm(0.05, lambda: fired.append("first"))
        skipped = watchdog.arm(0.06, lambda: fired.append("disarmed"))
        watchdog.arm(0.07, lambda: (fired.append("last"), done.set()))
        watchdog.disarm(skipped)
        assert done.wait(5)
        assert fired == ["first", "last"]
    finally:
        watchdog.close()


def test_a_failing_action_does_not_stop_the_watchdog() -> None:
    watchdog = _Watchdog()
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("cancel failed")

    try:
        watchdog.arm(0.01, boom)
        watchdog.arm(0.02, done.set)
        assert done.wait(5)
    finally:
        watchdog.close()


def test_close_stops_the_thread_and_arming_again_starts_one() -> None:
    watchdog = _Watchdog()
    watchdog.arm(60, lambda: None)
    thread = watchdog._thread
    assert thread is not None
    watchdog.close()
    thread.join(5)
    assert not thread.is_alive()
    done = threading.Event()
    start = time.monotonic()
    watchdog.arm(0.01, done.set)
    try:
        assert done.wait(5)
        assert time.monotonic() - start < 5
    finally:
        watchdog.close()
