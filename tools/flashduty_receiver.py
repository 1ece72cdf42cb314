"""Local Flashduty-compatible change-event receiver (standard library only).

Implements ``POST /event/push/change/standard?integration_key=<KEY>`` strictly,
as Flashduty's "Custom Change Events" guide and change-event reference describe
it (fields, limits, error codes: see ``validate_event`` and ``DEFAULT_CODES`` below), prints one line per request, stores accepted
events in memory (and optionally in a JSONL file), and can inject faults
(latency, error statuses, rate limiting, connection resets, black holes, answers
that trickle in or never end, a header block cut short) for tests of retries and
of "never slow the playbook".  Loopback only.

Python::

    with Receiver(integration_key="k" * 32, quiet=True) as r:
        ...  # hand r.push_url to Ansible
        events = r.wait_for_events(2)

Command line::

    FLASHDUTY_RECEIVER_KEY=... python tools/flashduty_receiver.py serve --port 8765
    python tools/flashduty_receiver.py table --url http://127.0.0.1:8765

Control API on the same server (no key): ``GET|DELETE /_receiver/events``,
``GET /_receiver/requests``, ``GET|PUT /_receiver/config``, ``GET /_receiver/health``.

Faults (``Receiver.add_fault``/``set_faults``, or ``PUT /_receiver/config`` with
``{"faults": [{"kind": ..., "times": 1}, ...]}``) answer the next push requests
in queue order, each rule ``times`` times (null: forever); a faulted event is
never stored.  Kinds:

- ``status``: an error envelope with HTTP ``status`` (default 503) and ``code``;
- ``ratelimit``: 429 ``RequestTooFrequently``, with ``Retry-After: <retry_after>`` if given;
- ``reset``: the connection is reset (RST), no answer;
- ``close``: the connection is closed (FIN), no answer;
- ``blackhole``: no answer, the connection held until stop() (or ``hold`` seconds);
- ``trickle_headers``: the status line and headers go out one byte every
  ``interval`` seconds (default 0.5), then the body;
- ``trickle_body``: status and headers (with a Content-Length) at once, the body
  one byte every ``interval`` seconds;
- ``endless_chunked``: ``Transfer-Encoding: chunked`` headers, then a one-byte
  chunk every ``interval`` seconds, never the last chunk;
- ``cut_headers``: ``HTTP/1.1 200 OK\\r\\nContent-Type: appl`` (the header block
  cut short), then the connection is closed.

The answer the three slow kinds send, should it ever be read whole, is an error
envelope with HTTP ``status`` (default 200) and ``code`` (default ``InternalError``,
which a client retries).  Slow answers and black holes end as soon as the client
goes away or the receiver stops.

The integration key is never printed, logged or stored: URLs are shown as
``...?integration_key=****``.
"""

# pylint: disable=too-many-lines
import argparse
import copy
import hmac
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PUSH_PATH = "/event/push/change/standard"
CONTROL_PREFIX = "/_receiver/"
KEY_ENV = "FLASHDUTY_RECEIVER_KEY"
REDACTED = "****"

CHANGE_STATUSES = ("Planned", "Ready", "Processing", "Canceled", "Done")
KNOWN_FIELDS = ("change_status", "change_key", "title", "event_time", "description", "link", "labels")
MAX_DESCRIPTION = 2048
MAX_LABELS = 50
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 2048
MAX_EVENT_TIME = 10 ** 11
LABEL_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

MAX_BODY = 1024 * 1024          # larger bodies are drained and rejected
MAX_DRAIN = 64 * 1024 * 1024    # beyond this the connection is just closed
MIN_SECRET_SCAN = 8             # keys shorter than this are not searched for in bodies

# Answers that come one byte at a time, or never end: the client's wall-clock deadline is what stops them.
SLOW_FAULT_KINDS = ("trickle_headers", "trickle_body", "endless_chunked")
FAULT_KINDS = ("status", "ratelimit", "reset", "blackhole", "close", *SLOW_FAULT_KINDS, "cut_headers")
FAULT_FIELDS = ("kind", "times", "status", "code", "message", "retry_after", "hold", "interval")
DEFAULT_FAULT_INTERVAL = 0.5
# A header block cut in the middle of a line, as a proxy or server that dies mid-answer leaves it.
CUT_HEADERS_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: appl"
DEFAULT_CODES = {
    400: "InvalidParameter",
    401: "Unauthorized",
    403: "AccessDenied",
    404: "RouteNotFound",
    405: "MethodNotAllowed",
    429: "RequestTooFrequently",
}


