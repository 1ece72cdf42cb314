# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The Flashduty change-event protocol, in one place for every entry point: the event's fields and limits, labels,
the push URL (resolved once into an Endpoint) and redaction. Sending is in ``_client`` over ``_transport``.

Private to this collection. Standard library only, so that the module also runs on its own.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import datetime
import hashlib
import json
import math
import re
from collections.abc import Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

CHANGE_STATUSES = ('Planned', 'Ready', 'Processing', 'Canceled', 'Done')
DEFAULT_API_URL = 'https://api.flashcat.cloud'
PUSH_PATH = '/event/push/change/standard'
KEY_PARAM = 'integration_key'
MASK = '****'

MAX_LABELS = 50
MAX_LABEL_KEY_LENGTH = 128
MAX_LABEL_VALUE_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 2048
# Flashduty documents no limit for these: ours keep an event readable, and a title is cut (with a warning)
# while a change key is refused, since two keys cut alike would merge two different changes.
MAX_TITLE_LENGTH = 512
MAX_CHANGE_KEY_LENGTH = 256

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3
DEFAULT_TOTAL_TIMEOUT = 30.0

# What to check, by Flashduty error code; shown after the error itself.
ERROR_HINTS = {
    'InvalidParameter': 'check the event fields, and that the push URL matches the integration\'s push URL exactly',
    'Unauthorized': 'the integration key was not accepted: copy the push URL again from the Flashduty integration page',
    'AccessDenied': 'the integration key has no permission for this integration',
    'RouteNotFound': 'the URL path is wrong: it must end in %s' % PUSH_PATH,
    'ResourceNotFound': 'the Flashduty account has no such resource purchased',
    'NoLicense': 'the Flashduty subscription lacks the licence for change events',
    'RequestTooFrequently': 'Flashduty asked to slow down: send fewer events at a time (the change_events callback\'s max_rate '
                            'option bounds its requests per second)',
    'InternalError': 'Flashduty had a server error; give support the request_id',
}

# The numeric options of the task and the callback: (lowest, lowest is allowed, highest, default, unit).
OPTION_RANGES = {
    'timeout': (0, False, 300, DEFAULT_TIMEOUT, 'seconds'),
    'retries': (0, True, 10, DEFAULT_RETRIES, None),
    'total_timeout': (0, False, 3600, DEFAULT_TOTAL_TIMEOUT, 'seconds'),
    'flush_timeout': (0, True, 600, 5.0, 'seconds'),
    'max_rate': (0, False, 1000, 40.0, 'requests per second'),
}

# A key already masked is left alone, so that redacting twice keeps the text after it.
_KEY_IN_TEXT = re.compile(r'(%s(?:=|%%3D))(?!\*{4})[^&\s\'"<>]+' % KEY_PARAM, re.IGNORECASE)


class FlashdutyError(Exception):
    """A change event that could not be built or delivered; the message never holds the integration key.

    ``field`` names the parameter of a validation error. A delivery failure's facts travel as fields, never to be
    parsed back out of the message: ``reason`` (without the endpoint), ``status_code``, ``code`` (Flashduty's),
    ``request_id``, ``retryable`` (timeouts, resets, 429, 5xx), ``unreachable`` (connection refused, unresolvable)
    and ``refused``: Flashduty's own JSON answer named an error for this event that no retry mends. Only a refused
    event is dropped; any other failure (TLS, a proxy, a page that is not Flashduty's) keeps it for a later run.
    """

    def __init__(self, message, field=None, status_code=None, code=None, request_id=None, retryable=False, unreachable=False,
                 refused=False):
        super(FlashdutyError, self).__init__(message)
        self.message = self.reason = message
        self.field, self.status_code, self.code, self.request_id = field, status_code, code, request_id
        self.retryable, self.unreachable = retryable, unreachable
        self.refused = refused


def _text(value):
    """An exact ``str`` (not Ansible's tagged or unsafe subclasses)."""
    return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else '%s' % (value,)


