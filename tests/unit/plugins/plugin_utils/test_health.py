"""Tests for plugins/plugin_utils/_health.py: an endpoint going down, being probed and coming back."""
# pylint: disable=missing-function-docstring

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import FlashdutyError, endpoint_for
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import (
    MAX_RETRY_PAUSE,
    PROBE,
    SEND,
    WAIT,
    EndpointHealth,
    sort_held,
)

URL = "https://api.flashcat.cloud/event/push/change/standard?integration_key=" + "a1" * 16
REFUSED = FlashdutyError("could not reach api.flashcat.cloud: connection refused", retryable=True, unreachable=True)
TIMEOUT = FlashdutyError("no answer within the timeout of 10.0 s", retryable=True)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Held:
    def __init__(self, endpoint, key, stuck=False):
        self.endpoint = endpoint
        self.key = key
        self.change = (endpoint.fp, key)
        self.stuck = stuck


def health(pause=5.0):
    clock = Clock()
    return EndpointHealth(endpoint_for(URL), pause, clock=clock), clock


def test_up_until_an_event_fails_for_good_then_one_probe_after_the_pause():
    endpoint, clock = health()
    assert endpoint.admit(clock.now) == SEND and endpoint.due() is None
    assert endpoint.failed(REFUSED, probe=False) is True
    assert endpoint.admit(clock.now) == WAIT and endpoint.unreachable and endpoint.last_error == REFUSED.reason
    assert endpoint.due() == 105.0
    assert endpoint.failed(TIMEOUT, probe=False) is False  # already down: the pause is not pushed back
    assert endpoint.due() == 105.0 and endpoint.last_error == TIMEOUT.reason and not endpoint.unreachable
    assert endpoint.admit(104.9) == WAIT
    assert endpoint.admit(105.0) == PROBE
    assert endpoint.admit(200.0) == WAIT and endpoint.due() is None  # one probe at a time


def test_a_failed_probe_doubles_the_pause_up_to_the_maximum():
    endpoint, clock = health()
    endpoint.failed(TIMEOUT, probe=False)
    pauses = []
    for _dummy in range(6):
        clock.now = endpoint.due()
        assert endpoint.admit(clock.now) == PROBE
        assert endpoint.failed(TIMEOUT, probe=True) is True
        pauses.append(endpoint.due() - clock.now)
    assert pauses == [5.0, 10.0, 20.0, 40.0, MAX_RETRY_PAUSE, MAX_RETRY_PAUSE]


def test_any_answer_brings_it_back_with_the_first_pause():
    endpoint, clock = health()
    endpoint.failed(REFUSED, probe=False)
    clock.now = endpoint.due()
    endpoint.admit(clock.now)
    endpoint.failed(REFUSED, probe=True)  # pause now 10
    clock.now = endpoint.due()
    assert endpoint.admit(clock.now) == PROBE
    assert endpoint.answered(probe=True) is True  # a refusal is an answer too
    assert endpoint.due() is None and not endpoint.unreachable and endpoint.admit(clock.now) == SEND
    endpoint.failed(TIMEOUT, probe=False)
    assert endpoint.due() - clock.now == 5.0
    assert endpoint.answered(probe=False) is True and endpoint.answered(probe=False) is False


def test_an_interrupted_probe_ends_the_probe_and_nothing_else():
    endpoint, clock = health()
    endpoint.failed(TIMEOUT, probe=False)
    clock.now = endpoint.due()
    assert endpoint.admit(clock.now) == PROBE
    assert endpoint.interrupted(probe=True) is True
    assert endpoint.admit(clock.now) == PROBE  # still down and due: probed again
    assert endpoint.interrupted(probe=False) is False


def test_held_items_move_in_order_and_a_waiting_one_keeps_its_change_behind_it():
    down, _clock = health()
    up, _clock = health()
    down.failed(TIMEOUT, probe=False)  # due at 105
    items = [Held(down, "a"), Held(up, "b"), Held(up, "c", stuck=True), Held(up, "c"), Held(down, "d"), Held(up, "b")]
    movable, staying, due = sort_held(items, 104.0)
    assert [(item.endpoint is up, item.key) for item in movable] == [(True, "b"), (True, "b")]
    assert [item.key for item in staying] == ["a", "c", "c", "d"]  # c stays behind its stuck first event
    assert due == 105.0
    movable, staying, due = sort_held(items, 105.0)
    assert [item.key for item in movable] == ["a", "b", "d", "b"] and [item.key for item in staying] == ["c", "c"]
    assert due is None
