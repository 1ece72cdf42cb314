# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One delivery attempt from a sending thread, and the stop signals a flush gives the threads.

Private to this collection: not a public API, may change without notice.

A request, its retries and the sleeps between them are all cut short when the flush deadline comes
(``abort()``) or the sender is closed: the transport is interrupted from another thread, and a thread
waiting for its turn under the rate limit is woken.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible_collections.flashcat.flashduty.plugins.module_utils._client import FlashdutyClient
from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import DEFAULT_RETRIES, DEFAULT_TIMEOUT, FlashdutyError
from ansible_collections.flashcat.flashduty.plugins.module_utils._transport import HttpTransport, TransportError

# What became of one attempt (the first element of send()'s answer).
DELIVERED = 'delivered'   # detail: the Delivery
REFUSED = 'refused'       # detail: the FlashdutyError; not to be tried again
TRANSIENT = 'transient'   # detail: the FlashdutyError after every retry; the endpoint is down
LATE = 'late'             # detail: why there was no time left before the flush deadline
AGAIN = 'again'           # detail: the last problem, or None; interrupted, to be tried again


class Interrupted(Exception):
    """Raised inside a sending thread to stop waiting: at flush deadline, abort or close."""

    def __init__(self, reason, late=False):
        super(Interrupted, self).__init__(reason)
        self.reason = reason
        self.late = late


class _Transport(HttpTransport):
    """The client's HTTP transport, made interruptible from another thread and keeping its last problem."""

    def __init__(self, courier, endpoint, validate_certs, ca_path):
        super(_Transport, self).__init__(endpoint, validate_certs, ca_path)
        self._courier = courier
        self.posts = 0
        self.last_problem = None
        self.unreachable = False

    def post(self, body, deadline):
        if self._courier.stopping():
            raise TransportError('interrupted at the flush deadline')
        self.posts += 1
        try:
            response = super(_Transport, self).post(body, deadline)
        except TransportError as exc:
            self.unreachable = exc.unreachable
            if not self._courier.stopping():  # not the failure our own interrupt caused
                self.last_problem = exc.reason
            raise
        self.unreachable = False
        if response.status >= 300:
            self.last_problem = 'HTTP %d' % response.status
        return response


class Courier:
    """Sends items for the sending threads under the shared rate limit (``rate``, a RateLimiter).

    ``changed``: the sender's Condition; deadline, abort(), close() and resume() are changed with its lock
    held. ``client_options``: ``timeout``, ``retries``, ``validate_certs``, ``ca_path``.
    """

    def __init__(self, changed, rate, client_options):
        options = dict(client_options or {})
        self._timeout = float(options.get('timeout') or DEFAULT_TIMEOUT)
        retries = options.get('retries')
        self._retries = max(0, int(DEFAULT_RETRIES if retries is None else retries))
        self._validate_certs = options.get('validate_certs', True) is not False
        self._ca_path = options.get('ca_path')
        self._changed = changed
        self._rate = rate
        self.deadline = None        # the flush deadline (a time.monotonic() value) while a flush waits
        self.aborted = False        # the flush deadline passed: stop now
        self.closed = False
        self._stop = threading.Event()  # set with aborted or closed: wakes threads sleeping for a token

    def stopping(self):
        return self.aborted or self.closed

    def abort(self):
        self.aborted = True
        self._stop.set()

    def close(self):
        self.closed = True
        self._stop.set()

    def resume(self):
        """The flush is over: no deadline, and send again (unless closed)."""
        self.deadline = None
        self.aborted = False
        if not self.closed:
            self._stop.clear()

    def send(self, worker, item, probe):
        """Deliver ``item`` from ``worker``'s thread (no lock held); ``(kind, detail)``, kind one of DELIVERED...

        A ``probe`` is tried once, without retries.
        """
        transport = None
        posts = 0
        try:
            client = self._client(worker, item.endpoint)
            transport = client.transport
            posts = transport.posts
            transport.last_problem = None
            with self._changed:
                worker.transport = transport
            self._take_token()
            client.retries = 0 if probe else self._retries
            return DELIVERED, client.send(item.event, deadline=self.deadline, deadline_name='the flush_timeout')
        except Interrupted as exc:
            if not exc.late:
                return AGAIN, _last_problem(transport)
            return LATE, _join(exc.reason, _last_problem(transport))
        except FlashdutyError as exc:
            if not exc.retryable:
                return REFUSED, exc
            if self.stopping():
                return AGAIN, _last_problem(transport)
            return TRANSIENT, exc
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # A bug, not the endpoint's fault: report it once for this event and go on with the next.
            return REFUSED, FlashdutyError('internal error while sending: %s: %s' % (type(exc).__name__, exc))
        finally:
            if transport is not None:
                item.attempts += transport.posts - posts

    def _client(self, worker, endpoint):
        client = worker.clients.get(endpoint.fp)
        if client is None:
            transport = _Transport(self, endpoint.endpoint, self._validate_certs, self._ca_path)
            client = FlashdutyClient(endpoint.endpoint, timeout=self._timeout, retries=self._retries,
                                     sleep=lambda seconds: self._pause(seconds, transport), transport=transport)
            worker.clients[endpoint.fp] = client
        return client

    def _pause(self, seconds, transport):
        """The client's sleep between retries: interruptible, bounded by the flush deadline, then rate-limited.

        Once the flush has begun, an endpoint that cannot be reached at all is not tried again: its events
        are spooled at once rather than waiting out the backoff.
        """
        end = time.monotonic() + max(0.0, seconds)
        with self._changed:
            while True:
                if self.stopping():
                    raise Interrupted('interrupted')
                if self.deadline is not None and transport.unreachable:
                    raise Interrupted('not tried again at the end of the run', late=True)
                if self.deadline is not None and end > self.deadline:
                    raise Interrupted('the next retry would come after the flush deadline', late=True)
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        self._take_token()

    def _take_token(self):
        """Wait for this thread's request slot of the shared rate limit, on an event only an abort or close sets."""
        if not self._rate.limited:
            return
        if self.stopping():
            raise Interrupted('interrupted')
        wait = self._rate.reserve(self.deadline)
        if wait is None:
            raise Interrupted('the rate limit left no time before the flush deadline', late=True)
        if wait > 0 and self._stop.wait(wait):
            raise Interrupted('interrupted')


def _join(first, second):
    return '%s (%s)' % (first, second) if second else first


def _last_problem(transport):
    return transport.last_problem if transport is not None else None
