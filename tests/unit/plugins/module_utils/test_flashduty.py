# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests for plugins/module_utils/_flashduty.py, the protocol: payload rules, labels,
event_time, URLs, the Endpoint and redaction, as pure functions.
"""
# pylint: disable=missing-function-docstring,protected-access,redefined-outer-name,too-many-arguments,consider-using-with

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ansible_collections.flashcat.flashduty.plugins.module_utils import _flashduty as fd

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures' / 'flashduty_responses'
PUSH = fd.PUSH_PATH
KEY = '0123456789abcdef0123456789abcdef'
PUSH_URL = 'https://api.flashcat.cloud%s?integration_key=%s' % (PUSH, KEY)
MASKED_PUSH_URL = 'https://api.flashcat.cloud%s?integration_key=****' % PUSH
EVENT = {'change_status': 'Done', 'change_key': 'deploy-42', 'title': 'Deploy checkout 1.2'}


def fixture_body(name):
    return (FIXTURES / ('%s.json' % name)).read_bytes()


def build(**settings):
    return fd.resolve_endpoint(settings)


def build_url(**settings):
    return build(**settings).url


def error_of(func, *args, **kwargs):
    with pytest.raises(fd.FlashdutyError) as info:
        func(*args, **kwargs)
    return info.value


def normalize(labels, field='labels', secrets=(), strict=True):
    """``(labels, warnings)`` of normalize_labels_masked(), whose third value the masking tests check."""
    return fd.normalize_labels_masked(labels, field, secrets, strict)[:2]


def assert_one_line(message):
    assert '\n' not in message and '\r' not in message, message


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch):
    """The client honours *_proxy variables: make the tests independent of the developer's shell."""
    for name in ('http_proxy', 'https_proxy', 'all_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY', 'NO_PROXY'):
        monkeypatch.delenv(name, raising=False)


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
    ('9' * 400, 'is too large for Unix time in seconds'),   # float() of it is inf: no OverflowError
    ('9' * 5000 + '.5', 'is too large for Unix time in seconds'),  # beyond int()'s digit limit
    ('-' + '9' * 400, 'must not be before 1970'),
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
    labels, warnings = normalize({
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
    assert normalize(None) == ({}, [])
    assert normalize({}) == ({}, [])
    assert normalize({'a': None}) == ({}, [])
    assert 'labels' not in fd.build_event('Done', 'k', 't', labels={'a': None})[0]


@pytest.mark.parametrize('labels, kind', [(['a', 'b'], 'a list'), ('service=checkout', 'a string'), (3, 'a number'), (True, 'a boolean')])
def test_labels_must_be_a_mapping(labels, kind):
    exc = error_of(normalize, labels)
    assert exc.field == 'labels'
    assert exc.message == 'labels: must be a dict (a mapping of label names to values), got %s' % kind


def test_50_labels_are_accepted_51_are_refused():
    fifty = dict(('label_%d' % i, i) for i in range(50))
    assert len(normalize(fifty)[0]) == 50
    exc = error_of(normalize, dict(fifty, one_more='x'))
    assert exc.field == 'labels'
    assert exc.message == 'labels: 51 labels given; Flashduty accepts at most 50'


def test_dropped_labels_do_not_count_towards_50():
    labels = dict(('label_%d' % i, i) for i in range(50))
    labels['dropped'] = None
    assert len(normalize(labels)[0]) == 50


def test_label_key_of_128_characters_is_accepted_129_is_refused():
    assert list(normalize({'k' * 128: 'v'})[0]) == ['k' * 128]
    exc = error_of(normalize, {'k' * 129: 'v'})
    assert exc.field == 'labels'
    assert 'is 129 characters long; at most 128 are allowed' in exc.message
    assert 'k' * 129 not in exc.message  # the key is shortened in the message
    exc = error_of(normalize, {'k' * 200: 'v'})
    assert 'is 200 characters long' in exc.message


@pytest.mark.parametrize('key, rewritten', [
    ('k8s-cluster', 'k8s_cluster'), ('app.kubernetes.io/name', 'app_kubernetes_io_name'), ('with space', 'with_space'),
    ('1abc', '_1abc'), ('ключ', '____'), ('a:b', 'a_b'), (' team ', 'team'), (7, '_7'),
])
def test_label_keys_are_rewritten_to_prometheus_style_with_one_warning(key, rewritten):
    labels, warnings = normalize({key: 'v', 'service': 'checkout'})
    assert labels == {rewritten: 'v', 'service': 'checkout'}
    assert warnings == ["labels: label names rewritten to Prometheus style (letters, digits and underscores, not starting "
                        "with a digit): %r -> %r" % ('%s' % key, rewritten)]
    assert re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', rewritten)


def test_several_rewritten_label_keys_are_named_in_one_warning():
    labels, warnings = normalize({'k8s-cluster': 'a', 'app.kubernetes.io/name': 'b'}, field='flashduty_labels')
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
    exc = error_of(normalize, labels)
    assert exc.field == 'labels' and exc.message.startswith('labels: ') and fragment in exc.message, exc.message
    assert_one_line(exc.message)


def test_a_dropped_label_does_not_collide():
    assert normalize({'a-b': 'x', 'a_b': None}) == ({'a_b': 'x'}, [
        "labels: label names rewritten to Prometheus style (letters, digits and underscores, not starting with a digit): "
        "'a-b' -> 'a_b'"])


def test_lenient_labels_leave_out_what_cannot_be_rewritten():
    labels, warnings = normalize({'a-b': 'x', 'a_b': 'y', '': 'z', 'ok': 'v'}, field='label_vars', strict=False)
    assert labels == {'a_b': 'x', 'ok': 'v'}
    assert "label_vars: label names 'a-b' and 'a_b' are both 'a_b' in Prometheus style; rename one; the label is left out" in warnings
    assert 'label_vars: a label name is empty; the label is left out' in warnings
    many = dict(('label_%d' % i, i) for i in range(60))
    assert len(normalize(many, strict=False)[0]) == 60  # the cap is the caller's


# =========================================================================== the key in event content

SECRETS = fd.endpoint_for(PUSH_URL).secrets


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
    labels, warnings, masked = fd.normalize_labels_masked({'long': value}, 'labels', SECRETS, strict=True)
    assert KEY[:10] not in labels['long'] and labels['long'].endswith('x****')
    assert warnings == [] and masked == ['labels.long']
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
    assert normalize({key: 'v'})[0] == {key: 'v'}


def test_label_value_of_2048_characters_is_kept():
    labels, warnings = normalize({'hosts': 'h' * 2048})
    assert labels == {'hosts': 'h' * 2048}
    assert warnings == []


def test_longer_label_value_is_truncated_with_a_warning():
    labels, warnings = normalize({'hosts': ['web%d' % i for i in range(1000)]})
    assert len(labels['hosts']) == 2048 and labels['hosts'].endswith('...')
    assert len(warnings) == 1
    assert warnings[0].startswith("labels: the value of label 'hosts' was ") and warnings[0].endswith('truncated to 2048')


def test_label_field_name_is_configurable():
    exc = error_of(normalize, ['x'], field='flashduty_labels')
    assert exc.field == 'flashduty_labels' and exc.message.startswith('flashduty_labels: ')


# =========================================================================== URLs

def test_push_url_is_used_as_given():
    assert build_url(push_url='  %s ' % PUSH_URL) == PUSH_URL


def test_push_url_wins_over_integration_key():
    assert build_url(push_url=PUSH_URL, integration_key='other', api_url='https://x.example.com') == PUSH_URL


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
    exc = error_of(build, push_url=url)
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
    exc = error_of(build, push_url=url)
    assert exc.field == 'push_url'
    assert KEY not in exc.message, exc.message


def test_empty_push_url_falls_through_to_the_key():
    assert build_url(push_url='', integration_key=KEY) == PUSH_URL


def test_integration_key_with_default_api_url():
    assert build_url(integration_key=KEY) == PUSH_URL
    assert build_url(integration_key=' %s ' % KEY, api_url='') == PUSH_URL


@pytest.mark.parametrize('api_url, expected', [
    ('https://flashduty.example.internal', 'https://flashduty.example.internal'),
    ('https://flashduty.example.internal/', 'https://flashduty.example.internal'),
    ('https://flashduty.example.internal:8443//', 'https://flashduty.example.internal:8443'),
    ('https://gw.example.internal/flashduty/', 'https://gw.example.internal/flashduty'),
    ('http://127.0.0.1:8765', 'http://127.0.0.1:8765'),
])
def test_integration_key_with_api_url(api_url, expected):
    assert build_url(integration_key=KEY, api_url=api_url) == '%s%s?integration_key=%s' % (expected, PUSH, KEY)


def test_integration_key_is_url_quoted():
    url = build_url(integration_key='a/b+c=d&e%f', api_url='https://x.example.com')
    assert url == 'https://x.example.com%s?integration_key=a%%2Fb%%2Bc%%3Dd%%26e%%25f' % PUSH
    assert parse_qs(urlsplit(url).query)['integration_key'] == ['a/b+c=d&e%f']


def test_integration_key_with_white_space_is_refused():
    exc = error_of(build, integration_key='abc def')
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
    exc = error_of(build, integration_key=KEY, api_url=api_url)
    assert exc.field == 'api_url'
    assert exc.message.startswith('api_url: ') and fragment in exc.message, exc.message
    assert KEY not in exc.message


def test_no_endpoint_at_all():
    exc = error_of(build)
    assert exc.field == 'push_url'
    for name in ('push_url', 'integration_key', 'flashduty_push_url', 'FLASHDUTY_PUSH_URL'):
        assert name in exc.message


def test_url_warnings():
    assert fd.url_warnings(fd.endpoint_for(PUSH_URL)) == []
    for host in ('127.0.0.1', '127.0.0.2', 'localhost', '[::1]'):
        assert fd.url_warnings(fd.endpoint_for('http://%s:8765%s?integration_key=%s' % (host, PUSH, KEY))) == []
    (warning,) = fd.url_warnings(fd.endpoint_for('http://flashduty.example.internal%s?integration_key=%s' % (PUSH, KEY)))
    assert 'plain http to flashduty.example.internal' in warning and 'use https' in warning and KEY not in warning
    (warning,) = fd.url_warnings(fd.endpoint_for(PUSH_URL), validate_certs=False)
    assert 'validate_certs is false' in warning and 'api.flashcat.cloud' in warning and KEY not in warning
    assert fd.url_warnings(fd.endpoint_for('http://127.0.0.1:8765%s?integration_key=%s' % (PUSH, KEY)), validate_certs=False) == []


# --------------------------------------------------------------------------- resolve_endpoint

def resolve_url(*sources):
    return fd.resolve_endpoint(*sources).url


def src(push_url=None, integration_key=None, api_url=None):
    return {'push_url': push_url, 'integration_key': integration_key, 'api_url': api_url}


def test_resolve_first_source_naming_an_endpoint_wins():
    argument = 'https://arg.example.com%s?integration_key=ARGKEY' % PUSH
    variable = 'https://var.example.com%s?integration_key=VARKEY' % PUSH
    environment = 'https://env.example.com%s?integration_key=ENVKEY' % PUSH
    assert resolve_url(src(argument), src(variable), src(environment)) == argument
    assert resolve_url(src(), src(variable), src(environment)) == variable
    assert resolve_url(src(''), src(None), src(environment)) == environment
    assert resolve_url({}, {'push_url': variable}) == variable  # missing keys are unset


def test_resolve_key_in_an_earlier_source_beats_a_push_url_in_a_later_one():
    variable = 'https://var.example.com%s?integration_key=VARKEY' % PUSH
    assert resolve_url(src(integration_key='ARGKEY'), src(variable)) == 'https://api.flashcat.cloud%s?integration_key=ARGKEY' % PUSH


def test_a_push_url_beats_key_within_one_source():
    argument = 'https://arg.example.com%s?integration_key=ARGKEY' % PUSH
    assert resolve_url(src(argument, 'OTHER', 'https://x.example.com')) == argument


def test_resolve_key_takes_the_first_api_url_of_any_source():
    assert resolve_url(src(integration_key='K'), src(api_url='https://var.example.com'), src(api_url='https://env.example.com')) \
        == 'https://var.example.com%s?integration_key=K' % PUSH
    assert resolve_url(src(api_url='https://arg.example.com'), src(integration_key='K'), src(api_url='https://env.example.com')) \
        == 'https://arg.example.com%s?integration_key=K' % PUSH


def test_resolve_nothing():
    exc = error_of(fd.resolve_endpoint, src(), src(api_url='https://x.example.com'), {})
    assert exc.field == 'push_url'


def test_endpoint_settings_from_the_one_table():
    environ = {'FLASHDUTY_PUSH_URL': 'u', 'FLASHDUTY_INTEGRATION_KEY': 'k', 'FLASHDUTY_API_URL': 'a', 'OTHER': 'x'}
    assert fd.endpoint_settings(environ, 'environment') == {'push_url': 'u', 'integration_key': 'k', 'api_url': 'a'}
    assert fd.endpoint_settings({}, 'environment') == {'push_url': None, 'integration_key': None, 'api_url': None}


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
