# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Asynchronous delivery of change events from the controller, for the callback.

Private to this collection: not a public API, may change without notice.

``EventSender.submit()`` only appends to an in-memory queue; daemon threads,
started on first use, deliver with the shared FlashdutyClient. Events for one
``(endpoint, change_key)`` always go to the same thread, so they arrive in the
order they were submitted. One token bucket keeps all threads under
``max_rate`` requests per second (retries included). ``flush(timeout)`` waits
at most ``timeout`` seconds, interrupting retries, backoff sleeps and even a
request in progress at the deadline, then writes what is left to the Spool.

An endpoint whose event failed after all retries is "down": its events wait
(in order) and one probe event is tried after a pause that doubles up to a
minute; when it goes through, everything waiting is sent, in order. An event
that could not be delivered keeps every later event of its change behind it,
into the spool if it comes to that.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import os
import threading
import time
import weakref
import zlib

from ansible_collections.flashcat.flashduty.plugins.module_utils._client import FlashdutyClient, explain
from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    FlashdutyError,
    redact,
)
from ansible_collections.flashcat.flashduty.plugins.module_utils._transport import HttpTransport, TransportError
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import SpoolError

DEFAULT_MAX_RATE = 40.0
DEFAULT_CONCURRENCY = 8  # enough to keep max_rate at 40/s with round trips of 200 ms
# After an event failed with every retry, its endpoint is left alone this long, doubling up to the maximum.
DEFAULT_RETRY_PAUSE = 5.0
MAX_RETRY_PAUSE = 60.0
# Refusals (4xx) warned about one by one, per endpoint and error; the rest are counted in one warning.
DEFAULT_WARN_LIMIT = 5
# How long flush() waits, after its deadline, for threads to give back what they were sending.
ABORT_GRACE = 0.25

_SENDERS = weakref.WeakSet()


def _after_fork_in_child():
    for sender in list(_SENDERS):
        sender._forked()  # pylint: disable=protected-access


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Interrupted(Exception):
    """Raised inside a sending thread to stop waiting: at flush deadline, abort or close."""

    def __init__(self, reason, late=False):
        super(_Interrupted, self).__init__(reason)
        self.reason = reason
        self.late = late


class FlushReport:
    """What became of the events: counts since the sender was made, plus this flush's own facts.

    ``delivered`` (``replayed`` of them came from the spool), ``failed``
    (refused for good, not spooled), ``spooled``, ``dropped`` (oldest events
    removed from a full spool), ``lost`` (neither delivered nor spooled);
    ``pending`` events were still queued or in flight when this flush's
    deadline came; ``timed_out``, ``elapsed`` (seconds), ``spool`` (its path or None).
    """

    FIELDS = ('delivered', 'replayed', 'failed', 'spooled', 'dropped', 'lost', 'pending', 'timed_out', 'elapsed', 'spool')

    def __init__(self, **values):
        for name in self.FIELDS:
            setattr(self, name, values.get(name, 0))

    def as_dict(self):
        return dict((name, getattr(self, name)) for name in self.FIELDS)

    def __repr__(self):
        return '<FlushReport %s>' % ', '.join('%s=%r' % item for item in self.as_dict().items())

    def summary(self):
        """One line, e.g. ``Flashduty change events: 12 delivered (2 from the spool), 1 refused, 3 spooled; flush 0.4 s``."""
        parts = ['%d delivered' % self.delivered + (' (%d from the spool)' % self.replayed if self.replayed else '')]
        for count, text in ((self.failed, 'refused'), (self.spooled, 'spooled'), (self.dropped, 'dropped from the full spool'),
                            (self.lost, 'lost')):
            if count:
                parts.append('%d %s' % (count, text))
        tail = 'flush %.1f s' % self.elapsed
        if self.timed_out:
            tail += ', timed out with %d pending' % self.pending
        return 'Flashduty change events: %s; %s' % (', '.join(parts), tail)


