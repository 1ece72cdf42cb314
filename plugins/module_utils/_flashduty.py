# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Flashduty change-event protocol: payload rules, labels, URLs, redaction and delivery.

Private to this collection: not a public API, may change without notice.

Everything that knows about the Flashduty protocol lives here, so that the
module, the action plugin, the callback and the role all follow the same rules.
Standard library only: the module may run this on a managed host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import email.utils
import json
import math
import random
import re
import socket
import ssl
import time
from collections.abc import Mapping

try:
    import http.client as http_client
    from urllib.parse import parse_qs, quote, unquote, urlsplit
    from urllib.request import getproxies, proxy_bypass
except ImportError:  # pragma: no cover - Python 2 is not supported
    http_client = None

CHANGE_STATUSES = ('Planned', 'Ready', 'Processing', 'Canceled', 'Done')
DEFAULT_API_URL = 'https://api.flashcat.cloud'
PUSH_PATH = '/event/push/change/standard'
KEY_PARAM = 'integration_key'
MASK = '****'

MAX_LABELS = 50
MAX_LABEL_KEY_LENGTH = 128
MAX_LABEL_VALUE_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 2048
LABEL_KEY_PATTERN = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
# Epoch seconds stay below this until the year 5138; anything larger is milliseconds.
MAX_EVENT_TIME = 10 ** 11

RETRYABLE_STATUS = frozenset((429, 500, 502, 503, 504))
RETRYABLE_CODES = frozenset(('RequestTooFrequently', 'InternalError'))
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3
DEFAULT_TOTAL_TIMEOUT = 30.0
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
RETRY_AFTER_MAX = 60.0
USER_AGENT = 'flashcat.flashduty-ansible'

# What to check, by Flashduty error code; shown after the error itself.
ERROR_HINTS = {
    'InvalidParameter': 'check the event fields, and that the push URL matches the integration\'s push URL exactly',
    'Unauthorized': 'the integration key was not accepted: copy the push URL again from the Flashduty integration page',
    'AccessDenied': 'the integration key has no permission for this integration',
    'RouteNotFound': 'the URL path is wrong: it must end in %s' % PUSH_PATH,
    'ResourceNotFound': 'the Flashduty account has no such resource purchased',
    'NoLicense': 'the Flashduty subscription lacks the licence for change events',
    'RequestTooFrequently': 'Flashduty rate-limits to 50 requests per second per account',
    'InternalError': 'Flashduty had a server error; give support the request_id',
}

# A key already masked is left alone, so that redacting twice keeps the text after it.
_KEY_IN_TEXT = re.compile(r'(%s(?:=|%%3D))(?!\*{4})[^&\s\'"<>]+' % KEY_PARAM, re.IGNORECASE)


class FlashdutyError(Exception):
    """A change event that could not be built or delivered.

    The message never contains the integration key. ``field`` names the
    offending parameter for validation errors; ``retryable`` is true when the
    failure was transient (timeouts, resets, 429, 5xx) and the event may be
    sent again later.
    """

    def __init__(self, message, field=None, status_code=None, code=None, request_id=None, retryable=False):
        super(FlashdutyError, self).__init__(message)
        self.message = message
        self.field = field
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.retryable = retryable

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


def url_secrets(push_url):
    """The integration key(s) in a push URL, as written, decoded and encoded: what redact() must mask."""
    keys = set()
    for raw in re.findall(r'(?:^|&)%s=([^&#\s]*)' % KEY_PARAM, urlsplit(_text(push_url or '')).query):
        keys.update((raw, unquote(raw), quote(unquote(raw), safe='')))
    return tuple(sorted(key for key in keys if key))


def mask_url(url):
    """The push URL as it may be shown to people: ``...?integration_key=****``."""
    return redact(url)


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


