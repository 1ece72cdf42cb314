# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests for plugins/module_utils/_client.py and _transport.py: delivering one event.

Retries, backoff, Retry-After, deadlines, keep-alive, proxy and TLS against
real local HTTP servers: the receiver from tools/flashduty_receiver.py
(conftest's ``receiver`` fixture) and, for answers the receiver cannot give
(non-JSON pages, idle hang-ups, TLS, raw bytes), small servers defined here.
"""
# pylint: disable=missing-function-docstring,protected-access,redefined-outer-name,too-many-arguments,consider-using-with

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import http.server
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from flashduty_receiver import closed_port

from ansible_collections.flashcat.flashduty.plugins.module_utils import _client as cl
from ansible_collections.flashcat.flashduty.plugins.module_utils import _flashduty as fd
from ansible_collections.flashcat.flashduty.plugins.module_utils import _transport as tr

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures' / 'flashduty_responses'
PUSH = fd.PUSH_PATH
KEY = '0123456789abcdef0123456789abcdef'
PUSH_URL = 'https://api.flashcat.cloud%s?integration_key=%s' % (PUSH, KEY)
MASKED_PUSH_URL = 'https://api.flashcat.cloud%s?integration_key=****' % PUSH
EVENT = {'change_status': 'Done', 'change_key': 'deploy-42', 'title': 'Deploy checkout 1.2'}


def fixture_body(name):
    return (FIXTURES / ('%s.json' % name)).read_bytes()


def error_of(func, *args, **kwargs):
    with pytest.raises(fd.FlashdutyError) as info:
        func(*args, **kwargs)
    return info.value


def assert_one_line(message):
    assert '\n' not in message and '\r' not in message, message


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch):
    """The client honours *_proxy variables: make the tests independent of the developer's shell."""
    for name in ('http_proxy', 'https_proxy', 'all_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY', 'NO_PROXY'):
        monkeypatch.delenv(name, raising=False)


class Sleeps(list):
    """A fake ``sleep=`` for FlashdutyClient that records each wait instead of waiting."""

    def __call__(self, seconds):
        self.append(seconds)


# --------------------------------------------------------------------------- scripted server

class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def do_POST(self):  # pylint: disable=invalid-name
        server = self.server
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        with server.lock:
            server.seen.append({'port': self.client_address[1], 'target': self.path, 'headers': dict(self.headers.items()), 'body': body})
            answer = server.answers.pop(0) if len(server.answers) > 1 else server.answers[0]
        status, headers, payload, hang_up = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        # hang_up: close after answering without announcing it, like a server whose keep-alive idle timer ran out.
        self.close_connection = hang_up

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass


class ScriptedServer:
    """A loopback HTTP/1.1 server answering POSTs from a script and recording each request.

    ``answer(status, body, headers=None, hang_up=False)`` queues an answer; the last one repeats.
    ``seen`` lists requests as ``{port, target, headers, body}`` (port: the client's source port).
    """

    def __init__(self, tls_context=None):
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _ScriptedHandler)
        self.httpd.daemon_threads = True
        self.httpd.lock = threading.Lock()
        self.httpd.seen = []
        self.httpd.answers = [(200, {'Content-Type': 'application/json'}, fixture_body('accepted'), False)]
        self._scripted = False
        self.scheme = 'http'
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = 'https'
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
        self.thread.start()

    def answer(self, status, body, headers=None, hang_up=False, content_type='application/json'):
        entry = (status, dict({'Content-Type': content_type}, **(headers or {})), body, hang_up)
        with self.httpd.lock:
            if not self._scripted:
                self.httpd.answers = []
                self._scripted = True
            self.httpd.answers.append(entry)

    @property
    def seen(self):
        with self.httpd.lock:
            return list(self.httpd.seen)

    def url(self, host='127.0.0.1', key=KEY):
        return '%s://%s:%d%s?integration_key=%s' % (self.scheme, host, self.port, PUSH, key)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    server = ScriptedServer()
    try:
        yield server
    finally:
        server.stop()


# =========================================================================== retry policy, pure

@pytest.mark.parametrize('attempt, low, high', [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (4, 2.0, 4.0), (5, 4.0, 8.0), (6, 4.0, 8.0), (30, 4.0, 8.0)])
def test_backoff_is_exponential_with_equal_jitter_and_a_cap(attempt, low, high):
    assert cl.backoff_delay(attempt, rand=lambda: 0.0) == low
    assert cl.backoff_delay(attempt, rand=lambda: 1.0) == high
    for _dummy in range(20):
        assert low <= cl.backoff_delay(attempt) <= high


def test_backoff_jitter_varies():
    assert len(set(cl.backoff_delay(3) for _dummy in range(20))) > 1


@pytest.mark.parametrize('value, expected', [
    ('7', 7.0), (' 7 ', 7.0), ('0', 0.0), ('1.5', 1.5), ('', None), (None, None), ('soon', None), ('-3', None),
    ('Wed, 21 Oct 2015 07:28:00 GMT', 30.0),     # an HTTP date 30 s after "now"
    ('Wed, 21 Oct 2015 07:27:00 GMT', 0.0),      # in the past: no wait
])
def test_parse_retry_after(value, expected):
    now = datetime.datetime(2015, 10, 21, 7, 27, 30, tzinfo=datetime.timezone.utc).timestamp()
    assert cl.parse_retry_after(value, now=now) == expected


@pytest.mark.parametrize('name, status, code, request_id', [
    ('accepted', 200, None, '0f5a9c3e2b7d4e1f8a6b5c4d3e2f1a0b'),
    ('accepted_no_data', 200, None, '1b2c3d4e5f60718293a4b5c6d7e8f901'),
    ('invalid_parameter_key', 400, 'InvalidParameter', '7c4f0e9a2d1b4c3e8f6a5b4c3d2e1f0a'),
    ('internal_error', 500, 'InternalError', 'e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5'),
])
def test_describe_answer_fixtures(name, status, code, request_id):
    got_request_id, got_code, message, data = cl.describe_answer(tr.Answer(status, {}, fixture_body(name)))
    document = json.loads(fixture_body(name))
    assert (got_request_id, got_code) == (request_id, code)
    assert message == (document['error']['message'] if code else None)
    assert data == document.get('data')