class _Endpoint:
    """One Endpoint and what the threads know about it."""

    def __init__(self, endpoint, retry_pause):
        self.endpoint = endpoint
        self.fp = endpoint.fingerprint
        self.masked = endpoint.masked
        self.secrets = endpoint.secrets
        self.first_pause = retry_pause
        self.pause = retry_pause
        self.down_until = None     # monotonic time of the next probe while the endpoint is down
        self.probing = False
        self.last_error = None
        self.unreachable = False   # the last failure had no answer at all (refused, unresolvable)
        self.refusals = {}         # error -> number of events refused with it
        self.replayed = False

    def redact(self, text):
        return redact(text, self.secrets)


class _Item:
    """One event on its way."""

    __slots__ = ('seq', 'endpoint', 'key', 'event', 'batch', 'attempts', 'first_failure', 'last_error', 'stuck', 'abandoned')

    def __init__(self, endpoint, event, batch=None, attempts=0, first_failure=None, last_error=None):
        self.seq = 0
        self.endpoint = endpoint
        self.key = '%s' % (event.get('change_key'),)
        self.event = event
        self.batch = batch
        self.attempts = attempts
        self.first_failure = first_failure
        self.last_error = last_error
        self.stuck = False      # not to be tried again before the next flush spools it
        self.abandoned = False  # taken by flush() while its thread was still sending it

    def record(self, fallback):
        return dict(event=self.event, first_failure=self.first_failure or time.time(), attempts=self.attempts,
                    last_error=self.last_error or fallback)


class _Batch:
    """A spool file claimed for replay, open until each of its events is settled."""

    def __init__(self, spool_batch, endpoint):
        self.spool_batch = spool_batch
        self.endpoint = endpoint
        self.unsettled = len(spool_batch.records)
        self.closed = False


class _Transport(HttpTransport):
    """The client's HTTP transport, made interruptible from another thread and keeping its last problem."""

    def __init__(self, sender, endpoint, validate_certs, ca_path):
        super(_Transport, self).__init__(endpoint, validate_certs, ca_path)
        self._sender = sender
        self.posts = 0
        self.last_problem = None
        self.unreachable = False

    def post(self, body, deadline):
        if self._sender.stopping():
            raise TransportError('interrupted at the flush deadline')
        self.posts += 1
        try:
            response = super(_Transport, self).post(body, deadline)
        except TransportError as exc:
            self.unreachable = exc.unreachable
            if not self._sender.stopping():  # not the failure our own interrupt caused
                self.last_problem = exc.reason
            raise
        self.unreachable = False
        if response.status >= 300:
            self.last_problem = 'HTTP %d' % response.status
        return response


class _Worker:
    """One sending thread's state; guarded by the sender's lock."""

    def __init__(self, index):
        self.index = index
        self.queue = collections.deque()
        self.held = []          # items waiting for their endpoint or for an earlier item of their change
        self.blocked = set()    # (fingerprint, change_key) of the items in held
        self.current = None
        self.transport = None
        self.thread = None
        self.clients = {}
        self.generation = 0     # the sender's endpoint generation when held was last sorted
        self.due = None         # when a held item's endpoint may next be probed


