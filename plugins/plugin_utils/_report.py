# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What became of the callback's change events: the flush report and the warnings that say so.

Private to this collection: not a public API, may change without notice.

Every warning here is built from structured fields (an EndpointHealth's masked URL, a FlashdutyError's
reason, status_code, code and request_id, counts): nothing is parsed back out of a message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections

from ansible_collections.flashcat.flashduty.plugins.module_utils._client import explain
from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import ERROR_HINTS

# Request ids quoted in one refusal warning; the rest of the events it counts are only counted.
MAX_REQUEST_IDS = 5


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


class _Refusal:
    __slots__ = ('endpoint', 'error', 'event', 'from_spool', 'count', 'request_ids')

    def __init__(self, endpoint, error, event, from_spool):
        self.endpoint = endpoint
        self.error = error          # the first refusal's FlashdutyError: its reason and code stand for all
        self.event = event
        self.from_spool = from_spool
        self.count = 0
        self.request_ids = []


class Refusals:
    """Events Flashduty refused for good, by endpoint and kind of refusal (HTTP status and Flashduty code).

    Counted as they come, in the order of the first of each kind; said once, in one warning per kind and
    endpoint, when the run ends (take_messages()).
    """

    def __init__(self):
        self._kinds = collections.OrderedDict()

    def add(self, endpoint, error, event, from_spool=False):
        """One refused ``event`` for ``endpoint`` (an EndpointHealth), with ``error`` (a FlashdutyError)."""
        kind = (endpoint.fp, error.status_code, error.code)
        refusal = self._kinds.get(kind)
        if refusal is None:
            refusal = self._kinds[kind] = _Refusal(endpoint, error, event, from_spool)
        refusal.count += 1
        if error.request_id and len(refusal.request_ids) < MAX_REQUEST_IDS:
            refusal.request_ids.append(error.request_id)

    def take_messages(self):
        """One warning per kind of refusal and endpoint since the last call (unredacted: the caller redacts)."""
        refusals, self._kinds = list(self._kinds.values()), collections.OrderedDict()
        return [refusal_message(refusal) for refusal in refusals]


def refusal_message(refusal):
    endpoint, error = refusal.endpoint, refusal.error
    if refusal.count == 1:
        origin = ' (from the spool)' if refusal.from_spool else ''
        return 'Flashduty did not accept the %s event of change %s%s at %s: %s' % (
            refusal.event.get('change_status'), refusal.event.get('change_key'), origin, endpoint.masked, explain(error))
    text = 'Flashduty refused %s at %s: %s' % (events_phrase(refusal.count), endpoint.masked, error.reason)
    ids = refusal.request_ids
    if len(ids) == refusal.count:
        text += ' (request_ids: %s)' % ', '.join(ids)
    elif len(ids) == 1:
        text += ' (request_id of the first: %s)' % ids[0]
    elif ids:
        text += ' (request_ids of the first %d: %s)' % (len(ids), ', '.join(ids))
    hint = ERROR_HINTS.get(error.code)  # a refusal is not retryable: the hint is the code's, as in explain()
    return text + ('; %s' % hint if hint else '')


class Leftovers:
    """Events not delivered at a flush, by endpoint: how many were spooled and how many lost, with the last error."""

    def __init__(self, fallback):
        self.fallback = fallback   # the error of an event that never failed: it ran out of time
        self.stored = collections.OrderedDict()
        self.lost = collections.OrderedDict()
        self.dropped = 0
        self.spool_problem = None

    def spooled(self, endpoint, items):
        _count_into(self.stored, endpoint, items, self.fallback)

    def not_spooled(self, endpoint, items, problem=None):
        _count_into(self.lost, endpoint, items, self.fallback)
        if problem is not None:
            self.spool_problem = problem

    @property
    def spooled_count(self):
        return sum(count for count, _error in self.stored.values())

    @property
    def lost_count(self):
        return sum(count for count, _error in self.lost.values())

    def messages(self, spool):
        """One warning per endpoint and fate (``spool``: the Spool, or None), and one about dropped events."""
        messages = []
        for endpoint, (count, error) in self.stored.items():
            messages.append('%s could not be delivered to %s: %s; %s spooled in %s and will be sent by the next run' % (
                events_phrase(count), endpoint.masked, error, 'it is' if count == 1 else 'they are', spool.path))
        for endpoint, (count, error) in self.lost.items():
            where = 'no spool is configured' if spool is None else 'the spool failed: %s' % self.spool_problem
            messages.append('%s could not be delivered to %s: %s; %s lost (%s)' % (
                events_phrase(count), endpoint.masked, error, 'it is' if count == 1 else 'they are', where))
        if self.dropped:
            messages.append('the Flashduty spool %s holds at most %d change events: the %d oldest were dropped'
                            % (spool.path, spool.max_events, self.dropped))
        return messages


def _count_into(table, endpoint, items, fallback):
    """Add ``items`` to ``table[endpoint]`` = (count, the last error among them or before)."""
    if not items:
        return
    count, error = table.get(endpoint, (0, None))
    last = [item.last_error for item in items if item.last_error]
    table[endpoint] = (count + len(items), last[-1] if last else error or fallback)


def events_phrase(count):
    return '1 change event' if count == 1 else '%d change events' % count
