"""Tests for tools/flashduty_receiver.py: real HTTP against the real server, in-process."""
# pylint: disable=missing-function-docstring,too-many-arguments,too-many-locals,consider-using-with

import errno
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

TOOLS_DIR = pathlib.Path(__file__).resolve().parents[3] / "tools"
sys.path.insert(0, str(TOOLS_DIR))

import flashduty_receiver  # noqa: E402  pylint: disable=wrong-import-position
from flashduty_receiver import Receiver  # noqa: E402  pylint: disable=wrong-import-position

KEY = "0123456789abcdef" * 2
PUSH = "/event/push/change/standard"
GOOD = {
    "change_status": "Done",
    "change_key": "deploy-42",
    "title": "Deploy checkout 1.2",
    "event_time": 1700000000,
    "description": "rolled out to web1..web3",
    "link": "https://ci.example.com/job/42",
    "labels": {"service": "checkout", "env": "prod"},
}


@pytest.fixture(name="receiver")
def fixture_receiver():
    """A quiet, started receiver."""
    with Receiver(integration_key=KEY, quiet=True) as rcv:
        yield rcv


def request(rcv, *, path=None, body=None, raw=None, method="POST", headers=None, timeout=5.0, conn=None):
    """Send one request; return (status, headers, decoded JSON or None)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", rcv.port, timeout=timeout)
    try:
        if raw is None and body is not None:
            raw = json.dumps(body).encode("utf-8")
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        hdrs = {k: v for k, v in hdrs.items() if v is not None}
        conn.request(method, path if path is not None else f"{PUSH}?integration_key={KEY}", body=raw, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.headers, (json.loads(data) if data else None)
    finally:
        if own:
            conn.close()


def control(rcv, method, name, body=None):
    """Call the control API with urllib."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{rcv.base_url}/_receiver/{name}", data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_error(result, status, code, fragment=None):
    """Check an error envelope."""
    got_status, payload = result[0], result[2]
    assert got_status == status, payload
    assert len(payload["request_id"]) == 32
    assert payload["error"]["code"] == code, payload
    if fragment is not None:
        assert fragment in payload["error"]["message"], payload["error"]["message"]
    return payload


# ---------------------------------------------------------------- accepted


def test_accepts_event_stores_and_prints(capsys, tmp_path):
    store = tmp_path / "events.jsonl"
    with Receiver(integration_key=KEY, quiet=False, store=store) as rcv:
        status, headers, payload = request(rcv, body=GOOD)
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert len(payload["request_id"]) == 32 and isinstance(payload["data"], dict) and "error" not in payload
        assert rcv.events == [GOOD]
        (record,) = rcv.records
        assert record["request_id"] == payload["request_id"] and record["event"] == GOOD
        assert abs(record["received_at"] - time.time()) < 5
        (entry,) = rcv.requests
        assert entry["accepted"] and entry["status"] == 200 and entry["body"] == GOOD
        assert entry["path"] == f"{PUSH}?integration_key=****"
    out = capsys.readouterr().out
    assert "200 Done" in out and "deploy-42" in out and '"Deploy checkout 1.2"' in out and "labels=2" in out
    assert f"request_id={payload['request_id']}" in out
    lines = store.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [record]
    assert KEY not in out and KEY not in store.read_text(encoding="utf-8")


def test_accepts_boundaries_charset_and_minimal(receiver):
    biggest = {
        "change_status": "Ready",
        "change_key": "k",
        "title": "t",
        "event_time": 10 ** 11,
        "description": "d" * 2048,
        "link": "",
        "labels": {f"l_{i}": "v" * 2048 for i in range(49)} | {"K" * 128: ""},
    }
    assert request(receiver, body=biggest)[0] == 200
    minimal = {"change_status": "Planned", "change_key": "c", "title": "é ✓"}
    assert request(receiver, body=minimal, headers={"Content-Type": "application/json; charset=UTF-8"})[0] == 200
    for status in ("Processing", "Canceled"):
        assert request(receiver, body=dict(minimal, change_status=status))[0] == 200
    assert [e["change_status"] for e in receiver.events] == ["Ready", "Planned", "Processing", "Canceled"]