@pytest.mark.parametrize('status, body, code', [
    (200, b'<html>proxy login</html>', 'InvalidResponse'),
    (200, b'', 'InvalidResponse'),
    (200, b'[1, 2]', 'InvalidResponse'),
    (200, b'{"request_id": "r", "error": "flat string"}', 'UnknownError'),
    (200, b'{"request_id": "r", "error": {}}', 'UnknownError'),   # any error object is a failure, even an empty one
    (200, b'{"request_id": "r", "error": null}', None),
    (200, b'{"request_id": "r", "error": {"message": "m"}}', 'UnknownError'),
    (502, b'<html>Bad gateway</html>', None),
])
def test_describe_odd_responses(status, body, code):
    assert cl.describe_answer(tr.Answer(status, {}, body))[1] == code


# =========================================================================== delivery against the receiver

def client_for(url, sleeps=None, **kwargs):
    kwargs.setdefault('timeout', 5)
    kwargs.setdefault('retries', 3)
    return cl.FlashdutyClient(fd.endpoint_for(url), sleep=sleeps if sleeps is not None else Sleeps(), **kwargs)


def test_send_delivers_the_event(receiver):
    event, _warnings = fd.build_event('Processing', 'CHG-é', 'Déploiement ✓', description='d', link='https://x.example.com/1',
                                      labels={'service': 'checkout', 'canary': True}, event_time=1700000000)
    client = client_for(receiver.push_url)
    try:
        delivery = client.send(event)
    finally:
        client.close()
    (record,) = receiver.records
    assert record['event'] == event
    assert delivery.request_id == record['request_id'] and len(delivery.request_id) == 32
    assert (delivery.status_code, delivery.attempts, delivery.data) == (200, 1, {})
    assert client.endpoint.masked == '%s%s?integration_key=****' % (receiver.base_url, PUSH)


def test_request_format(scripted):
    client = client_for(scripted.url())
    client.send(dict(EVENT, title='Déploiement'))
    client.close()
    (request,) = scripted.seen
    headers = dict((name.lower(), value) for name, value in request['headers'].items())
    assert request['target'] == '%s?integration_key=%s' % (PUSH, KEY)
    assert headers['content-type'] == 'application/json'  # exactly, as Flashduty documents it
    assert headers['accept'] == 'application/json'
    assert headers['user-agent'].startswith('flashcat.flashduty')
    assert headers['host'] == '127.0.0.1:%d' % scripted.port
    assert int(headers['content-length']) == len(request['body'])
    assert json.loads(request['body'].decode('utf-8')) == dict(EVENT, title='Déploiement')
    assert 'Déploiement'.encode('utf-8') in request['body']  # UTF-8, not \u escapes


@pytest.mark.parametrize('status', [500, 502, 503, 504])
def test_server_errors_are_retried_with_backoff_then_succeed(receiver, status):
    receiver.add_fault('status', times=2, status=status)
    sleeps = Sleeps()
    delivery = client_for(receiver.push_url, sleeps).send(EVENT)
    assert delivery.attempts == 3
    assert [r['status'] for r in receiver.requests] == [status, status, 200]
    assert receiver.events == [EVENT]
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


@pytest.mark.parametrize('status', [500, 502, 503, 504])
def test_server_errors_fail_after_the_retries(receiver, status):
    receiver.add_fault('status', times=None, status=status)
    sleeps = Sleeps()
    exc = error_of(client_for(receiver.push_url, sleeps, retries=2).send, EVENT)
    assert len(receiver.requests) == 3 and len(sleeps) == 2
    assert exc.retryable and exc.status_code == status
    last = receiver.requests[-1]
    assert exc.request_id == last['request_id']
    assert exc.message.startswith('Flashduty did not accept the change event at %s%s?integration_key=****' % (receiver.base_url, PUSH))
    assert 'HTTP %d %s: injected fault: status' % (status, 'InternalError') in exc.message
    assert '(request_id: %s) after 3 attempts' % last['request_id'] in exc.message
    assert receiver.integration_key not in exc.message
    assert_one_line(exc.message)


def test_zero_retries_means_one_attempt(receiver):
    receiver.add_fault('status', times=None, status=503)
    sleeps = Sleeps()
    exc = error_of(client_for(receiver.push_url, sleeps, retries=0).send, EVENT)
    assert len(receiver.requests) == 1 and sleeps == []
    assert 'after' not in exc.message


def test_429_honours_retry_after(receiver):
    receiver.add_fault('ratelimit', times=2, retry_after=7)
    sleeps = Sleeps()
    delivery = client_for(receiver.push_url, sleeps).send(EVENT)
    assert delivery.attempts == 3 and sleeps == [7.0, 7.0]
    assert receiver.events == [EVENT]


def test_429_retry_after_is_capped(receiver):
    receiver.add_fault('ratelimit', times=1, retry_after=3600)
    sleeps = Sleeps()
    client_for(receiver.push_url, sleeps).send(EVENT)
    assert sleeps == [cl.RETRY_AFTER_MAX]


def test_429_without_retry_after_backs_off(receiver):
    receiver.add_fault('ratelimit', times=1)
    sleeps = Sleeps()
    client_for(receiver.push_url, sleeps).send(EVENT)
    assert len(sleeps) == 1 and 0.25 <= sleeps[0] <= 0.5


