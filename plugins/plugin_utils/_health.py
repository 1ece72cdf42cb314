# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the callback's sending threads know about one endpoint's health: down, probed, back.

Private to this collection: not a public API, may change without notice.

An endpoint whose event failed after every retry is down: its events wait, in order, and after a pause one
of them is sent alone as a probe (no retries). A probe that fails doubles the pause, up to a maximum; an
answer of any kind (delivered or refused) brings the endpoint back. The caller serialises access (the
sender's lock) and bumps its own generation when a method says the state changed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

# After an event failed with every retry, its endpoint is left alone this long, doubling up to the maximum.
DEFAULT_RETRY_PAUSE = 5.0
MAX_RETRY_PAUSE = 60.0

SEND, PROBE, WAIT = 'send', 'probe', 'wait'


class EndpointHealth:
    """One Endpoint (``endpoint``) and its health."""

    def __init__(self, endpoint, retry_pause=DEFAULT_RETRY_PAUSE, clock=time.monotonic):
        self.endpoint = endpoint
        self.fp = endpoint.fingerprint
        self.masked = endpoint.masked
        self.redact = endpoint.redact
        self._clock = clock
        self.first_pause = self.pause = retry_pause
        self.down_until = None     # clock time of the next probe while the endpoint is down
        self.probing = False
        self.last_error = None
        self.unreachable = False   # the last failure had no answer at all (refused, unresolvable)
        self.replayed = False      # its spool was queued for replay

    def admit(self, now):
        """SEND (up), PROBE (down and due: the caller sends this one event alone) or WAIT."""
        if self.down_until is None:
            return SEND
        if self.probing or now < self.down_until:
            return WAIT
        self.probing = True
        return PROBE

    def due(self):
        """When a waiting event may next be probed, or None (up, or a probe is under way)."""
        return None if self.probing else self.down_until

    def interrupted(self, probe):
        """The attempt was cut short (flush deadline, close): a probe is over; True when the state changed."""
        self.probing = self.probing and not probe
        return bool(probe)

    def answered(self, probe):
        """The endpoint answered (delivered or refused); True when its state changed."""
        changed = self.interrupted(probe) or self.down_until is not None
        self.down_until, self.unreachable, self.pause = None, False, self.first_pause  # as they were while it was up
        return changed

    def failed(self, error, probe):
        """A transient failure after every retry (a FlashdutyError); True when its state changed."""
        changed = self.interrupted(probe) or self.down_until is None  # a probe failed, or it just went down
        self.last_error, self.unreachable = error.reason, bool(error.unreachable)
        if changed:
            self.down_until = self._clock() + self.pause
        if probe:
            self.pause = min(MAX_RETRY_PAUSE, self.pause * 2)
        return changed


def sort_held(held, moment):
    """``(movable, staying, next due time)``: held items (``endpoint``, ``change``, ``stuck``) that may be sent at
    ``moment``, and those that stay, each keeping every later item of its change behind it."""
    movable = []
    staying = []
    staying_keys = set()
    due = None
    for item in held:
        endpoint = item.endpoint
        blocked = item.stuck or item.change in staying_keys
        if not blocked and (endpoint.down_until is None or (not endpoint.probing and endpoint.down_until <= moment)):
            movable.append(item)
            continue
        staying.append(item)
        staying_keys.add(item.change)
        if not blocked and not endpoint.probing:
            due = endpoint.down_until if due is None else min(due, endpoint.down_until)
    return movable, staying, due