def closed_port(host="127.0.0.1"):
    """A loopback port nothing listens on (for connection-refused tests): bound, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ReceiverError(Exception):
    """A request the receiver answers with an error envelope."""

    def __init__(self, status, code, message, close=False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------

def _short(value, limit=40):
    """Return a short repr of a client-supplied value for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _type_name(value):
    """Return the JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _validate_required_string(body, field, errors):
    """Check a required non-empty string field."""
    if field not in body:
        errors.append(f"{field} is required")
        return
    value = body[field]
    if not isinstance(value, str):
        errors.append(f"{field} must be a string, got {_type_name(value)}")
    elif not value.strip():
        errors.append(f"{field} must be a non-empty string")


def _validate_labels(labels, errors):
    """Check the labels map."""
    if not isinstance(labels, dict):
        errors.append(f"labels must be an object of string keys to string values, got {_type_name(labels)}")
        return
    if len(labels) > MAX_LABELS:
        errors.append(f"labels has {len(labels)} entries, at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY:
            errors.append(f"labels key {_short(key)} is {len(key)} characters long, at most {MAX_LABEL_KEY} are allowed")
        elif not LABEL_KEY_RE.match(key):
            errors.append(f"labels key {_short(key)} must match {LABEL_KEY_RE.pattern}")
        if not isinstance(value, str):
            errors.append(f"labels.{key[:MAX_LABEL_KEY]} must be a string, got {_type_name(value)}")
        elif len(value) > MAX_LABEL_VALUE:
            errors.append(f"labels.{key[:MAX_LABEL_KEY]} is {len(value)} characters long, at most {MAX_LABEL_VALUE} are allowed")


def _validate_event_time(body, errors):
    """Check the optional event_time (integer Unix seconds)."""
    if "event_time" not in body:
        return
    value = body["event_time"]
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(f"event_time must be an integer (Unix time in seconds), got {_type_name(value)} {_short(value)}")
    elif value > MAX_EVENT_TIME:
        errors.append(f"event_time {value} looks like milliseconds; it must be Unix time in seconds")
    elif value < 0:
        errors.append(f"event_time {value} must not be negative (Unix time in seconds)")


def validate_event(body):
    """Return a list of rule violations for a decoded change-event body (empty when valid)."""
    if not isinstance(body, dict):
        return [f"request body must be a JSON object, got {_type_name(body)}"]
    errors = []
    unknown = sorted(k for k in body if k not in KNOWN_FIELDS)
    if unknown:
        errors.append(f"unknown field(s) {', '.join(_short(k) for k in unknown)}; allowed fields are {', '.join(KNOWN_FIELDS)}")
    if "change_status" not in body:
        errors.append("change_status is required")
    elif body["change_status"] not in CHANGE_STATUSES or not isinstance(body["change_status"], str):
        errors.append(f"change_status must be one of {', '.join(CHANGE_STATUSES)} (case-sensitive), got {_short(body['change_status'])}")
    _validate_required_string(body, "change_key", errors)
    _validate_required_string(body, "title", errors)
    _validate_event_time(body, errors)
    if "description" in body:
        value = body["description"]
        if not isinstance(value, str):
            errors.append(f"description must be a string, got {_type_name(value)}")
        elif len(value) > MAX_DESCRIPTION:
            errors.append(f"description is {len(value)} characters long, at most {MAX_DESCRIPTION} are allowed")
    if "link" in body and not isinstance(body["link"], str):
        errors.append(f"link must be a string, got {_type_name(body['link'])}")
    if "labels" in body:
        _validate_labels(body["labels"], errors)
    return errors


def _reject_duplicates(pairs):
    """object_pairs_hook refusing duplicate keys (a client bug worth catching)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_short(key)}")
        result[key] = value
    return result


def _reject_constant(name):
    """parse_constant refusing NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw):
    """Decode a UTF-8 JSON document strictly; raise ValueError with a readable reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"request body is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ValueError("request body is empty")
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise ValueError("request body is nested too deeply") from None


def normalize_fault(rule):
    """Validate a fault rule (dict) and return it with defaults filled in."""
    if not isinstance(rule, dict):
        raise ValueError(f"a fault rule must be an object, got {_type_name(rule)}")
    unknown = sorted(k for k in rule if k not in FAULT_FIELDS)
    if unknown:
        raise ValueError(f"unknown fault field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(FAULT_FIELDS)}")
    kind = rule.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {_short(kind)}")
    times = rule.get("times", 1)
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ValueError("fault times must be a positive integer, or null for forever")
    out = {"kind": kind, "times": times}
    for name in ("retry_after", "hold"):
        value = rule.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"fault {name} must be a non-negative number of seconds")
        out[name] = value
    interval = rule.get("interval")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0):
        raise ValueError("fault interval must be a positive number of seconds")
    out["interval"] = DEFAULT_FAULT_INTERVAL if interval is None and kind in SLOW_FAULT_KINDS else interval
    if kind in ("status", *SLOW_FAULT_KINDS):
        status = rule.get("status", 503 if kind == "status" else 200)
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError("fault status must be an HTTP status code between 200 and 599")
        out["status"] = status
        out["code"] = rule.get("code") or DEFAULT_CODES.get(status, "InternalError")
    elif kind == "ratelimit":
        out["status"] = 429
        out["code"] = rule.get("code") or "RequestTooFrequently"
    else:
        out["status"] = None
        out["code"] = None
    if out["code"] is not None and not isinstance(out["code"], str):
        raise ValueError("fault code must be a string")
    message = rule.get("message")
    if message is not None and not isinstance(message, str):
        raise ValueError("fault message must be a string")
    out["message"] = message or (f"injected fault: {kind}" if out["code"] else None)
    return out