def test_429_retry_after_really_waits(receiver):
    receiver.add_fault('ratelimit', times=1, retry_after=0.4)
    client = cl.FlashdutyClient(fd.endpoint_for(receiver.push_url), timeout=5, retries=1)  # the real time.sleep
    started = time.monotonic()
    delivery = client.send(EVENT)
    elapsed = time.monotonic() - started
    client.close()
    assert delivery.attempts == 2 and receiver.events == [EVENT]
    assert 0.4 <= elapsed < 3, elapsed
    first, second = receiver.requests
    assert second['received_at'] - first['received_at'] >= 0.39


def test_429_failure_names_the_rate_limit(receiver):
    receiver.add_fault('ratelimit', times=None, retry_after=0)
    exc = error_of(client_for(receiver.push_url, retries=1).send, EVENT)
    assert exc.code == 'RequestTooFrequently' and exc.status_code == 429 and exc.retryable
    assert 'asked to slow down' in exc.message and 'documents' not in exc.message and 'after 2 attempts' in exc.message


@pytest.mark.parametrize('status, code, hint', [
    (400, 'InvalidParameter', 'check the event fields'),
    (400, 'InvalidContentType', None),
    (400, 'ResourceNotFound', 'no such resource purchased'),
    (400, 'NoLicense', 'lacks the licence'),
    (401, 'Unauthorized', 'copy the push URL again'),
    (403, 'AccessDenied', 'no permission'),
    (404, 'RouteNotFound', 'it must end in %s' % PUSH),
    (405, 'MethodNotAllowed', None),
    (409, 'Conflict', None),
])
def test_client_errors_are_not_retried(receiver, status, code, hint):
    receiver.add_fault('status', times=None, status=status, code=code, message='the reason')
    sleeps = Sleeps()
    exc = error_of(client_for(receiver.push_url, sleeps).send, EVENT)
    (request,) = receiver.requests
    assert sleeps == []
    assert not exc.retryable
    assert (exc.status_code, exc.code, exc.request_id) == (status, code, request['request_id'])
    expected = 'Flashduty did not accept the change event at %s%s?integration_key=****: HTTP %d %s: the reason (request_id: %s)' % (
        receiver.base_url, PUSH, status, code, request['request_id'])
    assert exc.message.startswith(expected), exc.message
    if hint:
        assert exc.message.endswith(hint) or hint in exc.message
    assert 'attempts' not in exc.message


def test_wrong_key_is_answered_400_and_not_retried(receiver):
    wrong = 'f' * 32
    url = '%s%s?integration_key=%s' % (receiver.base_url, PUSH, wrong)
    sleeps = Sleeps()
    exc = error_of(client_for(url, sleeps).send, EVENT)
    (request,) = receiver.requests
    assert sleeps == [] and receiver.events == []
    assert (exc.status_code, exc.code, exc.request_id) == (400, 'InvalidParameter', request['request_id'])
    assert 'HTTP 400 InvalidParameter: integration_key is not a valid one (request_id: %s)' % request['request_id'] in exc.message
    assert "push URL matches the integration's push URL exactly" in exc.message
    assert wrong not in exc.message and receiver.integration_key not in exc.message


def test_2xx_with_an_error_is_a_failure(receiver):
    receiver.add_fault('status', times=None, status=200, code='InvalidParameter', message='labels must be strings')
    sleeps = Sleeps()
    exc = error_of(client_for(receiver.push_url, sleeps).send, EVENT)
    assert sleeps == [] and len(receiver.requests) == 1
    assert (exc.status_code, exc.code, exc.retryable) == (200, 'InvalidParameter', False)
    assert 'HTTP 200 InvalidParameter: labels must be strings (request_id: %s)' % receiver.requests[0]['request_id'] in exc.message


def test_2xx_with_a_transient_error_code_is_retried(receiver):
    receiver.add_fault('status', times=1, status=200, code='InternalError')
    delivery = client_for(receiver.push_url).send(EVENT)
    assert delivery.attempts == 2 and receiver.events == [EVENT]


@pytest.mark.parametrize('name, status, retried', [
    ('invalid_parameter_key', 400, False),
    ('invalid_content_type', 400, False),
    ('unauthorized', 401, False),
    ('access_denied', 403, False),
    ('route_not_found', 404, False),
    ('no_license', 400, False),
    ('resource_not_found', 400, False),
    ('request_too_frequently', 429, True),
    ('internal_error', 500, True),
])
def test_documented_error_answers(scripted, name, status, retried):
    document = json.loads(fixture_body(name))
    scripted.answer(status, fixture_body(name))
    sleeps = Sleeps()
    exc = error_of(client_for(scripted.url(), sleeps, retries=1).send, EVENT)
    assert len(scripted.seen) == (2 if retried else 1)
    assert exc.retryable is retried
    assert (exc.code, exc.request_id, exc.status_code) == (document['error']['code'], document['request_id'], status)
    assert document['error']['message'] in exc.message and '(request_id: %s)' % document['request_id'] in exc.message
    assert 'integration_key=****' in exc.message and KEY not in exc.message


def test_documented_success_answers(scripted):
    scripted.answer(200, fixture_body('accepted_no_data'))
    delivery = client_for(scripted.url()).send(EVENT)
    assert (delivery.request_id, delivery.status_code, delivery.data) == ('1b2c3d4e5f60718293a4b5c6d7e8f901', 200, None)


def test_non_json_200_is_a_failure(scripted):
    scripted.answer(200, b'<html><body>Please log in to the proxy</body></html>', content_type='text/html')
    sleeps = Sleeps()
    exc = error_of(client_for(scripted.url(), sleeps).send, EVENT)
    assert len(scripted.seen) == 1 and sleeps == []
    assert exc.code == 'InvalidResponse' and exc.request_id is None and not exc.retryable
    assert 'HTTP 200 InvalidResponse: the answer was not Flashduty JSON' in exc.message
    assert 'integration_key=****' in exc.message and KEY not in exc.message


