# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Asynchronous delivery of change events from the controller, for the callback.

Private to this collection: not a public API, may change without notice.

``EventSender.submit()`` only appends to an in-memory queue; daemon threads,
started on first use, deliver with the shared FlashdutyClient. Events for one
``(endpoint, change_key)`` always go to the same thread, so they arrive in the
order they were submitted. One token bucket (``_rate``) keeps all threads under
``max_rate`` requests per second (retries included). ``flush(timeout)`` waits
at most ``timeout`` seconds, interrupting retries, backoff sleeps and even a
request in progress at the deadline, then writes what is left to the Spool;
with ``write_ahead`` it first writes everything not yet delivered to the spool,
so that a process killed during the wait loses nothing.

An endpoint whose event failed after all retries is down (``_health``): its
events wait, in order, for a probe. An event that could not be delivered keeps
every later event of its change behind it, into the spool if it comes to that.
Spooled events are replayed by ``_replay``; what became of the events is said
by ``_report``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import os
import threading
import time
import weakref
import zlib

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import redact
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _leftovers
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._courier import AGAIN, DELIVERED, REFUSED, TRANSIENT, Courier
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import DEFAULT_RETRY_PAUSE, PROBE, WAIT, EndpointHealth, sort_held
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._ordering import Item, Worker
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._rate import RateLimiter
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._replay import ReplayDispatcher
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._report import FlushReport, Refusals
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import SpoolError

__all__ = ('EventSender', 'FlushReport')

DEFAULT_MAX_RATE = 40.0
DEFAULT_CONCURRENCY = 8  # enough to keep max_rate at 40/s with round trips of 200 ms
# How long flush() waits, after its deadline, for threads to give back what they were sending.
ABORT_GRACE = 0.25
# How often a waiting flush looks whether cut() was called: a signal handler may not take a lock.
CUT_POLL = 0.05

_SENDERS = weakref.WeakSet()


