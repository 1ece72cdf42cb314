# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What a flush does with the events it has not delivered: write them ahead, then spool what is left.

Private to this collection: not a public API, may change without notice.

Writing ahead is what keeps a forced stop (a second Ctrl-C, SIGTERM, SIGKILL) from losing events: before
the end of the run waits for delivery, every event not delivered yet is in the spool. When the wait is over,
what is left is spooled as usual and the batch written ahead is deleted, in that order: a process killed in
between sends some events twice, never none.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._report import Leftovers
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import SpoolError

NOT_YET_DELIVERED = 'not delivered yet when the run was stopped'


def by_endpoint(items):
    """``{EndpointHealth: [items]}``, endpoints in order of their first item."""
    groups = collections.OrderedDict()
    for item in items:
        groups.setdefault(item.endpoint, []).append(item)
    return groups


def write_ahead(spool, items, note):
    """Write this run's ``items`` (in order) to ``spool`` now; ``{EndpointHealth: stamp}`` of what was written.

    ``note(message)`` keeps a warning about an endpoint whose events could not be written.
    """
    written = {}
    for endpoint, group in by_endpoint(items).items():
        try:
            written[endpoint] = spool.write_ahead(endpoint.endpoint, [item.record(NOT_YET_DELIVERED) for item in group])
        except (SpoolError, OSError) as exc:
            note(endpoint.redact('Flashduty spool: cannot write the events not delivered yet: %s' % (exc,)))
    return written


def store(spool, leftovers, batches, ahead, fallback, note):
    """Spool ``leftovers`` (in order); return a Leftovers that counts them and says what became of them.

    Replayed items go back to their claimed ``batches``, under their old stamp; this run's items to a new
    batch per endpoint, after which the batch written ahead for it (``ahead``, from write_ahead()) is deleted.
    ``spool`` None: they are lost. ``fallback``: the last error of an event that never failed.
    """
    result = Leftovers(fallback)
    for batch in batches:
        remaining = [item for item in leftovers if item.batch is batch]
        try:
            result.dropped += spool.finish(batch.spool_batch, batch.endpoint.endpoint, [item.record(fallback) for item in remaining])
            result.spooled(batch.endpoint, remaining)
        except (SpoolError, OSError) as exc:
            result.not_spooled(batch.endpoint, remaining, '%s' % exc)
    own = by_endpoint(item for item in leftovers if item.batch is None)
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