def check_loopback(host):
    """Return (family, address) for a loopback host; raise ValueError for anything else."""
    text = str(host).strip()
    if text.lower() == "localhost":
        text = "127.0.0.1"
    text = text.strip("[]")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"refusing to bind to {host!r}: the receiver is loopback-only (127.0.0.0/8 or ::1)") from None
    if isinstance(addr, ipaddress.IPv4Address) and addr in ipaddress.ip_network("127.0.0.0/8"):
        return socket.AF_INET, str(addr)
    if isinstance(addr, ipaddress.IPv6Address) and addr == ipaddress.IPv6Address("::1"):
        return socket.AF_INET6, str(addr)
    raise ValueError(f"refusing to bind to {host!r}: the receiver is loopback-only (127.0.0.0/8 or ::1)")


def _format_retry_after(value):
    """Format seconds for a Retry-After header (integers as integers)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its Receiver and tracks open connections."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, family, receiver):
        self.address_family = family
        self.receiver = receiver
        self.connections = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        """Stay quiet about clients that went away; report real bugs."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)) or self.receiver.stopping:
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """One HTTP connection (keep-alive capable)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this each answer waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    server_version = "flashduty-receiver/1.0"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are closed after this

    def setup(self):
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        """Silence the default access log: it would print the integration key."""

    def send_error(self, code, message=None, explain=None):
        """Answer protocol-level errors (bad request line, unknown method...) in JSON."""
        error_code = {404: "RouteNotFound", 405: "MethodNotAllowed", 501: "MethodNotAllowed"}.get(code, "InvalidParameter")
        if code >= 500 and code != 501:
            error_code = "InternalError"
        receiver = self.server.receiver
        text = receiver.redact(message or self.responses.get(code, ("error",))[0])
        self.close_connection = True
        if code == 501:
            code = 400
        request_id = uuid.uuid4().hex
        path = getattr(self, "path", None) or ""
        if not path.startswith(CONTROL_PREFIX):
            error = ReceiverError(code, error_code, text)
            receiver.log_request(request_id, time.time(), method=self.command, path=path, raw=None, error=error)
        try:
            self._send_json(code, {"request_id": request_id, "error": {"code": error_code, "message": text}}, close=True)
        except OSError:
            pass

    def do_GET(self):  # pylint: disable=invalid-name
        """Dispatch."""
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # ---- body ---------------------------------------------------------

    def _read_body(self):
        """Read the request body (Content-Length or chunked); always consume it to keep the connection usable."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            raise ReceiverError(400, "InvalidParameter", f"invalid Content-Length {_short(length_text)}", close=True) from None
        if length > MAX_BODY:
            if length > MAX_DRAIN:
                raise ReceiverError(400, "InvalidParameter", f"request body too large ({length} bytes)", close=True)
            remaining = length
            while remaining:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
            raise ReceiverError(400, "InvalidParameter", f"request body too large ({length} bytes, at most {MAX_BODY})")
        data = self.rfile.read(length)
        if len(data) != length:
            raise ReceiverError(400, "InvalidParameter", "request body shorter than Content-Length", close=True)
        return data

    def _read_chunked(self):
        """Decode a chunked request body."""
        parts = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ReceiverError(400, "InvalidParameter", "malformed chunked request body", close=True) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            total += size
            if total > MAX_BODY:
                raise ReceiverError(400, "InvalidParameter", f"request body too large (more than {MAX_BODY} bytes)", close=True)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)
        return b"".join(parts)

    # ---- responses ----------------------------------------------------

    def _send_json(self, status, payload, headers=None, close=False):
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _send_error_envelope(self, request_id, exc, headers=None):
        payload = {"request_id": request_id, "error": {"code": exc.code, "message": exc.message}}
        self._send_json(exc.status, payload, headers=headers, close=exc.close)

    # ---- routing ------------------------------------------------------

    def _dispatch(self):
        receiver = self.server.receiver
        request_id = uuid.uuid4().hex
        received_at = time.time()
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        try:
            raw = self._read_body()
        except ReceiverError as exc:
            if not path.startswith(CONTROL_PREFIX):
                receiver.log_request(request_id, received_at, method=self.command, path=self.path, raw=None, error=exc)
            self._send_error_envelope(request_id, exc)
            return
        if path.startswith(CONTROL_PREFIX):
            self._control(request_id, path[len(CONTROL_PREFIX):], raw)
        elif path == PUSH_PATH:
            self._push(request_id, received_at, split.query, raw)
        else:
            exc = ReceiverError(404, "RouteNotFound", f"no route for {self.command} {receiver.redact_path(self.path)}")
            receiver.log_request(request_id, received_at, method=self.command, path=self.path, raw=raw, error=exc)
            self._send_error_envelope(request_id, exc)

    def _push(self, request_id, received_at, query, raw):
        receiver = self.server.receiver
        latency = receiver.latency
        if latency > 0 and receiver.stop_event.wait(latency):
            self.close_connection = True
            return
        fault = receiver.take_fault()
        if fault is not None:
            self._fault(fault, request_id, received_at, raw)
            return
        try:
            body = self._check_push(query, raw)
        except ReceiverError as exc:
            receiver.log_request(request_id, received_at, method=self.command, path=self.path, raw=raw, error=exc)
            self._send_error_envelope(request_id, exc)
            return
        receiver.accept(request_id, received_at, self.command, self.path, body)
        self._send_json(200, {"request_id": request_id, "data": {}})

    def _check_push(self, query, raw):
        """Apply the protocol checks in order; return the decoded body or raise ReceiverError."""
        receiver = self.server.receiver
        if self.command != "POST":
            raise ReceiverError(400, "MethodNotAllowed", f"method {self.command} is not allowed, use POST")
        content_type = self.headers.get("Content-Type") or ""
        media, params = (content_type.split(";", 1) + [""])[:2]
        if media.strip().lower() != "application/json":
            raise ReceiverError(400, "InvalidContentType", f"Content-Type must be application/json, got {_short(content_type)}")
        charset = re.search(r"charset\s*=\s*\"?([^\";\s]+)", params, re.IGNORECASE)
        if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
            raise ReceiverError(400, "InvalidContentType", f"Content-Type charset must be utf-8, got {_short(charset.group(1))}")
        keys = urllib.parse.parse_qs(query, keep_blank_values=True).get("integration_key", [])
        if len(keys) != 1 or not receiver.key_matches(keys[0]):
            raise ReceiverError(400, "InvalidParameter", "integration_key is not a valid one")
        try:
            body = parse_json(raw)
        except ValueError as exc:
            raise ReceiverError(400, "InvalidParameter", str(exc)) from None
        if receiver.contains_key(body):
            raise ReceiverError(400, "InvalidParameter", "request body contains the integration key (secret leak): refusing to store it")
        errors = validate_event(body)
        if errors:
            raise ReceiverError(400, "InvalidParameter", "; ".join(errors))
        return body

    def _fault(self, fault, request_id, received_at, raw):
        receiver = self.server.receiver
        kind = fault["kind"]
        receiver.log_request(request_id, received_at, method=self.command, path=self.path, raw=raw,
                             error=ReceiverError(fault["status"], fault["code"], fault["message"]), fault=kind)
        if kind in ("status", "ratelimit"):
            headers = {}
            if fault["retry_after"] is not None:
                headers["Retry-After"] = _format_retry_after(fault["retry_after"])
            self._send_error_envelope(request_id, ReceiverError(fault["status"], fault["code"], fault["message"]), headers=headers)
            return
        self.close_connection = True
        if kind in SLOW_FAULT_KINDS:
            self._slow_answer(fault, request_id)
        elif kind == "cut_headers":
            self.wfile.write(CUT_HEADERS_ANSWER)
        elif kind == "blackhole":
            receiver.stop_event.wait(fault["hold"])
        elif kind == "reset":
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            # close() only marks the socket while rfile holds a reference; closing rfile really closes it (RST).
            self.connection.close()
            self.rfile.close()
        # "close" (and a released blackhole): return without answering; the server closes the socket (FIN).

    def _slow_answer(self, fault, request_id):
        """Send an error envelope one byte per ``interval`` (the head, the body) or as endless chunks.

        Returns when the receiver stops; a client that went away ends it with an OSError at the next write.
        """
        kind = fault["kind"]
        wait = self.server.receiver.stop_event.wait
        body = json.dumps({"request_id": request_id, "error": {"code": fault["code"], "message": fault["message"]}}).encode("utf-8")
        framing = "Transfer-Encoding: chunked" if kind == "endless_chunked" else f"Content-Length: {len(body)}"
        reason = self.responses.get(fault["status"], ("",))[0]
        head = (f"HTTP/1.1 {fault['status']} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n{framing}\r\n"
                "Connection: close\r\n\r\n").encode("latin-1")
        if kind == "trickle_headers":
            slow, fast = head, body
        elif kind == "trickle_body":
            self.wfile.write(head)
            slow, fast = body, b""
        else:
            self.wfile.write(head)
            while not wait(fault["interval"]):
                self.wfile.write(b"1\r\n \r\n")  # JSON whitespace, one byte a chunk; the last chunk (0) never comes
            return
        for index in range(len(slow)):
            if wait(fault["interval"]):
                return
            self.wfile.write(slow[index:index + 1])
        self.wfile.write(fast)

    def _control(self, request_id, name, raw):
        receiver = self.server.receiver
        method = self.command
        try:
            if name == "health" and method in ("GET", "HEAD"):
                self._send_json(200, {"ok": True})
            elif name == "events" and method in ("GET", "HEAD"):
                self._send_json(200, receiver.records)
            elif name == "events" and method == "DELETE":
                receiver.clear()
                self._send_json(200, {"ok": True})
            elif name == "requests" and method in ("GET", "HEAD"):
                self._send_json(200, receiver.requests)
            elif name == "config" and method in ("GET", "HEAD"):
                self._send_json(200, receiver.config)
            elif name == "config" and method in ("PUT", "POST"):
                try:
                    settings = parse_json(raw)
                    receiver.configure(settings)
                except ValueError as exc:
                    raise ReceiverError(400, "InvalidParameter", str(exc)) from None
                self._send_json(200, receiver.config)
            elif name in ("health", "events", "requests", "config"):
                raise ReceiverError(400, "MethodNotAllowed", f"method {method} is not allowed on {CONTROL_PREFIX}{name}")
            else:
                raise ReceiverError(404, "RouteNotFound", f"no route for {method} {CONTROL_PREFIX}{name}")
        except ReceiverError as exc:
            self._send_error_envelope(request_id, exc)


