# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Asynchronous delivery of change events from the controller, for the callback.

Private to this collection: not a public API, may change without notice.

``submit()`` only queues; daemon threads, started on first use, deliver with FlashdutyClient, each change on one
thread and in order (``_ordering``), all under one rate limit (``_rate``), leaving an endpoint that is down alone
until a probe (``_health``). ``flush(timeout)`` waits at most ``timeout`` seconds, interrupting retries, backoff
sleeps and requests in flight at the deadline, then spools what is left (``_report``), replayed by ``_replay``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import contextlib
import os
import threading
import time
import weakref
import zlib

from ansible_collections.flashcat.flashduty.plugins.module_utils._client import FlashdutyClient
from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import DEFAULT_RETRIES, DEFAULT_TIMEOUT, FlashdutyError, redact
from ansible_collections.flashcat.flashduty.plugins.module_utils._transport import HttpTransport, TransportError
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _report
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import DEFAULT_RETRY_PAUSE, PROBE, WAIT, EndpointHealth, sort_held
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._ordering import Item, Worker
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._rate import RateLimiter
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._replay import ReplayDispatcher
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._report import FlushReport, Refusals
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import Spool, SpoolError

DEFAULT_MAX_RATE = 40.0
DEFAULT_CONCURRENCY = 8  # enough to keep max_rate at 40/s with round trips of 200 ms
# How long flush() waits, after its deadline, for threads to give back what they were sending.
ABORT_GRACE = 0.25
# How often a waiting flush looks whether cut() was called: a signal handler may not take a lock.
CUT_POLL = 0.05

# What became of one attempt, with its detail: the Delivery; a FlashdutyError not to be tried again; the FlashdutyError
# after every retry (the endpoint is down); why no time was left before the flush deadline; the last problem or None.
DELIVERED, REFUSED, TRANSIENT, LATE, AGAIN = 'delivered', 'refused', 'transient', 'late', 'again'

_SENDERS = weakref.WeakSet()


def open_sender(spool_dir, warn, **options):
    """An EventSender (``options`` as it takes them) that spools to ``spool_dir``, or without a spool when there is
    none or it cannot be used, which ``warn`` says once."""
    spool = None
    if spool_dir:
        try:
            spool = Spool(spool_dir)
        except Exception as exc:  # a SpoolError names the directory and why
            warn('%s: events not delivered by the end of the run will be lost'
                 % (exc if isinstance(exc, SpoolError) else 'the spool directory %s cannot be used (%s)' % (spool_dir, exc)))
    return EventSender(spool=spool, **options)


# A forked child (an Ansible worker) gets fresh locks, no threads and nothing to do: the parent delivers.
os.register_at_fork(after_in_child=lambda: [sender._setup(closed=True) for sender in list(_SENDERS)])  # pylint: disable=protected-access


class _Interrupted(Exception):
    """Raised in a sending thread to stop waiting: with a reason at the flush deadline, without at abort or close."""


class _Transport(HttpTransport):
    """The client's HTTP transport, refusing to post once the threads are told to stop, and keeping its last problem."""

    def __init__(self, stop, endpoint, validate_certs, ca_path):
        super(_Transport, self).__init__(endpoint, validate_certs, ca_path)
        self._stop = stop  # the sender's Event, set when the threads are told to stop
        self.item = self.last_problem = None   # the Item being sent, whose attempts this counts, and its last problem
        self.unreachable = False

    def post(self, body, deadline):
        if self._stop.is_set():
            raise TransportError('interrupted at the flush deadline')
        self.item.attempts += 1
        try:
            response = super(_Transport, self).post(body, deadline)
        except TransportError as exc:
            self.unreachable = exc.unreachable
            if not self._stop.is_set():  # not the failure our own interrupt caused
                self.last_problem = exc.reason
            raise
        self.unreachable = False
        if response.status >= 300:
            self.last_problem = 'HTTP %d' % response.status
        return response


