# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What became of the callback's change events: refusals, what a flush spools, the flush report, the warnings.

Private to this collection: not a public API, may change without notice.

Writing ahead keeps a forced stop (a second Ctrl-C, SIGTERM, SIGKILL) from losing events: before the end of
the run waits, every event not delivered yet is in the spool; after, what is left is spooled as usual and only
then is the batch written ahead deleted: a process killed in between sends some events twice, never none.
Warnings are built from structured fields (masked URL, a FlashdutyError's fields, counts), never parsed back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections

from ansible_collections.flashcat.flashduty.plugins.module_utils._client import explain
from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import ERROR_HINTS
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import SpoolError

# Request ids quoted in one refusal warning; the rest of the events it counts are only counted.
MAX_REQUEST_IDS = 5
NOT_YET_DELIVERED = 'not delivered yet when the run was stopped'
FIELDS = ('delivered', 'replayed', 'failed', 'spooled', 'dropped', 'lost', 'pending', 'timed_out', 'elapsed', 'spool')


class FlushReport(collections.namedtuple('FlushReport', FIELDS, defaults=(0,) * len(FIELDS))):
    """Counts since the sender was made: ``delivered`` (``replayed`` of them from the spool), ``failed`` (refused
    for good), ``spooled``, ``dropped`` (the oldest, from a full spool), ``lost``; and this flush's own facts:
    ``pending`` (queued or in flight at its deadline), ``timed_out``, ``elapsed`` (seconds), ``spool`` (path or None).
    """

    __slots__ = ()

    def summary(self):
        """One line, e.g. ``Flashduty change events: 12 delivered (2 from the spool), 1 refused, 3 spooled; flush 0.4 s``."""
        parts = ['%d delivered' % self.delivered + (' (%d from the spool)' % self.replayed if self.replayed else '')] + [
            '%d %s' % (count, text) for count, text in ((self.failed, 'refused'), (self.spooled, 'spooled'),
                                                        (self.dropped, 'dropped from the full spool'), (self.lost, 'lost')) if count]
        tail = 'flush %.1f s' % self.elapsed + (', timed out with %d pending' % self.pending if self.timed_out else '')
        return 'Flashduty change events: %s; %s' % (', '.join(parts), tail)

    def replay_summary(self, spool):
        """What a flush_spool run did, in one line: delivered from the ``spool``, and what is still in it."""
        if spool is None:
            return 'Flashduty change events: no spool directory: nothing to deliver'
        try:
            left = '%d left in %s' % (spool.total(), spool.path)
        except Exception as exc:  # the count is informative only; the flush already happened
            left = 'what is left in %s is unknown (%s)' % (spool.path, exc)
        return 'Flashduty change events: %d spooled events delivered, %s' % (self.replayed, left)


class Refusals(dict):
    """Events refused for good, by endpoint and kind (HTTP status, Flashduty code): one warning each at take_messages()."""

    def add(self, endpoint, error, event, from_spool=False):
        """One refused ``event`` for ``endpoint`` (an EndpointHealth); the first ``error`` of a kind stands for all."""
        refusal = self.setdefault((endpoint.fp, error.status_code, error.code),
                                  dict(endpoint=endpoint, error=error, event=event, from_spool=from_spool, ids=[], count=0))
        refusal['count'] += 1
        if error.request_id and len(refusal['ids']) < MAX_REQUEST_IDS:
            refusal['ids'].append(error.request_id)

    def take_messages(self):
        """One warning per kind of refusal and endpoint since the last call (unredacted: the caller redacts)."""
        messages = [_refusal_message(**refusal) for refusal in self.values()]
        self.clear()
        return messages


def _refusal_message(endpoint, error, event, from_spool, ids, count):
    if count == 1:
        return 'Flashduty did not accept the %s event of change %s%s at %s: %s' % (
            event.get('change_status'), event.get('change_key'), ' (from the spool)' if from_spool else '', endpoint.masked,
            explain(error))
    text = 'Flashduty refused %s at %s: %s' % (_events(count), endpoint.masked, error.reason)
    if len(ids) == count:
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
        self.stored, self.lost = collections.OrderedDict(), collections.OrderedDict()  # {EndpointHealth: (count, last error)}
        self.dropped, self.spool_problem = 0, None

    def spooled(self, endpoint, items, table=None):
        """Count ``items`` for ``endpoint`` (in ``table``: stored, unless lost) with the last error among them or before."""
        table = self.stored if table is None else table
        if items:
            count, error = table.get(endpoint, (0, None))
            last = [item.last_error for item in items if item.last_error]
            table[endpoint] = (count + len(items), last[-1] if last else error or self.fallback)

    def not_spooled(self, endpoint, items, problem=None):
        self.spooled(endpoint, items, self.lost)
        self.spool_problem = self.spool_problem if problem is None else problem

    spooled_count = property(lambda self: sum(count for count, _error in self.stored.values()))
    lost_count = property(lambda self: sum(count for count, _error in self.lost.values()))

    def messages(self, spool):
        """One warning per endpoint and fate (``spool``: the Spool, or None), and one about dropped events."""
        where = 'no spool is configured' if spool is None else 'the spool failed: %s' % self.spool_problem
        messages = ['%s could not be delivered to %s: %s; %s %s' % (
            _events(count), endpoint.masked, error, 'it is' if count == 1 else 'they are', fate)
            for table, fate in ((self.stored, 'spooled in %s and will be sent by the next run' % getattr(spool, 'path', None)),
                                (self.lost, 'lost (%s)' % where))
            for endpoint, (count, error) in table.items()]
        if self.dropped:
            messages.append('the Flashduty spool %s holds at most %d change events: the %d oldest were dropped'
                            % (spool.path, spool.max_events, self.dropped))
        return messages


def _events(count):
    return '1 change event' if count == 1 else '%d change events' % count


def _by_endpoint(items):
    groups = collections.OrderedDict()
    for item in items:
        groups.setdefault(item.endpoint, []).append(item)
    return groups


def write_ahead(spool, items, note):
    """Write this run's ``items`` (in order) to ``spool`` now; ``{EndpointHealth: stamp}`` of what was written."""
    written = {}
    for endpoint, group in _by_endpoint(items).items():
        try:
            written[endpoint] = spool.write_ahead(endpoint.endpoint, [item.record(NOT_YET_DELIVERED) for item in group])
        except (SpoolError, OSError) as exc:
            note(endpoint.redact('Flashduty spool: cannot write the events not delivered yet: %s' % (exc,)))
    return written


def store(spool, leftovers, batches, ahead, fallback, note):
    """Spool ``leftovers`` (in order): replayed items back to their claimed ``batches``, under their old stamp; this
    run's to a new batch per endpoint, replacing the one written ahead (``ahead``). Returns a Leftovers."""
    result = Leftovers(fallback)
    for batch in batches:
        remaining = [item for item in leftovers if item.batch is batch]
        try:
            result.dropped += spool.finish(batch.spool_batch, batch.endpoint.endpoint, [item.record(fallback) for item in remaining])
            result.spooled(batch.endpoint, remaining)
        except (SpoolError, OSError) as exc:
            result.not_spooled(batch.endpoint, remaining, '%s' % exc)
    own = _by_endpoint(item for item in leftovers if item.batch is None)
    for endpoint in ahead:
        own.setdefault(endpoint, [])
    for endpoint, items in own.items():
        if spool is None:
            result.not_spooled(endpoint, items)
            continue
        try:
            result.dropped += spool.write(endpoint.endpoint, [item.record(fallback) for item in items], replacing=ahead.get(endpoint))
        except (SpoolError, OSError) as exc:
            if endpoint not in ahead:
                result.not_spooled(endpoint, items, '%s' % exc)
                continue
            # Still in the batch written ahead, with those delivered since: sent again rather than lost.
            note(endpoint.redact('Flashduty spool: events delivered at the end of this run may be sent again by the next: %s'
                                 % (exc,)))
        result.spooled(endpoint, items)
    return result
