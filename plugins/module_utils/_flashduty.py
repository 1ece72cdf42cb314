# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Flashduty change-event protocol: payload rules, labels, URLs, redaction and delivery.

Private to this collection: not a public API, may change without notice.

Everything that knows about the Flashduty protocol lives here, so that the
module, the action plugin, the callback and the role all follow the same rules:
the event's fields and limits, labels, the push URL (resolved once into an
Endpoint) and redaction. Sending is in ``_client`` over ``_transport``.
Standard library only, so that the module also runs on its own.
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
LABEL_KEY_PATTERN = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
_NOT_IN_LABEL_KEY = re.compile(r'[^A-Za-z0-9_]')
# Epoch seconds stay below this until the year 5138: a larger number is milliseconds (up to 10^14) or finer.
MAX_EVENT_TIME = 10 ** 11
_MAX_MILLISECONDS = 10 ** 14

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
    """A change event that could not be built or delivered.

    The message never contains the integration key. ``field`` names the
    offending parameter for validation errors. For delivery failures the
    answer's facts travel as fields, never to be parsed back out of the
    message: ``reason`` (what went wrong, without the endpoint), ``status_code``,
    ``code`` (Flashduty's error code), ``request_id``, ``retryable`` (transient:
    timeouts, resets, 429, 5xx; the event may be sent again later) and
    ``unreachable`` (no answer could be had at all: refused, unresolvable).
    """

    def __init__(self, message, field=None, status_code=None, code=None, request_id=None, retryable=False,
                 reason=None, unreachable=False):
        super(FlashdutyError, self).__init__(message)
        self.message = message
        self.field = field
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.retryable = retryable
        self.reason = message if reason is None else reason
        self.unreachable = unreachable

    def __str__(self):
        return self.message


def _text(value):
    """Return an exact ``str`` (not Ansible's tagged or unsafe subclasses)."""
    if isinstance(value, bytes):
        return value.decode('utf-8', errors='replace')
    return '%s' % (value,)