def test_non_json_502_from_a_proxy_is_retried(scripted):
    scripted.answer(502, b'<html>Bad Gateway</html>', content_type='text/html')
    scripted.answer(200, fixture_body('accepted'))
    delivery = client_for(scripted.url()).send(EVENT)
    assert delivery.attempts == 2 and delivery.request_id == '0f5a9c3e2b7d4e1f8a6b5c4d3e2f1a0b'


def test_an_error_echoing_the_key_does_not_leak_it(receiver):
    key = receiver.integration_key
    receiver.add_fault('status', times=None, status=400, code='InvalidParameter', message='integration_key %s is not a valid one' % key)
    exc = error_of(client_for(receiver.push_url).send, EVENT)
    assert key not in exc.message, exc.message
    assert 'integration_key **** is not a valid one' in exc.message


def test_an_error_echoing_the_url_does_not_leak_the_key(scripted):
    body = json.dumps({'request_id': 'r1', 'error': {'code': 'InvalidParameter', 'message': 'bad url %s' % scripted.url()}}).encode()
    scripted.answer(400, body)
    exc = error_of(client_for(scripted.url()).send, EVENT)
    assert KEY not in exc.message and 'bad url %s?integration_key=****' % scripted.url().split('?')[0] in exc.message


# --------------------------------------------------------------------------- network failures

def test_reset_is_retried(receiver):
    receiver.add_fault('reset', times=1)
    sleeps = Sleeps()
    delivery = client_for(receiver.push_url, sleeps).send(EVENT)
    assert delivery.attempts == 2 and len(sleeps) == 1 and receiver.events == [EVENT]


def test_close_without_answer_is_retried(receiver):
    receiver.add_fault('close', times=1)
    delivery = client_for(receiver.push_url).send(EVENT)
    assert delivery.attempts == 2 and receiver.events == [EVENT]


@pytest.mark.parametrize('kind', ['reset', 'close'])
def test_connection_dropped_every_time_fails_after_the_retries(receiver, kind):
    receiver.add_fault(kind, times=None)
    sleeps = Sleeps()
    exc = error_of(client_for(receiver.push_url, sleeps, retries=2).send, EVENT)
    assert len(receiver.requests) == 3 and len(sleeps) == 2
    assert exc.retryable and exc.status_code is None and exc.request_id is None
    assert 'at %s%s?integration_key=****: the connection was closed by 127.0.0.1 before an answer' % (receiver.base_url, PUSH) in exc.message
    assert 'after 3 attempts; check that this machine can reach the Flashduty API (egress, proxy, DNS)' in exc.message
    assert receiver.integration_key not in exc.message
    assert_one_line(exc.message)


def test_refused_connection_fails_after_the_retries():
    url = 'http://127.0.0.1:%d%s?integration_key=%s' % (closed_port(), PUSH, KEY)
    sleeps = Sleeps()
    exc = error_of(client_for(url, sleeps, retries=3).send, EVENT)
    assert len(sleeps) == 3
    assert exc.retryable and exc.status_code is None
    assert exc.message.startswith('Flashduty did not accept the change event at %s' % fd.mask_url(url))
    assert 'could not reach 127.0.0.1: Connection refused' in exc.message
    assert exc.message.endswith('after 4 attempts; check that this machine can reach the Flashduty API (egress, proxy, DNS)')
    assert KEY not in exc.message
    assert_one_line(exc.message)


def test_refused_then_listening_succeeds():
    """A connection error is retried on a new connection (a receiver that starts between two attempts)."""
    from flashduty_receiver import Receiver  # pylint: disable=import-outside-toplevel,import-error
    port = closed_port()
    url = 'http://127.0.0.1:%d%s?integration_key=%s' % (port, PUSH, KEY)
    started = []

    def start_receiver(_seconds):
        started.append(Receiver(KEY, port=port, quiet=True).start())

    client = cl.FlashdutyClient(fd.endpoint_for(url), timeout=5, retries=1, sleep=start_receiver)
    try:
        delivery = client.send(EVENT)
        assert delivery.attempts == 2 and started[0].events == [EVENT]
    finally:
        client.close()
        for rcv in started:
            rcv.stop()


def test_black_hole_times_out(receiver):
    receiver.add_fault('blackhole', times=None)
    sleeps = Sleeps()
    started = time.monotonic()
    exc = error_of(client_for(receiver.push_url, sleeps, timeout=0.3, retries=1).send, EVENT)
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 3, elapsed
    assert len(sleeps) == 1 and exc.retryable
    assert 'no complete answer from 127.0.0.1 within the timeout of 0.3 s after 2 attempts; check that this machine can reach the Flashduty API' in exc.message


def test_black_hole_once_then_success(receiver):
    receiver.add_fault('blackhole', times=1)
    delivery = client_for(receiver.push_url, timeout=0.3).send(EVENT)
    assert delivery.attempts == 2 and receiver.events == [EVENT]


def test_slow_answer_within_the_timeout(receiver):
    receiver.set_latency(0.3)
    delivery = client_for(receiver.push_url, timeout=2).send(EVENT)
    assert delivery.attempts == 1


# --------------------------------------------------------------------------- deadline

def test_deadline_stops_retries_before_a_wait_that_would_pass_it(receiver):
    receiver.add_fault('status', times=None, status=503)
    sleeps = Sleeps()
    exc = error_of(client_for(receiver.push_url, sleeps, retries=10).send, EVENT, deadline=time.monotonic() + 0.1)
    assert sleeps == [] and len(receiver.requests) == 1
    assert '; no time left for another attempt within the deadline' in exc.message and exc.retryable


def test_deadline_bounds_the_whole_send_in_real_time(receiver):
    receiver.add_fault('status', times=None, status=503)
    client = cl.FlashdutyClient(fd.endpoint_for(receiver.push_url), timeout=5, retries=50)
    started = time.monotonic()
    exc = error_of(client.send, EVENT, deadline=started + 1.0)
    elapsed = time.monotonic() - started
    client.close()
    assert elapsed <= 1.5, elapsed
    assert 2 <= len(receiver.requests) <= 4
    assert 'no time left for another attempt within the deadline' in exc.message