def build_push_url(push_url=None, integration_key=None, api_url=None):
    """Return the URL to POST to, from a push URL or from an integration key and API URL.

    A push URL wins over a key; ``api_url`` defaults to Flashduty's public API.
    """
    if push_url:
        url, parts = _split_url(push_url, 'push_url')
        keys = [k for k in parse_qs(parts.query, keep_blank_values=True).get(KEY_PARAM, []) if k.strip()]
        if not keys:
            raise FlashdutyError(
                'push_url: must carry the integration key as ?%s=... (copy the push URL from the Flashduty '
                'integration page; got %s)' % (KEY_PARAM, _shown_url(url)), field='push_url')
        return url
    if integration_key:
        key = _text(integration_key).strip()
        if any(ch.isspace() for ch in key):
            raise FlashdutyError('integration_key: must not contain white space', field='integration_key')
        base, parts = _split_url(api_url or DEFAULT_API_URL, 'api_url')
        if parts.query or parts.fragment:
            raise FlashdutyError('api_url: must not carry a query string or fragment (got %s)' % _shown_url(base), field='api_url')
        return '%s%s?%s=%s' % (base.rstrip('/'), PUSH_PATH, KEY_PARAM, quote(key, safe=''))
    raise FlashdutyError(
        'push_url: no Flashduty push URL given: set push_url (or integration_key), the flashduty_push_url '
        'variable, or the FLASHDUTY_PUSH_URL environment variable', field='push_url')


def url_warnings(url, validate_certs=True):
    """Warnings about a valid push URL, and how it is reached, that are still risky."""
    parts = urlsplit(url)
    if parts.scheme == 'http' and parts.hostname not in ('localhost', '::1') and not parts.hostname.startswith('127.'):
        return ['The Flashduty push URL uses plain http to %s: the integration key travels unencrypted; use https.' % parts.hostname]
    if parts.scheme == 'https' and not validate_certs:
        return ['validate_certs is false: the TLS certificate of %s is not checked, so the integration key may go to an '
                'impostor; prefer ca_path with your CA bundle.' % parts.hostname]
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


def normalize_labels(labels, field='labels'):
    """Validate and stringify labels. Returns ``(labels, warnings)``.

    Keys must be Prometheus-style names of at most 128 characters, at most 50
    labels; values of any type become strings, ``None`` drops the label, and
    values over 2048 characters are truncated with a warning.
    """
    if labels is None:
        return {}, []
    require_mapping(labels, field)
    result = {}
    warnings = []
    for raw_key, raw_value in labels.items():
        key = _text(raw_key)
        if len(key) > MAX_LABEL_KEY_LENGTH:
            raise FlashdutyError('%s: label name %r is %d characters long; at most %d are allowed'
                                 % (field, key[:40] + '...', len(key), MAX_LABEL_KEY_LENGTH), field=field)
        if not LABEL_KEY_PATTERN.match(key):
            raise FlashdutyError('%s: label name %r must start with a letter or underscore and contain only letters, '
                                 'digits and underscores' % (field, key), field=field)
        value = label_value(raw_value)
        if value is None:
            continue
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            warnings.append('%s: the value of label %r was %d characters long and was truncated to %d'
                            % (field, key, len(value), MAX_LABEL_VALUE_LENGTH))
            value = truncate(value, MAX_LABEL_VALUE_LENGTH)
        result[key] = value
    if len(result) > MAX_LABELS:
        raise FlashdutyError('%s: %d labels given; Flashduty accepts at most %d' % (field, len(result), MAX_LABELS), field=field)
    return result, warnings


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

    ISO times without a zone are taken as UTC. Milliseconds are refused rather
    than silently sent as a date thousands of years away.
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
        if re.match(r'^-?\d+(\.\d+)?$', text):
            seconds = int(float(text))
        else:
            seconds = _parse_iso8601(text, field)
    if seconds < 0:
        raise FlashdutyError('%s: must not be before 1970 (got %r)' % (field, value), field=field)
    if seconds >= MAX_EVENT_TIME:
        raise FlashdutyError('%s: %r looks like milliseconds; give Unix time in seconds' % (field, value), field=field)
    return seconds


def _parse_iso8601(text, field):
    candidate = text
    if candidate[-1:] in ('Z', 'z'):
        candidate = candidate[:-1] + '+00:00'
    candidate = re.sub(r'([+-]\d\d)(\d\d)$', r'\1:\2', candidate)
    try:
        moment = datetime.datetime.fromisoformat(candidate)
    except ValueError:
        raise FlashdutyError('%s: %r is neither epoch seconds nor an ISO 8601 time such as 2026-11-26T17:40:00Z'
                             % (field, text), field=field)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp())


def _required_text(value, field):
    text = '' if value is None else _text(value)
    if not text.strip():
        raise FlashdutyError('%s: is required and must not be empty' % field, field=field)
    return text