# --------------------------------------------------------------------------
# the receiver
# --------------------------------------------------------------------------

class Receiver:  # pylint: disable=too-many-public-methods,too-many-instance-attributes
    """A local Flashduty-compatible change-event receiver running in background threads."""

    def __init__(self, integration_key, host="127.0.0.1", port=0, *, quiet=False, store=None, latency=0.0):  # pylint: disable=too-many-arguments
        if not isinstance(integration_key, str) or not integration_key:
            raise ValueError("integration_key must be a non-empty string")
        self._family, self._host = check_loopback(host)
        self._key = integration_key
        self._port = port
        self.quiet = quiet
        self.store = os.fspath(store) if store is not None else None
        self._initial_latency = self._check_latency(latency)
        self._latency = self._initial_latency
        self._faults = []
        self._records = []
        self._requests = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._print_lock = threading.Lock()
        self.stop_event = threading.Event()
        self._server = None
        self._thread = None

    def __repr__(self):
        where = self.base_url if self._server else f"{self._host}:{self._port} (not started)"
        return f"<Receiver {where} integration_key={REDACTED}>"

    # ---- lifecycle ----------------------------------------------------

    def start(self):
        """Bind and serve in a daemon thread; return self."""
        if self._server is not None:
            raise RuntimeError("receiver already started")
        self._server = _Server((self._host, self._port), self._family, self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"flashduty-receiver-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=2.0):
        """Stop serving; release black-holed and delayed requests; never hangs."""
        server = self._server
        if server is None or self.stop_event.is_set():
            return
        self.stop_event.set()
        server.shutdown()
        with server.connections_lock:
            connections = list(server.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._changed:
            self._changed.notify_all()

    @property
    def stopping(self):
        """True once stop() was called."""
        return self.stop_event.is_set()

    def __enter__(self):
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    # ---- addresses ----------------------------------------------------

    @property
    def port(self):
        """The bound port (after start())."""
        if self._server is None:
            raise RuntimeError("receiver not started")
        return self._port

    @property
    def base_url(self):
        """``http://127.0.0.1:PORT`` (IPv6 hosts in brackets)."""
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self.port}"

    @property
    def integration_key(self):
        """The key this receiver accepts (a secret: tests look for it in output that must not hold it)."""
        return self._key

    @property
    def push_url(self):
        """Full push URL including the integration key (a secret: do not print it)."""
        return f"{self.base_url}{PUSH_PATH}?integration_key={urllib.parse.quote(self._key, safe='')}"

    @property
    def redacted_push_url(self):
        """The push URL with the key shown as ****."""
        return f"{self.base_url}{PUSH_PATH}?integration_key={REDACTED}"

    # ---- secrets ------------------------------------------------------

    def key_matches(self, candidate):
        """Constant-time comparison with the integration key."""
        return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), self._key.encode("utf-8", "surrogatepass"))

    def redact(self, text):
        """Replace any occurrence of the key in text with ****."""
        if not isinstance(text, str):
            return text
        if self._key in text:
            text = text.replace(self._key, REDACTED)
        quoted = urllib.parse.quote(self._key, safe="")
        if quoted != self._key and quoted in text:
            text = text.replace(quoted, REDACTED)
        return text

    def redact_path(self, path):
        """A request target with the integration_key parameter (and the key anywhere) shown as ****."""
        split = urllib.parse.urlsplit(path)
        if split.query:
            params = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
            query = "&".join(f"{name}={REDACTED}" if name == "integration_key" else f"{name}={value}" for name, value in params)
            path = f"{split.path}?{query}"
        return self.redact(path)

    def contains_key(self, value):
        """True when a decoded JSON value contains the key (only checked for keys of 8+ characters)."""
        if len(self._key) < MIN_SECRET_SCAN:
            return False
        if isinstance(value, str):
            return self._key in value
        if isinstance(value, dict):
            return any(self.contains_key(k) or self.contains_key(v) for k, v in value.items())
        if isinstance(value, list):
            return any(self.contains_key(v) for v in value)
        return False

    def _scrub(self, value):
        """Deep copy of a decoded JSON value with the key redacted everywhere."""
        if len(self._key) < MIN_SECRET_SCAN:
            return copy.deepcopy(value)
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact(k): self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        return value

    # ---- state --------------------------------------------------------

    @property
    def events(self):
        """Accepted event bodies, in arrival order (a copy)."""
        with self._lock:
            return [copy.deepcopy(r["event"]) for r in self._records]

    @property
    def records(self):
        """Accepted records ``{request_id, received_at, event}`` (a copy)."""
        with self._lock:
            return copy.deepcopy(self._records)

    @property
    def requests(self):
        """Log of every push-side request (accepted, rejected or faulted), a copy.

        Entries: request_id, received_at, method, path (key redacted), status (None when no
        answer was sent), error_code, message, fault (kind or None), accepted, body (decoded JSON or None).
        """
        with self._lock:
            return copy.deepcopy(self._requests)

    @property
    def latency(self):
        """Seconds added before answering every push request."""
        return self._latency

    @property
    def faults(self):
        """Remaining fault rules (a copy)."""
        with self._lock:
            return copy.deepcopy(self._faults)

    @property
    def config(self):
        """``{"latency": ..., "faults": [...]}``."""
        with self._lock:
            return {"latency": self._latency, "faults": copy.deepcopy(self._faults)}

    @staticmethod
    def _check_latency(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError("latency must be a non-negative number of seconds")
        return float(value)

    def set_latency(self, seconds):
        """Set the delay added before answering every push request."""
        self._latency = self._check_latency(seconds)

    def add_fault(self, kind, *, times=1, status=None, code=None, message=None, retry_after=None, hold=None,  # pylint: disable=too-many-arguments
                  interval=None):
        """Append a fault rule; return it normalised.

        kind: status (HTTP ``status``, default 503, error ``code``), ratelimit (429, optional
        ``retry_after`` seconds header), reset (RST, no response), blackhole (no answer until
        stop() or ``hold`` seconds), close (FIN, no response), trickle_headers (the head one byte
        per ``interval`` seconds, default 0.5), trickle_body (the head at once, the body one byte
        per ``interval``), endless_chunked (a chunk per ``interval``, never the last), cut_headers
        (part of the header block, then FIN). The slow kinds' answer is an error envelope with
        ``status`` (default 200) and ``code`` (default InternalError). times: int, or None for forever.
        """
        rule = {"kind": kind, "times": times}
        for name, value in (("status", status), ("code", code), ("message", message), ("retry_after", retry_after), ("hold", hold),
                            ("interval", interval)):
            if value is not None:
                rule[name] = value
        rule = normalize_fault(rule)
        with self._lock:
            self._faults.append(rule)
        return dict(rule)

    def set_faults(self, rules):
        """Replace the fault queue."""
        normalised = [normalize_fault(rule) for rule in rules]
        with self._lock:
            self._faults = normalised

    def clear_faults(self):
        """Drop every fault rule."""
        with self._lock:
            self._faults = []

    def configure(self, settings):
        """Apply ``{"latency": s, "faults": [...]}`` (either key optional); raise ValueError when invalid."""
        if not isinstance(settings, dict):
            raise ValueError(f"config must be an object, got {_type_name(settings)}")
        unknown = sorted(k for k in settings if k not in ("latency", "faults"))
        if unknown:
            raise ValueError(f"unknown config field(s) {', '.join(map(str, unknown))}; allowed: latency, faults")
        latency = self._check_latency(settings["latency"]) if "latency" in settings else None
        faults = None
        if "faults" in settings:
            if not isinstance(settings["faults"], list):
                raise ValueError("faults must be a list of fault rules")
            faults = [normalize_fault(rule) for rule in settings["faults"]]
        with self._lock:
            if latency is not None:
                self._latency = latency
            if faults is not None:
                self._faults = faults

    def take_fault(self):
        """Consume one use of the first fault rule, if any; return a copy of it."""
        with self._lock:
            if not self._faults:
                return None
            rule = self._faults[0]
            if rule["times"] is not None:
                rule["times"] -= 1
                if rule["times"] <= 0:
                    self._faults.pop(0)
            return dict(rule)

    def clear(self):
        """Forget accepted events and the request log (what ``DELETE /_receiver/events`` does)."""
        with self._changed:
            self._records = []
            self._requests = []
            self._changed.notify_all()

    def reset(self):
        """clear(), drop all faults and restore the initial latency."""
        self.clear()
        with self._lock:
            self._faults = []
            self._latency = self._initial_latency

    def wait_for_events(self, n, timeout=10.0):
        """Wait until at least n events were accepted; return them all.

        Raises TimeoutError (listing recent rejections) when they do not arrive in time.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._records) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stop_event.is_set():
                    rejected = [f"{r['status']} {r['error_code']}: {r['message']}" for r in self._requests if not r["accepted"]][-5:]
                    detail = f"; recent rejections: {rejected}" if rejected else ""
                    raise TimeoutError(f"expected at least {n} accepted event(s) within {timeout}s, got {len(self._records)}{detail}")
                self._changed.wait(remaining)
            return [copy.deepcopy(r["event"]) for r in self._records]

    # ---- recording ----------------------------------------------------

    def _decode_for_log(self, raw):
        if raw is None:
            return None
        try:
            return self._scrub(parse_json(raw))
        except ValueError:
            return None

    def log_request(self, request_id, received_at, *, method, path, raw, error, fault=None):  # pylint: disable=too-many-arguments
        """Record (and print) a request that was not accepted; error carries status (None: no answer), code and message."""
        status, error_code, message = error.status, error.code, error.message
        entry = {
            "request_id": request_id, "received_at": received_at, "method": method, "path": self.redact_path(path),
            "status": status, "error_code": error_code, "message": self.redact(message), "fault": fault, "accepted": False,
            "body": self._decode_for_log(raw),
        }
        with self._changed:
            self._requests.append(entry)
            self._changed.notify_all()
        stamp = time.strftime("%H:%M:%S", time.localtime(received_at))
        if fault and status is None:
            answer = {"reset": "connection reset (RST), no response", "close": "connection closed, no response",
                      "blackhole": "holding the connection, no response",
                      "cut_headers": "header block cut short, connection closed"}[fault]
            self._print(f"{stamp} --- [fault={fault}] {answer}  request_id={request_id}")
        else:
            tag = f"  [fault={fault}]" if fault else ""
            self._print(f"{stamp} {status} {error_code}: {entry['message']}{tag}  request_id={request_id}")

    def accept(self, request_id, received_at, method, path, body):
        """Record, store and print an accepted event."""
        record = {"request_id": request_id, "received_at": received_at, "event": body}
        entry = {
            "request_id": request_id, "received_at": received_at, "method": method, "path": self.redact_path(path),
            "status": 200, "error_code": None, "message": None, "fault": None, "accepted": True, "body": copy.deepcopy(body),
        }
        with self._changed:
            self._records.append(record)
            self._requests.append(entry)
            if self.store:
                self._append_store(record)
            self._changed.notify_all()
        title = body["title"] if len(body["title"]) <= 60 else body["title"][:57] + "..."
        self._print(f"{time.strftime('%H:%M:%S', time.localtime(received_at))} 200 {body['change_status']:<10}  {body['change_key']}  "
                    f"{json.dumps(title, ensure_ascii=False)}  labels={len(body.get('labels') or {})}  request_id={request_id}")

    def _append_store(self, record):
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        try:
            fd = os.open(self.store, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            print(f"flashduty receiver: cannot append to store {self.store}: {exc}", file=sys.stderr, flush=True)

    def _print(self, line):
        if self.quiet:
            return
        with self._print_lock:
            try:
                print(self.redact(line), flush=True)
            except (OSError, ValueError):
                pass


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

def _write_port_file(path, port):
    """Write the port atomically so a poller never reads a partial file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"{port}\n")
    os.replace(tmp, path)


