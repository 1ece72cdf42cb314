# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Per-change ordering for the callback's sending threads: one event on its way, and one thread's queues.

Private to this collection: not a public API, may change without notice.

Every event of one change goes to the same thread, and an event that must wait (its endpoint is down, or it
could not be delivered) keeps every later event of its change behind it. The sender's lock guards all of it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import itertools
import time

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._health import sort_held

# Numbered when made (under the sender's lock), in the order submitted, so that an event held back behind a replay
# still sorts after the earlier events of its change when a flush takes it.
_SEQUENCE = itertools.count(1)


class Item:
    """One event on its way to ``endpoint`` (an EndpointHealth); ``batch``: its spool batch when replayed."""

    __slots__ = ('seq', 'endpoint', 'change', 'event', 'batch', 'attempts', 'first_failure', 'last_error', 'stuck', 'abandoned')

    def __init__(self, endpoint, event, batch=None, attempts=0, first_failure=None, last_error=None):
        self.seq = next(_SEQUENCE)
        self.endpoint, self.event, self.batch = endpoint, event, batch
        self.change = (endpoint.fp, '%s' % (event.get('change_key'),))
        self.attempts, self.first_failure, self.last_error = attempts, first_failure, last_error
        self.stuck = False      # not to be tried again before the next flush spools it
        self.abandoned = False  # taken by flush() while its thread was still sending it

    def record(self, fallback):
        """The spool record of this event; ``fallback`` is its last error if it never failed."""
        return dict(event=self.event, first_failure=self.first_failure or time.time(), attempts=self.attempts,
                    last_error=self.last_error or fallback)


class Worker:
    """One sending thread's queues: what it will send, in order, and what waits."""

    def __init__(self):
        self.queue = collections.deque()
        self.held = []          # items waiting for their endpoint or for an earlier item of their change
        self.blocked = set()    # the changes of the items in held: their later items wait too
        self.current = None     # the item being sent
        self.transport = None   # its transport, to interrupt at the flush deadline
        self.thread = None
        self.clients = {}
        self.generation = 0     # the sender's endpoint generation when held was last sorted
        self.due = None         # when a held item's endpoint may next be probed

    def hold(self, item, reason=None):
        """Keep ``item`` (and so every later item of its change) waiting; ``reason``: its last error if it has none."""
        if reason and not item.last_error:
            item.last_error = reason
        self.held.append(item)
        self.blocked.add(item.change)
        due = item.endpoint.due()
        if not item.stuck and due is not None:
            self.due = due if self.due is None else min(self.due, due)

    def requeue_ready(self, generation, now):
        """Put back in front of the queue, in order, the held items whose endpoint may be tried again."""
        if not self.held or (self.generation == generation and (self.due is None or now < self.due)):
            return
        self.generation = generation
        movable, self.held, self.due = sort_held(self.held, now)
        self.queue.extendleft(reversed(movable))
        self.blocked = set(item.change for item in self.held)

    def pending(self):
        """Every item not delivered yet: held, queued and in flight (unless flush() took it)."""
        return self.held + list(self.queue) + ([self.current] if self.current is not None and not self.current.abandoned else [])

    def take_all(self):
        """Take every pending() item out, marking the one in flight abandoned."""
        items = self.pending()
        if self.current is not None:
            self.current.abandoned = True
        self.held, self.blocked, self.queue, self.due = [], set(), collections.deque(), None
        return items

    def forget(self, batch):
        """Drop the items of a replayed ``batch`` (another run took it over)."""
        self.queue = collections.deque(item for item in self.queue if item.batch is not batch)
        self.held = [item for item in self.held if item.batch is not batch]
        self.blocked = set(item.change for item in self.held)