def build_event(change_status, change_key, title, description=None, link=None, labels=None, event_time=None):
    """Build and validate one change event. Returns ``(event, warnings)``.

    The event is a plain dict ready for JSON, holding only the fields given.
    """
    status = _text(change_status) if change_status is not None else ''
    if status not in CHANGE_STATUSES:
        raise FlashdutyError('change_status: must be one of %s (case-sensitive), got %r'
                             % (', '.join(CHANGE_STATUSES), status), field='change_status')
    warnings = []
    event = {
        'change_status': status,
        'change_key': _required_text(change_key, 'change_key'),
        'title': _required_text(title, 'title'),
    }
    seconds = parse_event_time(event_time)
    if seconds is not None:
        event['event_time'] = seconds
    if description is not None and _text(description):
        text = _text(description)
        if len(text) > MAX_DESCRIPTION_LENGTH:
            warnings.append('description: was %d characters long and was truncated to %d'
                            % (len(text), MAX_DESCRIPTION_LENGTH))
            text = truncate(text, MAX_DESCRIPTION_LENGTH)
        event['description'] = text
    if link is not None and _text(link).strip():
        text = _text(link).strip()
        if not re.match(r'^https?://\S+$', text):
            raise FlashdutyError('link: must be an http:// or https:// URL, got %r' % redact(text), field='link')
        event['link'] = text
    normalized, label_warnings = normalize_labels(labels)
    warnings.extend(label_warnings)
    if normalized:
        event['labels'] = normalized
    return event, warnings


class Delivery:
    """What Flashduty answered to an accepted event."""

    def __init__(self, request_id, status_code, attempts, data=None):
        self.request_id = request_id
        self.status_code = status_code
        self.attempts = attempts
        self.data = data


def backoff_delay(attempt, base=BACKOFF_BASE, cap=BACKOFF_MAX, rand=random.random):
    """Delay before retry number ``attempt`` (1-based): exponential, with equal jitter."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return ceiling / 2 + rand() * ceiling / 2


def parse_retry_after(value, now=None):
    """Seconds to wait from a Retry-After header (seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if re.match(r'^\d+(\.\d+)?$', value):
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, moment.timestamp() - now)


class _Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body


