# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Delivering one change event: Flashduty's verdict on an answer, retries, and the change_event task.

Private to this collection.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import contextlib
import datetime
import email.utils
import itertools
import json
import random
import re
import time

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    ERROR_HINTS,
    FlashdutyError,
    build_event,
    option_problem,
    resolve_endpoint,
    shown,
    url_warnings,
)
from ansible_collections.flashcat.flashduty.plugins.module_utils._transport import HttpTransport, TransportError

RETRY_AFTER_MAX = 60.0
# What Flashduty answered to an accepted event.
Delivery = collections.namedtuple('Delivery', 'request_id status_code attempts data')


def backoff_delay(attempt, rand=random.random):
    """Delay before retry number ``attempt`` (1-based): 0.5 s doubling up to 8 s, half of it random (equal jitter)."""
    ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
    return ceiling / 2 + rand() * ceiling / 2


def parse_retry_after(value, now=None):
    """Seconds to wait from a Retry-After header (seconds or HTTP date), or None."""
    value = (value or '').strip()
    if re.match(r'^\d+(\.\d+)?$', value):
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, AttributeError):  # AttributeError: None, before Python 3.10
        return None
    return max(0.0, moment.replace(tzinfo=moment.tzinfo or datetime.timezone.utc).timestamp() - (time.time() if now is None else now))


def describe_answer(answer):
    """Flashduty's verdict on one answer, as the server wrote it (not redacted): ``(request_id, error_code, message, data)``."""
    request_id = answer.headers.get('Flashcat-Request-Id')
    code = message = data = None
    try:
        document = json.loads(answer.body.decode('utf-8')) if answer.body else None
    except ValueError:
        document = None
    if isinstance(document, dict):
        request_id = document.get('request_id') or request_id
        error = document.get('error')
        if isinstance(error, dict):
            code, message = error.get('code') or 'UnknownError', error.get('message') or ''
        elif error:
            code, message = 'UnknownError', '%s' % (error,)
        data = document.get('data')
    elif 300 <= answer.status < 400:
        code = 'Redirect'
        location = answer.headers.get('Location')
        message = 'the push URL redirects%s: copy the push URL again from the Flashduty integration page' % (
            ' to %s' % location if location else '')
    elif answer.status < 300:
        code, message = 'InvalidResponse', 'the answer was not Flashduty JSON: is this the Flashduty push URL, or a proxy page?'
    return request_id, code, message, data


