# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The request rate limit shared by the callback's sending threads.

Private to this collection: not a public API, may change without notice.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

# A tenth of a second's worth of requests may go out back to back, at most 5.
MAX_BURST = 5


class RateLimiter:
    """A token bucket kept as one number (GCRA): at most ``max_rate`` requests per second (0 or None: no limit).

    Threads reserve their slot and then sleep on their own, so that no thread is woken for another's request.
    """

    def __init__(self, max_rate, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._tat = 0.0  # theoretical arrival time of the next request
        self.interval = 1.0 / float(max_rate) if max_rate and float(max_rate) > 0 else None
        self._tolerance = (max(1, min(MAX_BURST, int(float(max_rate) / 10))) - 1) * self.interval if self.interval else 0.0

    def reserve(self, deadline=None):
        """Reserve the next request slot; the seconds to wait for it, or None (after ``deadline``: nothing reserved)."""
        if self.interval is None:
            return 0.0
        with self._lock:
            now = self._clock()
            slot = max(self._tat, now)
            start = slot - self._tolerance
            if deadline is not None and start > deadline:
                return None
            self._tat = slot + self.interval
        return max(0.0, start - now)