class _Headers(dict):
    """Response headers by lower-case name (repeated ones joined with ', '); ``get`` takes any case."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


class _TransientError(Exception):
    """A network failure worth retrying (the message is already redacted)."""


class _StaleConnection(Exception):
    """A reused keep-alive connection turned out closed before any answer."""


class _BadAnswer(Exception):
    """The bytes that came back are not an HTTP/1.x answer."""


# Flashduty's answers are a few hundred bytes: more is a proxy page or worse, never kept whole.
MAX_ANSWER_BYTES = 1024 * 1024
_MAX_LINE = 65536
_MAX_HEADERS = 100


def _read_line(reader):
    line = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise _BadAnswer('a line longer than %d bytes' % _MAX_LINE)
    return line


def _read_answer(reader):
    """Read one answer from ``reader`` (the connection's buffered file): ``(status, _Headers, body, will_close)``.

    Interim 1xx answers are skipped. The body is read by Content-Length, by chunks, or to the end of
    the connection; past MAX_ANSWER_BYTES it is cut and the connection closed.
    """
    while True:
        line = _read_line(reader)
        if not line:
            raise http_client.RemoteDisconnected('the connection was closed without an answer')
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b'HTTP/1.') or not parts[1].isdigit() or len(parts[1]) != 3:
            raise _BadAnswer('not an HTTP/1.x status line: %r' % line[:80])
        status = int(parts[1])
        headers = _Headers()
        for _count in range(_MAX_HEADERS + 1):
            line = _read_line(reader)
            if line in (b'\r\n', b'\n', b''):
                break
            name, colon, value = line.decode('latin-1').partition(':')
            if not colon:
                raise _BadAnswer('a header line without a colon')
            name = name.strip().lower()
            value = value.strip()
            headers[name] = headers[name] + ', ' + value if name in headers else value
        else:
            raise _BadAnswer('more than %d header lines' % _MAX_HEADERS)
        if status >= 200:
            break
    connection = headers.get('connection', '').lower()
    will_close = 'close' in connection or (parts[0] == b'HTTP/1.0' and 'keep-alive' not in connection)
    if status in (204, 304):
        return status, headers, b'', will_close
    if 'chunked' in headers.get('transfer-encoding', '').lower():
        body, complete = _read_chunks(reader)
        return status, headers, body, will_close or not complete
    length = headers.get('content-length')
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise _BadAnswer('Content-Length is not a number')
        length = int(length)
        kept = min(length, MAX_ANSWER_BYTES)
        body = reader.read(kept)
        if len(body) < kept:
            raise _BadAnswer('the connection was closed in the middle of the answer')
        return status, headers, body, will_close or length > kept
    return status, headers, reader.read(MAX_ANSWER_BYTES), True


def _read_chunks(reader):
    """A chunked body: ``(body, complete)``; not complete when it was cut at MAX_ANSWER_BYTES."""
    chunks = []
    size = 0
    while True:
        line = _read_line(reader).split(b';', 1)[0].strip()
        if not line or line.strip(b'0123456789abcdefABCDEF'):  # int() would also take a sign, 0x and underscores
            raise _BadAnswer('a chunk size that is not a hexadecimal number')
        length = int(line, 16)
        if length == 0:
            while _read_line(reader) not in (b'\r\n', b'\n', b''):  # trailers
                pass
            return b''.join(chunks), True
        if size + length > MAX_ANSWER_BYTES:
            chunks.append(reader.read(MAX_ANSWER_BYTES - size))
            return b''.join(chunks), False
        chunk = reader.read(length)
        if len(chunk) < length:
            raise _BadAnswer('the connection was closed in the middle of the answer')
        chunks.append(chunk)
        size += length
        _read_line(reader)


class HttpTransport:
    """One keep-alive HTTP(S) connection to the push endpoint.

    Standard library only, so the module needs nothing beyond ansible-core.
    Honours ``https_proxy``/``http_proxy``/``no_proxy`` like curl and urllib do.
    http.client opens the connection (TCP, a proxy's CONNECT tunnel, TLS); the POST and
    its answer are written and read here, because each event is one request and
    http.client's generic path costs about twice the CPU per request.
    Not thread-safe: each sending thread owns one.
    """

    def __init__(self, url, timeout=DEFAULT_TIMEOUT, validate_certs=True, ca_path=None):
        parts = urlsplit(url)
        self.host = parts.hostname
        self.timeout = timeout
        self._https = parts.scheme == 'https'
        self._port = parts.port or (443 if self._https else 80)
        target = parts.path + ('?' + parts.query if parts.query else '')
        host = '[%s]' % self.host if ':' in self.host else self.host
        if parts.port and parts.port != (443 if self._https else 80):
            host += ':%d' % parts.port
        headers = [
            ('Host', host),
            ('Content-Type', 'application/json; charset=utf-8'),
            ('Accept', 'application/json'),
            ('User-Agent', USER_AGENT),
        ]
        self._ssl_context = _ssl_context(validate_certs, ca_path) if self._https else None
        self._proxy = _proxy_for(parts.scheme, self.host)
        self._proxy_headers = {}
        if self._proxy is not None and self._proxy.username:
            token = '%s:%s' % (unquote(self._proxy.username), unquote(self._proxy.password or ''))
            self._proxy_headers['Proxy-Authorization'] = 'Basic ' + base64.b64encode(token.encode('utf-8')).decode('ascii')
        if self._proxy is not None and not self._https:
            # A plain-http proxy is asked for the absolute URL instead of tunnelling.
            target = url
            headers.extend(self._proxy_headers.items())
        lines = ['POST %s HTTP/1.1' % target] + ['%s: %s' % header for header in headers] + ['Content-Length: ']
        self._head = '\r\n'.join(lines).encode('latin-1')
        self._connection = None
        self._reader = None
        self._reused = False

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def interrupt(self):
        """Make a request blocked on this connection in another thread fail at once."""
        sock = getattr(self._connection, 'sock', None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _connect(self, timeout):
        if self._proxy is None:
            address = (self.host, self._port)
        else:
            address = (self._proxy.hostname, self._proxy.port or 8080)
        if not self._https:
            connection = http_client.HTTPConnection(address[0], address[1], timeout=timeout)
        else:
            connection = http_client.HTTPSConnection(address[0], address[1], timeout=timeout, context=self._ssl_context)
            if self._proxy is not None:
                connection.set_tunnel(self.host, self._port, headers=self._proxy_headers)
        self._connection = connection
        connection.connect()
        self._reader = connection.sock.makefile('rb')

    def post(self, body, timeout):
        """POST ``body`` (bytes); return a _Response or raise _TransientError, _StaleConnection or FlashdutyError."""
        try:
            if self._connection is None:
                self._reused = False
                self._connect(timeout)
            else:
                self._reused = True
                self._connection.sock.settimeout(timeout)
            self._connection.sock.sendall(b'%s%d\r\n\r\n%s' % (self._head, len(body), body))
            status, headers, payload, will_close = _read_answer(self._reader)
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise FlashdutyError('could not verify the TLS certificate of %s: %s (set ca_path to your CA bundle, '
                                 'or validate_certs: false to skip the check)' % (self.host, _reason(exc)))
        except (http_client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            reused = self._reused
            self.close()
            if reused:
                raise _StaleConnection()
            raise _TransientError('the connection was closed by %s before an answer (%s)' % (self.host, _reason(exc)))
        except socket.timeout:
            self.close()
            raise _TransientError('no answer from %s within %.1f s' % (self.host, timeout))
        except _BadAnswer as exc:
            self.close()
            raise _TransientError('%s did not answer in HTTP: %s' % (self.host, _reason(exc)))
        except (OSError, http_client.HTTPException) as exc:
            self.close()
            raise _TransientError('could not reach %s: %s' % (self.host, _reason(exc)))
        if will_close:
            self.close()
        return _Response(status, headers, payload)


def _reason(exc):
    text = redact(exc.strerror if getattr(exc, 'strerror', None) else exc)
    return text or type(exc).__name__


def _ssl_context(validate_certs, ca_path):
    if not validate_certs:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise FlashdutyError('ca_path: cannot load CA certificates from %s: %s' % (ca_path, _reason(exc)), field='ca_path')


def _proxy_for(scheme, host):
    proxies = getproxies()
    proxy = proxies.get(scheme)
    if not proxy or proxy_bypass(host):
        return None
    if '://' not in proxy:
        proxy = 'http://' + proxy
    return urlsplit(proxy)


def describe_response(response):
    """Flashduty's verdict on one response: ``(request_id, error_code, message, data)``."""
    request_id = None
    code = None
    message = None
    data = None
    try:
        document = json.loads(response.body.decode('utf-8')) if response.body else None
    except ValueError:
        document = None
    if isinstance(document, dict):
        request_id = document.get('request_id')
        error = document.get('error')
        if isinstance(error, dict):
            code = error.get('code') or 'UnknownError'
            message = error.get('message') or ''
        elif error:
            code, message = 'UnknownError', _text(error)
        data = document.get('data')
    elif response.status < 300:
        code, message = 'InvalidResponse', 'the answer was not Flashduty JSON: is this the Flashduty push URL, or a proxy page?'
    return request_id, code, message, data


class FlashdutyClient:
    """Sends change events to one push URL, retrying what is transient.

    Retries timeouts, connection failures, 429 (honouring Retry-After) and
    500/502/503/504 with exponential backoff and jitter, up to ``retries``
    times and never past ``deadline`` (a ``time.monotonic()`` value) when one
    is given. Other answers fail at once. Every message is redacted.
    """

    def __init__(self, push_url, timeout=DEFAULT_TIMEOUT, retries=DEFAULT_RETRIES, validate_certs=True, ca_path=None,
                 sleep=time.sleep, transport=None):
        self.push_url = push_url
        self.endpoint = mask_url(push_url)
        # The key itself: masked wherever an answer echoes it.
        self._secrets = url_secrets(push_url)
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._sleep = sleep
        self.transport = transport or HttpTransport(push_url, self.timeout, validate_certs, ca_path)

    def close(self):
        self.transport.close()

    def send(self, event, deadline=None):
        body = json.dumps(event, ensure_ascii=False, separators=(',', ':')).encode('utf-8')
        attempt = 0
        while True:
            attempt += 1
            problem, wait = self._attempt(body, attempt, deadline)
            if isinstance(problem, Delivery):
                return problem
            if not problem.retryable or attempt > self.retries:
                raise self._final(problem, attempt)
            if wait is None:
                wait = backoff_delay(attempt)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and wait >= remaining:
                problem.message += ' (out of time for another attempt)'
                raise self._final(problem, attempt)
            self._sleep(wait)

    def _attempt(self, body, attempt, deadline):
        timeout = self.timeout
        if deadline is not None:
            timeout = min(timeout, max(0.1, deadline - time.monotonic()))
        try:
            try:
                response = self.transport.post(body, timeout)
            except _StaleConnection:
                # The server dropped an idle keep-alive connection: not a failed attempt.
                response = self.transport.post(body, timeout)
        except _TransientError as exc:
            return FlashdutyError(_text(exc), retryable=True), None
        except FlashdutyError as exc:  # not retryable (a TLS certificate that does not verify)
            return exc, None
        request_id, code, message, data = describe_response(response)
        if 200 <= response.status < 300 and code is None:
            return Delivery(request_id, response.status, attempt, data), None
        retryable = response.status in RETRYABLE_STATUS or code in RETRYABLE_CODES
        wait = None
        if response.status == 429:
            wait = parse_retry_after(response.headers.get('Retry-After'))
            if wait is not None:
                wait = min(wait, RETRY_AFTER_MAX)
        summary = 'HTTP %d' % response.status
        if code:
            summary += ' %s' % code
        if message:
            summary += ': %s' % redact(message, self._secrets)
        return FlashdutyError(summary, status_code=response.status, code=code, request_id=request_id, retryable=retryable), wait

    def _final(self, problem, attempts):
        # self.endpoint is masked already: redacting the whole text again would eat the ':' after '=****'.
        text = 'Flashduty did not accept the change event at %s: %s' % (self.endpoint, redact(problem.message, self._secrets))
        if problem.request_id:
            text += ' (request_id: %s)' % redact(problem.request_id, self._secrets)
        if attempts > 1:
            text += ' after %d attempts' % attempts
        hint = ERROR_HINTS.get(problem.code)
        if hint is None and problem.status_code is None and problem.retryable:
            hint = 'check that this machine can reach the Flashduty API (egress, proxy, DNS)'
        if hint:
            text += '; %s' % hint
        problem.message = text
        problem.args = (text,)
        return problem


# Where each endpoint setting may come from, besides a task argument or a callback option.
ENDPOINT_VARIABLES = (('push_url', 'flashduty_push_url'), ('integration_key', 'flashduty_integration_key'),
                      ('api_url', 'flashduty_api_url'))
ENDPOINT_ENVIRONMENT = (('push_url', 'FLASHDUTY_PUSH_URL'), ('integration_key', 'FLASHDUTY_INTEGRATION_KEY'),
                        ('api_url', 'FLASHDUTY_API_URL'))


def environment_endpoint(environ):
    """The endpoint settings found in an environment mapping such as ``os.environ``."""
    return dict((name, environ.get(variable)) for name, variable in ENDPOINT_ENVIRONMENT)


def resolve_push_url(*sources):
    """The push URL from endpoint settings, most specific source first.

    Each source is a mapping with ``push_url``, ``integration_key`` and
    ``api_url`` (missing or empty means unset). The first source naming an
    endpoint (a push URL or a key) wins whole; a key is combined with the
    first ``api_url`` found in that source or any other.
    """
    api_url = next((source.get('api_url') for source in sources if source.get('api_url')), None)
    for source in sources:
        if source.get('push_url'):
            return build_push_url(push_url=source['push_url'])
        if source.get('integration_key'):
            return build_push_url(integration_key=source['integration_key'], api_url=api_url)
    return build_push_url()


def run_change_event(params, check_mode, *fallback_endpoints):
    """The change_event task, from its validated ``params`` to an Ansible result dict.

    The endpoint comes from ``params`` first, then from each fallback source
    in turn (see resolve_push_url); ``event_time`` defaults to now. The result
    carries ``failed``, ``msg`` and ``warnings`` as Ansible expects.
    """
    result = dict(changed=False)
    try:
        push_url = resolve_push_url(params, *fallback_endpoints)
        result['endpoint'] = mask_url(push_url)
        event_time = params.get('event_time')
        event, warnings = build_event(
            change_status=params['change_status'], change_key=params['change_key'], title=params['title'],
            description=params.get('description'), link=params.get('link'), labels=params.get('labels'),
            event_time=time.time() if event_time is None else event_time)
    except FlashdutyError as exc:
        result.update(failed=True, msg=exc.message)
        return result
    result.update(event=event, warnings=url_warnings(push_url, params.get('validate_certs', True)) + warnings)
    if check_mode:
        result.update(changed=True, msg='check mode: the change event is valid and was not sent')
        return result
    client = None
    try:
        client = FlashdutyClient(push_url, timeout=params['timeout'], retries=params['retries'],
                                 validate_certs=params['validate_certs'], ca_path=params['ca_path'])
        delivery = client.send(event, deadline=time.monotonic() + params.get('total_timeout', DEFAULT_TOTAL_TIMEOUT))
    except FlashdutyError as exc:
        result.update(failed=True, msg=exc.message, request_id=exc.request_id, status_code=exc.status_code)
        return result
    finally:
        if client is not None:
            client.close()
    result.update(changed=True, request_id=delivery.request_id, status_code=delivery.status_code,
                  msg='Flashduty accepted the %s event for change %s' % (event['change_status'], event['change_key']))
    return result


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
