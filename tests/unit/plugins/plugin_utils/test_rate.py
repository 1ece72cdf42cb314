"""Tests for plugins/plugin_utils/_rate.py: the shared request rate limit, on a fake clock and on real threads."""
# pylint: disable=missing-function-docstring

import threading
import time

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._rate import RateLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_no_limit_never_waits():
    for max_rate in (None, 0, -3):
        limiter = RateLimiter(max_rate)
        assert limiter.interval is None
        assert [limiter.reserve(deadline=0.0) for _dummy in range(100)] == [0.0] * 100


def test_a_burst_then_one_slot_per_interval():
    clock = Clock()
    limiter = RateLimiter(40, clock=clock)  # burst of 4, then one every 25 ms
    waits = [limiter.reserve() for _dummy in range(8)]
    assert waits[:4] == [0.0] * 4
    assert [round(wait, 3) for wait in waits[4:]] == [0.025, 0.05, 0.075, 0.1]
    clock.now += 10  # idle for long: the bucket is full again, not more than full
    assert [limiter.reserve() for _dummy in range(4)] == [0.0] * 4
    assert limiter.reserve() > 0


def test_small_rates_have_no_burst_and_large_ones_at_most_five():
    clock = Clock()
    slow = RateLimiter(2, clock=clock)
    assert slow.reserve() == 0.0 and slow.reserve() == 0.5
    fast = RateLimiter(1000, clock=clock)
    assert [fast.reserve() for _dummy in range(5)] == [0.0] * 5 and fast.reserve() > 0


def test_a_slot_after_the_deadline_is_not_reserved():
    clock = Clock()
    limiter = RateLimiter(10, clock=clock)
    assert limiter.reserve(deadline=clock.now + 1) == 0.0
    assert limiter.reserve(deadline=clock.now + 0.05) is None  # the next slot is 0.1 s away
    assert round(limiter.reserve(deadline=clock.now + 1), 6) == 0.1  # the refused reservation took nothing


def test_threads_share_one_limit():
    limiter = RateLimiter(50)
    starts = []
    lock = threading.Lock()

    def take(count):
        for _dummy in range(count):
            wait = limiter.reserve()
            time.sleep(wait)
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=take, args=(10,)) for _dummy in range(4)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(starts) == 40
    assert time.monotonic() - began >= (40 - 5) / 50 - 0.02  # 35 intervals of 20 ms after the burst of 5
