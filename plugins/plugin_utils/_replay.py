# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Replaying the spool: claimed spool files, loaded on their own thread, ahead of what is submitted after.

Private to this collection: not a public API, may change without notice.

The dispatcher shares the sender's lock (``changed``, a Condition): its state is part of what a flush waits
for. Methods marked "lock held" are called with it held; the others take it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import time

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import EndpointHealth
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import SpoolError


class Batch:
    """A spool file claimed for replay, open until each of its events is settled."""

    def __init__(self, spool_batch, endpoint):
        self.spool_batch = spool_batch
        self.endpoint = endpoint     # an EndpointHealth
        self.unsettled = len(spool_batch.records)
        self.closed = False


class ReplayDispatcher:
    """Loads spooled events for replay and keeps their claims alive while they are being sent.

    ``spool``: the Spool. ``changed``: the sender's Condition. ``route(endpoint, event, batch, record)``
    queues one replayed event, and ``route_item(item)`` one submitted event held back behind a replay (lock
    held for both). ``forget(batch)`` drops a batch another run took over from the queues (lock held).
    ``note(message)`` keeps a warning. ``alive()`` is false once the sender is closed (lock held).
    """

    def __init__(self, spool, changed, route, route_item, forget, note, alive):
        self.spool = spool
        self._changed = changed
        self._route = route
        self._route_item = route_item
        self._forget = forget
        self._note = note
        self._alive = alive
        self.thread = None
        self._inbox = collections.deque()   # EndpointHealth to load, and items submitted behind them
        self._dispatching = False
        self._releasing = 0                 # finished batches being deleted
        self._batches = []
        self._next_renewal = 0.0

    # ---- the sender's side (lock held) ----------------------------------------

    def busy(self):
        """True while a replay is being loaded, released, or holds submitted events back."""
        return bool(self._inbox or self._dispatching or self._releasing)

    def hold_back(self, item):
        """Queue ``item`` behind a replay being loaded; False when there is none (route it yourself)."""
        if not (self._inbox or self._dispatching):
            return False
        self._inbox.append(item)
        return True

    def load(self, endpoint, start_thread):
        """Queue the spool of ``endpoint`` (an EndpointHealth) for loading; start the thread if needed."""
        self._inbox.append(endpoint)
        if self.thread is None:
            self.thread = start_thread(self._loop, 'flashduty-replay')
        self._changed.notify_all()

    def settled(self, item):
        """One replayed item is done with: its batch if it was the last one open (then call release())."""
        batch = item.batch
        if batch is None or batch.closed:
            return None
        batch.unsettled -= 1
        if batch.unsettled > 0:
            return None
        batch.closed = True
        self._releasing += 1
        return batch

    def stranded(self):
        """Submitted items held back behind a replay, in order."""
        return [entry for entry in self._inbox if not isinstance(entry, EndpointHealth)]

    def take_stranded(self):
        """The items of stranded(), taken out; the endpoints to load stay."""
        stranded = self.stranded()
        self._inbox = collections.deque(entry for entry in self._inbox if isinstance(entry, EndpointHealth))
        return stranded

    def take_open_batches(self):
        """Every batch still open, closed now: the caller gives their remaining events back to the spool."""
        batches = [batch for batch in self._batches if not batch.closed]
        for batch in batches:
            batch.closed = True
        self._batches = []
        return batches

    # ---- no lock held ---------------------------------------------------------

    def release(self, batch):
        """Delete the spool file of a batch whose every event was settled."""
        try:
            self.spool.finish(batch.spool_batch, batch.endpoint.endpoint, [])
        except (SpoolError, OSError) as exc:
            self._note(batch.endpoint.redact('Flashduty spool: cannot release %s: %s' % (batch.spool_batch.name, exc)))
        finally:
            with self._changed:
                self._releasing -= 1
                self._changed.notify_all()

    def _loop(self):
        """Load claimed spool files and route their events, then what was submitted behind them; renew claims."""
        while True:
            with self._changed:
                entry = None
                while True:
                    if not self._alive():
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
                elif isinstance(entry, EndpointHealth):
                    self._load(entry)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                self._note('Flashduty spool not replayed (internal error): %s' % (exc,))
            with self._changed:
                if entry is not None and not isinstance(entry, EndpointHealth):
                    self._route_item(entry)
                while self._inbox and not isinstance(self._inbox[0], EndpointHealth):
                    self._route_item(self._inbox.popleft())
                self._dispatching = bool(self._inbox)
                self._changed.notify_all()

    def _renew_interval(self):
        """Seconds between claim renewals while claimed batches are open, else None (lock held)."""
        if not any(not batch.closed for batch in self._batches):
            return None
        return max(1.0, self.spool.lease / 4)

    def _renew_claims(self):
        with self._changed:
            batches = [batch for batch in self._batches if not batch.closed]
        for batch in batches:
            if not self.spool.renew(batch.spool_batch):
                with self._changed:
                    # Another run took this batch over (ours had stalled past the lease): its events are that run's.
                    batch.closed = True
                    self._forget(batch)

    def _load(self, endpoint):
        try:
            spool_batches, problems = self.spool.claim(endpoint.endpoint)
        except (SpoolError, OSError) as exc:
            self._note(endpoint.redact('Flashduty spool not replayed: %s' % (exc,)))
            return
        for problem in problems:
            self._note(endpoint.redact(problem))
        with self._changed:
            if spool_batches and self._renew_interval() is None:
                self._next_renewal = time.monotonic() + max(1.0, self.spool.lease / 4)
            for spool_batch in spool_batches:
                batch = Batch(spool_batch, endpoint)
                self._batches.append(batch)
                for record in spool_batch.records:
                    self._route(endpoint, record['event'], batch, record)
            self._changed.notify_all()
        for spool_batch in spool_batches:
            if not spool_batch.records:
                self.spool.finish(spool_batch, endpoint.endpoint)
