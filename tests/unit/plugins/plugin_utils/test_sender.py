"""Tests for plugins/plugin_utils/_sender.py: real HTTP against the local receiver (tools/flashduty_receiver.py)."""
# pylint: disable=missing-function-docstring,protected-access,redefined-outer-name

import collections
import os
import secrets
import signal
import threading
import time
import urllib.parse
import warnings

import pytest
from flashduty_receiver import PUSH_PATH, Receiver, closed_port

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import build_event, endpoint_for
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._sender import EventSender, FlushReport, open_sender
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import Spool

FAST = dict(timeout=2.0, retries=3, validate_certs=True, ca_path=None)


def event(key, status="Processing", number=0):
    built, _warnings = build_event(status, key, "play %s #%d" % (key, number), labels={"n": number},
                                   event_time=1700000000 + number)
    return built


def ep(push_url):
    """The Endpoint of a URL, as the callback resolves it once."""
    return endpoint_for(push_url)


def key_of(push_url):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(push_url).query)["integration_key"][0]


def dead_url(port=None, key=None):
    """A push URL where nothing listens: connections are refused."""
    return "http://127.0.0.1:%d%s?integration_key=%s" % (port or closed_port(), PUSH_PATH, key or secrets.token_hex(16))


def spooled(spool, push_url):
    """The events waiting in the spool for push_url, in order (claims and gives them back)."""
    batches, problems = spool.claim(ep(push_url))
    assert problems == []
    events = [r["event"] for b in batches for r in b.records]
    for batch in batches:
        spool.finish(batch, ep(push_url), remaining=batch.records)
    return events


def spool_bytes(spool):
    data = b""
    if os.path.isdir(spool.path):
        for name in sorted(os.listdir(spool.path)):
            data += name.encode() + b"\n"
            with open(os.path.join(spool.path, name), "rb") as handle:
                data += handle.read()
    return data


def assert_no_key(key, *texts):
    for text in texts:
        data = text if isinstance(text, bytes) else repr(text).encode()
        assert key.encode() not in data
        assert urllib.parse.quote(key).encode() not in data


@pytest.fixture
def make_sender():
    made = []

    def make(**kwargs):
        options = dict(client_options=dict(FAST), max_rate=None, concurrency=4, spool=None)
        options.update(kwargs)
        sender = EventSender(**options)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "flashduty" / "spool")


def sender_threads():
    return [t for t in threading.enumerate() if t.name.startswith(("flashduty-sender-", "flashduty-replay"))]


