# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The end of a run, however it comes, for the change_events callback: the last play's stats, Ctrl-C, SIGTERM,
a fatal error, and a second signal during the end.

Private to this collection: not a public API, may change without notice.

Ctrl-C and fatal errors end in atexit; SIGTERM skips atexit, so it has a handler of its own. Neither raises
into Ansible: the playbook's output and exit code stay its own, and a signal is delivered again to the
handler that was there before us.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import atexit
import os
import signal
import threading

_HANDLER_ERRORS = (ValueError, OSError, TypeError)


class RunEnd:
    """Calls ``finish(reason)`` once, at the end of the run; ``cut()`` when a signal comes during that end.

    ``on_error(where, exc)`` reports an error raised by ``finish`` at exit. Used as a context manager around
    each callback method: a SIGTERM arriving inside one is handled when it returns.
    """

    def __init__(self, finish, cut, on_error):
        self._finish = finish
        self._cut = cut
        self._on_error = on_error
        self.finished = False
        self.ending = False            # the end of the run (its flush) has begun: a signal now shortens it
        self.stop_after_flush = False  # Ctrl-C in the flush after a playbook that is not the last
        self.interrupted_by = None
        self._busy = 0
        self._deferred = None
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

    def finish(self, reason):
        if self.finished:
            return
        self.finished = self.ending = True
        self._finish(reason)

    def stop_if_asked(self, more_playbooks):
        """After a playbook's end: a Ctrl-C during its flush stops the run if more playbooks follow."""
        if self.stop_after_flush and more_playbooks:
            self.stop_after_flush = False
            raise KeyboardInterrupt()

    def install(self):
        """atexit, and handlers for SIGTERM and SIGINT; once, from the main thread."""
        if self._installed:
            return
        self._installed = True
        self._pid = os.getpid()
        atexit.register(self.at_exit)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(signum)
                if signum == signal.SIGINT and not callable(previous):
                    continue  # SIGINT ignored (a background job) or not handled in Python: leave it alone
                signal.signal(signum, self.on_signal)
                self._previous[signum] = previous
            except _HANDLER_ERRORS:
                continue

    def at_exit(self):
        if os.getpid() != self._pid:
            return
        try:
            self.finish(self.interrupted_by or 'the run stopped before the play ended')
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            self._on_error('the end of the run', exc)

    def on_signal(self, signum, frame):
        if self.ending and os.getpid() == self._pid:
            return self._cut_the_end(signum)
        if signum == signal.SIGINT:
            # Ctrl-C: remember why, and let Ansible handle it as before; atexit sends the Canceled events.
            self.interrupted_by = 'SIGINT'
            previous = self._previous.get(signum)
            if os.getpid() == self._pid and callable(previous):
                try:
                    return previous(signum, frame)
                finally:
                    self._stay_in_front(signum)
            return self.redeliver(signum)
        if os.getpid() != self._pid:
            return self.redeliver(signum)  # a forked worker inherited the handler
        if self._busy:
            self._deferred = signum
            return None
        return self._terminate(signum)

    def _stay_in_front(self, signum):
        """Handle ``signum`` again after a handler that put another in place (ansible-core's resets Ctrl-C to the
        default action), keeping that one as the previous handler: a second Ctrl-C during the end of the run
        must reach _cut_the_end(); before it, it does what it would have done without us."""
        try:
            current = signal.getsignal(signum)
            if current != self.on_signal:  # pylint: disable=comparison-with-callable
                self._previous[signum] = current
                signal.signal(signum, self.on_signal)
        except _HANDLER_ERRORS:
            pass

    def _cut_the_end(self, signum):
        """A signal during the end of the run: stop waiting for delivery, lose nothing, raise nothing.

        What is not delivered is in the spool already (the flush writes it ahead), so the end of the run is
        not broken off halfway and the playbook's exit code stays its own; a SIGTERM that came inside a
        callback method still ends the process once that method returns. Only flags are set: this may run
        while the main thread holds the sender's lock.
        """
        self.interrupted_by = self.interrupted_by or signal.Signals(signum).name
        self._cut()
        if signum != signal.SIGINT and self._busy and not self.finished:
            self._deferred = signum
        elif signum == signal.SIGINT and not self.finished:
            self.stop_after_flush = True
        return None

    def _terminate(self, signum):
        self.interrupted_by = signal.Signals(signum).name
        try:
            self.finish(self.interrupted_by)
        except Exception as exc:
            try:
                self._on_error('the %s handler' % self.interrupted_by, exc)
            except Exception:  # output may be unusable inside a signal handler (a reentrant write)
                pass
        finally:
            self.redeliver(signum)

    def redeliver(self, signum):
        """Put the previous handler back and deliver the signal again, as if we had never been there."""
        previous = self._previous.get(signum, signal.SIG_DFL)
        try:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        except _HANDLER_ERRORS:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
