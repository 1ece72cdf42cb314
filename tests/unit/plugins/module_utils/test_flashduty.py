# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests for plugins/module_utils/_flashduty.py, the protocol client.

Payload rules, labels, event_time, URLs and redaction are tested as pure
functions; delivery (retries, backoff, Retry-After, deadline, keep-alive,
proxy, TLS) against real local HTTP servers: the receiver from
tools/flashduty_receiver.py (conftest's ``receiver`` fixture) and, for answers
the receiver cannot give (non-JSON pages, idle hang-ups, TLS), a small
scripted server defined here.
"""
# pylint: disable=missing-function-docstring,protected-access,redefined-outer-name,too-many-arguments,consider-using-with

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flashduty_receiver import closed_port

from ansible_collections.flashcat.flashduty.plugins.module_utils import _flashduty as fd

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


# =========================================================================== payload rules

@pytest.mark.parametrize('status', ['Planned', 'Ready', 'Processing', 'Canceled', 'Done'])
def test_every_documented_status_is_accepted(status):
    event, warnings = fd.build_event(status, 'CHG-1', 'Title')
    assert event == {'change_status': status, 'change_key': 'CHG-1', 'title': 'Title'}
    assert warnings == []


@pytest.mark.parametrize('status', ['done', 'DONE', 'processing', 'Cancelled', 'Finished', ' Done', '', None, 1])
def test_status_is_case_sensitive_and_from_the_list(status):
    exc = error_of(fd.build_event, status, 'CHG-1', 'Title')
    assert exc.field == 'change_status'
    assert exc.message.startswith('change_status: must be one of Planned, Ready, Processing, Canceled, Done (case-sensitive)')
    assert not exc.retryable
    assert_one_line(exc.message)


@pytest.mark.parametrize('field', ['change_key', 'title'])
@pytest.mark.parametrize('value', [None, '', '   '])
def test_change_key_and_title_are_required(field, value):
    args = dict(change_status='Done', change_key='CHG-1', title='Title')
    args[field] = value
    exc = error_of(fd.build_event, **args)
    assert exc.field == field
    assert exc.message == '%s: is required and must not be empty' % field


def test_event_holds_only_the_fields_given():
    event, warnings = fd.build_event('Done', 'CHG-1', 'Title', description='', link='  ', labels={}, event_time=None)
    assert event == {'change_status': 'Done', 'change_key': 'CHG-1', 'title': 'Title'}
    assert warnings == []
    json.dumps(event)  # plain JSON types only


def test_full_event():
    event, warnings = fd.build_event('Ready', 'CHG-1', 'Rotate certificates', description='on 3 hosts', link='https://ci.example.com/job/1',
                                     labels={'service': 'checkout', 'replicas': 3}, event_time='2026-12-01T02:00:00Z')
    assert event == {
        'change_status': 'Ready', 'change_key': 'CHG-1', 'title': 'Rotate certificates', 'description': 'on 3 hosts',
        'link': 'https://ci.example.com/job/1', 'labels': {'service': 'checkout', 'replicas': '3'}, 'event_time': 1796090400,
    }
    assert warnings == []


def test_description_of_2048_characters_is_kept():
    event, warnings = fd.build_event('Done', 'k', 't', description='d' * 2048)
    assert event['description'] == 'd' * 2048
    assert warnings == []


def test_longer_description_is_truncated_with_a_warning():
    event, warnings = fd.build_event('Done', 'k', 't', description='é' * 5000)
    assert len(event['description']) == 2048
    assert event['description'].endswith('...') and event['description'].startswith('é' * 2045)
    assert warnings == ['description: was 5000 characters long and was truncated to 2048']


@pytest.mark.parametrize('link', ['https://ci.example.com/job/42', 'http://awx.local/#/jobs/playbook/7', ' https://t.example.com/CHG-1 '])
def test_http_and_https_links_are_accepted(link):
    event, _warnings = fd.build_event('Done', 'k', 't', link=link)
    assert event['link'] == link.strip()


@pytest.mark.parametrize('link', ['ftp://files.example.com/x', 'ci.example.com/job/42', 'https://ci.example.com/a b', 'javascript:alert(1)', 'https://'])
def test_other_links_are_refused(link):
    exc = error_of(fd.build_event, 'Done', 'k', 't', link=link)
    assert exc.field == 'link'
    assert exc.message.startswith('link: must be an http:// or https:// URL')


def test_a_refused_link_does_not_show_a_key():
    exc = error_of(fd.build_event, 'Done', 'k', 't', link='ftp://x.example.com/?integration_key=%s' % KEY)
    assert KEY not in exc.message and 'integration_key=****' in exc.message


# --------------------------------------------------------------------------- event_time

@pytest.mark.parametrize('value, expected', [
    (1700000000, 1700000000),
    (1700000000.9, 1700000000),
    ('1700000000', 1700000000),
    (' 1700000000 ', 1700000000),
    ('1700000000.75', 1700000000),
    (0, 0),
    (10 ** 11 - 1, 10 ** 11 - 1),
    ('2023-11-14T22:13:20Z', 1700000000),
    ('2023-11-14T22:13:20z', 1700000000),
    ('2023-11-14T22:13:20.500Z', 1700000000),
    ('2023-11-14T23:13:20+01:00', 1700000000),
    ('2023-11-14T23:13:20+0100', 1700000000),
    ('2023-11-14T17:13:20-05:00', 1700000000),
    ('2023-11-14 22:13:20', 1700000000),        # naive: UTC
    ('2023-11-14T22:13:20', 1700000000),
    ('2023-11-14', 1699920000),
    (datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc), 1700000000),  # an unquoted YAML timestamp
])
def test_event_time_accepted_forms(value, expected):
    assert fd.parse_event_time(value) == expected


@pytest.mark.parametrize('value', [None, '', '   '])
def test_event_time_absent(value):
    assert fd.parse_event_time(value) is None
    assert 'event_time' not in fd.build_event('Done', 'k', 't', event_time=value)[0]


@pytest.mark.parametrize('value, fragment', [
    (1700000000000, 'looks like milliseconds (Unix seconds stay below 10^11 until the year 5138); give Unix time in seconds'),
    (10 ** 14, 'is too large for Unix time in seconds'),
    ('99999999999999999999', 'is too large for Unix time in seconds'),
    ('1700000000000', 'looks like milliseconds'),
    (1.7e12, 'looks like milliseconds'),
    (10 ** 11, 'looks like milliseconds'),
    (-1, 'must not be before 1970'),
    ('-1700000000', 'must not be before 1970'),
    ('1969-12-31T23:59:59Z', 'must not be before 1970'),
    (True, 'got a boolean'),
    (False, 'got a boolean'),
    ('yesterday', 'is neither epoch seconds nor an ISO 8601 time'),
    ('2023-13-45T99:00:00Z', 'is neither epoch seconds nor an ISO 8601 time'),
    ('1.7e9', 'is neither epoch seconds nor an ISO 8601 time'),
])
def test_event_time_refused(value, fragment):
    exc = error_of(fd.parse_event_time, value)
    assert exc.field == 'event_time'
    assert exc.message.startswith('event_time: ') and fragment in exc.message, exc.message
    assert_one_line(exc.message)


@pytest.mark.parametrize('value', [float('inf'), float('-inf'), float('nan'), 'inf', 'nan'])
def test_event_time_not_a_finite_number_is_refused_cleanly(value):
    # YAML `.inf` / `.nan` reach the client as floats; int() of them raises OverflowError / ValueError.
    exc = error_of(fd.parse_event_time, value)
    assert exc.field == 'event_time'


@pytest.mark.parametrize('value, expected', [
    ('9999-12-31T23:59:59Z', 253402300799),   # int64 seconds: far, but not milliseconds
    ('5200-01-01T00:00:00Z', 101928931200),
])
def test_event_time_far_iso_dates_are_seconds_not_milliseconds(value, expected):
    assert fd.parse_event_time(value) == expected


def test_event_time_refusal_is_raised_by_build_event():
    exc = error_of(fd.build_event, 'Done', 'k', 't', event_time=1700000000000)
    assert exc.field == 'event_time'


# =========================================================================== labels

def test_label_values_become_strings():
    labels, warnings = fd.normalize_labels({
        'service': 'checkout', 'canary': True, 'paused': False, 'replicas': 3, 'ratio': 1.5, 'big': 10 ** 20,
        'zones': ['a', 'b', 1], 'owner': {'team': 'sre', 'oncall': ['ann', 'bob']}, 'empty_list': [], 'name_utf8': 'café',
        'nested_utf8': ['café'], 'gone': None, 'empty': '',
    })
    assert labels == {
        'service': 'checkout', 'canary': 'true', 'paused': 'false', 'replicas': '3', 'ratio': '1.5', 'big': '100000000000000000000',
        'zones': '["a","b",1]', 'owner': '{"team":"sre","oncall":["ann","bob"]}', 'empty_list': '[]', 'name_utf8': 'café',
        'nested_utf8': '["café"]', 'empty': '',
    }
    assert all(type(value) is str for value in labels.values())  # pylint: disable=unidiomatic-typecheck
    assert warnings == []


def test_labels_none_or_empty():
    assert fd.normalize_labels(None) == ({}, [])
    assert fd.normalize_labels({}) == ({}, [])
    assert fd.normalize_labels({'a': None}) == ({}, [])
    assert 'labels' not in fd.build_event('Done', 'k', 't', labels={'a': None})[0]


@pytest.mark.parametrize('labels, kind', [(['a', 'b'], 'a list'), ('service=checkout', 'a string'), (3, 'a number'), (True, 'a boolean')])
def test_labels_must_be_a_mapping(labels, kind):
    exc = error_of(fd.normalize_labels, labels)
    assert exc.field == 'labels'
    assert exc.message == 'labels: must be a dict (a mapping of label names to values), got %s' % kind


def test_50_labels_are_accepted_51_are_refused():
    fifty = dict(('label_%d' % i, i) for i in range(50))
    assert len(fd.normalize_labels(fifty)[0]) == 50
    exc = error_of(fd.normalize_labels, dict(fifty, one_more='x'))
    assert exc.field == 'labels'
    assert exc.message == 'labels: 51 labels given; Flashduty accepts at most 50'


def test_dropped_labels_do_not_count_towards_50():
    labels = dict(('label_%d' % i, i) for i in range(50))
    labels['dropped'] = None
    assert len(fd.normalize_labels(labels)[0]) == 50


def test_label_key_of_128_characters_is_accepted_129_is_refused():
    assert list(fd.normalize_labels({'k' * 128: 'v'})[0]) == ['k' * 128]
    exc = error_of(fd.normalize_labels, {'k' * 129: 'v'})
    assert exc.field == 'labels'
    assert 'is 129 characters long; at most 128 are allowed' in exc.message
    assert 'k' * 129 not in exc.message  # the key is shortened in the message
    exc = error_of(fd.normalize_labels, {'k' * 200: 'v'})
    assert 'is 200 characters long' in exc.message


@pytest.mark.parametrize('key, rewritten', [
    ('k8s-cluster', 'k8s_cluster'), ('app.kubernetes.io/name', 'app_kubernetes_io_name'), ('with space', 'with_space'),
    ('1abc', '_1abc'), ('ключ', '____'), ('a:b', 'a_b'), (' team ', 'team'), (7, '_7'),
])
def test_label_keys_are_rewritten_to_prometheus_style_with_one_warning(key, rewritten):
    labels, warnings = fd.normalize_labels({key: 'v', 'service': 'checkout'})
    assert labels == {rewritten: 'v', 'service': 'checkout'}
    assert warnings == ["labels: label names rewritten to Prometheus style (letters, digits and underscores, not starting "
                        "with a digit): %r -> %r" % ('%s' % key, rewritten)]
    assert fd.LABEL_KEY_PATTERN.match(rewritten)


def test_several_rewritten_label_keys_are_named_in_one_warning():
    labels, warnings = fd.normalize_labels({'k8s-cluster': 'a', 'app.kubernetes.io/name': 'b'}, field='flashduty_labels')
    assert labels == {'k8s_cluster': 'a', 'app_kubernetes_io_name': 'b'}
    assert len(warnings) == 1 and warnings[0].startswith('flashduty_labels: label names rewritten')
    assert "'k8s-cluster' -> 'k8s_cluster', 'app.kubernetes.io/name' -> 'app_kubernetes_io_name'" in warnings[0]


@pytest.mark.parametrize('labels, fragment', [
    ({'': 'v'}, 'a label name is empty'),
    ({'  ': 'v'}, 'a label name is empty'),
    ({'k8s-cluster': 'a', 'k8s_cluster': 'b'}, "label names 'k8s-cluster' and 'k8s_cluster' are both 'k8s_cluster' in Prometheus style; rename one"),
    ({'a.b': 'a', 'a/b': 'b'}, "label names 'a.b' and 'a/b' are both 'a_b'"),
    ({'9' + 'k' * 127: 'v'}, 'is 129 characters long; at most 128 are allowed'),
])
def test_label_keys_that_cannot_be_rewritten_are_refused(labels, fragment):
    exc = error_of(fd.normalize_labels, labels)
    assert exc.field == 'labels' and exc.message.startswith('labels: ') and fragment in exc.message, exc.message
    assert_one_line(exc.message)


def test_a_dropped_label_does_not_collide():
    assert fd.normalize_labels({'a-b': 'x', 'a_b': None}) == ({'a_b': 'x'}, [
        "labels: label names rewritten to Prometheus style (letters, digits and underscores, not starting with a digit): "
        "'a-b' -> 'a_b'"])


def test_lenient_labels_leave_out_what_cannot_be_rewritten():
    labels, warnings = fd.normalize_labels({'a-b': 'x', 'a_b': 'y', '': 'z', 'ok': 'v'}, field='label_vars', strict=False)
    assert labels == {'a_b': 'x', 'ok': 'v'}
    assert "label_vars: label names 'a-b' and 'a_b' are both 'a_b' in Prometheus style; rename one; the label is left out" in warnings
    assert 'label_vars: a label name is empty; the label is left out' in warnings
    many = dict(('label_%d' % i, i) for i in range(60))
    assert len(fd.normalize_labels(many, strict=False)[0]) == 60  # the cap is the caller's


# =========================================================================== the key in event content

SECRETS = fd.url_secrets(PUSH_URL)


def test_the_key_is_masked_in_every_field_with_one_warning():
    event, warnings = fd.build_event(
        'Done', 'deploy-%s' % KEY, 'Deploy to %s' % PUSH_URL, description='pushed with key %s' % KEY,
        link='https://ci.example.com/job/1?integration_key=%s' % KEY,
        labels={'url': PUSH_URL, 'team': 'sre', 'note': 'key=%s' % KEY}, secrets=SECRETS)
    assert KEY not in json.dumps(event)
    assert event['labels'] == {'url': fd.mask_url(PUSH_URL), 'team': 'sre', 'note': 'key=****'}
    assert event['change_key'] == 'deploy-****' and event['title'] == 'Deploy to %s' % fd.mask_url(PUSH_URL)
    assert warnings == ['change_key, title, description, link, labels.url, labels.note held the Flashduty integration key or '
                        'push URL; it was masked as ****. Never put the push URL or the key in event content']


def test_the_key_is_masked_before_a_long_value_is_cut():
    # Cut first, the key would straddle the cut and its first half would be sent.
    value = 'x' * 2030 + KEY
    labels, warnings = fd.normalize_labels({'long': value}, secrets=SECRETS)
    assert KEY[:10] not in labels['long'] and labels['long'].endswith('x****')
    assert len(warnings) == 1 and 'labels.long held the Flashduty integration key' in warnings[0]
    event, warnings = fd.build_event('Done', 'k', 'x' * 500 + KEY, description='y' * 2040 + KEY, secrets=SECRETS)
    assert KEY[:8] not in json.dumps(event)
    assert 'title, description held' in warnings[-1]


def test_clean_content_has_no_masking_warning():
    assert fd.build_event('Done', 'k', 't', description='d', labels={'a': 'b'}, secrets=SECRETS)[1] == []


# =========================================================================== title and change_key limits

def test_a_long_title_is_truncated_with_a_warning():
    event, warnings = fd.build_event('Done', 'k', 't' * 5000)
    assert len(event['title']) == fd.MAX_TITLE_LENGTH == 512 and event['title'].endswith('...')
    assert warnings == ['title: was 5000 characters long and was truncated to 512']
    assert fd.build_event('Done', 'k', 't' * 512) == ({'change_status': 'Done', 'change_key': 'k', 'title': 't' * 512}, [])


def test_a_long_change_key_is_refused():
    assert fd.build_event('Done', 'k' * 256, 't')[0]['change_key'] == 'k' * 256
    exc = error_of(fd.build_event, 'Done', 'k' * 5000, 't')
    assert exc.field == 'change_key'
    assert exc.message == ('change_key: is 5000 characters long; at most 256 are allowed (a shortened key could merge '
                           'different changes)')


# =========================================================================== numeric options

@pytest.mark.parametrize('name, value, message', [
    ('timeout', -1, 'timeout: must be greater than 0 and at most 300 seconds, got -1'),
    ('timeout', 0, 'timeout: must be greater than 0 and at most 300 seconds, got 0'),
    ('timeout', 301, 'timeout: must be greater than 0 and at most 300 seconds, got 301'),
    ('timeout', float('nan'), 'timeout: must be greater than 0 and at most 300 seconds, got nan'),
    ('timeout', 'abc', 'timeout: must be greater than 0 and at most 300 seconds, got abc'),
    ('retries', -1, 'retries: must be from 0 to 10, got -1'),
    ('retries', 11, 'retries: must be from 0 to 10, got 11'),
    ('total_timeout', 0, 'total_timeout: must be greater than 0 and at most 3600 seconds, got 0'),
    ('flush_timeout', -0.5, 'flush_timeout: must be from 0 to 600 seconds, got -0.5'),
    ('max_rate', 0, 'max_rate: must be greater than 0 and at most 1000 requests per second, got 0'),
])
def test_numeric_options_out_of_range(name, value, message):
    assert fd.option_problem(name, value) == message


@pytest.mark.parametrize('name, value', [
    ('timeout', 0.1), ('timeout', 300), ('retries', 0), ('retries', 10), ('total_timeout', 3600), ('flush_timeout', 0),
    ('max_rate', 0.5), ('max_rate', '40'),
])
def test_numeric_options_in_range(name, value):
    assert fd.option_problem(name, value) is None


def test_the_defaults_are_in_range():
    assert all(fd.option_problem(name, spec[3]) is None for name, spec in fd.OPTION_RANGES.items())


@pytest.mark.parametrize('key', ['service', '_private', 'Team', 'a1', 'A_B_9'])
def test_label_key_characters_accepted(key):
    assert fd.normalize_labels({key: 'v'})[0] == {key: 'v'}


def test_label_value_of_2048_characters_is_kept():
    labels, warnings = fd.normalize_labels({'hosts': 'h' * 2048})
    assert labels == {'hosts': 'h' * 2048}
    assert warnings == []


def test_longer_label_value_is_truncated_with_a_warning():
    labels, warnings = fd.normalize_labels({'hosts': ['web%d' % i for i in range(1000)]})
    assert len(labels['hosts']) == 2048 and labels['hosts'].endswith('...')
    assert len(warnings) == 1
    assert warnings[0].startswith("labels: the value of label 'hosts' was ") and warnings[0].endswith('truncated to 2048')


def test_label_field_name_is_configurable():
    exc = error_of(fd.normalize_labels, ['x'], field='flashduty_labels')
    assert exc.field == 'flashduty_labels' and exc.message.startswith('flashduty_labels: ')


# =========================================================================== URLs

def test_push_url_is_used_as_given():
    assert fd.build_push_url(push_url='  %s ' % PUSH_URL) == PUSH_URL


def test_push_url_wins_over_integration_key():
    assert fd.build_push_url(push_url=PUSH_URL, integration_key='other', api_url='https://x.example.com') == PUSH_URL


@pytest.mark.parametrize('url, fragment', [
    ('https://api.flashcat.cloud%s?integration_key=%s extra' % (PUSH, KEY), 'must not contain spaces'),
    ('https://api.flashcat.cloud %s?integration_key=%s' % (PUSH, KEY), 'must not contain spaces'),
    ('api.flashcat.cloud%s?integration_key=%s' % (PUSH, KEY), 'must be an https:// URL (got no scheme in'),
    ('ftp://api.flashcat.cloud%s?integration_key=%s' % (PUSH, KEY), 'must be an https:// URL'),
    ('https:api.flashcat.cloud%s?integration_key=%s' % (PUSH, KEY), 'must be an https:// URL'),
    ('https://%s?integration_key=%s' % (PUSH, KEY), 'has no host name'),
    ('https://api.flashcat.cloud:99999%s?integration_key=%s' % (PUSH, KEY), 'has an invalid port'),
    ('https://api.flashcat.cloud%s?integration_key=%s\u20ac' % (PUSH, KEY), 'must be ASCII: percent-encode'),
    ('https://fl\u00e4shduty.example%s?integration_key=%s' % (PUSH, KEY), 'its xn-- form'),
    ('https://api.flashcat.cloud%s' % PUSH, 'must carry the integration key as ?integration_key=...'),
    ('https://api.flashcat.cloud%s?integration_key=' % PUSH, 'must carry the integration key'),
    ('https://api.flashcat.cloud%s?integration_key=%%20' % PUSH, 'must carry the integration key'),
])
def test_bad_push_urls(url, fragment):
    exc = error_of(fd.build_push_url, push_url=url)
    assert exc.field == 'push_url'
    assert exc.message.startswith('push_url: ') and fragment in exc.message, exc.message
    assert KEY not in exc.message
    assert_one_line(exc.message)


@pytest.mark.parametrize('url', [
    'https://api.flashcat.cloud%s?integrationkey=%s' % (PUSH, KEY),      # a typo in the parameter name
    'https://api.flashcat.cloud%s?key=%s' % (PUSH, KEY),
    'https://api.flashcat.cloud%s?%s' % (PUSH, KEY),
])
def test_push_url_without_integration_key_does_not_echo_what_is_probably_the_key(url):
    exc = error_of(fd.build_push_url, push_url=url)
    assert exc.field == 'push_url'
    assert KEY not in exc.message, exc.message


def test_empty_push_url_falls_through_to_the_key():
    assert fd.build_push_url(push_url='', integration_key=KEY) == PUSH_URL


def test_integration_key_with_default_api_url():
    assert fd.build_push_url(integration_key=KEY) == PUSH_URL
    assert fd.build_push_url(integration_key=' %s ' % KEY, api_url='') == PUSH_URL


@pytest.mark.parametrize('api_url, expected', [
    ('https://flashduty.example.internal', 'https://flashduty.example.internal'),
    ('https://flashduty.example.internal/', 'https://flashduty.example.internal'),
    ('https://flashduty.example.internal:8443//', 'https://flashduty.example.internal:8443'),
    ('https://gw.example.internal/flashduty/', 'https://gw.example.internal/flashduty'),
    ('http://127.0.0.1:8765', 'http://127.0.0.1:8765'),
])
def test_integration_key_with_api_url(api_url, expected):
    assert fd.build_push_url(integration_key=KEY, api_url=api_url) == '%s%s?integration_key=%s' % (expected, PUSH, KEY)


def test_integration_key_is_url_quoted():
    url = fd.build_push_url(integration_key='a/b+c=d&e%f', api_url='https://x.example.com')
    assert url == 'https://x.example.com%s?integration_key=a%%2Fb%%2Bc%%3Dd%%26e%%25f' % PUSH
    assert parse_qs(urlsplit(url).query)['integration_key'] == ['a/b+c=d&e%f']


def test_integration_key_with_white_space_is_refused():
    exc = error_of(fd.build_push_url, integration_key='abc def')
    assert exc.field == 'integration_key'
    assert 'abc' not in exc.message


@pytest.mark.parametrize('api_url, fragment', [
    ('https://x.example.com/?integration_key=%s' % KEY, 'must not carry a query string or fragment'),
    ('https://x.example.com/?region=eu', 'must not carry a query string or fragment'),
    ('https://x.example.com/#top', 'must not carry a query string or fragment'),
    ('ftp://x.example.com', 'must be an https:// URL'),
    ('x.example.com', 'no scheme'),
    ('https://x.example.com/a b', 'must not contain spaces'),
])
def test_bad_api_urls(api_url, fragment):
    exc = error_of(fd.build_push_url, integration_key=KEY, api_url=api_url)
    assert exc.field == 'api_url'
    assert exc.message.startswith('api_url: ') and fragment in exc.message, exc.message
    assert KEY not in exc.message


def test_no_endpoint_at_all():
    exc = error_of(fd.build_push_url)
    assert exc.field == 'push_url'
    for name in ('push_url', 'integration_key', 'flashduty_push_url', 'FLASHDUTY_PUSH_URL'):
        assert name in exc.message


def test_url_warnings():
    assert fd.url_warnings(PUSH_URL) == []
    for host in ('127.0.0.1', '127.0.0.2', 'localhost', '[::1]'):
        assert fd.url_warnings('http://%s:8765%s?integration_key=%s' % (host, PUSH, KEY)) == []
    (warning,) = fd.url_warnings('http://flashduty.example.internal%s?integration_key=%s' % (PUSH, KEY))
    assert 'plain http to flashduty.example.internal' in warning and 'use https' in warning and KEY not in warning
    (warning,) = fd.url_warnings(PUSH_URL, validate_certs=False)
    assert 'validate_certs is false' in warning and 'api.flashcat.cloud' in warning and KEY not in warning
    assert fd.url_warnings('http://127.0.0.1:8765%s?integration_key=%s' % (PUSH, KEY), validate_certs=False) == []


# --------------------------------------------------------------------------- resolve_push_url

def src(push_url=None, integration_key=None, api_url=None):
    return {'push_url': push_url, 'integration_key': integration_key, 'api_url': api_url}


def test_resolve_first_source_naming_an_endpoint_wins():
    argument = 'https://arg.example.com%s?integration_key=ARGKEY' % PUSH
    variable = 'https://var.example.com%s?integration_key=VARKEY' % PUSH
    environment = 'https://env.example.com%s?integration_key=ENVKEY' % PUSH
    assert fd.resolve_push_url(src(argument), src(variable), src(environment)) == argument
    assert fd.resolve_push_url(src(), src(variable), src(environment)) == variable
    assert fd.resolve_push_url(src(''), src(None), src(environment)) == environment
    assert fd.resolve_push_url({}, {'push_url': variable}) == variable  # missing keys are unset


def test_resolve_key_in_an_earlier_source_beats_a_push_url_in_a_later_one():
    variable = 'https://var.example.com%s?integration_key=VARKEY' % PUSH
    assert fd.resolve_push_url(src(integration_key='ARGKEY'), src(variable)) == 'https://api.flashcat.cloud%s?integration_key=ARGKEY' % PUSH


def test_resolve_push_url_beats_key_within_one_source():
    argument = 'https://arg.example.com%s?integration_key=ARGKEY' % PUSH
    assert fd.resolve_push_url(src(argument, 'OTHER', 'https://x.example.com')) == argument


def test_resolve_key_takes_the_first_api_url_of_any_source():
    assert fd.resolve_push_url(src(integration_key='K'), src(api_url='https://var.example.com'), src(api_url='https://env.example.com')) \
        == 'https://var.example.com%s?integration_key=K' % PUSH
    assert fd.resolve_push_url(src(api_url='https://arg.example.com'), src(integration_key='K'), src(api_url='https://env.example.com')) \
        == 'https://arg.example.com%s?integration_key=K' % PUSH


def test_resolve_nothing():
    exc = error_of(fd.resolve_push_url, src(), src(api_url='https://x.example.com'), {})
    assert exc.field == 'push_url'


def test_environment_endpoint():
    environ = {'FLASHDUTY_PUSH_URL': 'u', 'FLASHDUTY_INTEGRATION_KEY': 'k', 'FLASHDUTY_API_URL': 'a', 'OTHER': 'x'}
    assert fd.environment_endpoint(environ) == {'push_url': 'u', 'integration_key': 'k', 'api_url': 'a'}
    assert fd.environment_endpoint({}) == {'push_url': None, 'integration_key': None, 'api_url': None}


# =========================================================================== redaction

@pytest.mark.parametrize('text, expected', [
    (PUSH_URL, MASKED_PUSH_URL),
    ('POST %s failed' % PUSH_URL, 'POST %s failed' % MASKED_PUSH_URL),
    ('https://h/p?a=1&integration_key=%s&b=2' % KEY, 'https://h/p?a=1&integration_key=****&b=2'),
    ('https://h/p?INTEGRATION_KEY=%s' % KEY, 'https://h/p?INTEGRATION_KEY=****'),
    ('https%%3A%%2F%%2Fh%%2Fp%%3Fintegration_key%%3D%s' % KEY, 'https%3A%2F%2Fh%2Fp%3Fintegration_key%3D****'),
    ("url='https://h/p?integration_key=%s'" % KEY, "url='https://h/p?integration_key=****'"),
    ('"https://h/p?integration_key=%s"' % KEY, '"https://h/p?integration_key=****"'),
    ('<https://h/p?integration_key=%s>' % KEY, '<https://h/p?integration_key=****>'),
    ('a=%s b=%s' % (PUSH_URL, PUSH_URL), 'a=%s b=%s' % (MASKED_PUSH_URL, MASKED_PUSH_URL)),
    ('nothing secret here', 'nothing secret here'),
])
def test_redact_keys_in_urls(text, expected):
    assert fd.redact(text) == expected


def test_redact_literal_secrets():
    assert fd.redact('the key %s is bad' % KEY, secrets=[KEY]) == 'the key **** is bad'
    assert fd.redact('%s%s' % (KEY, KEY), secrets=[KEY]) == '********'
    assert fd.redact('abc', secrets=['abc']) == 'abc'  # too short to be a key: left alone
    assert fd.redact('abcd', secrets=['', None, 'abcd']) == '****'


def test_redact_accepts_exceptions_and_bytes():
    assert fd.redact(OSError('cannot reach %s' % PUSH_URL)) == 'cannot reach %s' % MASKED_PUSH_URL
    assert fd.redact(PUSH_URL.encode('utf-8')) == MASKED_PUSH_URL
    assert fd.redact(ValueError(KEY), secrets=[KEY]) == '****'
    assert type(fd.redact(PUSH_URL)) is str  # pylint: disable=unidiomatic-typecheck


def test_mask_url():
    assert fd.mask_url(PUSH_URL) == MASKED_PUSH_URL


def test_flashduty_error():
    exc = fd.FlashdutyError('labels: bad', field='labels', status_code=400, code='InvalidParameter', request_id='r1', retryable=False)
    assert str(exc) == 'labels: bad' and exc.args == ('labels: bad',)
    assert (exc.field, exc.status_code, exc.code, exc.request_id, exc.retryable) == ('labels', 400, 'InvalidParameter', 'r1', False)


# =========================================================================== retry policy, pure

@pytest.mark.parametrize('attempt, low, high', [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (4, 2.0, 4.0), (5, 4.0, 8.0), (6, 4.0, 8.0), (30, 4.0, 8.0)])
def test_backoff_is_exponential_with_equal_jitter_and_a_cap(attempt, low, high):
    assert fd.backoff_delay(attempt, rand=lambda: 0.0) == low
    assert fd.backoff_delay(attempt, rand=lambda: 1.0) == high
    for _dummy in range(20):
        assert low <= fd.backoff_delay(attempt) <= high


def test_backoff_jitter_varies():
    assert len(set(fd.backoff_delay(3) for _dummy in range(20))) > 1


@pytest.mark.parametrize('value, expected', [
    ('7', 7.0), (' 7 ', 7.0), ('0', 0.0), ('1.5', 1.5), ('', None), (None, None), ('soon', None), ('-3', None),
    ('Wed, 21 Oct 2015 07:28:00 GMT', 30.0),     # an HTTP date 30 s after "now"
    ('Wed, 21 Oct 2015 07:27:00 GMT', 0.0),      # in the past: no wait
])
def test_parse_retry_after(value, expected):
    now = datetime.datetime(2015, 10, 21, 7, 27, 30, tzinfo=datetime.timezone.utc).timestamp()
    assert fd.parse_retry_after(value, now=now) == expected


@pytest.mark.parametrize('name, status, code, request_id', [
    ('accepted', 200, None, '0f5a9c3e2b7d4e1f8a6b5c4d3e2f1a0b'),
    ('accepted_no_data', 200, None, '1b2c3d4e5f60718293a4b5c6d7e8f901'),
    ('invalid_parameter_key', 400, 'InvalidParameter', '7c4f0e9a2d1b4c3e8f6a5b4c3d2e1f0a'),
    ('internal_error', 500, 'InternalError', 'e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5'),
])
def test_describe_response_fixtures(name, status, code, request_id):
    got_request_id, got_code, message, data = fd.describe_response(fd._Response(status, {}, fixture_body(name)))
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
    assert fd.describe_response(fd._Response(status, {}, body))[1] == code


# =========================================================================== delivery against the receiver

def client_for(url, sleeps=None, **kwargs):
    kwargs.setdefault('timeout', 5)
    kwargs.setdefault('retries', 3)
    return fd.FlashdutyClient(url, sleep=sleeps if sleeps is not None else Sleeps(), **kwargs)


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
    assert client.endpoint == '%s%s?integration_key=****' % (receiver.base_url, PUSH)


def test_request_format(scripted):
    client = client_for(scripted.url())
    client.send(dict(EVENT, title='Déploiement'))
    client.close()
    (request,) = scripted.seen
    headers = dict((name.lower(), value) for name, value in request['headers'].items())
    assert request['target'] == '%s?integration_key=%s' % (PUSH, KEY)
    assert headers['content-type'] == 'application/json; charset=utf-8'
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
    assert sleeps == [fd.RETRY_AFTER_MAX]


def test_429_without_retry_after_backs_off(receiver):
    receiver.add_fault('ratelimit', times=1)
    sleeps = Sleeps()
    client_for(receiver.push_url, sleeps).send(EVENT)
    assert len(sleeps) == 1 and 0.25 <= sleeps[0] <= 0.5


def test_429_retry_after_really_waits(receiver):
    receiver.add_fault('ratelimit', times=1, retry_after=0.4)
    client = fd.FlashdutyClient(receiver.push_url, timeout=5, retries=1)  # the real time.sleep
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

    client = fd.FlashdutyClient(url, timeout=5, retries=1, sleep=start_receiver)
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
    assert 'no answer from 127.0.0.1 within 0.3 s after 2 attempts; check that this machine can reach the Flashduty API' in exc.message


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
    assert '(out of time for another attempt)' in exc.message and exc.retryable


def test_deadline_bounds_the_whole_send_in_real_time(receiver):
    receiver.add_fault('status', times=None, status=503)
    client = fd.FlashdutyClient(receiver.push_url, timeout=5, retries=50)
    started = time.monotonic()
    exc = error_of(client.send, EVENT, deadline=started + 1.0)
    elapsed = time.monotonic() - started
    client.close()
    assert elapsed <= 1.5, elapsed
    assert 2 <= len(receiver.requests) <= 4
    assert 'out of time for another attempt' in exc.message


def test_deadline_shortens_the_attempt_timeout(receiver):
    receiver.add_fault('blackhole', times=None)
    started = time.monotonic()
    exc = error_of(client_for(receiver.push_url, timeout=10, retries=5).send, EVENT, deadline=started + 0.5)
    assert time.monotonic() - started < 2.5
    assert 'no answer from 127.0.0.1' in exc.message


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

    def __init__(self, answers, close_after=()):
        self.answers = list(answers)
        self.close_after = set(close_after)
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
                    connection.sendall(self.answers[index])
                    index += 1
                    if index in self.close_after or index == len(self.answers):
                        break

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

    def start(answers, close_after=()):
        server = RawServer(answers, close_after)
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
    server = raw_server([b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n' + accepted()])
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
    (b'SSH-2.0-OpenSSH_9.2\r\n', 'not an HTTP/1.x status line'),
    (b'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n', 'a header line without a colon'),
    (b'HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n', 'Content-Length is not a number'),
    (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"request_id"', 'closed in the middle of the answer'),
    (b'HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n', 'Content-Length is not a number'),  # superscript two
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 'a chunk size that is not a hexadecimal number'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n', 'a chunk size that is not a hexadecimal number'),
    (b'HTTP/1.1 200 OK\r\n' + b'X: y\r\n' * 101 + b'\r\n', 'more than 100 header lines'),
])
def test_what_is_not_http_is_a_transient_failure(raw_server, answer, fragment):
    server = raw_server([answer, answer])
    exc = error_of(client_for(server.url(), retries=1).send, EVENT)
    assert exc.retryable and len(server.requests) == 2
    assert '127.0.0.1 did not answer in HTTP: ' in exc.message and fragment in exc.message, exc.message
    assert KEY not in exc.message


def test_an_answer_over_the_size_limit_is_cut_and_its_connection_closed(raw_server, monkeypatch):
    monkeypatch.setattr(fd, 'MAX_ANSWER_BYTES', 1000)
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
    exc = error_of(fd.FlashdutyClient, PUSH_URL, ca_path=str(missing))
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
                push_url=None, integration_key=None, api_url=None, timeout=5.0, retries=1, validate_certs=True, ca_path=None)
    base.update(kwargs)
    return base


def test_run_change_event_sends(receiver):
    before = int(time.time())
    result = fd.run_change_event(params(push_url=receiver.push_url, labels={'canary': True}), False)
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
    result = fd.run_change_event(params(push_url=receiver.push_url, timeout=10.0, retries=5, total_timeout=1.0), False)
    assert time.monotonic() - started < 2.5
    assert result['failed'] is True and 'no answer from 127.0.0.1' in result['msg']
    assert receiver.integration_key not in json.dumps(result)


def test_run_change_event_check_mode_sends_nothing(receiver):
    result = fd.run_change_event(params(push_url=receiver.push_url, event_time=1700000000), True)
    assert result['changed'] is True and 'check mode' in result['msg']
    assert result['event'] == {'change_status': 'Done', 'change_key': 'CHG-1', 'title': 'Deploy', 'event_time': 1700000000}
    assert receiver.requests == []


def test_run_change_event_check_mode_still_validates():
    result = fd.run_change_event(params(push_url=PUSH_URL, labels={'bad-key': 1, 'bad_key': 2}), True)
    assert result['failed'] is True and result['msg'].startswith('labels: label names ')


def test_run_change_event_masks_the_key_in_the_event_it_sends_and_returns(receiver):
    result = fd.run_change_event(params(push_url=receiver.push_url, labels={'url': receiver.push_url}), False)
    (record,) = receiver.records
    assert result['changed'] is True and record['event'] == result['event']
    assert result['event']['labels'] == {'url': fd.mask_url(receiver.push_url)}
    assert len(result['warnings']) == 1 and 'labels.url held the Flashduty integration key' in result['warnings'][0]
    assert receiver.integration_key not in json.dumps(result) + json.dumps(receiver.requests)


@pytest.mark.parametrize('option, value', [('timeout', -1), ('timeout', 0), ('retries', 11), ('total_timeout', 0)])
def test_run_change_event_refuses_an_option_out_of_range_before_sending(receiver, option, value):
    result = fd.run_change_event(params(push_url=receiver.push_url, **{option: value}), False)
    assert result == dict(changed=False, failed=True, msg=fd.option_problem(option, value))
    assert result['msg'].startswith('%s: must be ' % option) and receiver.requests == []


def test_run_change_event_uses_fallback_sources(receiver):
    result = fd.run_change_event(params(), False, {'push_url': None}, {'push_url': receiver.push_url})
    assert result['changed'] is True and len(receiver.events) == 1


def test_run_change_event_failure_result(receiver):
    wrong = '%s%s?integration_key=%s' % (receiver.base_url, PUSH, 'e' * 32)
    result = fd.run_change_event(params(push_url=wrong, description='x' * 3000), False)
    (request,) = receiver.requests
    assert result['failed'] is True and result['changed'] is False
    assert result['request_id'] == request['request_id'] and result['status_code'] == 400
    assert 'InvalidParameter' in result['msg'] and request['request_id'] in result['msg']
    assert result['warnings'] == ['description: was 3000 characters long and was truncated to 2048']
    assert 'e' * 32 not in json.dumps(result)


def test_run_change_event_validation_failure_result():
    result = fd.run_change_event(params(push_url=PUSH_URL, change_status='done'), False)
    assert result == {'changed': False, 'failed': True, 'endpoint': MASKED_PUSH_URL, 'msg': result['msg']}
    assert result['msg'].startswith('change_status: ')


def test_run_change_event_without_endpoint():
    result = fd.run_change_event(params(), False, {}, {})
    assert result['failed'] is True and result['msg'].startswith('push_url: no Flashduty push URL given')


def test_run_change_event_warns_about_plain_http():
    result = fd.run_change_event(params(push_url='http://flashduty.example.internal%s?integration_key=%s' % (PUSH, KEY)), True)
    (warning,) = result['warnings']
    assert 'plain http' in warning and KEY not in warning


def test_argument_spec_marks_secrets_no_log():
    spec = fd.change_event_argument_spec()
    assert spec['push_url']['no_log'] is True and spec['integration_key']['no_log'] is True
    assert spec['change_status']['choices'] == list(fd.CHANGE_STATUSES) and spec['change_status']['aliases'] == ['status']
    assert ('push_url', 'integration_key') in fd.CHANGE_EVENT_MUTUALLY_EXCLUSIVE