def wait_until(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---------------------------------------------------------------- the caller's thread


def test_idle_costs_nothing_and_submit_never_waits(receiver, make_sender):
    before = len(sender_threads())
    sender = make_sender()
    assert len(sender_threads()) == before  # no thread before the first submit
    assert sender.drain_messages() == [] and sender.flush(1).delivered == 0  # an idle flush is instant
    receiver.set_latency(0.2)  # every request blocks 0.2 s: a submit doing I/O would show
    slowest = 0.0
    for number in range(20):
        started = time.monotonic()
        sender.submit(ep(receiver.push_url), event("idle-%d" % (number % 8), number=number))
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 0.05
    threads = sender_threads()
    assert 1 <= len(threads) - before <= 4 and all(t.daemon for t in threads)
    report = sender.flush(10)
    assert (report.delivered, report.failed, report.spooled, report.pending, report.timed_out) == (20, 0, 0, 0, False)
    assert len(receiver.events) == 20 and sender.drain_messages() == []
    sender.close()
    for thread in threads:
        thread.join(2)
    assert len(sender_threads()) == before


def test_2000_events_exactly_once_and_in_order_per_change(receiver, make_sender):
    receiver.set_latency(0.005)
    sender = make_sender(concurrency=4)
    sent = []
    for number in range(2000):
        key = "change-%d" % (number % 100)
        status = "Processing" if number < 1000 else "Done"
        sent.append((key, number))
        sender.submit(ep(receiver.push_url), event(key, status, number))
    report = sender.flush(30)
    assert (report.delivered, report.failed, report.spooled, report.timed_out) == (2000, 0, 0, False), report.summary()
    got = [(e["change_key"], int(e["labels"]["n"])) for e in receiver.events]
    assert sorted(got) == sorted(sent)  # all, exactly once
    per_key = collections.defaultdict(list)
    for key, number in got:
        per_key[key].append(number)
    assert all(numbers == sorted(numbers) for numbers in per_key.values())  # Processing never after Done
    assert len({r["request_id"] for r in receiver.records}) == 2000


def test_rate_limit_is_shared_by_all_threads(receiver, make_sender):
    sender = make_sender(max_rate=30, concurrency=4)
    started = time.monotonic()
    for number in range(60):
        sender.submit(ep(receiver.push_url), event("rate-%d" % number, number=number))
    report = sender.flush(10)
    elapsed = time.monotonic() - started
    assert report.delivered == 60
    assert 1.5 <= elapsed < 4.0  # (60 - burst 3) / 30 per second = 1.9 s
    arrivals = sorted(r["received_at"] for r in receiver.records)
    busiest = max(sum(1 for t in arrivals if first <= t < first + 1.0) for first in arrivals)
    assert busiest <= 30 + 3


# ---------------------------------------------------------------- retries and refusals


def test_transient_faults_are_retried(make_sender):
    faults = {
        "500": dict(kind="status", status=500),
        "502": dict(kind="status", status=502, code="BadGateway"),
        "503": dict(kind="status", status=503),
        "504": dict(kind="status", status=504, code="GatewayTimeout"),
        "429": dict(kind="ratelimit"),
        "429 Retry-After": dict(kind="ratelimit", retry_after=1),
        "reset": dict(kind="reset"),
        "close": dict(kind="close"),
        "black hole": dict(kind="blackhole", hold=3),
    }
    receivers = {}
    try:
        for name, fault in faults.items():
            receivers[name] = Receiver(integration_key=secrets.token_hex(16), quiet=True).start()
            receivers[name].add_fault(**fault)
        # Refused: nothing listens on the port yet; a receiver comes up there a little later.
        refused_port = closed_port()
        refused_key = secrets.token_hex(16)
        sender = make_sender(client_options=dict(FAST, timeout=0.5), concurrency=10)
        for rcv in receivers.values():
            sender.submit(ep(rcv.push_url), event("fault", number=1))
        sender.submit(ep(dead_url(refused_port, refused_key)), event("fault", number=1))
        time.sleep(0.1)
        receivers["refused"] = Receiver(integration_key=refused_key, port=refused_port, quiet=True).start()
        # Retried while the run goes on: at the flush, an endpoint still refusing is spooled at once instead.
        assert wait_until(lambda: all(rcv.events for rcv in receivers.values()), timeout=10)
        report = sender.flush(10)
        assert (report.delivered, report.failed, report.spooled) == (10, 0, 0), (report.summary(), sender.drain_messages())
        assert sender.drain_messages() == []
        for name, rcv in receivers.items():
            requests = rcv.requests
            assert [r["accepted"] for r in requests] == ([True] if name == "refused" else [False, True]), name
        waited = receivers["429 Retry-After"].requests
        assert waited[1]["received_at"] - waited[0]["received_at"] >= 0.95  # Retry-After honoured
    finally:
        for rcv in receivers.values():
            rcv.stop()


def test_refusals_are_not_retried_and_warn_once_each(receiver, make_sender, spool):
    for status in (400, 401, 403, 404):
        receiver.add_fault("status", status=status)
    sender = make_sender(concurrency=1, spool=spool)
    for number in range(4):
        sender.submit(ep(receiver.push_url), event("refused-%d" % number, "Done", number))
    wrong_key = receiver.push_url.replace(receiver.integration_key, "0" * 32)
    sender.submit(ep(wrong_key), event("wrong-key", "Done", 5))
    report = sender.flush(10)
    assert (report.delivered, report.failed, report.spooled) == (0, 5, 0)
    requests = receiver.requests
    assert len(requests) == 5  # one each: no retry
    messages = sender.drain_messages()
    assert len(messages) == 5
    for message, request, code in zip(messages, requests, ("InvalidParameter", "Unauthorized", "AccessDenied", "RouteNotFound",
                                                           "InvalidParameter")):
        assert "request_id: %s" % request["request_id"] in message and code in message
        assert "?integration_key=****" in message
    assert "integration_key is not a valid one" in messages[4]
    assert "Done event of change wrong-key" in messages[4]
    assert spool.total() == 0 and not os.path.exists(spool.path)
    assert_no_key(receiver.integration_key, messages, report.summary())


def test_refusals_of_one_kind_are_one_warning_at_the_flush(receiver, make_sender):
    receiver.add_fault("status", status=401, times=None)
    sender = make_sender(concurrency=2)
    for number in range(8):
        sender.submit(ep(receiver.push_url), event("refused-%d" % number, number=number))
    assert wait_until(lambda: len(receiver.requests) == 8)
    time.sleep(0.1)
    assert sender.drain_messages() == []  # said at the end of the run, not as they happen
    assert sender.flush(10).failed == 8
    messages = sender.drain_messages()
    assert len(messages) == 1, messages
    assert messages[0].startswith("Flashduty refused 8 change events at http://127.0.0.1:%d/" % receiver.port)
    assert "?integration_key=****: HTTP 401 Unauthorized" in messages[0]
    quoted = messages[0].split("(request_ids of the first 5: ", 1)[1].split(")", 1)[0].split(", ")
    assert len(set(quoted)) == 5 and set(quoted) <= {r["request_id"] for r in receiver.requests}  # two threads: any five
    assert messages[0].endswith("copy the push URL again from the Flashduty integration page")
    assert_no_key(receiver.integration_key, messages)
    # A later flush says only what was refused since.
    sender.submit(ep(receiver.push_url), event("refused-9", number=9))
    assert sender.flush(10).failed == 9
    messages = sender.drain_messages()
    assert len(messages) == 1 and messages[0].startswith("Flashduty did not accept the Processing event of change refused-9 at ")


# ---------------------------------------------------------------- the flush deadline


def test_flush_deadline_holds_against_a_black_hole(receiver, make_sender, spool):
    receiver.add_fault("blackhole", times=None, hold=15)
    sender = make_sender(client_options=dict(FAST, timeout=10.0), spool=spool)
    for number in range(6):
        sender.submit(ep(receiver.push_url), event("hole-%d" % (number % 3), number=number))
    assert wait_until(lambda: len(receiver.requests) >= 2)  # requests in flight
    started = time.monotonic()
    report = sender.flush(1.0)
    elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 1.5, elapsed
    assert (report.delivered, report.spooled, report.pending, report.timed_out) == (0, 6, 6, True)
    messages = sender.drain_messages()
    assert len(messages) == 1
    assert messages[0].startswith("6 change events could not be delivered to http://127.0.0.1:")
    assert "?integration_key=****: " in messages[0] and "they are spooled in %s" % spool.path in messages[0]
    assert [e["labels"]["n"] for e in spooled(spool, receiver.push_url)] == [str(n) for n in range(6)]
    assert_no_key(receiver.integration_key, messages, spool_bytes(spool))


@pytest.mark.parametrize("fault", [dict(kind="status", status=503, times=None), dict(kind="ratelimit", retry_after=30, times=None)],
                         ids=["backoff", "retry-after"])
def test_flush_deadline_interrupts_retry_sleeps(receiver, make_sender, spool, fault):
    receiver.add_fault(**fault)
    sender = make_sender(client_options=dict(FAST, retries=10), spool=spool)
    for number in range(3):
        sender.submit(ep(receiver.push_url), event("sleepy", number=number))
    assert wait_until(lambda: len(receiver.requests) >= 1)
    started = time.monotonic()
    report = sender.flush(1.0)
    assert time.monotonic() - started < 1.3
    assert (report.delivered, report.spooled) == (0, 3)
    message = sender.drain_messages()[0]
    assert "HTTP %d" % (fault.get("status") or 429) in message and "flush deadline" in message


def test_write_ahead_spools_before_waiting_and_cut_ends_the_wait_at_once(receiver, make_sender, spool):
    receiver.add_fault("blackhole", times=None, hold=15)
    sender = make_sender(client_options=dict(FAST, timeout=10.0), spool=spool)
    for number in range(4):
        sender.submit(ep(receiver.push_url), event("ahead-%d" % (number % 2), number=number))
    assert wait_until(lambda: len(receiver.requests) >= 1)
    in_spool = []

    def second_signal():
        wait_until(lambda: spool.total() == 4, timeout=3)  # written before the flush waits: a kill now loses nothing
        in_spool.append(spool.total())
        sender.cut()  # what the callback's signal handler does

    watcher = threading.Thread(target=second_signal)
    watcher.start()
    started = time.monotonic()
    report = sender.flush(10, write_ahead=True)
    elapsed = time.monotonic() - started
    watcher.join()
    assert in_spool == [4] and elapsed < 1.5, elapsed
    assert (report.delivered, report.spooled, report.timed_out) == (0, 4, True)
    assert [e["labels"]["n"] for e in spooled(spool, receiver.push_url)] == ["0", "1", "2", "3"]  # once each
    sender.submit(ep(receiver.push_url), event("ahead-0", "Done", 5))
    started = time.monotonic()
    assert sender.flush(10, write_ahead=True).spooled == 5 and time.monotonic() - started < 0.5  # cut stays cut
    assert spool.total() == 5


def test_write_ahead_takes_back_what_was_delivered(receiver, make_sender, spool):
    receiver.set_latency(0.3)
    sender = make_sender(spool=spool)
    for number in range(3):
        sender.submit(ep(receiver.push_url), event("back-%d" % number, number=number))
    report = sender.flush(5, write_ahead=True)
    assert (report.delivered, report.spooled) == (3, 0) and len(receiver.events) == 3
    assert spool.total() == 0 and os.listdir(spool.path) == []


# ---------------------------------------------------------------- order, spool and replay


def test_a_failed_event_keeps_the_rest_of_its_change_behind_it(receiver, make_sender, spool):
    receiver.add_fault("status", status=503, times=None)
    sender = make_sender(client_options=dict(FAST, retries=1), spool=spool)
    sender.submit(ep(receiver.push_url), event("ordered", "Processing", 1))
    assert wait_until(lambda: any(worker.held for worker in sender._workers))  # both attempts failed
    assert len(receiver.requests) == 2
    receiver.clear_faults()  # too late: Done must not overtake its Processing
    sender.submit(ep(receiver.push_url), event("ordered", "Done", 2))
    sender.submit(ep(receiver.push_url), event("another", "Done", 3))
    report = sender.flush(1.0)
    assert report.delivered == 0 and report.spooled == 3 and not report.timed_out  # the endpoint is resting: no waiting
    assert receiver.events == []
    assert [(e["change_key"], e["change_status"]) for e in spooled(spool, receiver.push_url)] == [
        ("ordered", "Processing"), ("ordered", "Done"), ("another", "Done")]
    # After flush too, later events of a spooled change go to the spool behind it.
    sender.submit(ep(receiver.push_url), event("ordered", "Canceled", 4))
    assert sender.flush(1.0).spooled == 4
    assert receiver.events == []


def test_an_endpoint_that_comes_back_gets_everything_in_order(receiver, make_sender, spool):
    receiver.add_fault("status", status=503, times=2)  # exactly the two attempts of the first event
    sender = make_sender(client_options=dict(FAST, retries=1), spool=spool, retry_pause=0.3)
    sender.submit(ep(receiver.push_url), event("comeback", "Processing", 1))
    assert wait_until(lambda: len(receiver.requests) >= 2)
    sender.submit(ep(receiver.push_url), event("comeback", "Done", 2))
    sender.submit(ep(receiver.push_url), event("other", "Done", 3))
    report = sender.flush(5)
    assert (report.delivered, report.spooled) == (3, 0), sender.drain_messages()
    statuses = [(e["change_key"], e["change_status"]) for e in receiver.events]
    assert statuses.index(("comeback", "Processing")) < statuses.index(("comeback", "Done"))
    assert sender.drain_messages() == []


def test_spooled_events_go_first_next_run_and_only_once(make_sender, spool):
    port, key = closed_port(), secrets.token_hex(16)
    url = dead_url(port, key)
    other = dead_url(port, secrets.token_hex(16))
    first = make_sender(spool=spool, client_options=dict(FAST, retries=0))
    first.submit(ep(url), event("replayed", "Processing", 1))
    first.submit(ep(other), event("elsewhere", "Processing", 1))
    assert first.flush(2).spooled == 2
    first.close()
    assert spool.pending(ep(url)) == 1 and spool.pending(ep(other)) == 1  # each waits for its own endpoint

    # The endpoint is back: the next run replays before its own events of that change.
    with Receiver(integration_key=key, port=port, quiet=True) as back:
        second = make_sender(spool=Spool(spool.path))
        second.replay(ep(url))
        second.submit(ep(url), event("replayed", "Done", 2))
        second.replay(ep(url))  # once per run: a second call does nothing
        report = second.flush(5)
        assert (report.delivered, report.replayed, report.spooled) == (2, 1, 0)
        assert [(e["change_status"], e["event_time"]) for e in back.events] == [("Processing", 1700000001), ("Done", 1700000002)]
        assert spool.pending(ep(url)) == 0 and spool.total() == 1  # the other endpoint's event still waits
        third = make_sender(spool=Spool(spool.path))
        third.replay(ep(url))
        assert not sender_threads_of(third)  # nothing to replay: no thread started
        assert third.flush(2).delivered == 0 and len(back.events) == 2  # nothing delivered twice


def sender_threads_of(sender):
    return [w.thread for w in sender._workers if w.thread is not None] + ([sender._replay.thread] if sender._replay.thread else [])


def test_a_replay_that_fails_again_goes_back_in_order(receiver, make_sender, spool):
    url = receiver.push_url
    spool.write(ep(url), [dict(event=event("again", "Processing", 1), first_failure=1700000005.0, attempts=4, last_error="HTTP 503")])
    spool.write(ep(url), [dict(event=event("again", "Done", 2), first_failure=1700000006.0, attempts=4, last_error="HTTP 503")])
    oldest = sorted(os.listdir(spool.path))[0].split(".")[0]
    receiver.add_fault("status", status=503, times=None)
    run = make_sender(spool=Spool(spool.path), client_options=dict(FAST, retries=0))
    run.replay(ep(url))
    run.submit(ep(url), event("again", "Canceled", 3))
    report = run.flush(2)
    assert (report.delivered, report.spooled) == (0, 3)
    names = sorted(os.listdir(spool.path))
    assert names[0].split(".")[0] == oldest  # given back in its old place
    batches, _problems = spool.claim(ep(url))
    records = [r for b in batches for r in b.records]
    assert [r["event"]["change_status"] for r in records] == ["Processing", "Done", "Canceled"]
    assert records[0]["first_failure"] == 1700000005.0 and records[0]["attempts"] == 5  # history kept
    for batch in batches:
        spool.finish(batch, ep(url), batch.records)
    receiver.clear_faults()
    last = make_sender(spool=Spool(spool.path))
    last.replay(ep(url))
    assert last.flush(5).delivered == 3
    assert [e["change_status"] for e in receiver.events] == ["Processing", "Done", "Canceled"]
    assert os.listdir(spool.path) == []


def test_an_event_submitted_while_a_replay_loads_stays_behind_the_earlier_events_of_its_change(make_sender, spool, monkeypatch):
    url = dead_url()
    loading, done = threading.Event(), threading.Event()

    def slow_claim(_endpoint):
        loading.set()
        done.wait(10)
        return [], []

    monkeypatch.setattr(spool, "pending", lambda _endpoint=None: 1)
    monkeypatch.setattr(spool, "claim", slow_claim)
    sender = make_sender(spool=spool, client_options=dict(FAST, retries=0))
    sender.submit(ep(url), event("late", "Processing", 1))
    assert wait_until(lambda: any(worker.held for worker in sender._workers))  # failed: waits for its endpoint
    sender.replay(ep(url))
    assert loading.wait(5)
    sender.submit(ep(url), event("late", "Done", 2))  # held back behind the replay still loading
    written_ahead = []
    watcher = threading.Thread(target=lambda: written_ahead.append(wait_until(lambda: spool.total() == 2, 3) and spool_bytes(spool)))
    watcher.start()
    report = sender.flush(1.0, write_ahead=True)
    watcher.join()
    done.set()
    assert (report.spooled, report.pending) == (2, 1)
    assert 0 < written_ahead[0].index(b'"Processing"') < written_ahead[0].index(b'"Done"')
    assert [e["change_status"] for e in spooled(Spool(spool.path), url)] == ["Processing", "Done"]


def test_a_long_replay_keeps_its_claim_and_lets_go_when_taken_over(receiver, make_sender, spool):
    url = receiver.push_url
    spool.write(ep(url), [dict(event=event("slow", "Done", 1), first_failure=1700000005.0, attempts=1, last_error="HTTP 503")])
    receiver.add_fault("blackhole", times=None, hold=10)
    sender = make_sender(spool=Spool(spool.path, lease=2.0), client_options=dict(FAST, timeout=10.0))
    sender.replay(ep(url))
    assert wait_until(lambda: len(receiver.requests) >= 1)
    time.sleep(2.5)  # past the lease: the claim was renewed meanwhile
    assert Spool(spool.path, lease=2.0).claim(ep(url)) == ([], [])
    assert spool.total() == 1
    # Another run takes it over anyway (say this one had been stopped for longer than the lease).
    claimed = [name for name in os.listdir(spool.path) if ".claim-" in name][0]
    os.rename(os.path.join(spool.path, claimed), os.path.join(spool.path, claimed.split(".claim-")[0] + ".claim-1-thief"))
    time.sleep(1.2)  # the next renewal notices
    report = sender.flush(0.2)
    assert (report.delivered, report.spooled) == (0, 0)  # left to the run that took it
    assert spool.total() == 1


def test_without_a_spool_leftovers_are_only_warned_about(make_sender):
    url = dead_url()
    sender = make_sender(client_options=dict(FAST, retries=0))
    sender.submit(ep(url), event("nospool", number=1))
    report = sender.flush(2)
    assert (report.spooled, report.lost) == (0, 1)
    messages = sender.drain_messages()
    assert len(messages) == 1 and "1 change event could not be delivered" in messages[0]
    assert "could not reach 127.0.0.1" in messages[0] and "no spool is configured" in messages[0]
    assert_no_key(key_of(url), messages)


def test_a_full_spool_drops_the_oldest_with_one_warning(make_sender, tmp_path):
    small = Spool(tmp_path / "small", max_events=5)
    sender = make_sender(spool=small, client_options=dict(FAST, retries=0), concurrency=1)
    url = dead_url()
    for number in range(8):
        sender.submit(ep(url), event("full", number=number))
    report = sender.flush(2)
    assert (report.spooled, report.dropped) == (8, 3)
    messages = sender.drain_messages()
    assert len(messages) == 2 and messages[1] == (
        "the Flashduty spool %s holds at most 5 change events: the 3 oldest were dropped" % small.path)
    assert [e["labels"]["n"] for e in spooled(small, url)] == ["3", "4", "5", "6", "7"]


def test_the_key_never_leaks(receiver, make_sender, spool):
    key = receiver.integration_key
    # A server that quotes the key back in its errors, refusing and failing.
    receiver.add_fault("status", status=400, message="integration_key %s is not a valid one" % key)
    receiver.add_fault("status", status=500, times=None, message="upstream %s failed for %s" % (key, receiver.push_url))
    sender = make_sender(spool=spool, client_options=dict(FAST, retries=1), concurrency=1)
    sender.submit(ep(receiver.push_url), event("leak", "Processing", 1))
    sender.submit(ep(receiver.push_url), event("leak", "Done", 2))
    sender.submit(ep(dead_url(key=key)), event("leak", "Done", 3))
    report = sender.flush(3)
    assert (report.failed, report.spooled) == (1, 2)
    messages = sender.drain_messages()
    assert len(messages) == 3 and "****" in " ".join(messages)
    assert_no_key(key, messages, report.summary(), repr(report), spool_bytes(spool))


# ---------------------------------------------------------------- robustness


def test_nothing_raises_on_bad_input(make_sender, tmp_path):
    blocked = tmp_path / "not-a-directory"
    spool = Spool(blocked)
    blocked.write_text("x")  # a file now where the spool directory should be: Spool() itself refuses one there
    sender = make_sender(spool=spool)
    sender.submit(None, None)
    sender.submit(ep("not a url"), event("bad"))
    sender.submit(ep("http://127.0.0.1:1/x?integration_key=secretsecret"), {"change_key": object()})
    sender.replay(ep("http://127.0.0.1:1/x?integration_key=secretsecret"))
    report = sender.flush(2)
    assert isinstance(report, FlushReport) and report.delivered == 0
    messages = sender.drain_messages()
    assert len(messages) >= 3 and all("secretsecret" not in m for m in messages)
    assert any("not replayed" in m and "not a directory" in m.lower() for m in messages)


def test_a_forked_child_inherits_nothing_running(receiver, make_sender):
    sender = make_sender()
    sender.submit(ep(receiver.push_url), event("fork", number=1))
    assert sender.flush(5).delivered == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, use of fork()": the point of the test
        pid = os.fork()
    if pid == 0:  # the child, like an Ansible worker: must neither hang nor send
        code = 1
        try:
            signal.alarm(5)
            sender.submit(ep(receiver.push_url), event("fork", number=2))
            report = sender.flush(1)
            code = 0 if report.delivered == 0 and not sender_threads() else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if not done:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    sender.submit(ep(receiver.push_url), event("fork", number=3))  # the parent goes on as before
    assert sender.flush(5).delivered == 2 and len(receiver.events) == 2


def test_close_does_not_wait_and_a_later_flush_spools(receiver, make_sender, spool):
    receiver.add_fault("blackhole", times=None, hold=10)
    sender = make_sender(spool=spool, client_options=dict(FAST, timeout=10.0))
    sender.submit(ep(receiver.push_url), event("closing", number=1))
    assert wait_until(lambda: len(receiver.requests) >= 1)
    threads = sender_threads_of(sender)
    started = time.monotonic()
    sender.close()
    assert time.monotonic() - started < 0.1
    for thread in threads:
        thread.join(2)
        assert not thread.is_alive()
    report = sender.flush(5)
    assert report.spooled == 1 and time.monotonic() - started < 1.0


def test_at_the_flush_an_endpoint_that_refuses_connections_is_spooled_at_once(make_sender, spool):
    url = dead_url()
    sender = make_sender(spool=spool)  # 3 retries: the backoff alone would take 1.75 s or more
    sender.submit(ep(url), event("refused", "Processing", 1))
    sender.submit(ep(url), event("refused", "Done", 2))
    sender.submit(ep(url), event("other", "Done", 3))
    started = time.monotonic()
    report = sender.flush(5)
    assert time.monotonic() - started < 0.5
    assert (report.delivered, report.spooled, report.timed_out) == (0, 3, False)
    assert [e["change_status"] for e in spooled(spool, url) if e["change_key"] == "refused"] == ["Processing", "Done"]


def test_open_sender_spools_to_its_directory_or_says_once_why_it_cannot(tmp_path):
    warned = []
    sender = open_sender(str(tmp_path / "spool"), warned.append, max_rate=0)
    assert sender.spool is not None and warned == []
    sender.close()
    os.symlink(tmp_path / "spool", tmp_path / "link")
    sender = open_sender(str(tmp_path / "link"), warned.append, max_rate=0)
    assert sender.spool is None and len(warned) == 1
    assert str(tmp_path / "link") in warned[0] and "will be lost" in warned[0]
    sender.close()
    assert open_sender(None, warned.append).spool is None and len(warned) == 1
