# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The on-disk spool of change events that could not be delivered yet, on the controller.

Private to this collection: not a public API, may change without notice.

Layout: one directory (0700), one JSON file (0600) per batch of events for one
endpoint, named ``<stamp>.<fp16>.<count>.json``:

- ``stamp`` (``<20-digit ns>-<pid>-<seq>``) sorts batches oldest first;
- ``fp16`` is the start of the Endpoint's fingerprint (sha256 hex of the push
  URL): the URL holds the integration key, so neither is ever stored;
- ``count`` is the number of events inside, so that bounding the spool and
  finding an endpoint's events need only a directory listing.

A run takes a batch by renaming it to ``<name>.claim-<epoch>-<owner>``
(atomic: one run wins; epoch in milliseconds), sends it, then deletes it or writes what is left back
under the same stamp. A claim older than the lease (10 minutes) belongs to a
run that died and may be taken again. Writes go to a hidden temporary file
that is renamed into place, so readers never see half a file.

The directory may sit in a shared place (``/tmp``), so it is never followed
through a symbolic link, and one owned by another user or open to other users
is refused rather than used or chmod-ed: only a directory this process creates
gets its mode set. Files are created with ``O_EXCL``/``O_NOFOLLOW`` and read
with ``O_NOFOLLOW``, and only regular files are read, so a link or a FIFO
planted inside the directory is set aside as unreadable, never followed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import errno
import itertools
import json
import os
import re
import stat
import threading
import time


FORMAT = 'flashcat.flashduty.spool/1'
DEFAULT_MAX_EVENTS = 1000
DEFAULT_LEASE = 600.0

_NAME = re.compile(r'^(?P<name>(?P<stamp>\d{20}-\d{7}-\d{6})\.(?P<fp>[0-9a-f]{16})\.(?P<count>\d{1,9})\.json)'
                   r'(?:\.claim-(?P<claimed>\d{1,15})-(?P<owner>[0-9a-z]{1,40}))?$')
_TEMP_PREFIX = '.tmp-'
_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)
_CORRUPT_SUFFIX = '.corrupt'

# Stamps are made from one monotonic clock anchored to the wall clock, so that
# they sort in the order this process made them even if the wall clock steps back.
_CLOCK_LOCK = threading.Lock()
_WALL_NS = time.time_ns()
_MONO_NS = time.monotonic_ns()
_SEQUENCE = itertools.count()


def _reset_after_fork():
    global _CLOCK_LOCK  # pylint: disable=global-statement
    _CLOCK_LOCK = threading.Lock()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_reset_after_fork)


class SpoolError(Exception):
    """The spool directory cannot be used; the message names it and never holds a key."""

    def __init__(self, message):
        super(SpoolError, self).__init__(message)
        self.message = message

    def __str__(self):
        return self.message


def new_stamp():
    """A stamp that sorts after every stamp this process made before."""
    with _CLOCK_LOCK:
        ns = _WALL_NS + time.monotonic_ns() - _MONO_NS
        return '%020d-%07d-%06d' % (ns, os.getpid() % 10000000, next(_SEQUENCE) % 1000000)


def _token():
    return binascii.hexlify(os.urandom(4)).decode('ascii')


class SpoolBatch:
    """One claimed spool file: its records are this run's to deliver or give back."""

    def __init__(self, spool, name, stamp, endpoint, claim_path, records, endpoint_url):
        self.spool = spool
        self.name = name
        self.stamp = stamp
        self.endpoint = endpoint
        self.claim_path = claim_path
        self.records = records
        self.endpoint_url = endpoint_url
        self.claimed_at = time.time()

    def __repr__(self):
        return '<SpoolBatch %s (%d events)>' % (self.name, len(self.records))