def test_keep_alive_and_chunked(receiver):
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    try:
        assert request(receiver, body=GOOD, conn=conn)[0] == 200
        sock = conn.sock
        assert sock is not None
        assert request(receiver, body={"title": "x"}, conn=conn)[0] == 400   # an error keeps the connection too
        assert request(receiver, path="/nope", body=GOOD, conn=conn)[0] == 404
        assert request(receiver, body=GOOD, conn=conn)[0] == 200
        assert conn.sock is sock
        conn.request("POST", f"{PUSH}?integration_key={KEY}", body=iter([json.dumps(GOOD).encode()]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    finally:
        conn.close()
    assert len(receiver.events) == 3


# ---------------------------------------------------------------- rejections


def test_route_method_content_type_and_key(receiver):
    assert_error(request(receiver, path=f"/event/push/alert/standard?integration_key={KEY}", body=GOOD), 404, "RouteNotFound")
    assert_error(request(receiver, path=f"{PUSH}/?integration_key={KEY}", body=GOOD), 404, "RouteNotFound")
    assert_error(request(receiver, method="GET"), 400, "MethodNotAllowed")
    assert_error(request(receiver, method="PUT", body=GOOD), 400, "MethodNotAllowed")
    assert_error(request(receiver, body=GOOD, headers={"Content-Type": "text/plain"}), 400, "InvalidContentType")
    assert_error(request(receiver, body=GOOD, headers={"Content-Type": None}), 400, "InvalidContentType")
    assert_error(request(receiver, body=GOOD, headers={"Content-Type": "application/json; charset=latin-1"}), 400, "InvalidContentType")
    for path in (PUSH, f"{PUSH}?integration_key=", f"{PUSH}?integration_key=wrong", f"{PUSH}?integration_key={KEY}&integration_key=x"):
        payload = assert_error(request(receiver, path=path, body=GOOD), 400, "InvalidParameter")
        assert payload["error"]["message"] == "integration_key is not a valid one"
    assert receiver.events == []
    log = receiver.requests
    assert [e["error_code"] for e in log[:3]] == ["RouteNotFound", "RouteNotFound", "MethodNotAllowed"]
    assert all(not e["accepted"] and e["status"] in (400, 404) and len(e["request_id"]) == 32 for e in log)
    assert log[0]["body"] == GOOD and log[2]["body"] is None
    assert KEY not in json.dumps(log)


def test_unknown_method_and_garbage_request_line_answer_json(receiver):
    assert_error(request(receiver, method="FOO", body=GOOD), 400, "MethodNotAllowed")
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(f"GARBAGE{KEY}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    payload = json.loads(data[data.index(b"{"):])   # http.server answers a request line it cannot parse HTTP/0.9-style (body only)
    assert payload["error"]["code"] == "InvalidParameter" and KEY not in payload["error"]["message"]
    assert [e["error_code"] for e in receiver.requests] == ["MethodNotAllowed", "InvalidParameter"]
    assert KEY not in json.dumps(receiver.requests)


BAD_BODIES = [
    (b"\xff\xfe{}", "UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'{"change_status": "Done", "change_key": "a", "title": "t", "title": "u"}', "duplicate key"),
    (b'{"change_status": "Done", "change_key": "a", "title": "t", "event_time": NaN}', "NaN"),
]

BAD_FIELDS = [
    ({"change_status": None}, "change_status must be one of"),
    ({"change_status": "done"}, "change_status must be one of Planned, Ready, Processing, Canceled, Done"),
    ({"change_status": "DONE"}, "change_status must be one of"),
    ({"change_status": 1}, "change_status must be one of"),
    ({"change_key": ""}, "change_key must be a non-empty string"),
    ({"change_key": 42}, "change_key must be a string"),
    ({"title": ""}, "title must be a non-empty string"),
    ({"title": ["x"]}, "title must be a string"),
    ({"event_time": 1700000000.0}, "event_time must be an integer"),
    ({"event_time": True}, "event_time must be an integer"),
    ({"event_time": "1700000000"}, "event_time must be an integer"),
    ({"event_time": 1700000000000}, "event_time 1700000000000 looks like milliseconds"),
    ({"description": "d" * 2049}, "description is 2049 characters long, at most 2048"),
    ({"description": 5}, "description must be a string"),
    ({"link": 5}, "link must be a string"),
    ({"labels": ["a=b"]}, "labels must be an object"),
    ({"labels": {f"k{i}": "v" for i in range(51)}}, "labels has 51 entries, at most 50"),
    ({"labels": {"1abc": "v"}}, "labels key '1abc' must match"),
    ({"labels": {"a-b": "v"}}, "labels key 'a-b' must match"),
    ({"labels": {"k" * 129: "v"}}, "129 characters long, at most 128"),
    ({"labels": {"port": 80}}, "labels.port must be a string, got number"),
    ({"labels": {"ok": True}}, "labels.ok must be a string, got boolean"),
    ({"labels": {"big": "v" * 2049}}, "labels.big is 2049 characters long, at most 2048"),
    ({"severity": "high"}, "unknown field(s) 'severity'"),
]


@pytest.mark.parametrize("raw, fragment", BAD_BODIES)
def test_rejects_bad_json(receiver, raw, fragment):
    assert_error(request(receiver, raw=raw), 400, "InvalidParameter", fragment)
    assert receiver.events == []


@pytest.mark.parametrize("change, fragment", BAD_FIELDS, ids=[f[1][:30] for f in BAD_FIELDS])
def test_rejects_field_rules(receiver, change, fragment):
    body = dict(GOOD, **change)
    assert_error(request(receiver, body=body), 400, "InvalidParameter", fragment)
    assert receiver.events == []
    (entry,) = receiver.requests
    assert entry["error_code"] == "InvalidParameter" and entry["body"] == body


@pytest.mark.parametrize("field", ["change_status", "change_key", "title"])
def test_rejects_missing_required(receiver, field):
    body = {k: v for k, v in GOOD.items() if k != field}
    assert_error(request(receiver, body=body), 400, "InvalidParameter", f"{field} is required")


def test_reports_every_violation_at_once(receiver):
    payload = assert_error(request(receiver, body={"change_status": "x", "extra": 1}), 400, "InvalidParameter")
    message = payload["error"]["message"]
    for fragment in ("unknown field", "change_status must be", "change_key is required", "title is required"):
        assert fragment in message


def test_key_never_shown_or_stored(capsys, tmp_path):
    store = tmp_path / "s.jsonl"
    with Receiver(integration_key=KEY, quiet=False, store=store) as rcv:
        assert KEY not in repr(rcv) and KEY not in rcv.redacted_push_url and KEY in rcv.push_url
        request(rcv, path=f"/wrong?integration_key={KEY}&x=1", body=GOOD)
        request(rcv, path=f"/wrong/{KEY}", body=GOOD)
        request(rcv, path=f"{PUSH}?integration_key=nope", body=GOOD)
        leak = dict(GOOD, labels={"url": f"https://api.flashcat.cloud{PUSH}?integration_key={KEY}"})
        assert_error(request(rcv, body=leak), 400, "InvalidParameter", "contains the integration key")
        rcv.add_fault("status", status=503)
        request(rcv, body=GOOD)
        assert request(rcv, body=GOOD)[0] == 200
        log = rcv.requests
        assert len(log) == 6 and "****" in log[0]["path"] and "****" in log[1]["path"]
        assert KEY not in json.dumps(log) and KEY not in json.dumps(rcv.records)
        status, events = control(rcv, "GET", "events")
        assert status == 200 and KEY not in json.dumps(events)
        assert KEY not in json.dumps(control(rcv, "GET", "requests")[1])
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 6
    assert KEY not in out and KEY not in store.read_text(encoding="utf-8")


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("status, code", [(503, "InternalError"), (500, "InternalError"), (502, "InternalError"),
                                          (504, "InternalError"), (401, "Unauthorized"), (403, "AccessDenied")])
def test_fault_status(receiver, status, code):
    receiver.add_fault(kind="status", status=status, code=code, times=2)
    assert_error(request(receiver, body=GOOD), status, code)
    assert_error(request(receiver, body=GOOD), status, code)
    assert request(receiver, body=GOOD)[0] == 200
    assert len(receiver.events) == 1
    log = receiver.requests
    assert [e["fault"] for e in log] == ["status", "status", None]
    assert log[0]["status"] == status and log[0]["body"] == GOOD and not log[0]["accepted"]


def test_fault_status_200_with_error_and_default_code(receiver):
    receiver.add_fault("status", status=200, code="InternalError")
    receiver.add_fault("status")
    assert_error(request(receiver, body=GOOD), 200, "InternalError")
    assert_error(request(receiver, body=GOOD), 503, "InternalError")
    assert receiver.events == [] and receiver.faults == []


def test_fault_ratelimit_retry_after(receiver):
    receiver.add_fault(kind="ratelimit", retry_after=2)
    receiver.add_fault(kind="ratelimit", retry_after=0.5)
    receiver.add_fault(kind="ratelimit")
    result = request(receiver, body=GOOD)
    assert_error(result, 429, "RequestTooFrequently")
    assert result[1]["Retry-After"] == "2"
    assert request(receiver, body=GOOD)[1]["Retry-After"] == "0.5"
    result = request(receiver, body=GOOD)
    assert result[0] == 429 and result[1]["Retry-After"] is None
    assert request(receiver, body=GOOD)[0] == 200


def test_fault_reset(receiver):
    receiver.add_fault(kind="reset")
    with pytest.raises(ConnectionResetError) as info:
        request(receiver, body=GOOD)
    assert info.value.errno == errno.ECONNRESET   # a real RST, not a clean close
    assert request(receiver, body=GOOD)[0] == 200
    assert receiver.requests[0]["fault"] == "reset" and receiver.requests[0]["status"] is None
    assert len(receiver.events) == 1


def test_fault_close(receiver):
    receiver.add_fault(kind="close")
    with pytest.raises(http.client.RemoteDisconnected):
        request(receiver, body=GOOD)
    assert request(receiver, body=GOOD)[0] == 200
    assert [e["fault"] for e in receiver.requests] == ["close", None]


def test_fault_blackhole_then_stop_is_quick():
    rcv = Receiver(integration_key=KEY, quiet=True).start()
    try:
        rcv.add_fault(kind="blackhole", times=None)
        for attempt in range(2):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                request(rcv, body=GOOD, timeout=0.3)
            assert time.monotonic() - start < 2, attempt
        held = http.client.HTTPConnection("127.0.0.1", rcv.port, timeout=5)
        held.request("POST", f"{PUSH}?integration_key={KEY}", body=json.dumps(GOOD), headers={"Content-Type": "application/json"})
        result = {}
        waiter = threading.Thread(target=lambda: result.setdefault("exc", _response_error(held)))
        waiter.start()
        deadline = time.monotonic() + 3
        while len(rcv.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e["fault"] for e in rcv.requests] == ["blackhole"] * 3
        assert rcv.faults[0]["times"] is None
    finally:
        start = time.monotonic()
        rcv.stop()
        assert time.monotonic() - start < 1.5
    waiter.join(3)
    assert not waiter.is_alive() and result["exc"] is not None   # the held client is released, without an answer
    held.close()
    assert rcv.events == []


def _response_error(conn):
    """Return the exception raised while waiting for a response (None if one arrived)."""
    try:
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:
        return exc
    return None


def test_fault_blackhole_hold_releases(receiver):
    receiver.add_fault(kind="blackhole", hold=0.2)
    with pytest.raises(http.client.RemoteDisconnected):
        request(receiver, body=GOOD, timeout=3)


def test_fault_queue_order_and_latency(receiver):
    receiver.set_faults([{"kind": "status", "status": 502}, {"kind": "ratelimit", "times": 2}])
    assert [request(receiver, body=GOOD)[0] for attempt in range(4)] == [502, 429, 429, 200]
    receiver.set_latency(0.3)
    start = time.monotonic()
    assert request(receiver, body=GOOD)[0] == 200
    assert time.monotonic() - start >= 0.3
    assert len(receiver.events) == 2
    receiver.reset()
    assert receiver.latency == 0 and receiver.events == [] and receiver.requests == [] and receiver.faults == []


def test_fault_validation():
    rcv = Receiver(integration_key=KEY)
    for bad in ({"kind": "explode"}, {"kind": "status", "times": 0}, {"kind": "status", "status": 99},
                {"kind": "ratelimit", "retry_after": -1}, {"kind": "reset", "bogus": 1}):
        with pytest.raises(ValueError):
            rcv.set_faults([bad])
    with pytest.raises(ValueError):
        rcv.set_latency(-1)
    expected = {"kind": "status", "times": 1, "status": 401, "code": "Unauthorized", "message": "injected fault: status", "retry_after": None,
                "hold": None, "interval": None}
    assert rcv.add_fault("status", status=401) == expected


# ---------------------------------------------------------------- hostile answers, read with a raw socket


def raw_post(rcv, body=None):
    """Open a connection, send one push request by hand; return the socket (the answer is not read)."""
    data = json.dumps(GOOD if body is None else body).encode("utf-8")
    sock = socket.create_connection(("127.0.0.1", rcv.port), timeout=5)
    sock.sendall(f"POST {PUSH}?integration_key={KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode("ascii") + data)
    return sock


def read_for(sock, seconds):
    """What arrives on ``sock`` within ``seconds`` (less if the peer closes): ``(bytes, closed)``."""
    data = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def head_and_body(data):
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, data
    return head.decode("latin-1"), body


SLOW_KINDS = ("trickle_headers", "trickle_body", "endless_chunked")


@pytest.mark.parametrize("kind", SLOW_KINDS)
def test_slow_fault_sends_a_byte_per_interval_and_ends_when_the_receiver_stops(kind):
    rcv = Receiver(integration_key=KEY, quiet=True).start()
    try:
        rcv.add_fault(kind, times=None, interval=0.2)
        sock = raw_post(rcv)
        data, closed = read_for(sock, 1.1)
        assert not closed
        # Event.wait() never returns early: at most one byte (or chunk) per 0.2 s, the first after 0.2 s.
        if kind == "trickle_headers":
            assert 1 <= len(data) <= 6 and b"HTTP/1.1 200 OK\r\n".startswith(data), data
        else:
            head, body = head_and_body(data)
            assert head.startswith("HTTP/1.1 200 OK\r\n") and "Connection: close" in head
            if kind == "trickle_body":
                assert "Content-Length: " in head and 1 <= len(body) <= 6 and body == b'{"request_id"'[:len(body)], data
            else:
                assert "Transfer-Encoding: chunked" in head and "Content-Length" not in head
                assert 1 <= body.count(b"1\r\n \r\n") <= 6 and body == b"1\r\n \r\n" * body.count(b"1\r\n \r\n"), data
        assert [(entry["fault"], entry["status"], entry["accepted"]) for entry in rcv.requests] == [(kind, 200, False)]
    finally:
        start = time.monotonic()
        rcv.stop()
        assert time.monotonic() - start < 1.5
    rest, closed = read_for(sock, 2)
    assert closed and len(rest) <= 2, rest  # released at once (a byte already on its way may still come)
    sock.close()
    assert rcv.events == [] and rcv.faults[0]["times"] is None


@pytest.mark.parametrize("kind", ["trickle_headers", "trickle_body"])
def test_slow_fault_answer_read_whole_is_an_error_envelope_then_times_runs_out(receiver, kind):
    receiver.add_fault(kind, times=1, interval=0.002)
    start = time.monotonic()
    status, headers, payload = request(receiver, body=GOOD)
    elapsed = time.monotonic() - start
    assert (status, payload["error"]) == (200, {"code": "InternalError", "message": f"injected fault: {kind}"})
    assert headers["Connection"] == "close"
    trickled = int(headers["Content-Length"]) if kind == "trickle_body" else len("HTTP/1.1 200 OK\r\n")
    assert elapsed >= trickled * 0.002
    assert request(receiver, body=GOOD)[0] == 200  # times: 1, then a normal answer
    assert [entry["fault"] for entry in receiver.requests] == [kind, None] and len(receiver.events) == 1


def test_endless_chunked_never_sends_the_last_chunk_and_honours_times(receiver):
    receiver.add_fault("endless_chunked", times=2, interval=0.01)
    for _attempt in range(2):
        sock = raw_post(receiver)
        data, closed = read_for(sock, 0.5)
        sock.close()
        head, body = head_and_body(data)
        assert not closed and "Transfer-Encoding: chunked" in head
        assert body.count(b"1\r\n \r\n") >= 3 and b"0\r\n\r\n" not in body
    assert request(receiver, body=GOOD)[0] == 200
    assert [entry["fault"] for entry in receiver.requests] == ["endless_chunked", "endless_chunked", None]


def test_slow_fault_ends_when_the_client_goes_away(receiver):
    receiver.add_fault("endless_chunked", times=None, interval=0.02)
    sock = raw_post(receiver)
    assert read_for(sock, 0.2)[0]
    sock.close()
    connections = receiver._server.connections  # pylint: disable=protected-access
    deadline = time.monotonic() + 3
    while connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not connections  # the next chunk's write failed and ended the handler


def test_fault_cut_headers(receiver):
    receiver.add_fault("cut_headers", times=2)
    for _attempt in range(2):
        sock = raw_post(receiver)
        start = time.monotonic()
        data, closed = read_for(sock, 3)
        sock.close()
        assert (data, closed) == (b"HTTP/1.1 200 OK\r\nContent-Type: appl", True)
        assert time.monotonic() - start < 1
    assert request(receiver, body=GOOD)[0] == 200
    log = receiver.requests
    assert [(entry["fault"], entry["status"]) for entry in log] == [("cut_headers", None)] * 2 + [(None, 200)]
    assert len(receiver.events) == 1  # a cut answer stores nothing


def test_hostile_fault_rules_and_validation():
    rcv = Receiver(integration_key=KEY)
    assert rcv.add_fault("trickle_body") == {"kind": "trickle_body", "times": 1, "status": 200, "code": "InternalError",
                                             "message": "injected fault: trickle_body", "retry_after": None, "hold": None, "interval": 0.5}
    assert rcv.add_fault("endless_chunked", times=None, interval=2, status=503)["interval"] == 2
    assert rcv.add_fault("cut_headers") == {"kind": "cut_headers", "times": 1, "status": None, "code": None, "message": None,
                                            "retry_after": None, "hold": None, "interval": None}
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError, match="fault interval must be a positive number of seconds"):
            rcv.set_faults([{"kind": "trickle_headers", "interval": bad}])
    rcv.configure({"faults": [{"kind": "trickle_headers", "times": None, "interval": 0.1}]})  # what PUT /_receiver/config does
    assert rcv.faults == [{"kind": "trickle_headers", "times": None, "status": 200, "code": "InternalError",
                           "message": "injected fault: trickle_headers", "retry_after": None, "hold": None, "interval": 0.1}]


# ---------------------------------------------------------------- control API and Python API


def test_control_api(receiver):
    assert control(receiver, "GET", "health") == (200, {"ok": True})
    request(receiver, body=GOOD)
    request(receiver, body={"title": "bad"})
    status, events = control(receiver, "GET", "events")
    assert status == 200 and [r["event"] for r in events] == [GOOD] and events[0]["request_id"]
    status, log = control(receiver, "GET", "requests")
    assert status == 200 and [e["status"] for e in log] == [200, 400]
    assert control(receiver, "PUT", "config", {"latency": 0.05, "faults": [{"kind": "status", "status": 503, "times": 1}]})[0] == 200
    status, config = control(receiver, "GET", "config")
    assert config["latency"] == 0.05 and config["faults"][0]["status"] == 503 and config["faults"][0]["code"] == "InternalError"
    assert receiver.latency == 0.05
    assert control(receiver, "PUT", "config", {"faults": []})[1]["latency"] == 0.05   # either key is optional
    assert receiver.faults == []
    status, payload = control(receiver, "PUT", "config", {"faults": [{"kind": "nope"}]})
    assert status == 400 and payload["error"]["code"] == "InvalidParameter" and "fault kind" in payload["error"]["message"]
    assert control(receiver, "PUT", "config", {"speed": 1})[0] == 400
    assert control(receiver, "DELETE", "events") == (200, {"ok": True})
    assert receiver.events == [] and receiver.requests == []
    assert control(receiver, "GET", "nothing")[1]["error"]["code"] == "RouteNotFound"
    assert control(receiver, "POST", "events", {})[1]["error"]["code"] == "MethodNotAllowed"
    assert receiver.requests == []   # control calls are not part of the request log


def test_wait_for_events(receiver):
    timer = threading.Timer(0.1, lambda: [request(receiver, body=dict(GOOD, change_status=s)) for s in ("Processing", "Done")])
    timer.start()
    events = receiver.wait_for_events(2, timeout=5)
    timer.join()
    assert [e["change_status"] for e in events] == ["Processing", "Done"]
    request(receiver, body={"title": "bad"})
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="got 2.*change_status is required"):
        receiver.wait_for_events(3, timeout=0.2)
    assert time.monotonic() - start < 1


def test_loopback_only():
    for host in ("0.0.0.0", "::", "10.0.0.1", "192.168.1.1", "example.com", "::ffff:127.0.0.1", ""):
        with pytest.raises(ValueError, match="loopback-only"):
            Receiver(integration_key=KEY, host=host)
    with Receiver(integration_key=KEY, host="127.0.0.2", quiet=True) as rcv:
        assert rcv.base_url.startswith("http://127.0.0.2:")
        assert request_url(rcv.push_url, GOOD) == 200
    with Receiver(integration_key=KEY, host="localhost", quiet=True) as rcv:
        assert rcv.base_url.startswith("http://127.0.0.1:")


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        rcv = Receiver(integration_key=KEY, host="::1", quiet=True).start()
    except OSError:
        pytest.skip("cannot bind ::1")
    with rcv:
        assert rcv.base_url.startswith("http://[::1]:")
        assert request_url(rcv.push_url, GOOD) == 200


def request_url(url, body):
    """POST with urllib to a full URL; return the status."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def test_stop_with_idle_keepalive_connection():
    rcv = Receiver(integration_key=KEY, quiet=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", rcv.port, timeout=5)
    assert request(rcv, body=GOOD, conn=conn)[0] == 200
    start = time.monotonic()
    rcv.stop()
    rcv.stop()   # idempotent
    assert time.monotonic() - start < 1.5
    conn.close()


# ---------------------------------------------------------------- CLI


def run_cli(*args, env=None, timeout=10):
    """Run the CLI; return the CompletedProcess."""
    return subprocess.run([sys.executable, str(TOOLS_DIR / "flashduty_receiver.py"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def test_cli_serve_and_table(tmp_path):
    port_file = tmp_path / "port"
    store = tmp_path / "events.jsonl"
    env = dict(os.environ, FLASHDUTY_RECEIVER_KEY=KEY, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(TOOLS_DIR / "flashduty_receiver.py"), "serve", "--port", "0",
                             "--port-file", str(port_file), "--store", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        port = int(port_file.read_text(encoding="utf-8"))
        base = f"http://127.0.0.1:{port}"
        labels = {f"label_{i}": f"value-{i}" for i in range(12)}
        assert request_url(f"{base}{PUSH}?integration_key={KEY}", dict(GOOD, labels=labels)) == 200
        assert request_url(f"{base}{PUSH}?integration_key={KEY}", dict(GOOD, change_status="Processing", change_key="other")) == 200
        table = run_cli("table", "--url", base)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["TIME", "STATUS", "CHANGE_KEY", "TITLE", "LABELS"]
        assert "Done" in lines[1] and "deploy-42" in lines[1] and "Deploy checkout 1.2" in lines[1] and "label_0=value-0" in lines[1]
        assert lines[1].endswith("...") and len(lines[1]) < 200
        assert lines[1].index("deploy-42") == lines[2].index("other")   # aligned columns
        assert lines[-1] == "2 events (2 change keys)"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "integration_key=****" in out and "200 Done" in out and "200 Processing" in out
    assert KEY not in out and KEY not in err and KEY not in store.read_text(encoding="utf-8")
    from_store = run_cli("table", "--store", str(store))
    assert from_store.returncode == 0 and from_store.stdout.splitlines()[-1] == "2 events (2 change keys)"
    missing = run_cli("table", "--store", str(tmp_path / "missing.jsonl"))
    assert missing.returncode != 0 and "cannot read store" in missing.stderr
    down = run_cli("table", "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert down.returncode != 0 and "cannot read events" in down.stderr


def test_cli_refuses_without_key_or_non_loopback():
    env = {k: v for k, v in os.environ.items() if k != "FLASHDUTY_RECEIVER_KEY"}
    result = run_cli("serve", "--port", "0", env=env)
    assert result.returncode == 2 and "FLASHDUTY_RECEIVER_KEY" in result.stderr
    result = run_cli("serve", "--port", "0", "--host", "0.0.0.0", "--integration-key", KEY, env=env)
    assert result.returncode == 2 and "loopback-only" in result.stderr and KEY not in result.stderr


def test_format_table_empty_and_odd_records():
    assert flashduty_receiver.format_table([]).splitlines()[-1] == "0 events (0 change keys)"
    text = flashduty_receiver.format_table([{"received_at": 0, "event": {"change_status": "Done", "change_key": "a", "title": "x\ny"}}, "junk"])
    assert text.splitlines()[1].split()[2:5] == ["Done", "a", "x"] and text.endswith("1 event (1 change key)")


def test_format_table_shows_what_changed_and_failed_under_the_event():
    description = ('Ansible play "Deploy" finished with failures on 3 hosts: 1 ok (1 changed), 1 failed, 1 unreachable.\n'
                   'Failed: "Apply schema migrations" on db1: relation "users" already exists\n'
                   'Unreachable: "Reach" on dark1: Failed to connect\n'
                   'Changed: "Render the application config" on web1\n'
                   "Tasks: ok=3 changed=1 failed=1 skipped=0 unreachable=1 ignored=0 rescued=0\nPlaybook site.yml, run r.")
    text = flashduty_receiver.format_table([{"event": {"change_status": "Done", "change_key": "k", "title": "t", "description": description}},
                                            {"event": {"change_status": "Processing", "change_key": "j", "title": "t",
                                                       "description": "Ansible play started.\nPlaybook site.yml."}}])
    lines = text.splitlines()
    assert lines[2:5] == ['    Failed: "Apply schema migrations" on db1: relation "users" already exists',
                          '    Unreachable: "Reach" on dark1: Failed to connect',
                          '    Changed: "Render the application config" on web1']
    assert lines[5].split()[1:3] == ["Processing", "j"] and lines[-1] == "2 events (2 change keys)"