def _after_fork_in_child():
    for sender in list(_SENDERS):
        sender._forked()  # pylint: disable=protected-access


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class EventSender:
    """Delivers change events off the caller's thread; see the module documentation.

    ``client_options``: ``timeout``, ``retries``, ``validate_certs``,
    ``ca_path`` for FlashdutyClient. ``max_rate``: requests per second over
    all threads and endpoints (0 or None: no limit). ``concurrency``: sending
    threads. ``spool``: a Spool, or None to only warn about what is left.
    No method raises, and only flush() blocks.
    """

    def __init__(self, client_options=None, max_rate=DEFAULT_MAX_RATE, concurrency=DEFAULT_CONCURRENCY, spool=None,
                 retry_pause=DEFAULT_RETRY_PAUSE):
        self._client_options = dict(client_options or {})
        self._concurrency = max(1, int(concurrency or 1))
        self.spool = spool
        self._retry_pause = max(0.0, float(retry_pause))
        self._rate = RateLimiter(max_rate)
        self._setup()
        _SENDERS.add(self)

    def _setup(self):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()
        self._workers = [Worker(index) for index in range(self._concurrency)]
        self._courier = Courier(self._changed, self._rate, self._client_options)
        self._replay = ReplayDispatcher(self.spool, self._changed, route=self._route_record, route_item=self._route,
                                        forget=self._forget_batch, note=self._note_redacted, alive=self._alive)
        self._flush_timeout = 0.0
        self._endpoints = {}
        self._spooled_keys = set()          # changes with an event in the spool: the rest follow it there
        self._refusals = Refusals()
        self._messages = []
        self._sequence = 0
        self._generation = 0                # bumped whenever an endpoint goes down, up or is probed
        self._cut = False                   # cut(): every flush from now on stops waiting at once
        self._inert = False
        self._stats = collections.Counter()
        self._rate.reset()

    def _forked(self):
        """In a forked child: fresh locks, no threads, and nothing to do (the parent delivers)."""
        self._setup()
        self._inert = True

    def _alive(self):
        return not (self._courier.closed or self._inert)

    # ---- caller side --------------------------------------------------

    def submit(self, endpoint, event):
        """Queue one event for ``endpoint`` (an Endpoint); returns at once and never raises."""
        try:
            if self._inert or self._courier.closed:
                return
            if not isinstance(event, dict):
                raise TypeError('the event must be a dict, not %s' % type(event).__name__)
            event = dict(event)
            if isinstance(event.get('labels'), dict):
                event['labels'] = dict(event['labels'])
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
            if self._inert or self._courier.closed or self.spool is None:
                return
            with self._lock:
                state = self._endpoint(endpoint)
                if state.replayed:
                    return
                state.replayed = True
            if not self.spool.pending(endpoint):
                return
            with self._lock:
                self._replay.load(state, self._start)
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
            self._courier.close()
            transports = [worker.transport for worker in self._workers if worker.transport is not None]
            self._changed.notify_all()
        for transport in transports:
            transport.interrupt()

    def cut(self):
        """Make the flush under way, and every later one, stop waiting and spool what is left at once.

        Safe in a signal handler: it takes no lock (a waiting flush looks every CUT_POLL seconds).
        """
        self._cut = True

    def flush(self, timeout, write_ahead=False):
        """Wait at most ``timeout`` seconds for delivery, then spool what is left; return a FlushReport.

        ``write_ahead``: first write every event not yet delivered to the spool, and take back what was
        delivered afterwards, so that nothing is lost if the process is killed while this waits.
        """
        started = time.monotonic()
        timeout = max(0.0, float(timeout or 0))
        if self._inert or not self._acquire_flush_lock(started + timeout):
            return self._report(started, 0, True)
        pending = 0
        timed_out = False
        try:
            ahead = self._write_ahead() if write_ahead and self.spool is not None else {}
            timed_out, pending = self._flush(max(0.0, timeout - (time.monotonic() - started)), ahead)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._note_redacted('Flashduty change events: flush failed (internal error): %s' % (exc,))
        finally:
            with self._lock:
                self._courier.resume()
                self._changed.notify_all()
            self._flush_lock.release()
        return self._report(started, pending, timed_out)

    def _acquire_flush_lock(self, deadline):
        while True:
            if self._flush_lock.acquire(timeout=max(0.0, min(CUT_POLL, deadline - time.monotonic()))):  # pylint: disable=consider-using-with
                return True
            if self._cut or time.monotonic() >= deadline:
                return False

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

    def _note_redacted(self, message):
        """Keep a warning whose text may hold any endpoint's secrets."""
        with self._lock:
            self._messages.append(redact(message, self._all_secrets()))

    def _all_secrets(self):
        secrets = []
        for endpoint in list(self._endpoints.values()):
            secrets.extend(endpoint.secrets)
        return secrets

    def _endpoint(self, endpoint):
        state = self._endpoints.get(endpoint.fingerprint)
        if state is None:
            state = self._endpoints[endpoint.fingerprint] = EndpointHealth(endpoint, self._retry_pause)
        return state

    def _route(self, item):
        """Give an item its sequence number and its thread (lock held)."""
        self._sequence += 1
        item.seq = self._sequence
        index = zlib.crc32(('%s\0%s' % (item.endpoint.fp, item.key)).encode('utf-8', 'surrogatepass')) % self._concurrency
        worker = self._workers[index]
        worker.queue.append(item)
        if worker.thread is None and not self._courier.closed:
            worker.thread = self._start(self._work, 'flashduty-sender-%d' % index, worker)

    def _route_record(self, endpoint, event, batch, record):
        """Queue one replayed spool record (lock held)."""
        self._route(Item(endpoint, event, batch=batch, attempts=_int(record.get('attempts')),
                         first_failure=_float(record.get('first_failure')), last_error=record.get('last_error')))

    def _forget_batch(self, batch):
        """Another run took this batch over: drop its events from the queues (lock held)."""
        for worker in self._workers:
            worker.forget(batch)

    @staticmethod
    def _start(target, name, *args):
        thread = threading.Thread(target=target, name=name, args=args)
        thread.daemon = True  # a non-daemon thread would keep ansible-playbook from exiting
        thread.start()
        return thread

    # ---- internals: the sending threads -----------------------------------

    def _work(self, worker):
        try:
            while True:
                with self._lock:
                    item, probe = self._next_item(worker)
                    if item is None:
                        return
                outcome = self._courier.send(worker, item, probe)
                with self._lock:
                    finished = self._settle(worker, item, probe, outcome)
                    worker.current = None
                    worker.transport = None
                    self._changed.notify_all()
                if finished is not None:
                    self._replay.release(finished)
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
            if self._courier.closed or self._inert:
                return None, False
            if self._courier.aborted:
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
            endpoint = item.endpoint
            if item.change in self._spooled_keys:
                item.stuck = True
            if item.stuck or worker.must_wait(item):
                worker.hold(item)
                held_some = True
                continue
            admission = endpoint.admit(now)
            if admission == WAIT:
                worker.hold(item, endpoint.last_error)
                held_some = True
                continue
            if admission == PROBE:
                self._generation += 1
            worker.current = item
            return item, admission == PROBE

    def _settle(self, worker, item, probe, outcome):
        """Record an outcome (lock held); return a replayed batch whose last event this was, to be released."""
        kind, detail = outcome
        endpoint = item.endpoint
        if kind in (DELIVERED, REFUSED):
            changed = endpoint.answered(probe)
        elif kind == TRANSIENT and not item.abandoned:
            changed = endpoint.failed(detail, probe)
        else:
            changed = endpoint.interrupted(probe)
        if changed:
            self._generation += 1
        if item.abandoned:
            # flush() spooled it already; if it went through after all, the next run sends it again.
            if kind == DELIVERED:
                self._stats['late'] += 1
            return None
        if kind == DELIVERED:
            self._stats['delivered'] += 1
            if item.batch is not None:
                self._stats['replayed'] += 1
        elif kind == REFUSED:
            self._stats['failed'] += 1
            self._refusals.add(endpoint, detail, item.event, from_spool=item.batch is not None)
        elif kind == AGAIN:
            if detail and not item.last_error:
                item.last_error = endpoint.redact(detail)
            worker.queue.appendleft(item)
            return None
        else:
            item.first_failure = item.first_failure or time.time()
            if kind == TRANSIENT:
                item.last_error = detail.reason
            else:
                item.last_error = endpoint.redact(detail)
                item.stuck = True
            worker.hold(item)
            return None
        return self._replay.settled(item)

    # ---- internals: flush -------------------------------------------------

    def _fallback(self):
        return 'not delivered within the %.1f s flush timeout' % self._flush_timeout

    def _write_ahead(self):
        """Write this run's events not delivered yet to the spool (replayed ones are still in their claimed files)."""
        with self._lock:
            items = [item for worker in self._workers for item in worker.pending() if item.batch is None]
            items.extend(item for item in self._replay.stranded() if item.batch is None)
        items.sort(key=lambda item: item.seq)
        return _leftovers.write_ahead(self.spool, items, self._note)

    def _busy(self, deadline):
        """True while something may still be sent before ``deadline`` (lock held).

        Events for an endpoint that could not be reached at all are not waited for: they go to the spool
        at once, so that a dead endpoint does not make every run wait for its next probe.
        """
        if self._replay.busy():
            return True
        for worker in self._workers:
            if worker.queue or worker.current is not None:
                return True
            if worker.held and any(not item.endpoint.unreachable for item in sort_held(worker.held, deadline)[0]):
                return True
        return False

    def _wait(self, until, condition, cuttable=True):
        """Wait (lock held) while ``condition()`` holds, until the clock reaches ``until`` or cut() is called."""
        while condition() and not (cuttable and self._cut):
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._changed.wait(min(remaining, CUT_POLL))

    def _flush(self, timeout, ahead):
        deadline = time.monotonic() + timeout
        with self._lock:
            self._flush_timeout = timeout
            self._courier.deadline = deadline
            self._changed.notify_all()
            self._wait(deadline, lambda: self._busy(deadline) and not self._courier.closed)
            timed_out = self._busy(deadline)
            if timed_out:
                self._courier.abort()
                self._changed.notify_all()
            transports = [worker.transport for worker in self._workers if worker.transport is not None]
        if timed_out:
            for transport in transports:
                transport.interrupt()
            with self._lock:
                self._wait(time.monotonic() + ABORT_GRACE, lambda: any(worker.current is not None for worker in self._workers),
                           cuttable=False)
        with self._lock:
            leftovers, pending, batches = self._take_leftovers()
        self._store(leftovers, batches, ahead)
        return timed_out, pending

    def _take_leftovers(self):
        """Everything not delivered, in submission order, and the open batches (lock held)."""
        leftovers = []
        pending = 0
        for worker in self._workers:
            items, fresh = worker.take_all()
            leftovers.extend(items)
            pending += fresh
        stranded = self._replay.take_stranded()
        pending += len(stranded)
        leftovers.extend(stranded)
        for item in leftovers:
            if item.batch is None or not item.batch.closed:
                self._spooled_keys.add(item.change)
        leftovers.sort(key=lambda item: item.seq)
        return leftovers, pending, self._replay.take_open_batches()

    def _store(self, leftovers, batches, ahead):
        """Spool the leftovers and say what became of the events since the last flush."""
        result = _leftovers.store(self.spool, leftovers, batches, ahead, self._fallback(), self._note)
        with self._lock:
            messages = self._refusals.take_messages() + result.messages(self.spool)
            self._stats['spooled'] += result.spooled_count
            self._stats['lost'] += result.lost_count
            self._stats['dropped'] += result.dropped
            secrets = self._all_secrets()
            self._messages.extend(redact(message, secrets) for message in messages)


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