class EventSender:
    """Delivers change events off the caller's thread. No method raises, and only flush() blocks. ``client_options``:
    ``timeout``, ``retries``, ``validate_certs``, ``ca_path`` for FlashdutyClient. ``max_rate``: requests per second over
    all threads and endpoints (0 or None: no limit). ``spool``: a Spool, or None."""

    def __init__(self, client_options=None, max_rate=DEFAULT_MAX_RATE, concurrency=DEFAULT_CONCURRENCY, spool=None,
                 retry_pause=DEFAULT_RETRY_PAUSE):
        options = dict(client_options or {})
        self._timeout = float(options.get('timeout') or DEFAULT_TIMEOUT)
        self._retries = max(0, int(DEFAULT_RETRIES if options.get('retries') is None else options['retries']))
        self._validate_certs = options.get('validate_certs', True) is not False
        self._ca_path = options.get('ca_path')
        self._rate = RateLimiter(max_rate)  # a forked child sends nothing: it keeps the parent's
        self._concurrency = max(1, int(concurrency or 1))
        self.spool = spool
        self._retry_pause = max(0.0, float(retry_pause))
        self._setup()
        _SENDERS.add(self)

    def _setup(self, closed=False):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()
        self._workers = [Worker() for _index in range(self._concurrency)]
        self._replay = ReplayDispatcher(self.spool, self._changed, route=self._route, note=self._note, alive=lambda: not self._closed,
                                        forget=lambda batch: [worker.forget(batch) for worker in self._workers])
        self._endpoints = {}
        self._spooled_keys = set()          # changes with an event in the spool: the rest follow it there
        self._refusals = Refusals()
        self._messages = []
        self._stats = collections.Counter()
        self._generation = 0                # bumped whenever an endpoint goes down, up or is probed
        self._deadline = None               # the flush deadline (a time.monotonic() value) while a flush waits
        self._closed = closed
        self._stop = threading.Event()      # set at close and at the flush deadline: the threads stop now
        self._cut = False                   # cut(): every flush from now on stops waiting at once

    def submit(self, endpoint, event):
        """Queue one event for ``endpoint`` (an Endpoint); returns at once and never raises."""
        try:
            if self._closed:
                return
            if not isinstance(event, dict):
                raise TypeError('the event must be a dict, not %s' % type(event).__name__)
            event = dict(event, labels=dict(event['labels'])) if isinstance(event.get('labels'), dict) else dict(event)
            with self._lock:
                item = Item(self._endpoint(endpoint), event)
                if not self._replay.hold_back(item):
                    self._route(item)
                self._changed.notify_all()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._note('Flashduty change event not queued (internal error): %s' % redact(exc, getattr(endpoint, 'secrets', ())))

    def replay(self, endpoint):
        """Queue the spooled events for ``endpoint`` ahead of anything submitted after; once per endpoint."""
        try:
            if self._closed or self.spool is None:
                return
            with self._lock:
                state = self._endpoint(endpoint)
                done, state.replayed = state.replayed, True
            if not done and self.spool.pending(endpoint):
                with self._lock:
                    self._replay.load(state, _start)
        except SpoolError as exc:
            self._note('Flashduty spool not replayed: %s' % exc.message)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._note('Flashduty spool not replayed (internal error): %s' % redact(exc, getattr(endpoint, 'secrets', ())))

    def drain_messages(self):
        """Warnings produced since the last call (redacted), oldest first."""
        with self._lock:
            messages, self._messages = self._messages, []
        return messages

    def close(self):
        """Stop the threads without waiting; what is still queued is neither sent nor spooled."""
        self._halt(closing=True)

    def cut(self):
        """Make this flush and every later one stop waiting and spool what is left; takes no lock (signal handlers)."""
        self._cut = True

    def flush(self, timeout, write_ahead=False):
        """Wait at most ``timeout`` seconds for delivery, then spool what is left; return a FlushReport. ``write_ahead``:
        first spool every event not yet delivered (what is delivered meanwhile is taken back), so that a process killed
        while this waits loses nothing."""
        started = time.monotonic()
        deadline = started + max(0.0, float(timeout or 0))
        while not self._flush_lock.acquire(timeout=max(0.0, min(CUT_POLL, deadline - time.monotonic()))):  # pylint: disable=consider-using-with
            if self._cut or time.monotonic() >= deadline:
                return self._result(started, 0, True)
        pending, timed_out = 0, False
        try:
            ahead = {}
            if write_ahead and self.spool is not None:  # this run's events: replayed ones are still in their claimed files
                with self._lock:
                    items = [item for item in sum((worker.pending() for worker in self._workers), self._replay.stranded())
                             if item.batch is None]
                ahead = _report.write_ahead(self.spool, sorted(items, key=lambda item: item.seq), self._note)
            timed_out, pending = self._flush(max(0.0, deadline - time.monotonic()), ahead)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._note('Flashduty change events: flush failed (internal error): %s' % (exc,))
        finally:
            with self._lock:
                self._deadline = None
                if not self._closed:
                    self._stop.clear()
                self._changed.notify_all()
            self._flush_lock.release()
        return self._result(started, pending, timed_out)

    def _result(self, started, pending, timed_out):
        with self._lock:
            stats = dict(self._stats, pending=pending, timed_out=timed_out)  # with delivered, replayed, failed, spooled, dropped, lost
        return FlushReport(elapsed=time.monotonic() - started, spool=getattr(self.spool, 'path', None), **stats)

    def _note(self, message):
        """Keep a warning, masking every endpoint's secrets in it (lock not held)."""
        with self._lock:
            self._messages.append(redact(message, [secret for state in self._endpoints.values() for secret in state.endpoint.secrets]))

    def _endpoint(self, endpoint):
        if endpoint.fingerprint not in self._endpoints:
            self._endpoints[endpoint.fingerprint] = EndpointHealth(endpoint, self._retry_pause)
        return self._endpoints[endpoint.fingerprint]

    def _route(self, item):
        """Give an item its thread (lock held)."""
        index = zlib.crc32(('%s\0%s' % item.change).encode('utf-8', 'surrogatepass')) % self._concurrency
        worker = self._workers[index]
        worker.queue.append(item)
        if worker.thread is None and not self._closed:
            worker.thread = _start(self._work, 'flashduty-sender-%d' % index, worker)

    def _halt(self, closing):
        """Make every thread stop now, interrupting requests in flight: closing, or at the flush deadline."""
        with self._lock:
            self._closed = self._closed or closing
            self._stop.set()
            transports = [worker.transport for worker in self._workers if worker.transport is not None]
            self._changed.notify_all()
        for transport in transports:
            transport.interrupt()

    def _work(self, worker):
        try:
            while True:
                with self._lock:
                    item, probe = self._next_item(worker)
                    if item is None:
                        return
                kind, detail = self._send(worker, item, probe)
                with self._lock:
                    finished = self._settle(worker, item, probe, kind, detail)
                    worker.current = worker.transport = None
                    self._changed.notify_all()
                if finished is not None:
                    self._replay.release(finished)
        finally:
            for client in worker.clients.values():
                with contextlib.suppress(Exception):
                    client.close()

    def _next_item(self, worker):
        """Wait for the next item to send (lock held); ``(None, False)`` when the thread should end."""
        held_some = False
        while not self._closed:
            if self._stop.is_set():  # until the flush is over
                self._changed.wait()
                continue
            now = time.monotonic()
            worker.requeue_ready(self._generation, now)
            if not worker.queue:
                if held_some:
                    self._changed.notify_all()  # flush() may be waiting for this thread to run out of work
                    held_some = False
                self._changed.wait(None if worker.due is None else max(0.01, worker.due - now))
                continue
            item = worker.queue.popleft()
            item.stuck = item.stuck or item.change in self._spooled_keys
            admission = None if item.stuck or item.change in worker.blocked else item.endpoint.admit(now)
            if admission in (None, WAIT):
                worker.hold(item, item.endpoint.last_error if admission else None)
                held_some = True
                continue
            self._generation += admission == PROBE
            worker.current = item
            return item, admission == PROBE
        return None, False

    def _send(self, worker, item, probe):
        """Deliver ``item`` (no lock held; a ``probe`` without retries); ``(kind, detail)``, kind one of DELIVERED..."""
        transport = None
        try:
            client = worker.clients.get(item.endpoint.fp)
            if client is None:
                transport = _Transport(self._stop, item.endpoint.endpoint, self._validate_certs, self._ca_path)
                client = worker.clients[item.endpoint.fp] = FlashdutyClient(
                    item.endpoint.endpoint, timeout=self._timeout, sleep=lambda seconds: self._pause(seconds, transport),
                    transport=transport)
            transport = client.transport
            transport.item, transport.last_problem = item, None
            with self._lock:
                worker.transport = transport
            self._take_token()
            client.retries = 0 if probe else self._retries
            return DELIVERED, client.send(item.event, deadline=self._deadline, deadline_name='the flush_timeout')
        except _Interrupted as exc:
            last = transport.last_problem
            if not exc.args:
                return AGAIN, last
            return LATE, '%s (%s)' % (exc.args[0], last) if last else exc.args[0]
        except FlashdutyError as exc:
            if not exc.retryable:
                return REFUSED, exc
            return (AGAIN, getattr(transport, 'last_problem', None)) if self._stop.is_set() else (TRANSIENT, exc)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # A bug, not the endpoint's fault: report it once for this event and go on with the next.
            return REFUSED, FlashdutyError('internal error while sending: %s: %s' % (type(exc).__name__, exc))

    def _pause(self, seconds, transport):
        """The client's sleep between retries: interruptible, bounded by the flush deadline, then rate-limited. Once the
        flush has begun, an endpoint that cannot be reached at all is not tried again: spooled at once."""
        end = time.monotonic() + max(0.0, seconds)
        with self._lock:
            while True:
                if self._stop.is_set():
                    raise _Interrupted()
                if self._deadline is not None and transport.unreachable:
                    raise _Interrupted('not tried again at the end of the run')
                if self._deadline is not None and end > self._deadline:
                    raise _Interrupted('the next retry would come after the flush deadline')
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        self._take_token()

    def _take_token(self):
        """Wait for this thread's slot under the shared rate limit, on the event that only the deadline or close sets."""
        if self._rate.interval is not None:
            wait = 0.0 if self._stop.is_set() else self._rate.reserve(self._deadline)
            if wait is None:
                raise _Interrupted('the rate limit left no time before the flush deadline')
            if self._stop.wait(wait):
                raise _Interrupted()

    def _settle(self, worker, item, probe, kind, detail):
        """Record an outcome (lock held); return a replayed batch whose last event this was, to be released."""
        endpoint = item.endpoint
        if kind in (DELIVERED, REFUSED):
            self._generation += endpoint.answered(probe)
        else:
            self._generation += endpoint.failed(detail, probe) if kind == TRANSIENT and not item.abandoned else endpoint.interrupted(probe)
        if item.abandoned:
            return None  # flush() spooled it already; if it went through after all, the next run sends it again.
        if kind == DELIVERED:
            self._stats.update(delivered=1, replayed=int(item.batch is not None))
        elif kind == REFUSED:
            self._stats['failed'] += 1
            self._refusals.add(endpoint, detail, item.event, from_spool=item.batch is not None)
        elif kind == AGAIN:
            if detail and not item.last_error:
                item.last_error = endpoint.redact(detail)
            worker.queue.appendleft(item)
            return None
        else:  # TRANSIENT, or LATE: not tried again before the flush spools it
            item.first_failure = item.first_failure or time.time()
            item.last_error = detail.reason if kind == TRANSIENT else endpoint.redact(detail)
            item.stuck = item.stuck or kind == LATE
            worker.hold(item)
            return None
        return self._replay.settled(item)

    def _busy(self, deadline):
        """True while something may still be sent before ``deadline`` (lock held); not for an endpoint that could not
        be reached at all: a dead endpoint does not make every run wait for its next probe."""
        return self._replay.busy() or any(
            worker.queue or worker.current is not None
            or any(not item.endpoint.unreachable for item in sort_held(worker.held, deadline)[0]) for worker in self._workers)

    def _wait(self, until, condition):
        """Wait (lock held) while ``condition()`` holds, until the clock reaches ``until``."""
        while condition():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._changed.wait(min(remaining, CUT_POLL))

    def _flush(self, timeout, ahead):
        deadline = time.monotonic() + timeout
        with self._lock:
            self._deadline = deadline
            self._changed.notify_all()
            self._wait(deadline, lambda: self._busy(deadline) and not self._closed and not self._cut)
            timed_out = self._busy(deadline)
        if timed_out:
            self._halt(closing=False)
            with self._lock:
                self._wait(time.monotonic() + ABORT_GRACE, lambda: any(worker.current is not None for worker in self._workers))
        with self._lock:
            held = sum(len(worker.held) for worker in self._workers)  # tried and waiting; the rest is pending
            leftovers = self._replay.stranded(take=True) + [item for worker in self._workers for item in worker.take_all()]
            pending = len(leftovers) - held
            self._spooled_keys.update(item.change for item in leftovers if item.batch is None or not item.batch.closed)
            leftovers.sort(key=lambda item: item.seq)
            batches = self._replay.take_open_batches()
        result = _report.store(self.spool, leftovers, batches, ahead, 'not delivered within the %.1f s flush timeout' % timeout, self._note)
        with self._lock:
            self._stats.update(spooled=result.spooled_count, lost=result.lost_count, dropped=result.dropped)
            messages = self._refusals.take_messages()
        for message in messages + result.messages(self.spool):
            self._note(message)
        return timed_out, pending


def _start(target, name, *args):
    thread = threading.Thread(target=target, name=name, args=args, daemon=True)  # not daemon: ansible-playbook would not exit
    thread.start()
    return thread