def test_deadline_shortens_the_attempt_timeout(receiver):
    receiver.add_fault('blackhole', times=None)
    started = time.monotonic()
    exc = error_of(client_for(receiver.push_url, timeout=10, retries=5).send, EVENT, deadline=started + 0.5)
    assert time.monotonic() - started < 2.5
    assert 'no complete answer from 127.0.0.1 within the deadline' in exc.message


def test_no_deadline_means_only_retries_bound_the_send(receiver):
    receiver.add_fault('status', times=4, status=503)
    sleeps = Sleeps()
    delivery = client_for(receiver.push_url, sleeps, retries=4).send(EVENT, deadline=None)
    assert delivery.attempts == 5 and len(sleeps) == 4


# --------------------------------------------------------------------------- keep-alive

def test_two_sends_share_one_connection(scripted):
    client = client_for(scripted.url())
    try:
        first = client.send(dict(EVENT, change_status='Processing'))
        second = client.send(EVENT)
    finally:
        client.close()
    assert first.attempts == second.attempts == 1
    ports = [request['port'] for request in scripted.seen]
    assert len(ports) == 2 and ports[0] == ports[1], ports


def test_two_sends_through_one_client_to_the_receiver(receiver):
    client = client_for(receiver.push_url)
    try:
        client.send(dict(EVENT, change_status='Processing'))
        client.send(EVENT)
    finally:
        client.close()
    assert [e['change_status'] for e in receiver.events] == ['Processing', 'Done']


def test_a_connection_the_server_closed_while_idle_is_reopened(scripted):
    scripted.answer(200, fixture_body('accepted'), hang_up=True)
    scripted.answer(200, fixture_body('accepted'), hang_up=True)
    scripted.answer(200, fixture_body('accepted'))
    sleeps = Sleeps()
    client = client_for(scripted.url(), sleeps, retries=0)  # reopening is not a retry: it works with retries=0
    try:
        for _dummy in range(3):
            time.sleep(0.05)  # let the hang-up arrive, as it would while idle
            assert client.send(EVENT).attempts == 1
    finally:
        client.close()
    ports = [request['port'] for request in scripted.seen]
    assert len(ports) == 3 and len(set(ports)) == 3, ports
    assert sleeps == []


def test_connection_close_header_is_honoured(scripted):
    scripted.answer(200, fixture_body('accepted'), headers={'Connection': 'close'}, hang_up=True)
    client = client_for(scripted.url())
    try:
        client.send(EVENT)
        client.send(EVENT)
    finally:
        client.close()
    ports = [request['port'] for request in scripted.seen]
    assert len(set(ports)) == 2


def test_after_a_failure_the_next_send_uses_a_new_connection(receiver):
    receiver.add_fault('reset', times=1)
    client = client_for(receiver.push_url, retries=0)
    try:
        error_of(client.send, EVENT)
        assert client.send(EVENT).attempts == 1
    finally:
        client.close()
    assert receiver.events == [EVENT]


def test_close_is_idempotent(receiver):
    client = client_for(receiver.push_url)
    client.close()
    client.send(EVENT)
    client.close()
    client.close()


# --------------------------------------------------------------------------- answers as bytes

class RawServer:
    """A loopback server that answers each request with the next of ``answers`` (bytes), as it is.

    Reads a request's head and its Content-Length body, records the raw bytes in ``requests``
    and the client's source port in ``ports``, writes the answer, and closes the connection
    when the answer is the last of the script or ``close_after`` says so.
    """

    def __init__(self, answers, close_after=(), pace=None):
        self.answers = list(answers)
        self.close_after = set(close_after)
        self.pace = pace  # seconds between the bytes of an answer: a trickling server
        self.requests = []
        self.ports = []
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self):
        return 'http://127.0.0.1:%d%s?integration_key=%s' % (self.port, PUSH, KEY)

    def _serve(self):
        index = 0
        while index < len(self.answers):
            try:
                connection, address = self.listener.accept()
            except OSError:
                return
            reader = connection.makefile('rb')
            with connection, reader:  # both: the socket stays open while its file does
                while index < len(self.answers):
                    head = b''
                    while not head.endswith(b'\r\n\r\n'):
                        line = reader.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    length = int(head.lower().split(b'content-length:')[1].split(b'\r\n')[0])
                    self.requests.append(head + reader.read(length))
                    self.ports.append(address[1])
                    if not self._send(connection, self.answers[index]):
                        return
                    index += 1
                    if index in self.close_after or index == len(self.answers):
                        break

    def _send(self, connection, answer):
        if self.pace is None:
            connection.sendall(answer)
            return True
        for index in range(len(answer)):
            try:
                connection.sendall(answer[index:index + 1])
            except OSError:  # the client gave up
                return False
            time.sleep(self.pace)
        return True

    def stop(self):
        self.listener.close()


def accepted(**headers):
    """A Flashduty success answer with Content-Length, as bytes."""
    body = fixture_body('accepted')
    lines = ['HTTP/1.1 200 OK', 'Content-Type: application/json', 'Content-Length: %d' % len(body)]
    lines += ['%s: %s' % item for item in headers.items()]
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('ascii') + body


@pytest.fixture
def raw_server():
    servers = []

    def start(answers, close_after=(), pace=None):
        server = RawServer(answers, close_after, pace)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_request_bytes(raw_server):
    server = raw_server([accepted()])
    client_for(server.url()).send(EVENT)
    head, body = server.requests[0].split(b'\r\n\r\n', 1)
    lines = head.decode('ascii').split('\r\n')
    assert lines[0] == 'POST %s?integration_key=%s HTTP/1.1' % (PUSH, KEY)
    assert 'Host: 127.0.0.1:%d' % server.port in lines and 'Content-Length: %d' % len(body) in lines
    assert json.loads(body.decode('utf-8')) == EVENT