class FlashdutyClient:
    """Sends change events to one Endpoint, retrying what is transient.

    Timeouts, connection failures, 429 (honouring Retry-After) and 500/502/503/504 are retried with exponential
    backoff and jitter, up to ``retries`` times and never past send()'s ``deadline``; other answers fail at once.
    ``timeout`` bounds each attempt in wall-clock time. What is taken from an answer is redacted and made one line.
    """

    def __init__(self, endpoint, timeout=DEFAULT_TIMEOUT, retries=DEFAULT_RETRIES, validate_certs=True, ca_path=None,
                 sleep=time.sleep, transport=None):
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._sleep = sleep
        self.transport = transport or HttpTransport(endpoint, validate_certs, ca_path)

    def close(self):
        self.transport.close()

    def send(self, event, deadline=None, deadline_name='the deadline'):
        """Deliver ``event`` by ``deadline`` (time.monotonic(), retries included), named ``deadline_name`` in
        messages ("the total_timeout of 30 s"): a Delivery, or FlashdutyError."""
        body = json.dumps(event, ensure_ascii=False, separators=(',', ':')).encode('utf-8')
        for attempt in itertools.count(1):
            outcome, wait = self._attempt(body, attempt, deadline, deadline_name)
            if isinstance(outcome, Delivery):
                return outcome
            if outcome.retryable and attempt <= self.retries:
                wait = backoff_delay(attempt) if wait is None else wait
                if deadline is None or time.monotonic() + wait < deadline:
                    self._sleep(wait)
                    continue
                outcome.reason += '; no time left for another attempt within %s' % deadline_name
            outcome.message = 'Flashduty did not accept the change event at %s: %s' % (self.endpoint.masked, explain(outcome, attempt))
            outcome.args = (outcome.message,)
            raise outcome

    def _attempt(self, body, attempt, deadline, deadline_name):
        """One attempt: ``(Delivery, None)`` or ``(FlashdutyError not yet final, seconds to wait or None)``."""
        attempt_deadline = time.monotonic() + self.timeout
        limit = 'the timeout of %.1f s' % self.timeout
        if deadline is not None and deadline < attempt_deadline:
            attempt_deadline, limit = deadline, deadline_name
        try:
            answer = self.transport.post(body, attempt_deadline)
        except TransportError as exc:
            reason = exc.reason + (' within %s' % limit if exc.timed_out else '')
            return FlashdutyError(reason, retryable=True, unreachable=exc.unreachable), None
        except FlashdutyError as exc:  # what no retry mends: a TLS certificate that does not verify
            return exc, None
        request_id, code, message, data = describe_answer(answer)
        secrets = self.endpoint.secrets
        request_id = shown(request_id, secrets, 100) if request_id else None
        if 200 <= answer.status < 300 and code is None:
            return Delivery(request_id, answer.status, attempt, data), None
        code = shown(code, secrets, 60) if code else None
        wait = parse_retry_after(answer.headers.get('Retry-After')) if answer.status == 429 else None
        wait = None if wait is None else min(wait, RETRY_AFTER_MAX)
        reason = 'HTTP %d' % answer.status + (' %s' % code if code else '') + (': %s' % shown(message, secrets) if message else '')
        retryable = answer.status in (429, 500, 502, 503, 504) or code in ('RequestTooFrequently', 'InternalError')
        refused = not retryable and code not in (None, 'Redirect', 'InvalidResponse')  # Flashduty's own JSON named the error
        return FlashdutyError(reason, status_code=answer.status, code=code, request_id=request_id, retryable=retryable,
                              refused=refused), wait


def explain(error, attempts=1):
    """A delivery error's reason with its request_id, the attempts made and what to check."""
    hint = ERROR_HINTS.get(error.code)
    if hint is None and error.status_code is None and error.retryable:
        hint = 'check that this machine can reach the Flashduty API (egress, proxy, DNS)'
    return (error.reason + (' (request_id: %s)' % error.request_id if error.request_id else '')
            + (' after %d attempts' % attempts if attempts > 1 else '') + ('; %s' % hint if hint else ''))


def run_change_event(params, check_mode, *fallback_endpoints):
    """The change_event task, from its validated ``params`` to an Ansible result dict (``failed``, ``msg``, ``warnings``...);
    the endpoint comes from ``params``, then from each fallback source in turn (resolve_endpoint())."""
    result = dict(changed=False)
    for name in ('timeout', 'retries', 'total_timeout'):
        problem = option_problem(name, params[name])
        if problem is not None:
            return dict(result, failed=True, msg=problem)
    try:
        endpoint = resolve_endpoint(params, *fallback_endpoints)
        result['endpoint'] = endpoint.masked
        event, warnings = build_event(
            params['change_status'], params['change_key'], params['title'], description=params['description'], link=params['link'],
            labels=params['labels'], event_time=time.time() if params['event_time'] is None else params['event_time'], secrets=endpoint.secrets)
    except FlashdutyError as exc:
        return dict(result, failed=True, msg=exc.message)
    result.update(event=event, warnings=url_warnings(endpoint, params['validate_certs']) + warnings)
    if check_mode:
        return dict(result, changed=True, msg='check mode: the change event is valid and was not sent')
    total_timeout = params['total_timeout']
    try:
        with contextlib.closing(FlashdutyClient(endpoint, timeout=params['timeout'], retries=params['retries'],
                                                validate_certs=params['validate_certs'], ca_path=params['ca_path'])) as client:
            delivery = client.send(event, deadline=time.monotonic() + total_timeout,
                                   deadline_name='the total_timeout of %.1f s' % total_timeout)
    except FlashdutyError as exc:
        return dict(result, failed=True, msg=exc.message, request_id=exc.request_id, status_code=exc.status_code)
    result.update(changed=True, request_id=delivery.request_id, status_code=delivery.status_code,
                  msg='Flashduty accepted the %s event for change %s' % (event['change_status'], event['change_key']))
    return result