def redact(text, secrets=()):
    """Mask integration keys in ``text``: in URLs, and any literal ``secrets`` given."""
    text = _text(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return _KEY_IN_TEXT.sub(r'\g<1>' + MASK, text)


def _key_forms(query):
    """The integration key(s) in a URL's query string, as written, decoded and encoded: what redact() must mask."""
    keys = set()
    for raw in re.findall(r'(?:^|&)%s=([^&#\s]*)' % KEY_PARAM, query):
        keys.update((raw, unquote(raw), quote(unquote(raw), safe='')))
    return tuple(sorted(key for key in keys if key))


def mask_url(url):
    """A URL as it may be shown to people: ``...?integration_key=****``."""
    return redact(url)


def shown(text, secrets=(), limit=300):
    """Text that came from elsewhere (a server's answer), fit for one line of a message.

    The key is masked, control characters (CR, LF...) become spaces so that a
    warning stays one line, and the text is cut at ``limit`` characters.
    """
    text = ''.join(' ' if ch < ' ' or ch == '\x7f' else ch for ch in redact(text, secrets))
    return truncate(' '.join(text.split()), limit)


class Endpoint(collections.namedtuple('Endpoint', 'url scheme host port target masked secrets fingerprint')):
    """A push URL resolved once, with everything derived from it; pass this, not the URL.

    ``target`` is what a request asks for (path and query), ``masked`` the URL as
    it may be shown, ``secrets`` what redact() must mask (the key as written,
    decoded and encoded), ``fingerprint`` the sha256 hex of the URL, which the
    spool stores instead of the URL.
    """

    __slots__ = ()

    def redact(self, text):
        return redact(text, self.secrets)

    def __repr__(self):
        return '<Endpoint %s>' % self.masked


def endpoint_for(url, parts=None):
    """The Endpoint of a URL that build_endpoint() validated (``parts``: its urlsplit(), when at hand)."""
    parts = parts or urlsplit(url)
    https = parts.scheme == 'https'
    return Endpoint(url=url, scheme=parts.scheme, host=parts.hostname, port=parts.port or (443 if https else 80),
                    target=parts.path + ('?' + parts.query if parts.query else ''), masked=mask_url(url),
                    secrets=_key_forms(parts.query), fingerprint=hashlib.sha256(url.encode('utf-8', 'surrogatepass')).hexdigest())


def _shown_url(url):
    """A URL for a validation error: its query string masked whole, since it may hold the key under a mistyped name."""
    head, separator, _query = _text(url).partition('?')
    return redact(head) + (separator + MASK if separator else '')


def _split_url(url, field):
    url = _text(url).strip()
    if not url:
        raise FlashdutyError('%s: must not be empty' % field, field=field)
    if any(ch.isspace() for ch in url):
        raise FlashdutyError('%s: must not contain spaces or other white space (got %s)' % (field, _shown_url(url)), field=field)
    if not url.isascii():
        raise FlashdutyError('%s: must be ASCII: percent-encode other characters, and write an international host name in '
                             'its xn-- form (got %s)' % (field, _shown_url(url)), field=field)
    parts = urlsplit(url)
    if parts.scheme not in ('http', 'https') or '://' not in url:
        raise FlashdutyError(
            '%s: must be an https:// URL (got %s)' % (field, _shown_url(url) if '://' in url else 'no scheme in %s' % _shown_url(url)),
            field=field)
    if not parts.hostname:
        raise FlashdutyError('%s: has no host name (got %s)' % (field, _shown_url(url)), field=field)
    try:
        _port = parts.port  # raises ValueError when not a number from 0 to 65535
    except ValueError:
        raise FlashdutyError('%s: has an invalid port (got %s)' % (field, _shown_url(url)), field=field)
    return url, parts


def build_endpoint(push_url=None, integration_key=None, api_url=None):
    """The Endpoint to POST to, from a push URL or from an integration key and API URL.

    A push URL wins over a key; ``api_url`` defaults to Flashduty's public API.
    """
    if push_url:
        url, parts = _split_url(push_url, 'push_url')
        keys = [k for k in parse_qs(parts.query, keep_blank_values=True).get(KEY_PARAM, []) if k.strip()]
        if not keys:
            raise FlashdutyError(
                'push_url: must carry the integration key as ?%s=... (copy the push URL from the Flashduty '
                'integration page; got %s)' % (KEY_PARAM, _shown_url(url)), field='push_url')
        return endpoint_for(url, parts)
    if integration_key:
        key = _text(integration_key).strip()
        if any(ch.isspace() for ch in key):
            raise FlashdutyError('integration_key: must not contain white space', field='integration_key')
        base, parts = _split_url(api_url or DEFAULT_API_URL, 'api_url')
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
        return json.dumps(value, separators=(',', ':'), ensure_ascii=False, sort_keys=False, default=_text)
    return _text(value)


def label_key(name):
    """A label name in Prometheus style: ``k8s-cluster`` -> ``k8s_cluster``, ``2fa`` -> ``_2fa``."""
    key = _NOT_IN_LABEL_KEY.sub('_', _text(name).strip())
    if key[:1].isdigit():
        key = '_' + key
    return key


def masked_warning(fields):
    """The one warning for an event whose content held an integration key, naming where."""
    return ('%s held the Flashduty integration key or push URL; it was masked as %s. Never put the push URL or the key '
            'in event content' % (', '.join(fields), MASK))


def normalize_labels(labels, field='labels', secrets=(), strict=True):
    """Validate and stringify labels. Returns ``(labels, warnings)``.

    Names are rewritten to Prometheus style (see label_key) with one warning
    naming each old and new name; one that is then empty or over 128
    characters, or the same as another's, is an error. Values of any type
    become strings, ``None`` drops the label, ``secrets`` (and any
    ``integration_key=...``) are masked with one warning, and values over 2048
    characters are truncated with a warning. At most 50 labels.
    With ``strict`` false, a label that cannot be rewritten is left out with a
    warning instead, and the cap of 50 is left to the caller.
    """
    result, warnings, masked = normalize_labels_masked(labels, field, secrets, strict)
    if masked:
        warnings.append(masked_warning(masked))
    return result, warnings


def normalize_labels_masked(labels, field, secrets, strict):
    """normalize_labels(), with the fields whose content was masked returned apart, not warned about:
    ``(labels, warnings, masked)``; for a caller that names them in the one warning of its event."""
    if labels is None:
        return {}, [], []
    require_mapping(labels, field)
    result = {}
    origins = {}
    warnings = []
    rewritten = []
    masked = []
    for raw_key, raw_value in labels.items():
        value = label_value(raw_value)
        if value is None:
            continue
        name = redact(raw_key, secrets)
        key = label_key(name)
        problem = None
        if not key:
            problem = 'a label name is empty'
        elif len(key) > MAX_LABEL_KEY_LENGTH:
            problem = 'label name %r is %d characters long; at most %d are allowed' % (key[:40] + '...', len(key), MAX_LABEL_KEY_LENGTH)
        elif key in origins:
            problem = 'label names %r and %r are both %r in Prometheus style; rename one' % (origins[key], name, key)
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
        if len(text) > MAX_LABEL_VALUE_LENGTH:
            warnings.append('%s: the value of label %r was %d characters long and was truncated to %d'
                            % (field, key, len(text), MAX_LABEL_VALUE_LENGTH))
            text = truncate(text, MAX_LABEL_VALUE_LENGTH)
        origins[key] = name
        result[key] = text
    if rewritten:
        warnings.insert(0, '%s: label names rewritten to Prometheus style (letters, digits and underscores, not starting '
                        'with a digit): %s' % (field, ', '.join(rewritten)))
    if strict and len(result) > MAX_LABELS:
        raise FlashdutyError('%s: %d labels given; Flashduty accepts at most %d' % (field, len(result), MAX_LABELS), field=field)
    return result, warnings, masked


def require_mapping(labels, field='labels'):
    """Fail unless ``labels`` is a dict of label names to values."""
    if not isinstance(labels, Mapping):
        raise FlashdutyError('%s: must be a dict (a mapping of label names to values), got %s' % (field, _type_name(labels)), field=field)


def truncate(text, limit):
    """Shorten ``text`` to ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    return text[:limit - 3] + '...'


def _type_name(value):
    if isinstance(value, (list, tuple)):
        return 'a list'
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, (int, float)):
        return 'a number'
    if isinstance(value, (str, bytes)):
        return 'a string'
    return type(value).__name__


def parse_event_time(value, field='event_time'):
    """Unix seconds from epoch seconds (int, float or digits) or an ISO 8601 string.

    ISO times without a zone are taken as UTC, and any ISO time is valid (Flashduty
    takes int64 seconds). A number too large for seconds (10^11 is the year 5138)
    is refused, as milliseconds when it is in their range, rather than sent as a
    date thousands of years away.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise FlashdutyError('%s: must be epoch seconds or an ISO 8601 time, got a boolean' % field, field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise FlashdutyError('%s: must be a finite number of epoch seconds, got %r' % (field, value), field=field)
    if isinstance(value, (int, float)):
        seconds = int(value)
    else:
        text = _text(value).strip()
        if not re.match(r'^-?\d+(\.\d+)?$', text):
            seconds = _parse_iso8601(text, field)
            if seconds < 0:
                raise FlashdutyError('%s: must not be before 1970 (got %r)' % (field, value), field=field)
            return seconds
        seconds = int(float(text))
    if seconds < 0:
        raise FlashdutyError('%s: must not be before 1970 (got %r)' % (field, value), field=field)
    if seconds >= _MAX_MILLISECONDS:
        raise FlashdutyError('%s: %r is too large for Unix time in seconds (10^11 seconds is the year 5138); give Unix time '
                             'in seconds or an ISO 8601 time' % (field, value), field=field)
    if seconds >= MAX_EVENT_TIME:
        raise FlashdutyError('%s: %r looks like milliseconds (Unix seconds stay below 10^11 until the year 5138); give Unix '
                             'time in seconds' % (field, value), field=field)
    return seconds


def _parse_iso8601(text, field):
    candidate = text
    if candidate[-1:] in ('Z', 'z'):
        candidate = candidate[:-1] + '+00:00'
    candidate = re.sub(r'([+-]\d\d)(\d\d)$', r'\1:\2', candidate)
    try:
        moment = datetime.datetime.fromisoformat(candidate)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return int(moment.timestamp())
    except (ValueError, OverflowError):
        raise FlashdutyError('%s: %r is neither epoch seconds nor an ISO 8601 time such as 2026-11-26T17:40:00Z'
                             % (field, text), field=field)


def _required_text(value, field):
    text = '' if value is None else _text(value)
    if not text.strip():
        raise FlashdutyError('%s: is required and must not be empty' % field, field=field)
    return text


def build_event(change_status, change_key, title, description=None, link=None, labels=None, event_time=None, secrets=(),
                masked=()):
    """Build and validate one change event. Returns ``(event, warnings)``.

    The event is a plain dict ready for JSON, holding only the fields given.
    ``secrets`` (the Endpoint's secrets) and any ``integration_key=...``
    are masked in every field, with one warning, before the event is shown,
    spooled or sent; ``masked`` names fields masked before (user labels), for
    that warning.
    """
    status = _text(change_status) if change_status is not None else ''
    if status not in CHANGE_STATUSES:
        raise FlashdutyError('change_status: must be one of %s (case-sensitive), got %r'
                             % (', '.join(CHANGE_STATUSES), redact(status, secrets)), field='change_status')
    warnings = []
    masked = list(masked)

    def scrub(text, field):
        clean = redact(text, secrets)
        if clean != text:
            masked.append(field)
        return clean

    key = scrub(_required_text(change_key, 'change_key'), 'change_key')
    if len(key) > MAX_CHANGE_KEY_LENGTH:
        raise FlashdutyError('change_key: is %d characters long; at most %d are allowed (a shortened key could merge '
                             'different changes)' % (len(key), MAX_CHANGE_KEY_LENGTH), field='change_key')
    text = scrub(_required_text(title, 'title'), 'title')
    if len(text) > MAX_TITLE_LENGTH:
        warnings.append('title: was %d characters long and was truncated to %d' % (len(text), MAX_TITLE_LENGTH))
        text = truncate(text, MAX_TITLE_LENGTH)
    event = {'change_status': status, 'change_key': key, 'title': text}
    seconds = parse_event_time(event_time)
    if seconds is not None:
        event['event_time'] = seconds
    if description is not None and _text(description):
        text = scrub(_text(description), 'description')
        if len(text) > MAX_DESCRIPTION_LENGTH:
            warnings.append('description: was %d characters long and was truncated to %d'
                            % (len(text), MAX_DESCRIPTION_LENGTH))
            text = truncate(text, MAX_DESCRIPTION_LENGTH)
        event['description'] = text
    if link is not None and _text(link).strip():
        text = scrub(_text(link).strip(), 'link')
        if not re.match(r'^https?://\S+$', text):
            raise FlashdutyError('link: must be an http:// or https:// URL, got %r' % text, field='link')
        event['link'] = text
    normalized, label_warnings, masked_labels = normalize_labels_masked(labels, 'labels', secrets, strict=True)
    warnings.extend(label_warnings)
    masked.extend(masked_labels)
    if normalized:
        event['labels'] = normalized
    if masked:
        warnings.append(masked_warning(masked))
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
    if low_allowed:
        rule = 'from %s to %s' % (low, high)
    else:
        rule = 'greater than %s and at most %s' % (low, high)
    return '%s: must be %s%s, got %s' % (name, rule, ' %s' % unit if unit else '', redact(value))


# Where each endpoint setting comes from, besides a task argument: the one table every entry point reads.
# (setting, play or inventory variable, environment variable, key in the [flashduty] section of ansible.cfg)
ENDPOINT_SETTINGS = (
    ('push_url', 'flashduty_push_url', 'FLASHDUTY_PUSH_URL', 'push_url'),
    ('integration_key', 'flashduty_integration_key', 'FLASHDUTY_INTEGRATION_KEY', 'integration_key'),
    ('api_url', 'flashduty_api_url', 'FLASHDUTY_API_URL', 'api_url'),
)
INI_SECTION = 'flashduty'
ENDPOINT_VARIABLES = tuple(variable for _setting, variable, _env, _ini in ENDPOINT_SETTINGS)


def endpoint_settings(mapping, column):
    """The endpoint settings found in ``mapping`` under the names of one ``column`` of ENDPOINT_SETTINGS.

    ``column`` is ``'variable'``, ``'environment'`` or ``'ini'``; e.g.
    ``endpoint_settings(os.environ, 'environment')``.
    """
    index = ('variable', 'environment', 'ini').index(column) + 1
    return dict((row[0], mapping.get(row[index])) for row in ENDPOINT_SETTINGS)


def resolve_endpoint(*sources):
    """The Endpoint from endpoint settings, most specific source first.

    Each source is a mapping with ``push_url``, ``integration_key`` and
    ``api_url`` (missing or empty means unset). The first source naming an
    endpoint (a push URL or a key) wins whole; a key is combined with the
    first ``api_url`` found in that source or any other.
    """
    api_url = next((source.get('api_url') for source in sources if source.get('api_url')), None)
    for source in sources:
        if source.get('push_url'):
            return build_endpoint(push_url=source['push_url'])
        if source.get('integration_key'):
            return build_endpoint(integration_key=source['integration_key'], api_url=api_url)
    return build_endpoint()


def change_event_argument_spec():
    """The change_event task's options: shared by the module and its action plugin."""
    return dict(
        change_key=dict(type='str', required=True, no_log=False),
        change_status=dict(type='str', required=True, choices=list(CHANGE_STATUSES), aliases=['status']),
        title=dict(type='str'),
        description=dict(type='str'),
        link=dict(type='str'),
        labels=dict(type='dict'),
        event_time=dict(type='raw'),
        automatic_labels=dict(type='bool', default=True),
        push_url=dict(type='str', no_log=True),
        integration_key=dict(type='str', no_log=True),
        api_url=dict(type='str'),
        timeout=dict(type='float', default=DEFAULT_TIMEOUT),
        retries=dict(type='int', default=DEFAULT_RETRIES),
        total_timeout=dict(type='float', default=DEFAULT_TOTAL_TIMEOUT),
        validate_certs=dict(type='bool', default=True),
        ca_path=dict(type='path'),
    )


CHANGE_EVENT_MUTUALLY_EXCLUSIVE = [('push_url', 'integration_key'), ('push_url', 'api_url')]