class Spool:
    """A directory of change events waiting for their endpoint.

    ``max_events`` bounds the events kept over all endpoints (the oldest are
    dropped first); ``lease`` is how long (seconds) a claim by another run is
    respected before its files are taken over. Methods raise SpoolError for a
    directory that cannot be used; per-file trouble is reported, not raised.
    """

    def __init__(self, path, max_events=DEFAULT_MAX_EVENTS, lease=DEFAULT_LEASE):
        self.path = os.path.abspath(os.path.expanduser('%s' % (path,)))
        self.max_events = max(1, int(max_events))
        self.lease = float(lease)
        self._owner = '%dx%s' % (os.getpid(), _token())
        self._check_directory()

    def __repr__(self):
        return '<Spool %s>' % self.path

    # ---- listing ------------------------------------------------------

    def _entries(self):
        """Parsed directory entries: dicts with name, file, stamp, fp, count, claimed (epoch or None), owner."""
        if not self._check_directory():
            return []
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SpoolError('cannot read the Flashduty spool directory %s: %s' % (self.path, exc.strerror or exc)) from None
        entries = []
        for file_name in names:
            match = _NAME.match(file_name)
            if match is None:
                continue
            claimed = match.group('claimed')
            entries.append(dict(name=match.group('name'), file=file_name, stamp=match.group('stamp'), fp=match.group('fp'),
                                count=int(match.group('count')), claimed=int(claimed) / 1000.0 if claimed is not None else None,
                                owner=match.group('owner')))
        entries.sort(key=lambda entry: (entry['stamp'], entry['file']))
        return entries

    def _available(self, entry, now):
        """True when a file may be claimed: not claimed, or claimed by a run that outlived the lease."""
        return entry['claimed'] is None or now - entry['claimed'] > self.lease

    def pending(self, endpoint=None):
        """How many events wait for ``endpoint`` (or for any endpoint): a directory listing, no file is read."""
        now = time.time()
        prefix = endpoint.fingerprint[:16] if endpoint is not None else None
        return sum(entry['count'] for entry in self._entries()
                   if (prefix is None or entry['fp'] == prefix) and self._available(entry, now))

    def total(self):
        """Events in the spool, claimed ones included."""
        return sum(entry['count'] for entry in self._entries())

    # ---- writing ------------------------------------------------------

    def _check_directory(self):
        """True when the spool directory exists and is safe to use, False when it does not exist yet.

        Raises SpoolError for a symbolic link (never followed: in a shared /tmp it may
        lead anywhere, a root-owned directory included), something not a directory,
        a directory of another user, or one that other users may enter: the spool
        never changes the mode of a directory it did not create.
        """
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SpoolError('cannot use the Flashduty spool directory %s: %s' % (self.path, exc.strerror or exc)) from None
        if stat.S_ISLNK(info.st_mode):
            raise SpoolError('the Flashduty spool directory %s is a symbolic link; refusing to follow it (set spool_dir to '
                             'the real directory)' % self.path)
        if not stat.S_ISDIR(info.st_mode):
            raise SpoolError('the Flashduty spool path %s is not a directory' % self.path)
        if hasattr(os, 'geteuid') and info.st_uid != os.geteuid():
            raise SpoolError('the Flashduty spool directory %s belongs to another user (uid %d); refusing to use it'
                             % (self.path, info.st_uid))
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise SpoolError('the Flashduty spool directory %s is open to other users (mode %04o); refusing to use it: '
                             'run chmod 700 on it, or set spool_dir to another directory'
                             % (self.path, stat.S_IMODE(info.st_mode)))
        return True

    def _ensure_directory(self):
        if self._check_directory():
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as exc:
            raise SpoolError('cannot create the Flashduty spool directory %s: %s' % (self.path, exc.strerror or exc)) from None
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            self._check_directory()  # made meanwhile, by another run or by someone else
            return
        except OSError as exc:
            raise SpoolError('cannot create the Flashduty spool directory %s: %s' % (self.path, exc.strerror or exc)) from None
        # Ours: 0700 whatever the umask, through a descriptor of the directory just made, not its name.
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0) | _NOFOLLOW | _CLOEXEC)
            try:
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError('cannot secure the Flashduty spool directory %s: %s' % (self.path, exc.strerror or exc)) from None
        self._check_directory()

    def _write_file(self, file_name, document):
        data = json.dumps(document, ensure_ascii=False, sort_keys=True, indent=1).encode('utf-8', 'surrogatepass')
        temp = os.path.join(self.path, '%s%d-%s' % (_TEMP_PREFIX, os.getpid(), _token()))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        fd = os.open(temp, flags, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)  # whatever the umask was
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, os.path.join(self.path, file_name))
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        self._sync_directory()

    def _sync_directory(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0) | _NOFOLLOW | _CLOEXEC)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    @staticmethod
    def _record(record, endpoint):
        clean = dict(event=record['event'])
        clean['first_failure'] = round(float(record.get('first_failure') or time.time()), 3)
        clean['attempts'] = int(record.get('attempts') or 0)
        clean['last_error'] = endpoint.redact(record.get('last_error') or 'not delivered')
        return clean

    def write(self, endpoint, records, replacing=None):
        """Add ``records`` (in delivery order) for ``endpoint``; return how many old events were dropped.

        Each record is a dict: ``event`` (the event as it would be sent),
        ``first_failure`` (epoch seconds), ``last_error`` (text), ``attempts``.
        When the spool then holds more than ``max_events``, the oldest events go.
        ``replacing``: the stamp of a batch written ahead (write_ahead()) that
        these records replace; it is deleted once they are written, before the
        bound is applied.
        """
        return self._write_batch(endpoint, list(records), new_stamp(), ignore=None, replacing=replacing)

    def write_ahead(self, endpoint, records):
        """Write ``records`` before trying to deliver them, so that a process killed meanwhile loses none.

        Returns the batch's stamp, for write(replacing=) once what is left of them is known. The bound is
        not applied to them: they are on their way out.
        """
        stamp = new_stamp()
        self._write_batch(endpoint, list(records), stamp, ignore=None, trim=False)
        return stamp

    def _discard(self, endpoint, stamp):
        """Delete the batch written ahead under ``stamp``, unless another run has claimed it meanwhile."""
        for entry in self._entries():
            if entry['stamp'] == stamp and entry['fp'] == endpoint.fingerprint[:16] and entry['claimed'] is None:
                self._unlink(os.path.join(self.path, entry['file']))

    def _write_batch(self, endpoint, records, stamp, ignore, trim=True, replacing=None):
        if not records:
            if replacing is not None:
                self._discard(endpoint, replacing)
            return 0
        self._ensure_directory()
        dropped = 0
        if len(records) > self.max_events:
            dropped = len(records) - self.max_events
            records = records[dropped:]
        document = dict(format=FORMAT, endpoint=endpoint.fingerprint, endpoint_url=endpoint.masked, spooled_at=round(time.time(), 3),
                        records=[self._record(record, endpoint) for record in records])
        file_name = '%s.%s.%d.json' % (stamp, endpoint.fingerprint[:16], len(records))
        try:
            self._write_file(file_name, document)
        except OSError as exc:
            raise SpoolError('cannot write to the Flashduty spool directory %s: %s' % (self.path, exc.strerror or exc)) from None
        if replacing is not None:
            self._discard(endpoint, replacing)
        self._clean_temporary_files()
        return dropped + self._trim(keep=file_name, ignore=ignore) if trim else dropped

    def _clean_temporary_files(self):
        """Remove temporary files left by a run that died while writing."""
        limit = time.time() - self.lease
        try:
            names = [name for name in os.listdir(self.path) if name.startswith(_TEMP_PREFIX)]
        except OSError:
            return
        for name in names:
            path = os.path.join(self.path, name)
            try:
                if os.lstat(path).st_mtime < limit:
                    os.unlink(path)
            except OSError:
                pass

    def _trim(self, keep, ignore=None):
        """Drop the oldest events until at most max_events remain; return how many were dropped.

        ``keep`` (the file just written) goes last; ``ignore`` (a claim being
        given back) is not counted.
        """
        entries = [entry for entry in self._entries() if entry['file'] != ignore]
        excess = sum(entry['count'] for entry in entries) - self.max_events
        dropped = 0
        now = time.time()
        for entry in entries:
            if excess <= 0:
                break
            if not self._available(entry, now) or entry['file'] == keep:
                continue
            claim_path = self._take(entry, now)
            if claim_path is None:
                continue
            if entry['count'] <= excess:
                self._unlink(claim_path)
                excess -= entry['count']
                dropped += entry['count']
                continue
            try:
                document = self._load(claim_path)
                records = document['records'][excess:]
                document['records'] = records
                self._write_file('%s.%s.%d.json' % (entry['stamp'], entry['fp'], len(records)), document)
            except (OSError, ValueError, KeyError, TypeError):
                # An unreadable file: drop it whole rather than keep the spool over its bound.
                self._unlink(claim_path)
                dropped += entry['count']
                excess -= entry['count']
                continue
            self._unlink(claim_path)
            dropped += excess
            excess = 0
        return dropped

    @staticmethod
    def _unlink(path):
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    # ---- claiming -----------------------------------------------------

    def _claim_name(self, entry_name, now):
        return '%s.claim-%d-%s' % (entry_name, int(now * 1000), self._owner)

    def _take(self, entry, now):
        """Claim one listed file by renaming it; return the claimed path, or None if another run was faster."""
        claim_path = os.path.join(self.path, self._claim_name(entry['name'], now))
        try:
            os.rename(os.path.join(self.path, entry['file']), claim_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EEXIST):
                return None
            raise
        return claim_path

    @staticmethod
    def _load(path):
        # O_NONBLOCK: a FIFO planted under a spool name must not hang the run; only regular files are read.
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, 'O_NONBLOCK', 0))
        with os.fdopen(fd, 'rb') as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError('not a regular file')
            document = json.loads(handle.read().decode('utf-8', 'surrogatepass'))
        if not isinstance(document, dict) or document.get('format') != FORMAT or not isinstance(document.get('records'), list):
            raise ValueError('not a %s file' % FORMAT)
        return document

    def claim(self, endpoint):
        """Claim every batch waiting for ``endpoint``, oldest first.

        Returns ``(batches, problems)``: SpoolBatch objects whose records are
        dicts like those given to write(), and messages about files that could
        not be read (renamed to ``*.corrupt`` so they are not tried again).
        """
        batches = []
        problems = []
        now = time.time()
        for entry in self._entries():
            if entry['fp'] != endpoint.fingerprint[:16] or not self._available(entry, now):
                continue
            try:
                claim_path = self._take(entry, now)
            except OSError as exc:
                problems.append('cannot claim the Flashduty spool file %s: %s' % (os.path.join(self.path, entry['name']), exc.strerror or exc))
                continue
            if claim_path is None:
                continue
            try:
                document = self._load(claim_path)
                if document.get('endpoint') != endpoint.fingerprint:
                    # Another endpoint whose fingerprint starts the same way: give it back.
                    os.rename(claim_path, os.path.join(self.path, entry['name']))
                    continue
                records = [record for record in document['records']
                           if isinstance(record, dict) and isinstance(record.get('event'), dict)]
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                corrupt = os.path.join(self.path, entry['name'] + _CORRUPT_SUFFIX)
                try:
                    os.rename(claim_path, corrupt)
                except OSError:
                    corrupt = claim_path
                problems.append('ignored the unreadable Flashduty spool file %s (%s); it was left as %s'
                                % (entry['name'], endpoint.redact(exc), corrupt))
                continue
            batches.append(SpoolBatch(self, entry['name'], entry['stamp'], endpoint.fingerprint, claim_path, records,
                                      document.get('endpoint_url') or endpoint.masked))
        return batches, problems

    def renew(self, batch):
        """Refresh a claim so that other runs keep respecting it; False when it was taken over meanwhile."""
        now = time.time()
        new_path = os.path.join(self.path, self._claim_name(batch.name, now))
        try:
            os.rename(batch.claim_path, new_path)
        except OSError:
            return False
        batch.claim_path = new_path
        batch.claimed_at = now
        return True

    def finish(self, batch, endpoint, remaining=()):
        """Release a claimed batch: write ``remaining`` records back under its stamp, then delete the claim.

        Returns how many old events were dropped to keep the bound. If the
        claim was taken over by another run meanwhile, nothing is written back
        (that run sends them).
        """
        remaining = list(remaining)
        if not os.path.exists(batch.claim_path):
            return 0
        dropped = 0
        if remaining:
            dropped = self._write_batch(endpoint, remaining, batch.stamp, ignore=os.path.basename(batch.claim_path))
        self._unlink(batch.claim_path)
        return dropped