class EventSender:
    """Delivers change events off the caller's thread; see the module documentation.

    ``client_options``: ``timeout``, ``retries``, ``validate_certs``,
    ``ca_path`` for FlashdutyClient. ``max_rate``: requests per second over
    all threads and endpoints (0 or None: no limit). ``concurrency``: sending
    threads. ``spool``: a Spool, or None to only warn about what is left.
    No method raises, and only flush() blocks.
    """

    def __init__(self, client_options=None, max_rate=DEFAULT_MAX_RATE, concurrency=DEFAULT_CONCURRENCY, spool=None,
                 retry_pause=DEFAULT_RETRY_PAUSE, warn_limit=DEFAULT_WARN_LIMIT):
        options = dict(client_options or {})
        self._timeout = float(options.get('timeout') or DEFAULT_TIMEOUT)
        retries = options.get('retries')
        self._retries = max(0, int(DEFAULT_RETRIES if retries is None else retries))
        self._validate_certs = options.get('validate_certs', True) is not False
        self._ca_path = options.get('ca_path')
        self._concurrency = max(1, int(concurrency or 1))
        self.spool = spool
        self._retry_pause = max(0.0, float(retry_pause))
        self._warn_limit = max(0, int(warn_limit))
        if max_rate and float(max_rate) > 0:
            self._interval = 1.0 / float(max_rate)
            burst = max(1, min(5, int(float(max_rate) / 10)))
            self._tolerance = self._interval * (burst - 1)
        else:
            self._interval = None
            self._tolerance = 0.0
        self._pid = os.getpid()
        self._setup()
        _SENDERS.add(self)

    def _setup(self):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()
        self._workers = [_Worker(index) for index in range(self._concurrency)]
        self._inbox = collections.deque()   # submissions behind a replay still being loaded
        self._dispatching = False
        self._releasing = 0                 # replayed spool files being deleted
        self._dispatcher = None
        self._next_renewal = 0.0
        self._flush_timeout = 0.0
        self._endpoints = {}
        self._batches = []
        self._spooled_keys = set()          # changes with an event in the spool: the rest follow it there
        self._messages = []
        self._sequence = 0
        self._tat = 0.0                     # token bucket (GCRA): theoretical arrival time
        self._generation = 0                # bumped whenever an endpoint goes down, up or is probed
        self._deadline = None
        self._abort = False
        self._closed = False
        self._stop = threading.Event()      # set with _abort or _closed: wakes threads sleeping for a token
        self._inert = False
        self._stats = collections.Counter()

    def _forked(self):
        """In a forked child: fresh locks, no threads, and nothing to do (the parent delivers)."""
        self._setup()
        self._inert = True

    def stopping(self):
        """True once the flush deadline passed (until that flush ends) or after close()."""
        return self._abort or self._closed

    # ---- caller side --------------------------------------------------

    def submit(self, endpoint, event):
        """Queue one event for ``endpoint`` (an Endpoint); returns at once and never raises."""
        try:
            if self._inert or self._closed:
                return
            if not isinstance(event, dict):
                raise TypeError('the event must be a dict, not %s' % type(event).__name__)
            event = dict(event)
            if isinstance(event.get('labels'), dict):
                event['labels'] = dict(event['labels'])
            with self._lock:
                item = _Item(self._endpoint(endpoint), event)
                if self._inbox or self._dispatching:
                    self._inbox.append(item)
                else:
                    self._route(item)
                self._changed.notify_all()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._note('Flashduty change event not queued (internal error): %s' % redact(exc, getattr(endpoint, 'secrets', ())))

    def replay(self, endpoint):
        """Queue the spooled events for ``endpoint`` ahead of anything submitted after; once per endpoint."""
        try:
            if self._inert or self._closed or self.spool is None:
                return
            with self._lock:
                state = self._endpoint(endpoint)
                if state.replayed:
                    return
                state.replayed = True
            if not self.spool.pending(endpoint):
                return
            with self._lock:
                self._inbox.append(state)
                if self._dispatcher is None:
                    self._dispatcher = self._start(self._dispatch_loop, 'flashduty-replay')
                self._changed.notify_all()
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
        with self._lock:
            self._closed = True
            self._stop.set()
            transports = [worker.transport for worker in self._workers if worker.transport is not None]
            self._changed.notify_all()
        for transport in transports:
            transport.interrupt()

    def flush(self, timeout):
        """Wait at most ``timeout`` seconds for delivery, then spool what is left; return a FlushReport."""
        started = time.monotonic()
        timeout = max(0.0, float(timeout or 0))
        if self._inert or not self._flush_lock.acquire(timeout=timeout):  # pylint: disable=consider-using-with
            return self._report(started, 0, True)
        pending = 0
        timed_out = False
        try:
            timed_out, pending = self._flush(max(0.0, timeout - (time.monotonic() - started)))
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._note('Flashduty change events: flush failed (internal error): %s' % redact(exc, _all_secrets(self._endpoints)))
        finally:
            with self._lock:
                self._deadline = None
                self._abort = False
                if not self._closed:
                    self._stop.clear()
                self._changed.notify_all()
            self._flush_lock.release()
        return self._report(started, pending, timed_out)

    def _report(self, started, pending, timed_out):
        with self._lock:
            stats = dict(self._stats)
        return FlushReport(delivered=stats.get('delivered', 0), replayed=stats.get('replayed', 0), failed=stats.get('failed', 0),
                           spooled=stats.get('spooled', 0), dropped=stats.get('dropped', 0), lost=stats.get('lost', 0),
                           pending=pending, timed_out=timed_out, elapsed=time.monotonic() - started,
                           spool=self.spool.path if self.spool is not None else None)

    # ---- internals: routing ---------------------------------------------

    def _note(self, message):
        with self._lock:
            self._messages.append(message)

    def _endpoint(self, endpoint):
        state = self._endpoints.get(endpoint.fingerprint)
        if state is None:
            state = self._endpoints[endpoint.fingerprint] = _Endpoint(endpoint, self._retry_pause)
        return state

    def _route(self, item):
        """Give an item its sequence number and its thread (lock held)."""
        self._sequence += 1
        item.seq = self._sequence
        index = zlib.crc32(('%s\0%s' % (item.endpoint.fp, item.key)).encode('utf-8', 'surrogatepass')) % self._concurrency
        worker = self._workers[index]
        worker.queue.append(item)
        if worker.thread is None and not self._closed:
            worker.thread = self._start(self._work, 'flashduty-sender-%d' % index, worker)

    @staticmethod
    def _start(target, name, *args):
        thread = threading.Thread(target=target, name=name, args=args)
        thread.daemon = True  # a non-daemon thread would keep ansible-playbook from exiting
        thread.start()
        return thread

    def _dispatch_loop(self):
        """Load claimed spool files and route their events, then what was submitted behind them; renew claims."""
        while True:
            with self._lock:
                entry = None
                while True:
                    if self._closed or self._inert:
                        return
                    if self._inbox:
                        entry = self._inbox.popleft()
                        self._dispatching = True
                        break
                    interval = self._renew_interval()
                    if interval is not None and time.monotonic() >= self._next_renewal:
                        self._next_renewal = time.monotonic() + interval
                        break
                    self._changed.wait(None if interval is None else max(0.01, self._next_renewal - time.monotonic()))
            try:
                if entry is None:
                    self._renew_claims()
                elif isinstance(entry, _Endpoint):
                    self._load_replay(entry)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                self._note('Flashduty spool not replayed (internal error): %s' % redact(exc, _all_secrets(self._endpoints)))
            with self._lock:
                if isinstance(entry, _Item):
                    self._route(entry)
                while self._inbox and not isinstance(self._inbox[0], _Endpoint):
                    self._route(self._inbox.popleft())
                self._dispatching = bool(self._inbox)
                self._changed.notify_all()

    def _renew_interval(self):
        """Seconds between claim renewals while claimed batches are open, else None (lock held)."""
        if self.spool is None or not any(not batch.closed for batch in self._batches):
            return None
        return max(1.0, self.spool.lease / 4)

    def _renew_claims(self):
        with self._lock:
            batches = [batch for batch in self._batches if not batch.closed]
        for batch in batches:
            if not self.spool.renew(batch.spool_batch):
                with self._lock:
                    self._forget_batch(batch)

    def _forget_batch(self, batch):
        """Another run took this batch over (ours had stalled past the lease): leave its events to it (lock held)."""
        batch.closed = True
        for worker in self._workers:
            worker.queue = collections.deque(item for item in worker.queue if item.batch is not batch)
            worker.held = [item for item in worker.held if item.batch is not batch]
            worker.blocked = set((item.endpoint.fp, item.key) for item in worker.held)

    def _load_replay(self, endpoint):
        try:
            batches, problems = self.spool.claim(endpoint.endpoint)
        except (SpoolError, OSError) as exc:
            self._note(endpoint.redact('Flashduty spool not replayed: %s' % (exc,)))
            return
        for problem in problems:
            self._note(endpoint.redact(problem))
        with self._lock:
            if batches and self._renew_interval() is None:
                self._next_renewal = time.monotonic() + max(1.0, self.spool.lease / 4)
            for spool_batch in batches:
                batch = _Batch(spool_batch, endpoint)
                self._batches.append(batch)
                for record in spool_batch.records:
                    event = record['event']
                    item = _Item(endpoint, event, batch=batch, attempts=_int(record.get('attempts')),
                                 first_failure=_float(record.get('first_failure')), last_error=record.get('last_error'))
                    self._route(item)
            self._changed.notify_all()
        for spool_batch in batches:
            if not spool_batch.records:
                self.spool.finish(spool_batch, endpoint.endpoint)

    # ---- internals: the sending threads -----------------------------------

    def _work(self, worker):
        try:
            while True:
                with self._lock:
                    item, probe = self._next_item(worker)
                    if item is None:
                        return
                outcome = self._send(worker, item, probe)
                with self._lock:
                    finished = self._settle(worker, item, probe, outcome)
                    worker.current = None
                    worker.transport = None
                    if finished is not None:
                        self._releasing += 1
                    self._changed.notify_all()
                if finished is not None:
                    try:
                        self._finish_batch(finished, [])
                    finally:
                        with self._lock:
                            self._releasing -= 1
                            self._changed.notify_all()
        finally:
            for client in worker.clients.values():
                try:
                    client.close()
                except Exception:  # pylint: disable=broad-exception-caught
                    pass
            worker.clients = {}

    def _next_item(self, worker):
        """Wait for the next item to send (lock held); ``(None, False)`` when the thread should end."""
        held_some = False
        while True:
            if self._closed or self._inert:
                return None, False
            if self._abort:
                self._changed.wait()
                continue
            now = time.monotonic()
            if worker.held and (worker.generation != self._generation or (worker.due is not None and now >= worker.due)):
                worker.generation = self._generation
                movable, staying, worker.due = _sort_held(worker.held, now)
                if movable:
                    worker.queue.extendleft(reversed(movable))
                    worker.held = staying
                    worker.blocked = set((item.endpoint.fp, item.key) for item in staying)
            if not worker.queue:
                if held_some:
                    self._changed.notify_all()  # flush() may be waiting for this thread to run out of work
                    held_some = False
                self._changed.wait(None if worker.due is None else max(0.01, worker.due - now))
                continue
            item = worker.queue.popleft()
            endpoint = item.endpoint
            change = (endpoint.fp, item.key)
            if change in self._spooled_keys:
                item.stuck = True
            if item.stuck or change in worker.blocked:
                self._hold(worker, item, None)
                held_some = True
                continue
            probe = False
            if endpoint.down_until is not None:
                if endpoint.probing or now < endpoint.down_until:
                    self._hold(worker, item, endpoint.last_error)
                    held_some = True
                    continue
                endpoint.probing = probe = True
                self._generation += 1
            worker.current = item
            return item, probe

    @staticmethod
    def _hold(worker, item, reason):
        if reason and not item.last_error:
            item.last_error = reason
        worker.held.append(item)
        worker.blocked.add((item.endpoint.fp, item.key))
        down_until = item.endpoint.down_until
        if not item.stuck and down_until is not None and not item.endpoint.probing:
            worker.due = down_until if worker.due is None else min(worker.due, down_until)

    def _client(self, worker, endpoint):
        client = worker.clients.get(endpoint.fp)
        if client is None:
            transport = _Transport(self, endpoint.endpoint, self._validate_certs, self._ca_path)
            client = FlashdutyClient(endpoint.endpoint, timeout=self._timeout, retries=self._retries,
                                     sleep=lambda seconds: self._pause(seconds, transport), transport=transport)
            worker.clients[endpoint.fp] = client
        return client

    def _send(self, worker, item, probe):
        """Deliver one item (no lock held); returns ``(kind, detail)``."""
        endpoint = item.endpoint
        transport = None
        posts = 0
        try:
            client = self._client(worker, endpoint)
            transport = client.transport
            posts = transport.posts
            transport.last_problem = None
            with self._lock:
                worker.transport = transport
            self._take_token()
            client.retries = 0 if probe else self._retries
            return 'delivered', client.send(item.event, deadline=self._deadline, deadline_name='the flush_timeout')
        except _Interrupted as exc:
            if not exc.late:
                return 'again', _last_problem(transport)
            return 'late', _join(exc.reason, _last_problem(transport))
        except FlashdutyError as exc:
            if not exc.retryable:
                return 'refused', exc
            if self.stopping():
                return 'again', _last_problem(transport)
            return 'transient', exc
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # A bug, not the endpoint's fault: report it once for this event and go on with the next.
            return 'refused', FlashdutyError('internal error while sending: %s: %s' % (type(exc).__name__, exc))
        finally:
            if transport is not None:
                item.attempts += transport.posts - posts

    def _settle(self, worker, item, probe, outcome):
        """Record an outcome (lock held); return a _Batch whose last event this was, to be released."""
        kind, detail = outcome
        endpoint = item.endpoint
        if probe:
            endpoint.probing = False
            self._generation += 1
        if kind in ('delivered', 'refused') and endpoint.down_until is not None:
            endpoint.down_until = None
            endpoint.unreachable = False
            endpoint.pause = endpoint.first_pause
            self._generation += 1
        if item.abandoned:
            # flush() spooled it already; if it went through after all, the next run sends it again.
            if kind == 'delivered':
                self._stats['late'] += 1
            return None
        now = time.time()
        if kind == 'delivered':
            self._stats['delivered'] += 1
            if item.batch is not None:
                self._stats['replayed'] += 1
        elif kind == 'refused':
            self._stats['failed'] += 1
            self._refused(item, detail)
        elif kind == 'again':
            if detail and not item.last_error:
                item.last_error = endpoint.redact(detail)
            worker.queue.appendleft(item)
            return None
        else:
            item.first_failure = item.first_failure or now
            if kind == 'transient':
                item.last_error = detail.reason
                endpoint.last_error = item.last_error
                endpoint.unreachable = detail.unreachable
                if endpoint.down_until is None or probe:
                    endpoint.down_until = time.monotonic() + endpoint.pause
                    self._generation += 1
                    if probe:
                        endpoint.pause = min(MAX_RETRY_PAUSE, endpoint.pause * 2)
            else:
                item.last_error = endpoint.redact(detail)
                item.stuck = True
            self._hold(worker, item, None)
            return None
        batch = item.batch
        if batch is not None and not batch.closed:
            batch.unsettled -= 1
            if batch.unsettled <= 0:
                batch.closed = True
                return batch
        return None

    def _refused(self, item, error):
        endpoint = item.endpoint
        cause = ' '.join(part for part in ('HTTP %s' % error.status_code if error.status_code else '', error.code or '') if part)
        cause = cause or 'error'
        count = endpoint.refusals[cause] = endpoint.refusals.get(cause, 0) + 1
        if count > self._warn_limit:
            return
        origin = ' (from the spool)' if item.batch is not None else ''
        text = 'Flashduty did not accept the %s event of change %s%s at %s: %s' % (
            item.event.get('change_status'), item.key, origin, endpoint.masked, explain(error))
        self._messages.append(endpoint.redact(text))

    def _finish_batch(self, batch, remaining):
        try:
            dropped = self.spool.finish(batch.spool_batch, batch.endpoint.endpoint, [item.record(self._fallback()) for item in remaining])
        except (SpoolError, OSError) as exc:
            self._note(batch.endpoint.redact('Flashduty spool: cannot release %s: %s' % (batch.spool_batch.name, exc)))
            return 0
        return dropped

    def _pause(self, seconds, transport):
        """The client's sleep between retries: interruptible, bounded by the flush deadline, then rate-limited.

        Once the flush has begun, an endpoint that cannot be reached at all is not tried again: its events
        are spooled at once rather than waiting out the backoff.
        """
        end = time.monotonic() + max(0.0, seconds)
        with self._lock:
            while True:
                if self._abort or self._closed:
                    raise _Interrupted('interrupted')
                if self._deadline is not None and transport.unreachable:
                    raise _Interrupted('not tried again at the end of the run', late=True)
                if self._deadline is not None and end > self._deadline:
                    raise _Interrupted('the next retry would come after the flush deadline', late=True)
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        self._take_token()

    def _take_token(self):
        """Reserve the next request slot of the shared token bucket (GCRA), then sleep until it comes.

        Each thread reserves its own slot and sleeps on an event only an abort or close sets: no
        thread wakes up for another's request (every wake-up of every waiting thread on each change
        cost more CPU than the request itself when many events are queued).
        """
        if self._interval is None:
            return
        with self._lock:
            if self._abort or self._closed:
                raise _Interrupted('interrupted')
            now = time.monotonic()
            slot = max(self._tat, now)
            start = slot - self._tolerance
            if self._deadline is not None and start > self._deadline:
                raise _Interrupted('the rate limit left no time before the flush deadline', late=True)
            self._tat = slot + self._interval
        if start > now and self._stop.wait(start - now):
            raise _Interrupted('interrupted')

    # ---- internals: flush -------------------------------------------------

    def _fallback(self):
        return 'not delivered within the %.1f s flush timeout' % self._flush_timeout

    def _busy(self, deadline):
        """True while something may still be sent before ``deadline`` (lock held).

        Events for an endpoint that could not be reached at all are not waited for: they go to the spool
        at once, so that a dead endpoint does not make every run wait for its next probe.
        """
        if self._inbox or self._dispatching or self._releasing:
            return True
        for worker in self._workers:
            if worker.queue or worker.current is not None:
                return True
            if worker.held and any(not item.endpoint.unreachable for item in _sort_held(worker.held, deadline)[0]):
                return True
        return False

    def _flush(self, timeout):
        deadline = time.monotonic() + timeout
        with self._lock:
            self._flush_timeout = timeout
            self._deadline = deadline
            self._changed.notify_all()
            while self._busy(deadline) and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            timed_out = self._busy(deadline)
            if timed_out:
                self._abort = True
                self._stop.set()
                self._changed.notify_all()
            transports = [worker.transport for worker in self._workers if worker.transport is not None]
        if timed_out:
            for transport in transports:
                transport.interrupt()
            grace = time.monotonic() + ABORT_GRACE
            with self._lock:
                while any(worker.current is not None for worker in self._workers):
                    remaining = grace - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
        with self._lock:
            leftovers, pending, batches = self._take_leftovers()
        self._store(leftovers, batches)
        return timed_out, pending

    def _take_leftovers(self):
        """Everything not delivered, in submission order, and the open batches (lock held)."""
        leftovers = []
        pending = 0
        for worker in self._workers:
            leftovers.extend(worker.held)
            pending += len(worker.queue)
            leftovers.extend(worker.queue)
            if worker.current is not None:
                worker.current.abandoned = True
                pending += 1
                leftovers.append(worker.current)
            worker.held, worker.blocked, worker.queue, worker.due = [], set(), collections.deque(), None
        stranded = [entry for entry in self._inbox if isinstance(entry, _Item)]
        self._inbox = collections.deque(entry for entry in self._inbox if isinstance(entry, _Endpoint))
        pending += len(stranded)
        leftovers.extend(stranded)
        for item in leftovers:
            if item.batch is None or not item.batch.closed:
                self._spooled_keys.add((item.endpoint.fp, item.key))
        leftovers.sort(key=lambda item: item.seq)
        batches = [batch for batch in self._batches if not batch.closed]
        for batch in batches:
            batch.closed = True
        self._batches = []
        return leftovers, pending, batches

    def _store(self, leftovers, batches):
        """Spool the leftovers (claimed batches back under their own stamp) and say so, once per endpoint."""
        fallback = self._fallback()
        stored = collections.OrderedDict()   # endpoint -> (count, last error)
        lost = collections.OrderedDict()
        dropped = 0
        problem = None
        for batch in batches:
            remaining = [item for item in leftovers if item.batch is batch]
            try:
                dropped += self.spool.finish(batch.spool_batch, batch.endpoint.endpoint, [item.record(fallback) for item in remaining])
                _tally(stored, batch.endpoint, remaining, fallback)
            except (SpoolError, OSError) as exc:
                problem = '%s' % exc
                _tally(lost, batch.endpoint, remaining, fallback)
        own = collections.OrderedDict()
        for item in leftovers:
            if item.batch is None:
                own.setdefault(item.endpoint, []).append(item)
        for endpoint, items in own.items():
            if self.spool is None:
                _tally(lost, endpoint, items, fallback)
                continue
            try:
                dropped += self.spool.write(endpoint.endpoint, [item.record(fallback) for item in items])
                _tally(stored, endpoint, items, fallback)
            except (SpoolError, OSError) as exc:
                problem = '%s' % exc
                _tally(lost, endpoint, items, fallback)
        messages = []
        for endpoint, (count, error) in stored.items():
            messages.append('%s could not be delivered to %s: %s; %s spooled in %s and will be sent by the next run' % (
                _events(count), endpoint.masked, error, 'it is' if count == 1 else 'they are', self.spool.path))
        for endpoint, (count, error) in lost.items():
            where = 'no spool is configured' if self.spool is None else 'the spool failed: %s' % problem
            messages.append('%s could not be delivered to %s: %s; %s lost (%s)' % (
                _events(count), endpoint.masked, error, 'it is' if count == 1 else 'they are', where))
        if dropped:
            messages.append('the Flashduty spool %s holds at most %d change events: the %d oldest were dropped'
                            % (self.spool.path, self.spool.max_events, dropped))
        with self._lock:
            for endpoint in self._endpoints.values():
                for cause, count in sorted(endpoint.refusals.items()):
                    if count > self._warn_limit:
                        messages.append('%d more change events were refused by %s with the same error (%s) as above'
                                        % (count - self._warn_limit, endpoint.masked, cause))
                endpoint.refusals = dict((cause, min(count, self._warn_limit)) for cause, count in endpoint.refusals.items())
            self._stats['spooled'] += sum(count for count, _error in stored.values())
            self._stats['lost'] += sum(count for count, _error in lost.values())
            self._stats['dropped'] += dropped
            self._messages.extend(redact(message, _all_secrets(self._endpoints)) for message in messages)


