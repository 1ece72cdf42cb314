# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The end of a run, however it comes, for the change_events callback: the last play's stats, Ctrl-C, SIGTERM,
a fatal error, and a second signal during the end.

Private to this collection: not a public API, may change without notice.

Why it is done this way (signals are subtle):
- Ctrl-C and fatal errors end in atexit; SIGTERM skips atexit, so it has a handler of its own. Neither raises
  into Ansible: the playbook's output and exit code stay its own, and a signal is delivered again to the
  handler that was there before us, as if we had never been there.
- A SIGTERM arriving inside a callback method is handled when the method returns, not halfway through it.
- A forked worker inherits the handlers: it only passes the signal on.
- A signal during the end of the run (its flush) only stops the wait for delivery: what is not delivered is
  in the spool already (the flush writes it ahead), so nothing is lost and the end is not broken off halfway.
  Only flags are set, as the main thread may hold the sender's lock. A SIGTERM there still ends the process
  once the callback method returns; a Ctrl-C there stops the run only if more playbooks follow.
- Recent ansible-core's own handler resets Ctrl-C to the default action: ours is put back in front of it,
  keeping the default as the previous handler, so that a second Ctrl-C before the end does what it would have
  done without us, and one during the end reaches the cut.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import atexit
import os
import signal

_HANDLER_ERRORS = (ValueError, OSError, TypeError)


class RunEnd:
    """Calls ``finish(reason)`` once, at the end of the run, ``cut()`` for a signal during that end, and
    ``on_error(where, exc)`` for an error of ``finish``. A context manager around each callback method."""

    def __init__(self, finish, cut, on_error):
        self._finish, self._cut, self._on_error = finish, cut, on_error
        self.finished = False
        self.ending = False            # the end of the run (its flush) has begun: a signal now shortens it
        self.stop_after_flush = False  # Ctrl-C in the flush after a playbook that is not the last
        self.interrupted_by = self._deferred = None
        self._busy = 0
        self._pid = os.getpid()
        self._installed = False
        self._previous = {}

    def __enter__(self):
        self._busy += 1
        return self

    def __exit__(self, *exc_info):
        self._busy -= 1
        if not self._busy and self._deferred is not None:
            signum, self._deferred = self._deferred, None
            self._terminate(signum)
        return False

    def install(self):
        """atexit, and handlers for SIGTERM and SIGINT (from the main thread only: elsewhere signal() refuses); once."""
        if self._installed:
            return
        self._installed = True
        atexit.register(self.at_exit)
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(signum)
                if signum == signal.SIGINT and not callable(previous):
                    continue  # SIGINT ignored (a background job) or not handled in Python: leave it alone
                signal.signal(signum, self.on_signal)
                self._previous[signum] = previous
            except _HANDLER_ERRORS:
                pass

    def at_exit(self):
        if os.getpid() == self._pid:
            self._end(self.interrupted_by or 'the run stopped before the play ended', 'the end of the run')

    def on_signal(self, signum, frame):
        if os.getpid() != self._pid:
            return self.redeliver(signum)
        if self.ending:
            self.interrupted_by = self.interrupted_by or signal.Signals(signum).name
            self._cut()
            if self.finished:
                pass  # the process is exiting already, with Ansible's exit code
            elif signum == signal.SIGINT:
                self.stop_after_flush = True
            else:
                self._deferred = signum  # the end is inside a callback method
            return None
        if signum == signal.SIGINT:  # Ansible handles it as before; atexit sends the Canceled events
            self.interrupted_by = 'SIGINT'
            previous = self._previous.get(signum)
            if not callable(previous):
                return self.redeliver(signum)
            try:
                return previous(signum, frame)
            finally:
                try:
                    current = signal.getsignal(signum)
                    if current != self.on_signal:  # pylint: disable=comparison-with-callable
                        self._previous[signum] = current
                        signal.signal(signum, self.on_signal)
                except _HANDLER_ERRORS:
                    pass
        if self._busy:
            self._deferred = signum
            return None
        return self._terminate(signum)

    def _terminate(self, signum):
        self.interrupted_by = signal.Signals(signum).name
        try:
            self._end(self.interrupted_by, 'the %s handler' % self.interrupted_by)
        finally:
            self.redeliver(signum)

    def _end(self, reason, where):
        if self.finished:
            return
        self.finished = self.ending = True
        try:
            self._finish(reason)
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            try:
                self._on_error(where, exc)
            except Exception:  # output may be unusable inside a signal handler (a reentrant write)
                pass

    def redeliver(self, signum):
        """Put the previous handler back and deliver the signal again."""
        try:
            signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
        except _HANDLER_ERRORS:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
