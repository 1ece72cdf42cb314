"""Tests for plugins/plugin_utils/_leftovers.py: writing ahead and spooling what a flush did not deliver."""
# pylint: disable=missing-function-docstring,redefined-outer-name

import os

import pytest

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import endpoint_for
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _leftovers
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import EndpointHealth
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._ordering import Item
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import Spool

KEY = "f6" * 16
PROD = EndpointHealth(endpoint_for("https://api.flashcat.cloud/event/push/change/standard?integration_key=" + KEY))
STAGING = EndpointHealth(endpoint_for("https://api.flashcat.cloud/event/push/change/standard?integration_key=" + "07" * 16))


def items(endpoint, *names):
    made = []
    for name in names:
        key, status = name.split(":")
        made.append(Item(endpoint, {"change_key": key, "change_status": status, "title": name}))
    return made


def waiting(spool, endpoint):
    """The events waiting for ``endpoint``, as "key:status", oldest first (claimed and given back)."""
    batches, problems = spool.claim(endpoint.endpoint)
    assert problems == []
    names = ["%s:%s" % (r["event"]["change_key"], r["event"]["change_status"]) for batch in batches for r in batch.records]
    for batch in batches:
        spool.finish(batch, endpoint.endpoint, batch.records)
    return names


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool")


def test_written_ahead_everything_is_in_the_spool_before_the_wait(spool):
    notes = []
    ahead = _leftovers.write_ahead(spool, items(PROD, "a:Processing", "a:Canceled") + items(STAGING, "b:Canceled"), notes.append)
    assert set(ahead) == {PROD, STAGING} and notes == []
    # A process killed now leaves all of them, with a reason, and never the key.
    assert waiting(spool, PROD) == ["a:Processing", "a:Canceled"] and waiting(spool, STAGING) == ["b:Canceled"]
    for name in os.listdir(spool.path):
        with open(os.path.join(spool.path, name), encoding="utf-8") as handle:
            text = handle.read()
        assert KEY not in text and _leftovers.NOT_YET_DELIVERED in text


def test_after_the_wait_only_what_is_left_stays(spool):
    prod = items(PROD, "a:Processing", "a:Canceled")
    staging = items(STAGING, "b:Canceled")
    ahead = _leftovers.write_ahead(spool, prod + staging, [].append)
    # prod's Processing was delivered during the wait; the rest was not.
    result = _leftovers.store(spool, [prod[1]] + staging, [], ahead, "not delivered within the 4.8 s flush timeout", [].append)
    assert (result.spooled_count, result.lost_count) == (2, 0)
    assert waiting(spool, PROD) == ["a:Canceled"] and waiting(spool, STAGING) == ["b:Canceled"]
    # Everything delivered: nothing left, not even the batch written ahead.
    ahead = _leftovers.write_ahead(spool, items(PROD, "c:Done"), [].append)
    result = _leftovers.store(spool, [], [], ahead, "fallback", [].append)
    assert result.messages(spool) == [] and waiting(spool, PROD) == ["a:Canceled"]


def test_a_spool_that_fails_after_the_write_ahead_keeps_what_was_written(spool, monkeypatch):
    ahead = _leftovers.write_ahead(spool, items(PROD, "a:Processing", "a:Done"), [].append)

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "write", broken)
    left = items(PROD, "a:Done")
    result = _leftovers.store(spool, left, [], ahead, "fallback", [].append)
    assert (result.spooled_count, result.lost_count) == (1, 0)  # sent again rather than lost
    monkeypatch.undo()
    assert waiting(spool, PROD) == ["a:Processing", "a:Done"]


def test_without_a_spool_the_leftovers_are_lost_and_said_so():
    result = _leftovers.store(None, items(PROD, "a:Done"), [], {}, "fallback", [].append)
    assert (result.spooled_count, result.lost_count) == (0, 1)
    assert result.messages(None)[0].endswith("it is lost (no spool is configured)")


def test_a_spool_that_cannot_be_written_ahead_is_a_note(tmp_path):
    blocked = tmp_path / "file"
    spool = Spool(blocked)
    blocked.write_text("x")  # made unusable after Spool() accepted the path
    notes = []
    assert _leftovers.write_ahead(spool, items(PROD, "a:Done"), notes.append) == {}
    assert len(notes) == 1 and notes[0].startswith("Flashduty spool: cannot write the events not delivered yet: ")


def test_the_batch_written_ahead_never_pushes_older_events_out_of_a_full_spool(tmp_path):
    spool = Spool(tmp_path / "small", max_events=5)
    assert spool.write(PROD.endpoint, [item.record("HTTP 503") for item in items(PROD, "old:Processing", "old:Done", "x:Done")]) == 0
    mine = items(PROD, "a:Processing", "a:Done", "b:Done")
    ahead = _leftovers.write_ahead(spool, mine, [].append)
    assert spool.total() == 6  # over the bound for the length of the wait only
    result = _leftovers.store(spool, mine[1:], [], ahead, "fallback", [].append)  # a:Processing was delivered
    assert result.dropped == 0 and spool.total() == 5
    assert waiting(spool, PROD) == ["old:Processing", "old:Done", "x:Done", "a:Done", "b:Done"]