def test_chunked_answer(raw_server):
    body = fixture_body('accepted')
    answer = (b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n'
              b'%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: yes\r\n\r\n' % (5, body[:5], len(body) - 5, body[5:]))
    server = raw_server([answer, accepted()])
    client = client_for(server.url(), retries=0)
    try:
        first = client.send(EVENT)
        second = client.send(EVENT)
    finally:
        client.close()
    assert first.request_id == json.loads(body.decode('utf-8'))['request_id'] and second.attempts == 1
    assert server.ports[0] == server.ports[1]  # the chunked answer was read to its end: the connection stays usable


def test_interim_answers_are_skipped(raw_server):
    server = raw_server([b'HTTP/1.1 100 Continue\r\n\r\n' + accepted()])
    assert client_for(server.url(), retries=0).send(EVENT).status_code == 200


def test_http_1_0_answer_read_to_the_close(raw_server):
    body = fixture_body('accepted')
    server = raw_server([b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n' + body, accepted()], close_after=[1])
    client = client_for(server.url(), retries=0)
    try:
        assert client.send(EVENT).request_id == json.loads(body.decode('utf-8'))['request_id']
        assert client.send(EVENT).attempts == 1
    finally:
        client.close()
    assert len(set(server.ports)) == 2


@pytest.mark.parametrize('answer, fragment', [
    (b'SSH-2.0-OpenSSH_9.2\r\n', 'did not answer in HTTP/1.x: SSH-2.0-OpenSSH_9.2 after'),  # one line: CR LF taken out
    (b'HTTP/1.1 200 OK\r\nContent-Type: appl', 'closed by 127.0.0.1 in the middle of the answer'),  # the headers cut
    (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"request_id"', 'closed by 127.0.0.1 in the middle of the answer'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 'did not answer in HTTP/1.x|in the middle of the answer'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n', 'did not answer in HTTP/1.x|in the middle of the answer'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"re', 'closed by 127.0.0.1 in the middle of the answer'),
    (b'HTTP/1.1 200 OK\r\n' + b'X: y\r\n' * 101 + b'\r\n', 'got more than 100 headers'),
])
def test_what_is_not_a_whole_http_answer_is_a_transient_failure(raw_server, answer, fragment):
    server = raw_server([answer, answer], close_after=[0, 1])
    exc = error_of(client_for(server.url(), retries=1).send, EVENT)
    assert exc.retryable and len(server.requests) == 2
    assert re.search(fragment, exc.message), exc.message
    assert KEY not in exc.message
    assert_one_line(exc.message)


@pytest.mark.parametrize('answer', [
    b'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n',
    b'HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n',
])
def test_what_http_client_reads_leniently_is_still_not_a_flashduty_answer(raw_server, answer):
    server = raw_server([answer], close_after=[0])
    exc = error_of(client_for(server.url(), retries=1).send, EVENT)
    assert not exc.retryable and len(server.requests) == 1
    assert 'HTTP 200 InvalidResponse' in exc.message, exc.message


@pytest.mark.parametrize('answer', [
    accepted(),  # status line, headers and body one byte at a time
    b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' + b'1\r\n \r\n' * 10000,  # a chunked body that never ends
], ids=['trickle', 'endless-chunked'])
def test_a_trickling_answer_ends_at_the_timeout_in_wall_clock_time(raw_server, answer):
    server = raw_server([answer, answer], pace=0.02)
    started = time.monotonic()
    exc = error_of(client_for(server.url(), timeout=0.5, retries=1).send, EVENT)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.8, elapsed  # two attempts of 0.5 s each (the backoff is not slept here)
    assert exc.retryable and 'no complete answer from 127.0.0.1 within the timeout of 0.5 s after 2 attempts' in exc.message


def test_a_trickling_answer_ends_at_the_deadline_whatever_the_timeout(raw_server):
    server = raw_server([accepted()], pace=0.05)
    started = time.monotonic()
    exc = error_of(client_for(server.url(), timeout=30, retries=0).send, EVENT, deadline=started + 0.7,
                   deadline_name='the total_timeout of 0.7 s')
    assert time.monotonic() - started < 1.2
    assert 'no complete answer from 127.0.0.1 within the total_timeout of 0.7 s' in exc.message


def test_request_id_from_the_header_when_the_body_is_not_json(raw_server):
    page = b'<html>Bad gateway</html>'
    answer = b'HTTP/1.1 502 Bad Gateway\r\nFlashcat-Request-Id: 4e1f0a\r\nContent-Length: %d\r\n\r\n%s' % (len(page), page)
    exc = error_of(client_for(raw_server([answer]).url(), retries=0).send, EVENT)
    assert exc.request_id == '4e1f0a' and '(request_id: 4e1f0a)' in exc.message and exc.retryable


def test_what_the_server_sends_back_is_masked_and_one_line_in_every_field(raw_server):
    echo = 'POST /x?integration_key=%s HTTP/1.1\r\nEvil: yes' % KEY
    body = json.dumps({'request_id': echo, 'error': {'code': 'Bad\r\nCode %s' % KEY, 'message': echo}}).encode()
    answer = b'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body)
    exc = error_of(client_for(raw_server([answer]).url(), retries=0).send, EVENT)
    for text in (exc.message, exc.reason, exc.request_id, exc.code):
        assert KEY not in text and '\r' not in text and '\n' not in text, text


def test_a_redirect_says_to_copy_the_push_url_again(raw_server):
    answer = b'HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example/x?integration_key=%s\r\nContent-Length: 0\r\n\r\n' % KEY.encode()
    exc = error_of(client_for(raw_server([answer]).url()).send, EVENT)
    assert not exc.retryable and exc.status_code == 302
    assert 'HTTP 302 Redirect: the push URL redirects to https://elsewhere.example/x?integration_key=****: copy the push URL again' in exc.message
    assert KEY not in exc.message


def test_a_dead_proxy_is_named_as_such(receiver, monkeypatch):
    monkeypatch.setenv('http_proxy', 'http://127.0.0.1:%d' % closed_port())
    exc = error_of(client_for(receiver.push_url, retries=0).send, EVENT)
    assert exc.retryable and exc.unreachable
    assert 'could not reach 127.0.0.1 through the proxy 127.0.0.1:' in exc.message


def test_an_answer_over_the_size_limit_is_cut_and_its_connection_closed(raw_server, monkeypatch):
    monkeypatch.setattr(tr, 'MAX_ANSWER_BYTES', 1000)
    page = b'<html>' + b'x' * 5000 + b'</html>'
    server = raw_server([b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s' % (len(page), page), accepted()], close_after=[1])
    client = client_for(server.url(), retries=0)
    try:
        exc = error_of(client.send, EVENT)
        assert 'InvalidResponse' in exc.message and not exc.retryable
        assert client.send(EVENT).attempts == 1
    finally:
        client.close()
    assert len(set(server.ports)) == 2


def test_status_and_headers_of_an_error_answer(raw_server):
    body = fixture_body('request_too_frequently')
    server = raw_server([b'HTTP/1.1 429 Too Many Requests\r\nretry-AFTER: 7\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body),
                         accepted()])
    sleeps = Sleeps()
    client_for(server.url(), sleeps, retries=1).send(EVENT)
    assert sleeps == [7.0]  # Retry-After, whatever the case of its name


# --------------------------------------------------------------------------- proxy

def test_plain_http_goes_through_http_proxy(receiver, monkeypatch):
    # The receiver plays the proxy: it gets the absolute URL as request target and serves it.
    monkeypatch.setenv('http_proxy', receiver.base_url)
    url = 'http://flashduty.invalid:9%s?integration_key=%s' % (PUSH, receiver.integration_key)
    delivery = client_for(url, retries=0).send(EVENT)
    assert delivery.attempts == 1 and receiver.events == [EVENT]


def test_proxy_gets_absolute_url_and_credentials(scripted, monkeypatch):
    monkeypatch.setenv('http_proxy', 'http://user%%40corp:p%%3Ass@127.0.0.1:%d' % scripted.port)
    url = 'http://flashduty.invalid%s?integration_key=%s' % (PUSH, KEY)
    client_for(url, retries=0).send(EVENT)
    (request,) = scripted.seen
    assert request['target'] == url
    headers = dict((name.lower(), value) for name, value in request['headers'].items())
    assert headers['proxy-authorization'] == 'Basic dXNlckBjb3JwOnA6c3M='  # base64 of user@corp:p:ss


def test_no_proxy_bypasses_the_proxy(receiver, monkeypatch):
    monkeypatch.setenv('http_proxy', receiver.base_url)
    monkeypatch.setenv('no_proxy', '127.0.0.2')
    url = 'http://127.0.0.2:%d%s?integration_key=%s' % (closed_port(), PUSH, receiver.integration_key)
    exc = error_of(client_for(url, retries=0).send, EVENT)
    assert 'could not reach 127.0.0.2' in exc.message and receiver.requests == []


# --------------------------------------------------------------------------- TLS

def _self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1 (PEM files), made with cryptography (an ansible-core dependency)."""
    x509 = pytest.importorskip('cryptography.x509')
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
    from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'flashduty test CA')])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / 'cert.pem'
    key_file = tmp_path / 'key.pem'
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path):
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_file), str(key_file))
    server = ScriptedServer(tls_context=context)
    server.cert_file = cert_file
    try:
        yield server
    finally:
        server.stop()


def test_tls_certificate_is_verified(tls_server):
    sleeps = Sleeps()
    exc = error_of(client_for(tls_server.url(), sleeps).send, EVENT)
    assert sleeps == [] and not exc.retryable and tls_server.seen == []
    assert 'could not verify the TLS certificate of 127.0.0.1' in exc.message
    assert 'ca_path' in exc.message and 'validate_certs' in exc.message
    assert KEY not in exc.message


def test_tls_error_names_the_endpoint(tls_server):
    exc = error_of(client_for(tls_server.url()).send, EVENT)
    assert fd.mask_url(tls_server.url()) in exc.message, exc.message


def test_tls_with_ca_path(tls_server):
    delivery = client_for(tls_server.url(), ca_path=str(tls_server.cert_file)).send(EVENT)
    assert delivery.status_code == 200 and len(tls_server.seen) == 1


def test_tls_without_validation(tls_server):
    delivery = client_for(tls_server.url(), validate_certs=False).send(EVENT)
    assert delivery.status_code == 200 and len(tls_server.seen) == 1


def test_unreadable_ca_path(tmp_path):
    missing = tmp_path / 'missing.pem'
    exc = error_of(cl.FlashdutyClient, fd.endpoint_for(PUSH_URL), ca_path=str(missing))
    assert exc.field == 'ca_path' and str(missing) in exc.message


class TunnelProxy:
    """A CONNECT proxy on loopback: records each CONNECT head, then relays bytes both ways."""

    def __init__(self):
        self.heads = []
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return
            head = b''
            while not head.endswith(b'\r\n\r\n'):
                head += client.recv(1)
            self.heads.append(head.decode('ascii'))
            host, port = head.split()[1].decode('ascii').rsplit(':', 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    @staticmethod
    def _relay(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self.listener.close()


def test_https_goes_through_the_proxy_tunnel_with_credentials(tls_server, monkeypatch):
    proxy = TunnelProxy()
    try:
        monkeypatch.setenv('https_proxy', 'http://user:secret@127.0.0.1:%d' % proxy.port)
        client = client_for(tls_server.url(), ca_path=str(tls_server.cert_file), retries=0)
        try:
            client.send(EVENT)
            client.send(EVENT)
        finally:
            client.close()
    finally:
        proxy.stop()
    (head,) = proxy.heads  # one tunnel, kept alive for both requests
    assert head.startswith('CONNECT 127.0.0.1:%d HTTP/1.' % tls_server.port)  # 1.0 from Python 3.11's http.client
    assert 'Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=' in head  # base64 of user:secret
    assert len(tls_server.seen) == 2 and 'proxy-authorization' not in str(tls_server.seen[0]['headers']).lower()


def test_https_to_a_plain_http_port_is_a_transient_failure(receiver):
    url = receiver.push_url.replace('http://', 'https://')
    exc = error_of(client_for(url, retries=1).send, EVENT)
    assert exc.retryable and 'could not reach 127.0.0.1' in exc.message
    assert receiver.integration_key not in exc.message


# =========================================================================== run_change_event

def params(**kwargs):
    base = dict(change_key='CHG-1', change_status='Done', title='Deploy', description=None, link=None, labels=None, event_time=None,
                push_url=None, integration_key=None, api_url=None, timeout=5.0, retries=1, total_timeout=30.0, validate_certs=True,
                ca_path=None)
    base.update(kwargs)
    return base


def test_run_change_event_sends(receiver):
    before = int(time.time())
    result = cl.run_change_event(params(push_url=receiver.push_url, labels={'canary': True}), False)
    (record,) = receiver.records
    assert result['changed'] is True and 'failed' not in result
    assert result['request_id'] == record['request_id'] and result['status_code'] == 200
    assert result['event'] == record['event'] and result['event']['labels'] == {'canary': 'true'}
    assert before <= result['event']['event_time'] <= int(time.time())
    assert result['endpoint'] == '%s%s?integration_key=****' % (receiver.base_url, PUSH)
    assert result['warnings'] == []
    assert receiver.integration_key not in json.dumps(result)


def test_run_change_event_gives_up_at_total_timeout(receiver):
    receiver.add_fault('blackhole', times=None)
    started = time.monotonic()
    result = cl.run_change_event(params(push_url=receiver.push_url, timeout=10.0, retries=5, total_timeout=1.0), False)
    assert time.monotonic() - started < 2.5
    assert result['failed'] is True and 'no complete answer from 127.0.0.1 within the total_timeout of 1.0 s' in result['msg']
    assert receiver.integration_key not in json.dumps(result)


def test_run_change_event_check_mode_sends_nothing(receiver):
    result = cl.run_change_event(params(push_url=receiver.push_url, event_time=1700000000), True)
    assert result['changed'] is True and 'check mode' in result['msg']
    assert result['event'] == {'change_status': 'Done', 'change_key': 'CHG-1', 'title': 'Deploy', 'event_time': 1700000000}
    assert receiver.requests == []


def test_run_change_event_check_mode_still_validates():
    result = cl.run_change_event(params(push_url=PUSH_URL, labels={'bad-key': 1, 'bad_key': 2}), True)
    assert result['failed'] is True and result['msg'].startswith('labels: label names ')


def test_run_change_event_masks_the_key_in_the_event_it_sends_and_returns(receiver):
    result = cl.run_change_event(params(push_url=receiver.push_url, labels={'url': receiver.push_url}), False)
    (record,) = receiver.records
    assert result['changed'] is True and record['event'] == result['event']
    assert result['event']['labels'] == {'url': fd.mask_url(receiver.push_url)}
    assert len(result['warnings']) == 1 and 'labels.url held the Flashduty integration key' in result['warnings'][0]
    assert receiver.integration_key not in json.dumps(result) + json.dumps(receiver.requests)


@pytest.mark.parametrize('option, value', [('timeout', -1), ('timeout', 0), ('retries', 11), ('total_timeout', 0)])
def test_run_change_event_refuses_an_option_out_of_range_before_sending(receiver, option, value):
    result = cl.run_change_event(params(push_url=receiver.push_url, **{option: value}), False)
    assert result == dict(changed=False, failed=True, msg=fd.option_problem(option, value))
    assert result['msg'].startswith('%s: must be ' % option) and receiver.requests == []


def test_run_change_event_uses_fallback_sources(receiver):
    result = cl.run_change_event(params(), False, {'push_url': None}, {'push_url': receiver.push_url})
    assert result['changed'] is True and len(receiver.events) == 1


def test_run_change_event_failure_result(receiver):
    wrong = '%s%s?integration_key=%s' % (receiver.base_url, PUSH, 'e' * 32)
    result = cl.run_change_event(params(push_url=wrong, description='x' * 3000), False)
    (request,) = receiver.requests
    assert result['failed'] is True and result['changed'] is False
    assert result['request_id'] == request['request_id'] and result['status_code'] == 400
    assert 'InvalidParameter' in result['msg'] and request['request_id'] in result['msg']
    assert result['warnings'] == ['description: was 3000 characters long and was truncated to 2048']
    assert 'e' * 32 not in json.dumps(result)


def test_run_change_event_validation_failure_result():
    result = cl.run_change_event(params(push_url=PUSH_URL, change_status='done'), False)
    assert result == {'changed': False, 'failed': True, 'endpoint': MASKED_PUSH_URL, 'msg': result['msg']}
    assert result['msg'].startswith('change_status: ')


def test_run_change_event_without_endpoint():
    result = cl.run_change_event(params(), False, {}, {})
    assert result['failed'] is True and result['msg'].startswith('push_url: no Flashduty push URL given')


def test_run_change_event_warns_about_plain_http():
    result = cl.run_change_event(params(push_url='http://flashduty.example.internal%s?integration_key=%s' % (PUSH, KEY)), True)
    (warning,) = result['warnings']
    assert 'plain http' in warning and KEY not in warning


def test_argument_spec_marks_secrets_no_log():
    spec = fd.change_event_argument_spec()
    assert spec['push_url']['no_log'] is True and spec['integration_key']['no_log'] is True
    assert spec['change_status']['choices'] == list(fd.CHANGE_STATUSES) and spec['change_status']['aliases'] == ['status']
    assert ('push_url', 'integration_key') in fd.CHANGE_EVENT_MUTUALLY_EXCLUSIVE
