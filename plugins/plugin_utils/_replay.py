# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Replaying the spool: claimed spool files, loaded on their own thread, ahead of what is submitted after.

Private to this collection: not a public API, may change without notice.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import time
from types import SimpleNamespace

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._ordering import Item
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import SpoolError


class ReplayDispatcher:
    """Loads spooled events for replay and keeps their claims alive while they are being sent.

    ``changed``: the sender's Condition, whose lock it shares (its state is part of what a flush waits for): the sender
    calls release() without it, the other public methods with it held. ``route(item)`` queues an Item, replayed or
    submitted behind a replay; ``forget(batch)`` drops a batch (a claimed spool file) another run took over;
    ``alive()``: the sender is not closed (lock held for the three). ``note(message)`` keeps a warning.
    """

    def __init__(self, spool, changed, route, forget, note, alive):
        self.spool = spool
        self._changed = changed
        self._route = route
        self._forget = forget
        self._note = note
        self._alive = alive
        self.thread = None
        self._inbox = collections.deque()   # EndpointHealth to load (the first one while it loads), and items submitted behind them
        self._releasing = 0                 # finished batches being deleted
        self._batches = []
        self._next_renewal = 0.0
        self._renewal = max(1.0, getattr(spool, 'lease', 0) / 4)  # seconds between claim renewals

    def busy(self):
        """True while a replay is being loaded, released, or holds submitted events back."""
        return bool(self._inbox or self._releasing)

    def hold_back(self, item):
        """Queue ``item`` behind a replay being loaded; False when there is none (route it yourself)."""
        if self._inbox:
            self._inbox.append(item)
        return bool(self._inbox)

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
        batch.closed = not batch.unsettled
        self._releasing += batch.closed
        return batch if batch.closed else None

    def stranded(self, take=False):
        """Submitted items held back behind a replay, in order; ``take``: taken out (the endpoints to load stay)."""
        stranded = [entry for entry in self._inbox if isinstance(entry, Item)]
        if take:
            self._inbox = collections.deque(entry for entry in self._inbox if not isinstance(entry, Item))
        return stranded

    def take_open_batches(self):
        """Every batch still open, closed now: the caller gives their remaining events back to the spool."""
        batches, self._batches = self._open(), []
        for batch in batches:
            batch.closed = True
        return batches

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
                while self._alive() and not self._inbox and not (self._open() and time.monotonic() >= self._next_renewal):
                    self._changed.wait(max(0.01, self._next_renewal - time.monotonic()) if self._open() else None)
                if not self._alive():
                    return
                endpoint = self._inbox[0] if self._inbox else None  # left first in the inbox while it loads
                if endpoint is None:
                    self._next_renewal = time.monotonic() + self._renewal
            try:
                if endpoint is None:
                    self._renew_claims()
                else:
                    self._load(endpoint)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                self._note('Flashduty spool not replayed (internal error): %s' % (exc,))
            with self._changed:
                if endpoint is not None:
                    self._inbox.popleft()
                while self._inbox and isinstance(self._inbox[0], Item):  # submitted behind it
                    self._route(self._inbox.popleft())
                self._changed.notify_all()

    def _open(self):
        return [batch for batch in self._batches if not batch.closed]

    def _renew_claims(self):
        with self._changed:
            batches = self._open()
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
            if spool_batches and not self._open():
                self._next_renewal = time.monotonic() + self._renewal
            for spool_batch in spool_batches:
                # Open until each of its events is settled.
                batch = SimpleNamespace(spool_batch=spool_batch, endpoint=endpoint, unsettled=len(spool_batch.records), closed=False)
                self._batches.append(batch)
                for record in spool_batch.records:
                    self._route(Item(endpoint, record['event'], batch, _number(int, record.get('attempts'), 0),
                                     _number(float, record.get('first_failure'), None), record.get('last_error')))
            self._changed.notify_all()
        for spool_batch in spool_batches:
            if not spool_batch.records:
                self.spool.finish(spool_batch, endpoint.endpoint)


def _number(kind, value, default):
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default