def redact(text, secrets=()):
    """Mask integration keys in ``text``: in URLs, and any literal ``secrets`` given."""
    text = _text(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return _KEY_IN_TEXT.sub(r'\g<1>' + MASK, text)


mask_url = redact  # a URL as it may be shown to people: ...?integration_key=****


def shown(text, secrets=(), limit=300):
    """Text from elsewhere (a server's answer) as one line of a message: key masked, controls made spaces, cut."""
    text = ''.join(' ' if ch < ' ' or ch == '\x7f' else ch for ch in redact(text, secrets))
    return truncate(' '.join(text.split()), limit)


class Endpoint(collections.namedtuple('Endpoint', 'url scheme host port target masked secrets fingerprint')):
    """A push URL resolved once, with everything derived from it; pass this, not the URL.

    ``target``: path and query to ask for; ``masked``: the URL as shown; ``secrets``: the key as written, decoded
    and encoded, for redact(); ``fingerprint``: the URL's sha256 hex, which the spool stores instead of the URL.
    """

    __slots__ = ()

    def redact(self, text):
        return redact(text, self.secrets)

    def __repr__(self):
        return '<Endpoint %s>' % self.masked


def endpoint_for(url):
    """The Endpoint of a URL that resolve_endpoint() validated."""
    parts = urlsplit(url)
    keys = set()
    for raw in re.findall(r'(?:^|&)%s=([^&#\s]*)' % KEY_PARAM, parts.query):
        keys.update((raw, unquote(raw), quote(unquote(raw), safe='')))
    return Endpoint(url=url, scheme=parts.scheme, host=parts.hostname, port=parts.port or (443 if parts.scheme == 'https' else 80),
                    target=parts.path + ('?' + parts.query if parts.query else ''), masked=mask_url(url),
                    secrets=tuple(sorted(key for key in keys if key)),
                    fingerprint=hashlib.sha256(url.encode('utf-8', 'surrogatepass')).hexdigest())


def _shown_url(url):
    """A URL for a validation error: its query string masked whole, since it may hold the key under a mistyped name."""
    head, separator, _query = _text(url).partition('?')
    return redact(head) + (separator + MASK if separator else '')


def _split_url(url, field):
    url = _text(url).strip()
    got = ' (got %s)' % _shown_url(url)
    if not url:
        problem = 'must not be empty'
    elif any(ch.isspace() for ch in url):
        problem = 'must not contain spaces or other white space' + got
    elif not url.isascii():
        problem = 'must be ASCII: percent-encode other characters, and write an international host name in its xn-- form' + got
    else:
        parts = urlsplit(url)
        if parts.scheme not in ('http', 'https') or '://' not in url:
            problem = 'must be an https:// URL (got %s)' % (_shown_url(url) if '://' in url else 'no scheme in %s' % _shown_url(url))
        elif not parts.hostname:
            problem = 'has no host name' + got
        else:
            try:
                _port = parts.port  # raises ValueError when not a number from 0 to 65535
                return url, parts
            except ValueError:
                problem = 'has an invalid port' + got
    raise FlashdutyError('%s: %s' % (field, problem), field=field)


def resolve_endpoint(*sources):
    """The Endpoint to POST to, from endpoint settings (mappings as endpoint_settings() makes), most specific source
    first: the first naming a push URL or a key wins whole; a key goes with the first ``api_url`` of any source, else
    Flashduty's public API."""
    source = next((each for each in sources if each.get('push_url') or each.get('integration_key')), {})
    if source.get('push_url'):
        url, parts = _split_url(source['push_url'], 'push_url')
        if not any(key.strip() for key in parse_qs(parts.query, keep_blank_values=True).get(KEY_PARAM, [])):
            raise FlashdutyError(
                'push_url: must carry the integration key as ?%s=... (copy the push URL from the Flashduty '
                'integration page; got %s)' % (KEY_PARAM, _shown_url(url)), field='push_url')
        return endpoint_for(url)
    if source.get('integration_key'):
        key = _text(source['integration_key']).strip()
        if any(ch.isspace() for ch in key):
            raise FlashdutyError('integration_key: must not contain white space', field='integration_key')
        base, parts = _split_url(next((each['api_url'] for each in sources if each.get('api_url')), DEFAULT_API_URL), 'api_url')
        if parts.query or parts.fragment:
            raise FlashdutyError('api_url: must not carry a query string or fragment (got %s)' % _shown_url(base), field='api_url')
        return endpoint_for('%s%s?%s=%s' % (base.rstrip('/'), PUSH_PATH, KEY_PARAM, quote(key, safe='')))
    raise FlashdutyError(
        'push_url: no Flashduty push URL given: set push_url (or integration_key), the flashduty_push_url '
        'variable, the FLASHDUTY_PUSH_URL environment variable or push_url in the [flashduty] section of ansible.cfg',
        field='push_url')


def url_warnings(endpoint, validate_certs=True):
    """Warnings about a valid Endpoint, and how it is reached, that are still risky."""
    host = endpoint.host
    if endpoint.scheme == 'http' and host not in ('localhost', '::1') and not host.startswith('127.'):
        return ['The Flashduty push URL uses plain http to %s: the integration key travels unencrypted; use https.' % host]
    if endpoint.scheme == 'https' and not validate_certs:
        return ['validate_certs is false: the TLS certificate of %s is not checked, so the integration key may go to an '
                'impostor; prefer ca_path with your CA bundle.' % host]
    return []


def label_value(value):
    """One label value as Flashduty wants it: a string (``None`` means no label)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(',', ':'), ensure_ascii=False, default=_text)
    return _text(value)


def label_key(name):
    """A label name in Prometheus style: ``k8s-cluster`` -> ``k8s_cluster``, ``2fa`` -> ``_2fa``."""
    key = re.sub(r'[^A-Za-z0-9_]', '_', _text(name).strip())
    return '_' + key if key[:1].isdigit() else key


def normalize_labels_masked(labels, field, secrets, strict):
    """Labels validated and made strings: ``(labels, warnings, masked)``, ``masked`` naming where a key was masked.

    Names are rewritten to Prometheus style (label_key()) with one warning; one then empty, over 128 characters
    or the same as another's is an error, or with ``strict`` false left out with a warning (and the cap of 50
    labels left to the caller). ``None`` drops a label; values over 2048 characters are cut with a warning.
    """
    if labels is None:
        return {}, [], []
    require_mapping(labels, field)
    result, origins, warnings, rewritten, masked = {}, {}, [], [], []
    for raw_key, raw_value in labels.items():
        value = label_value(raw_value)
        if value is None:
            continue
        name = redact(raw_key, secrets)
        key = label_key(name)
        problem = ('a label name is empty' if not key else
                   'label name %r is %d characters long; at most %d are allowed' % (key[:40] + '...', len(key), MAX_LABEL_KEY_LENGTH)
                   if len(key) > MAX_LABEL_KEY_LENGTH else
                   'label names %r and %r are both %r in Prometheus style; rename one' % (origins[key], name, key) if key in origins else None)
        if problem is not None:
            if strict:
                raise FlashdutyError('%s: %s' % (field, problem), field=field)
            warnings.append('%s: %s; the label is left out' % (field, problem))
            continue
        if name != _text(raw_key):
            masked.append('the name of a label in %s' % field)
        if key != name:
            rewritten.append('%r -> %r' % (name, key))
        text = redact(value, secrets)
        if text != value:
            masked.append('%s.%s' % (field, key))
        origins[key] = name
        result[key] = truncate(text, MAX_LABEL_VALUE_LENGTH, '%s: the value of label %r' % (field, key), warnings)
    if rewritten:
        warnings.insert(0, '%s: label names rewritten to Prometheus style (letters, digits and underscores, not starting '
                        'with a digit): %s' % (field, ', '.join(rewritten)))
    if strict and len(result) > MAX_LABELS:
        raise FlashdutyError('%s: %d labels given; Flashduty accepts at most %d' % (field, len(result), MAX_LABELS), field=field)
    return result, warnings, masked


def require_mapping(labels, field='labels'):
    """Fail unless ``labels`` is a dict of label names to values."""
    if not isinstance(labels, Mapping):
        kind = next((name for types, name in (((list, tuple), 'a list'), (bool, 'a boolean'), ((int, float), 'a number'),
                                              ((str, bytes), 'a string')) if isinstance(labels, types)), type(labels).__name__)
        raise FlashdutyError('%s: must be a dict (a mapping of label names to values), got %s' % (field, kind), field=field)


def truncate(text, limit, what=None, warnings=None):
    """Shorten ``text`` to ``limit`` characters, marking the cut; with ``what``, warn of a cut in ``warnings``."""
    if len(text) <= limit:
        return text
    if what is not None:
        warnings.append('%s was %d characters long and was truncated to %d' % (what, len(text), limit))
    return text[:limit - 3] + '...'


def parse_event_time(value):
    """Unix seconds from epoch seconds (int, float or digits) or an ISO 8601 time (any year, UTC when it names no
    zone); a number from 10^11 (the year 5138) is refused, as milliseconds when below 10^14, not sent as seconds."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise FlashdutyError('event_time: must be epoch seconds or an ISO 8601 time, got a boolean', field='event_time')
    if isinstance(value, float) and not math.isfinite(value):
        raise FlashdutyError('event_time: must be a finite number of epoch seconds, got %r' % value, field='event_time')
    text = None if isinstance(value, (int, float)) else _text(value).strip()
    iso = text is not None and not re.match(r'^-?\d+(\.\d+)?$', text)
    if not iso:
        whole = None if text is None else text.partition('.')[0]  # digits only: no float to overflow, no rounding
        seconds = int(value) if whole is None else int(whole) if len(whole) < 20 else (-1 if whole[0] == '-' else 10 ** 14)
    else:
        try:
            moment = datetime.datetime.fromisoformat(re.sub(r'([+-]\d\d)(\d\d)$', r'\1:\2', re.sub(r'[Zz]$', '+00:00', text)))
            seconds = int((moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.timezone.utc)).timestamp())
        except (ValueError, OverflowError):
            raise FlashdutyError('event_time: %r is neither epoch seconds nor an ISO 8601 time such as 2026-11-26T17:40:00Z' % text,
                                 field='event_time')
    if seconds < 0:
        raise FlashdutyError('event_time: must not be before 1970 (got %r)' % (value,), field='event_time')
    if not iso and seconds >= 10 ** 11:
        raise FlashdutyError(('event_time: %r is too large for Unix time in seconds (10^11 seconds is the year 5138); give Unix time '
                              'in seconds or an ISO 8601 time' if seconds >= 10 ** 14 else 'event_time: %r looks like '
                              'milliseconds (Unix seconds stay below 10^11 until the year 5138); give Unix time in seconds') % (value,),
                             field='event_time')
    return seconds


