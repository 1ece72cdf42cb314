"""Tests for plugins/plugin_utils/_report.py: what the callback says became of its events, and what a flush spools."""
# pylint: disable=missing-function-docstring,redefined-outer-name

import os

import pytest

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import FlashdutyError, endpoint_for
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _report
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import EndpointHealth
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._ordering import Item
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._report import FlushReport, Leftovers, Refusals
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import Spool

KEY = "c3" * 16
PROD = EndpointHealth(endpoint_for("https://api.flashcat.cloud/event/push/change/standard?integration_key=" + KEY))
STAGING = EndpointHealth(endpoint_for("https://api.flashcat.cloud/event/push/change/standard?integration_key=" + "d4" * 16))
MASKED = "https://api.flashcat.cloud/event/push/change/standard?integration_key=****"


def unauthorized(request_id):
    return FlashdutyError("HTTP 401 Unauthorized: bad key", status_code=401, code="Unauthorized", request_id=request_id)


def event(key, status="Done"):
    return {"change_key": key, "change_status": status}


class Failed:
    def __init__(self, last_error=None):
        self.last_error = last_error


def test_one_warning_per_kind_of_refusal_and_endpoint_with_the_first_request_ids():
    refusals = Refusals()
    for number in range(8):
        refusals.add(PROD, unauthorized("r%d" % number), event("k%d" % number))
    refusals.add(STAGING, unauthorized("s0"), event("s", "Processing"))
    refusals.add(PROD, FlashdutyError("HTTP 400 InvalidParameter: title", status_code=400, code="InvalidParameter",
                                      request_id="p0"), event("p"), from_spool=True)
    refusals.add(PROD, unauthorized("r8"), event("k8"))
    messages = refusals.take_messages()
    assert messages == [
        "Flashduty refused 9 change events at %s: HTTP 401 Unauthorized: bad key (request_ids of the first 5: r0, r1, r2, r3, r4); "
        "the integration key was not accepted: copy the push URL again from the Flashduty integration page" % MASKED,
        "Flashduty did not accept the Processing event of change s at %s: HTTP 401 Unauthorized: bad key (request_id: s0); "
        "the integration key was not accepted: copy the push URL again from the Flashduty integration page" % MASKED,
        "Flashduty did not accept the Done event of change p (from the spool) at %s: HTTP 400 InvalidParameter: title "
        "(request_id: p0); check the event fields, and that the push URL matches the integration's push URL exactly" % MASKED,
    ]
    assert refusals.take_messages() == []  # each said once


def test_request_ids_all_when_few_and_none_when_the_server_gave_none():
    refusals = Refusals()
    refusals.add(PROD, unauthorized("a"), event("x"))
    refusals.add(PROD, unauthorized("b"), event("y"))
    assert refusals.take_messages()[0].startswith("Flashduty refused 2 change events at %s: HTTP 401 Unauthorized: bad key "
                                                  "(request_ids: a, b); " % MASKED)
    refusals.add(PROD, unauthorized(None), event("x"))
    refusals.add(PROD, unauthorized("late"), event("y"))
    assert "(request_id of the first: late)" in refusals.take_messages()[0]
    refusals.add(PROD, FlashdutyError("internal error while sending: KeyError: 'x'"), event("x"))
    refusals.add(PROD, FlashdutyError("internal error while sending: KeyError: 'x'"), event("y"))
    assert refusals.take_messages() == ["Flashduty refused 2 change events at %s: internal error while sending: KeyError: 'x'" % MASKED]


def test_leftovers_say_once_per_endpoint_what_was_spooled_or_lost_with_the_last_error():
    class SpoolStub:
        path = "/home/me/.ansible/flashduty/spool"
        max_events = 1000

    result = Leftovers("not delivered within the 4.8 s flush timeout")
    result.spooled(PROD, [Failed("HTTP 503"), Failed(None)])
    result.spooled(PROD, [Failed(None)])
    result.spooled(STAGING, [Failed(None)])
    result.spooled(STAGING, [])
    result.not_spooled(STAGING, [Failed("could not reach api.flashcat.cloud")], "cannot write: disk full")
    result.dropped = 3
    assert (result.spooled_count, result.lost_count) == (4, 1)
    assert result.messages(SpoolStub()) == [
        "3 change events could not be delivered to %s: HTTP 503; they are spooled in %s and will be sent by the next run"
        % (MASKED, SpoolStub.path),
        "1 change event could not be delivered to %s: not delivered within the 4.8 s flush timeout; it is spooled in %s and "
        "will be sent by the next run" % (MASKED, SpoolStub.path),
        "1 change event could not be delivered to %s: could not reach api.flashcat.cloud; it is lost (the spool failed: "
        "cannot write: disk full)" % MASKED,
        "the Flashduty spool %s holds at most 1000 change events: the 3 oldest were dropped" % SpoolStub.path,
    ]
    nothing = Leftovers("fallback")
    nothing.not_spooled(PROD, [Failed(None)])
    assert nothing.messages(None) == ["1 change event could not be delivered to %s: fallback; it is lost (no spool is configured)"
                                      % MASKED]


