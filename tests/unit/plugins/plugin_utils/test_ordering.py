"""Tests for plugins/plugin_utils/_ordering.py: one sending thread's queues keep each change in order."""
# pylint: disable=missing-function-docstring

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import FlashdutyError, endpoint_for
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import EndpointHealth
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._ordering import Item, Worker

URL = "https://api.flashcat.cloud/event/push/change/standard?integration_key=" + "b2" * 16
DOWN = FlashdutyError("no answer within the timeout of 10.0 s", retryable=True)


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def items(endpoint, *keys):
    made = []
    for seq, key in enumerate(keys, 1):
        item = Item(endpoint, {"change_key": key, "change_status": "Processing"})
        item.seq = seq
        made.append(item)
    return made


def test_an_item_held_keeps_the_later_items_of_its_change_behind_it():
    endpoint = EndpointHealth(endpoint_for(URL), 5.0, clock=Clock())
    worker = Worker()
    first, second, other = items(endpoint, "a", "a", "b")
    first.stuck = True
    worker.hold(first)
    assert second.change in worker.blocked and other.change not in worker.blocked
    worker.hold(second)
    assert worker.due is None  # nothing to probe: a stuck item waits for the flush
    worker.requeue_ready(generation=1, now=200.0)
    assert list(worker.queue) == [] and worker.held == [first, second]


def test_held_items_go_back_in_front_of_the_queue_in_order_when_their_endpoint_is_due():
    clock = Clock()
    endpoint = EndpointHealth(endpoint_for(URL), 5.0, clock=clock)
    endpoint.failed(DOWN, probe=False)
    worker = Worker()
    held = items(endpoint, "a", "b", "a")
    for item in held:
        worker.hold(item, reason=endpoint.last_error)
    assert worker.due == 105.0 and all(item.last_error == DOWN.reason for item in held)
    queued = Item(endpoint, {"change_key": "c"})
    worker.queue.append(queued)
    worker.requeue_ready(generation=0, now=104.0)  # same generation, not due yet: nothing moves
    assert worker.held == held
    worker.requeue_ready(generation=0, now=105.0)
    assert list(worker.queue) == held + [queued] and worker.held == [] and held[0].change not in worker.blocked


def test_take_all_marks_the_item_in_flight_and_forget_drops_a_batch():
    endpoint = EndpointHealth(endpoint_for(URL), 5.0)
    worker = Worker()
    held, queued, flying, replayed = items(endpoint, "a", "b", "c", "d")
    replayed.batch = batch = object()
    worker.hold(held)
    worker.queue.extend([queued, replayed])
    worker.current = flying
    assert worker.pending() == [held, queued, replayed, flying]
    worker.forget(batch)
    assert worker.pending() == [held, queued, flying]
    assert worker.take_all() == [held, queued, flying] and flying.abandoned
    assert worker.pending() == []  # an abandoned item is flush()'s, not pending any more
    assert worker.take_all() == []  # nor taken again by the next flush while its thread still holds it
    assert not worker.held and not worker.queue and held.change not in worker.blocked


def test_a_record_keeps_the_history_of_the_event():
    endpoint = EndpointHealth(endpoint_for(URL), 5.0)
    item = Item(endpoint, {"change_key": 7}, attempts=3, first_failure=1700000000.5)
    assert item.change == (endpoint.fp, "7")
    assert item.record("fallback") == dict(event={"change_key": 7}, first_failure=1700000000.5, attempts=3, last_error="fallback")
    item.last_error = "HTTP 503"
    assert item.record("fallback")["last_error"] == "HTTP 503"