def build_event(change_status, change_key, title, description=None, link=None, labels=None, event_time=None, secrets=(),
                masked=()):
    """One change event, validated: ``(event, warnings)``; the event holds only the fields given.

    ``secrets`` (the Endpoint's) and any ``integration_key=...`` are masked in every field, with one warning,
    before the event is shown, spooled or sent; ``masked`` names fields masked before (user labels).
    """
    status = _text(change_status) if change_status is not None else ''
    if status not in CHANGE_STATUSES:
        raise FlashdutyError('change_status: must be one of %s (case-sensitive), got %r'
                             % (', '.join(CHANGE_STATUSES), redact(status, secrets)), field='change_status')
    warnings = []
    masked = list(masked)

    def scrub(value, field, strip=False, required=False):
        text = '' if value is None else _text(value)
        text = text.strip() if strip else text
        if required and not text.strip():
            raise FlashdutyError('%s: is required and must not be empty' % field, field=field)
        clean = redact(text, secrets)
        if clean != text:
            masked.append(field)
        return clean

    key = scrub(change_key, 'change_key', required=True)
    if len(key) > MAX_CHANGE_KEY_LENGTH:
        raise FlashdutyError('change_key: is %d characters long; at most %d are allowed (a shortened key could merge '
                             'different changes)' % (len(key), MAX_CHANGE_KEY_LENGTH), field='change_key')
    event = {'change_status': status, 'change_key': key,
             'title': truncate(scrub(title, 'title', required=True), MAX_TITLE_LENGTH, 'title:', warnings)}
    seconds = parse_event_time(event_time)
    if seconds is not None:
        event['event_time'] = seconds
    if description is not None and _text(description):
        event['description'] = truncate(scrub(description, 'description'), MAX_DESCRIPTION_LENGTH, 'description:', warnings)
    if link is not None and _text(link).strip():
        event['link'] = scrub(link, 'link', strip=True)
        if not re.match(r'^https?://\S+$', event['link']):
            raise FlashdutyError('link: must be an http:// or https:// URL, got %r' % event['link'], field='link')
    normalized, label_warnings, masked_labels = normalize_labels_masked(labels, 'labels', secrets, strict=True)
    warnings.extend(label_warnings)
    masked.extend(masked_labels)
    if normalized:
        event['labels'] = normalized
    if masked:
        warnings.append('%s held the Flashduty integration key or push URL; it was masked as %s. Never put the push URL or '
                        'the key in event content' % (', '.join(masked), MASK))
    return event, warnings