def _sort_held(held, moment):
    """Split held items into those that may be sent at ``moment`` and those that stay; also the next due time."""
    movable = []
    staying = []
    staying_keys = set()
    due = None
    for item in held:
        endpoint = item.endpoint
        change = (endpoint.fp, item.key)
        if item.stuck or change in staying_keys:
            staying.append(item)
            staying_keys.add(change)
        elif endpoint.down_until is None or (not endpoint.probing and endpoint.down_until <= moment):
            movable.append(item)
        else:
            staying.append(item)
            staying_keys.add(change)
            if not endpoint.probing:
                due = endpoint.down_until if due is None else min(due, endpoint.down_until)
    return movable, staying, due


def _tally(table, endpoint, items, fallback):
    if not items:
        return
    count, error = table.get(endpoint, (0, None))
    last = [item.last_error for item in items if item.last_error]
    table[endpoint] = (count + len(items), last[-1] if last else error or fallback)


def _events(count):
    return '1 change event' if count == 1 else '%d change events' % count


def _join(first, second):
    return '%s (%s)' % (first, second) if second else first


def _last_problem(transport):
    return transport.last_problem if transport is not None else None


def _all_secrets(endpoints):
    secrets = []
    for endpoint in endpoints.values():
        secrets.extend(endpoint.secrets)
    return secrets


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
