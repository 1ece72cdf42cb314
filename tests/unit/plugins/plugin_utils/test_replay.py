"""Tests for plugins/plugin_utils/_replay.py: spooled events loaded for replay, on a real spool directory."""
# pylint: disable=missing-function-docstring,redefined-outer-name

import os
import threading
import time

import pytest

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import endpoint_for
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import EndpointHealth
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._ordering import Item
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._replay import ReplayDispatcher
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import Spool

URL = endpoint_for("https://api.flashcat.cloud/event/push/change/standard?integration_key=" + "e5" * 16)


def record(key, status):
    return dict(event={"change_key": key, "change_status": status, "title": key}, first_failure=1700000000.0, attempts=2,
                last_error="HTTP 503")


class Host:
    """What the sender gives the dispatcher: a lock, queues, notes."""

    def __init__(self, spool):
        self.changed = threading.Condition()
        self.routed = []
        self.forgotten = []
        self.notes = []
        self.alive = True
        self.dispatcher = ReplayDispatcher(spool, self.changed, route=self.routed.append, forget=self.forgotten.append,
                                           note=self.notes.append, alive=lambda: self.alive)

    def start(self, target, name):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def wait_idle(self, timeout=5.0):
        end = time.monotonic() + timeout
        with self.changed:
            while self.dispatcher.busy() and time.monotonic() < end:
                self.changed.wait(0.05)
            return not self.dispatcher.busy()

    def stop(self):
        with self.changed:
            self.alive = False
            self.changed.notify_all()


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool", lease=2.0)


def test_spooled_events_are_routed_before_what_was_submitted_behind_them(spool):
    spool.write(URL, [record("a", "Processing")])
    spool.write(URL, [record("a", "Done"), record("b", "Done")])
    host = Host(spool)
    endpoint = EndpointHealth(URL)
    submitted = Item(endpoint, {"change_key": "a", "change_status": "Canceled"})
    with host.changed:
        assert not host.dispatcher.hold_back(submitted)  # nothing loading: the sender routes it itself
        host.dispatcher.load(endpoint, host.start)
        assert host.dispatcher.busy() and host.dispatcher.hold_back(submitted)
        assert host.dispatcher.stranded() == [submitted]
    assert host.wait_idle()
    assert [(item.change[1], item.event["change_status"]) for item in host.routed] == [
        ("a", "Processing"), ("a", "Done"), ("b", "Done"), ("a", "Canceled")]
    assert host.routed[0].attempts == 2 and host.routed[0].first_failure == 1700000000.0 and host.routed[0].last_error == "HTTP 503"
    assert host.routed[-1].batch is None
    assert host.notes == [] and spool.pending(URL) == 0  # claimed
    host.stop()


def test_a_batch_is_released_when_its_last_event_is_settled(spool):
    spool.write(URL, [record("a", "Processing"), record("a", "Done")])
    host = Host(spool)
    with host.changed:
        host.dispatcher.load(EndpointHealth(URL), host.start)
    assert host.wait_idle()
    first, second = host.routed
    with host.changed:
        assert host.dispatcher.settled(first) is None
        batch = host.dispatcher.settled(second)
        assert batch is first.batch and batch.closed and host.dispatcher.busy()  # being released
    host.dispatcher.release(batch)
    assert not host.dispatcher.busy() and os.listdir(spool.path) == []
    host.stop()


def test_open_batches_are_handed_back_and_a_batch_taken_over_is_forgotten(spool):
    spool.write(URL, [record("a", "Processing")])
    spool.write(URL, [record("b", "Processing")])
    host = Host(spool)
    with host.changed:
        host.dispatcher.load(EndpointHealth(URL), host.start)
    assert host.wait_idle()
    first, second = [item.batch for item in host.routed]
    time.sleep(1.2)  # a renewal (every lease / 4, at least 1 s) keeps the claims
    assert Spool(spool.path, lease=2.0).claim(URL) == ([], [])
    claim = first.spool_batch.claim_path
    os.rename(claim, claim.split(".claim-")[0] + ".claim-1-thief")  # another run took the first over
    end = time.monotonic() + 5
    while not host.forgotten and time.monotonic() < end:
        time.sleep(0.05)
    assert host.forgotten == [first] and first.closed
    with host.changed:
        assert host.dispatcher.take_open_batches() == [second] and second.closed
        assert host.dispatcher.take_open_batches() == []
    host.stop()


def test_an_unreadable_spool_is_a_note_not_an_exception(tmp_path):
    blocked = tmp_path / "spool"
    spool = Spool(blocked)
    blocked.write_text("x")  # made unusable after Spool() accepted the path
    host = Host(spool)
    with host.changed:
        host.dispatcher.load(EndpointHealth(URL), host.start)
    assert host.wait_idle()
    assert host.routed == [] and len(host.notes) == 1 and host.notes[0].startswith("Flashduty spool not replayed: ")
    host.stop()