def cmd_serve(args):
    """``serve``: run until SIGTERM/SIGINT."""
    key = args.integration_key or os.environ.get(KEY_ENV)
    if not key:
        print(f"flashduty receiver: no integration key: pass --integration-key or set {KEY_ENV}", file=sys.stderr)
        return 2
    try:
        receiver = Receiver(key, host=args.host, port=args.port, quiet=args.quiet, store=args.store, latency=args.latency)
        receiver.start()
    except (ValueError, OverflowError, OSError) as exc:
        print(f"flashduty receiver: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        if args.port_file:
            _write_port_file(args.port_file, receiver.port)
        if not args.quiet:
            print(f"flashduty receiver listening: push URL {receiver.redacted_push_url}", flush=True)
            print(f"  control API: {receiver.base_url}{CONTROL_PREFIX}{{events,requests,config,health}}"
                  f"{'  store: ' + receiver.store if receiver.store else ''}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        receiver.stop()
    if not args.quiet:
        print("flashduty receiver stopped", flush=True)
    return 0


def _load_records(args):
    """Return accepted records from --url or --store; raise RuntimeError with a clear message."""
    if args.url:
        split = urllib.parse.urlsplit(args.url)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise RuntimeError(f"--url must look like http://127.0.0.1:8765, got {split.scheme or '?'}://{split.netloc or '?'}")
        url = f"{split.scheme}://{split.netloc}{CONTROL_PREFIX}events"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as response:  # nosec - loopback tool
                records = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RuntimeError(f"cannot read events from {url}: {exc}") from None
        if not isinstance(records, list):
            raise RuntimeError(f"unexpected answer from {url}: not a list")
        return records
    records = []
    try:
        with open(args.store, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError:
                    print(f"flashduty receiver: {args.store}:{number}: skipping a line that is not JSON", file=sys.stderr)
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeError(f"cannot read store {args.store}: {exc}") from None
    return records


def _cut(text, width):
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


TABLE_LABELS_FIRST = ("hosts", "groups", "outcome", "failed_hosts", "unreachable_hosts", "changed_count", "service")
# The lines of a description that say what a change did, shown under its row.
TABLE_STORY_PREFIXES = ("Changed", "Would change", "Failed:", "Unreachable:", "Never ran:", "Stopped ")


def _story_lines(description, width=160):
    if not isinstance(description, str):
        return []
    return ["    " + _cut(line, width) for line in description.splitlines() if line.startswith(TABLE_STORY_PREFIXES)]


def format_table(records, labels_width=80):
    """Render accepted records as an aligned text table (with a count line); under each event, what its
    description says changed or failed."""
    rows = []
    stories = []
    for record in records:
        event = record.get("event") if isinstance(record, dict) else None
        if not isinstance(event, dict):
            continue
        when = event.get("event_time") if isinstance(event.get("event_time"), int) else record.get("received_at")
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(when)))
        except (TypeError, ValueError, OverflowError, OSError):
            stamp = "?"
        labels = event.get("labels") if isinstance(event.get("labels"), dict) else {}
        # The scope and the outcome first: they tell the story; the rest alphabetically.
        ordered = sorted(labels.items(), key=lambda item: (TABLE_LABELS_FIRST.index(item[0]) if item[0] in TABLE_LABELS_FIRST
                                                           else len(TABLE_LABELS_FIRST), item[0]))
        label_text = " ".join(f"{k}={_cut(v, 40)}" for k, v in ordered)
        rows.append((stamp, str(event.get("change_status", "")), _cut(event.get("change_key", ""), 40),
                     _cut(event.get("title", ""), 60), _cut(label_text, labels_width)))
        stories.append(_story_lines(event.get("description")))
    header = ("TIME", "STATUS", "CHANGE_KEY", "TITLE", "LABELS")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header) - 1)]
    lines = []
    for row, story in zip([header] + rows, [[]] + stories):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1])
        lines.extend(story)
    keys = {row[2] for row in rows}
    lines.append(f"{len(rows)} event{'s' if len(rows) != 1 else ''} ({len(keys)} change key{'s' if len(keys) != 1 else ''})")
    return "\n".join(line.rstrip() for line in lines)