def test_flush_report_summary():
    report = FlushReport(delivered=12, replayed=2, failed=1, spooled=3, elapsed=0.42)
    assert report.summary() == "Flashduty change events: 12 delivered (2 from the spool), 1 refused, 3 spooled; flush 0.4 s"
    report = FlushReport(spooled=4, lost=1, dropped=2, timed_out=True, pending=4, elapsed=4.75)
    assert report.summary() == ("Flashduty change events: 0 delivered, 4 spooled, 2 dropped from the full spool, 1 lost; "
                                "flush 4.8 s, timed out with 4 pending")
    assert report._asdict()["pending"] == 4 and "pending=4" in repr(report)


# ---------------------------------------------------------------- writing ahead and spooling what is left


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
    ahead = _report.write_ahead(spool, items(PROD, "a:Processing", "a:Canceled") + items(STAGING, "b:Canceled"), notes.append)
    assert set(ahead) == {PROD, STAGING} and notes == []
    # A process killed now leaves all of them, with a reason, and never the key.
    assert waiting(spool, PROD) == ["a:Processing", "a:Canceled"] and waiting(spool, STAGING) == ["b:Canceled"]
    for name in os.listdir(spool.path):
        with open(os.path.join(spool.path, name), encoding="utf-8") as handle:
            text = handle.read()
        assert KEY not in text and _report.NOT_YET_DELIVERED in text


def test_after_the_wait_only_what_is_left_stays(spool):
    prod = items(PROD, "a:Processing", "a:Canceled")
    staging = items(STAGING, "b:Canceled")
    ahead = _report.write_ahead(spool, prod + staging, [].append)
    # prod's Processing was delivered during the wait; the rest was not.
    result = _report.store(spool, [prod[1]] + staging, [], ahead, "not delivered within the 4.8 s flush timeout", [].append)
    assert (result.spooled_count, result.lost_count) == (2, 0)
    assert waiting(spool, PROD) == ["a:Canceled"] and waiting(spool, STAGING) == ["b:Canceled"]
    # Everything delivered: nothing left, not even the batch written ahead.
    ahead = _report.write_ahead(spool, items(PROD, "c:Done"), [].append)
    result = _report.store(spool, [], [], ahead, "fallback", [].append)
    assert result.messages(spool) == [] and waiting(spool, PROD) == ["a:Canceled"]


def test_a_spool_that_fails_after_the_write_ahead_keeps_what_was_written(spool, monkeypatch):
    ahead = _report.write_ahead(spool, items(PROD, "a:Processing", "a:Done"), [].append)

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "write", broken)
    left = items(PROD, "a:Done")
    result = _report.store(spool, left, [], ahead, "fallback", [].append)
    assert (result.spooled_count, result.lost_count) == (1, 0)  # sent again rather than lost
    monkeypatch.undo()
    assert waiting(spool, PROD) == ["a:Processing", "a:Done"]


def test_without_a_spool_the_leftovers_are_lost_and_said_so():
    result = _report.store(None, items(PROD, "a:Done"), [], {}, "fallback", [].append)
    assert (result.spooled_count, result.lost_count) == (0, 1)
    assert result.messages(None)[0].endswith("it is lost (no spool is configured)")


def test_a_spool_that_cannot_be_written_ahead_is_a_note(tmp_path):
    blocked = tmp_path / "file"
    spool = Spool(blocked)
    blocked.write_text("x")  # made unusable after Spool() accepted the path
    notes = []
    assert _report.write_ahead(spool, items(PROD, "a:Done"), notes.append) == {}
    assert len(notes) == 1 and notes[0].startswith("Flashduty spool: cannot write the events not delivered yet: ")


def test_the_batch_written_ahead_never_pushes_older_events_out_of_a_full_spool(tmp_path):
    spool = Spool(tmp_path / "small", max_events=5)
    assert spool.write(PROD.endpoint, [item.record("HTTP 503") for item in items(PROD, "old:Processing", "old:Done", "x:Done")]) == 0
    mine = items(PROD, "a:Processing", "a:Done", "b:Done")
    ahead = _report.write_ahead(spool, mine, [].append)
    assert spool.total() == 6  # over the bound for the length of the wait only
    result = _report.store(spool, mine[1:], [], ahead, "fallback", [].append)  # a:Processing was delivered
    assert result.dropped == 0 and spool.total() == 5
    assert waiting(spool, PROD) == ["old:Processing", "old:Done", "x:Done", "a:Done", "b:Done"]


def test_replay_summary_says_what_flush_spool_delivered_and_what_is_left(tmp_path):
    class CountedSpool:
        path = str(tmp_path)

        def __init__(self, total):
            self.total = total

    report = FlushReport(delivered=3, replayed=2)
    assert report.replay_summary(CountedSpool(lambda: 4)) == "Flashduty change events: 2 spooled events delivered, 4 left in %s" % tmp_path
    assert report.replay_summary(None) == "Flashduty change events: no spool directory: nothing to deliver"

    def unreadable():
        raise OSError("Permission denied")

    assert "what is left in %s is unknown (Permission denied)" % tmp_path in report.replay_summary(CountedSpool(unreadable))