def option_problem(name, value):
    """Why ``value`` is out of the range of the numeric option ``name`` (see OPTION_RANGES), or None."""
    low, low_allowed, high, _default, unit = OPTION_RANGES[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float('nan')
    if math.isfinite(number) and (number > low or (low_allowed and number == low)) and number <= high:
        return None
    rule = ('from %s to %s' if low_allowed else 'greater than %s and at most %s') % (low, high)
    return '%s: must be %s%s, got %s' % (name, rule, ' %s' % unit if unit else '', redact(value))


# Where each endpoint setting comes from, besides a task argument: the one table every entry point reads.
# (setting, play or inventory variable, environment variable, key in the [flashduty] section of ansible.cfg)
ENDPOINT_SETTINGS = (
    ('push_url', 'flashduty_push_url', 'FLASHDUTY_PUSH_URL', 'push_url'),
    ('integration_key', 'flashduty_integration_key', 'FLASHDUTY_INTEGRATION_KEY', 'integration_key'),
    ('api_url', 'flashduty_api_url', 'FLASHDUTY_API_URL', 'api_url'),
)
INI_SECTION = 'flashduty'
ENDPOINT_VARIABLES = tuple(row[1] for row in ENDPOINT_SETTINGS)


def endpoint_settings(mapping, column):
    """The endpoint settings in ``mapping`` under the names of one ``column``: 'variable', 'environment' or 'ini'."""
    index = ('variable', 'environment', 'ini').index(column) + 1
    return dict((row[0], mapping.get(row[index])) for row in ENDPOINT_SETTINGS)


def change_event_argument_spec():
    """The change_event task's options: shared by the module and its action plugin."""
    return dict(
        change_key=dict(type='str', required=True, no_log=False),
        change_status=dict(type='str', required=True, choices=list(CHANGE_STATUSES), aliases=['status']),
        title=dict(type='str'), description=dict(type='str'), link=dict(type='str'), labels=dict(type='dict'),
        event_time=dict(type='raw'), automatic_labels=dict(type='bool', default=True),
        push_url=dict(type='str', no_log=True), integration_key=dict(type='str', no_log=True), api_url=dict(type='str'),
        timeout=dict(type='float', default=DEFAULT_TIMEOUT), retries=dict(type='int', default=DEFAULT_RETRIES),
        total_timeout=dict(type='float', default=DEFAULT_TOTAL_TIMEOUT),
        validate_certs=dict(type='bool', default=True), ca_path=dict(type='path'),
    )


CHANGE_EVENT_MUTUALLY_EXCLUSIVE = [('push_url', 'integration_key'), ('push_url', 'api_url')]