def cmd_table(args):
    """``table``: print what a receiver received."""
    try:
        records = _load_records(args)
    except RuntimeError as exc:
        print(f"flashduty receiver: {exc}", file=sys.stderr)
        return 1
    print(format_table(records))
    return 0


def build_parser():
    """The argparse parser for the command line."""
    parser = argparse.ArgumentParser(prog="flashduty_receiver.py", description="Local Flashduty-compatible change-event receiver.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve until SIGTERM/SIGINT", epilog=(
        "Faults are injected through the control API, e.g. PUT /_receiver/config with "
        '{"faults": [{"kind": "trickle_body", "times": null, "interval": 0.5}]}. '
        f"Kinds: {', '.join(FAULT_KINDS)}; fields: {', '.join(FAULT_FIELDS)} (see the docstring of tools/flashduty_receiver.py)."))
    serve.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.0/8 or ::1)")
    serve.add_argument("--port", type=int, default=8765, help="port (0 picks a free one; see --port-file)")
    serve.add_argument("--integration-key", help=f"expected integration key (prefer the {KEY_ENV} environment variable)")
    serve.add_argument("--latency", type=float, default=0.0, help="seconds added before answering every push request")
    serve.add_argument("--store", help="append accepted events to this JSONL file")
    serve.add_argument("--port-file", help="write the bound port to this file once listening")
    serve.add_argument("--quiet", action="store_true", help="print nothing per request")
    serve.set_defaults(func=cmd_serve)
    table = sub.add_parser("table", help="print received events as a table")
    source = table.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="receiver base URL, e.g. http://127.0.0.1:8765")
    source.add_argument("--store", help="JSONL store file written by serve --store")
    table.add_argument("--timeout", type=float, default=5.0, help="HTTP timeout in seconds")
    table.set_defaults(func=cmd_table)
    return parser


def main(argv=None):
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
