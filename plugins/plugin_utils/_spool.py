# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The on-disk spool of change events not delivered yet, on the controller. Private to this collection.

One directory (0700), one JSON file (0600) per batch for one endpoint: ``<stamp>.<fp16>.<count>.json``. The stamp
sorts batches oldest first; fp16 starts the Endpoint's fingerprint (the URL holds the integration key: neither is
stored); count lets bounding and counting need only a listing. A run claims a batch by renaming it to
``<name>.claim-<epoch ms>-<owner>`` (one run wins), then deletes it or writes what is left back under its stamp; a
claim older than the lease belongs to a run that died. Writes go to a hidden temporary file renamed into place.
The directory may sit in a shared /tmp: a symbolic link, another user's directory or one open to others is refused,
never followed or chmod-ed. Files are created O_EXCL|O_NOFOLLOW and read O_NOFOLLOW, regular files only: a link or
FIFO planted inside is set aside as unreadable.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import contextlib
import itertools
import json
import os
import re
import stat
import time
import types


FORMAT = 'flashcat.flashduty.spool/1'

_NAME = re.compile(r'^(?P<name>(?P<stamp>\d{20}-\d{7}-\d{6})\.(?P<fp>[0-9a-f]{16})\.(?P<count>\d{1,9})\.json)'
                   r'(?:\.claim-(?P<claimed>\d{1,15})-[0-9a-z]{1,40})?$')
_TEMP_PREFIX = '.tmp-'
_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC

# Stamps come from one monotonic clock anchored to the wall clock, so that they sort in the order this
# process made them even if the wall clock steps back; the sequence (whose next() is atomic: no lock needed)
# keeps apart two stamps of the same nanosecond.
_WALL_NS = time.time_ns()
_MONO_NS = time.monotonic_ns()
_SEQUENCE = itertools.count()

# A listed spool file: ``free`` when unclaimed, or claimed by a run that outlived the lease.
_Entry = collections.namedtuple('_Entry', 'name file stamp fp count claimed free')


class SpoolError(Exception):
    """The spool directory cannot be used; the ``message`` names it and never holds a key."""

    message = property(lambda self: self.args[0])


def new_stamp():
    """A stamp that sorts after every stamp this process made before."""
    ns = _WALL_NS + time.monotonic_ns() - _MONO_NS
    return '%020d-%07d-%06d' % (ns, os.getpid() % 10000000, next(_SEQUENCE) % 1000000)


def _unlink(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _load(path):
    # O_NONBLOCK: a FIFO planted under a spool name must not hang the run; only regular files are read.
    fd = os.open(path, os.O_RDONLY | _FLAGS | os.O_NONBLOCK)
    with os.fdopen(fd, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError('not a regular file')
        document = json.loads(handle.read().decode('utf-8', 'surrogatepass'))
    if not isinstance(document, dict) or document.get('format') != FORMAT or not isinstance(document.get('records'), list):
        raise ValueError('not a %s file' % FORMAT)
    return document


class Spool:
    """A directory of change events waiting for their endpoint.

    ``max_events`` bounds the events kept over all endpoints (the oldest go first); ``lease`` is how long
    (seconds) another run's claim is respected. Methods raise SpoolError for a directory that cannot be used;
    trouble with one file is reported, not raised.
    """

    def __init__(self, path, max_events=1000, lease=600.0):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.max_events, self.lease = max_events, lease
        self._owner = '%dx%s' % (os.getpid(), os.urandom(4).hex())
        self._check_directory()

    def _error(self, what, exc):
        return SpoolError('cannot %s the Flashduty spool directory %s: %s' % (what, self.path, exc.strerror or exc))

    def _check_directory(self):
        """True when the directory exists and is safe to use, False when it does not exist yet; else SpoolError."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error('use', exc) from None
        if stat.S_ISLNK(info.st_mode):
            raise SpoolError('the Flashduty spool directory %s is a symbolic link; refusing to follow it (set spool_dir to '
                             'the real directory)' % self.path)
        if not stat.S_ISDIR(info.st_mode):
            raise SpoolError('the Flashduty spool path %s is not a directory' % self.path)
        if info.st_uid != os.geteuid():
            raise SpoolError('the Flashduty spool directory %s belongs to another user (uid %d); refusing to use it'
                             % (self.path, info.st_uid))
        if info.st_mode & 0o077:
            raise SpoolError('the Flashduty spool directory %s is open to other users (mode %04o); refusing to use it: '
                             'run chmod 700 on it, or set spool_dir to another directory' % (self.path, stat.S_IMODE(info.st_mode)))
        return True

    def _ensure_directory(self):
        if self._check_directory():
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            os.mkdir(self.path, 0o700)
            # Ours: 0700 whatever the umask, through a descriptor of the directory just made, not its name.
            self._on_directory(lambda fd: os.fchmod(fd, 0o700))
        except FileExistsError:
            pass  # made meanwhile, by another run or by someone else: checked below
        except OSError as exc:
            raise self._error('create', exc) from None
        self._check_directory()

    def _on_directory(self, action):
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | _FLAGS)
        try:
            action(fd)
        finally:
            os.close(fd)

    def _entries(self, clean=False):
        """The spool files, oldest first; ``clean``: remove temporary files left by a run that died while writing."""
        if not self._check_directory():
            return []
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error('read', exc) from None
        now = time.time()
        for name in names if clean else ():
            with contextlib.suppress(OSError):
                if name.startswith(_TEMP_PREFIX) and os.lstat(os.path.join(self.path, name)).st_mtime < now - self.lease:
                    os.unlink(os.path.join(self.path, name))
        entries = []
        for match in filter(None, map(_NAME.match, names)):
            claimed = match.group('claimed') and int(match.group('claimed')) / 1000.0
            entries.append(_Entry(match.group('name'), match.group(0), match.group('stamp'), match.group('fp'),
                                  int(match.group('count')), claimed, claimed is None or now - claimed > self.lease))
        return sorted(entries, key=lambda entry: (entry.stamp, entry.file))

    def pending(self, endpoint):
        """How many events wait for ``endpoint``: a listing, no file is read."""
        return sum(entry.count for entry in self._entries() if entry.free and entry.fp == endpoint.fingerprint[:16])

    def total(self):
        """Events in the spool, claimed ones included."""
        return sum(entry.count for entry in self._entries())

    def _write_file(self, file_name, document):
        data = json.dumps(document, ensure_ascii=False, sort_keys=True, indent=1).encode('utf-8', 'surrogatepass')
        temp = os.path.join(self.path, '%s%d-%s' % (_TEMP_PREFIX, os.getpid(), os.urandom(4).hex()))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o600)
        try:
            with os.fdopen(fd, 'wb') as handle:
                os.fchmod(fd, 0o600)  # whatever the umask was
                handle.write(data)
                handle.flush()
                os.fsync(fd)
            os.replace(temp, os.path.join(self.path, file_name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            self._on_directory(os.fsync)

    def write(self, endpoint, records, replacing=None):
        """Add ``records`` (dicts: ``event``, ``first_failure``, ``last_error``, ``attempts``) for ``endpoint``.

        Returns how many old events were dropped to keep ``max_events``. ``replacing``: the stamp of a batch of
        write_ahead() that these records replace, deleted once they are written, before the bound is applied.
        """
        return self._write_batch(endpoint, list(records), new_stamp(), replacing=replacing)

    def write_ahead(self, endpoint, records):
        """Write ``records`` before trying to deliver them, so that a process killed meanwhile loses none; return the
        batch's stamp for write(replacing=). The bound is not applied: they are on their way out."""
        stamp = new_stamp()
        self._write_batch(endpoint, list(records), stamp, trim=False)
        return stamp

    def _write_batch(self, endpoint, records, stamp, ignore=None, trim=True, replacing=None):
        dropped = max(0, len(records) - self.max_events)
        records = [dict(event=record['event'], first_failure=round(float(record.get('first_failure') or time.time()), 3),
                        attempts=int(record.get('attempts') or 0), last_error=endpoint.redact(record.get('last_error') or 'not delivered'))
                   for record in records[dropped:]]
        file_name = '%s.%s.%d.json' % (stamp, endpoint.fingerprint[:16], len(records))
        if records:
            self._ensure_directory()
            try:
                self._write_file(file_name, dict(format=FORMAT, endpoint=endpoint.fingerprint, endpoint_url=endpoint.masked,
                                                 spooled_at=round(time.time(), 3), records=records))
            except OSError as exc:
                raise self._error('write to', exc) from None
        elif replacing is None:
            return 0
        entries = []
        for entry in self._entries(clean=bool(records)):
            if (entry.stamp, entry.fp, entry.claimed) == (replacing, endpoint.fingerprint[:16], None):
                _unlink(os.path.join(self.path, entry.file))  # written ahead, and not claimed by another run meanwhile
            elif entry.file != ignore:  # a claim being given back is not counted
                entries.append(entry)
        return dropped + self._trim(entries, keep=file_name) if records and trim else dropped

    def _trim(self, entries, keep):
        """Drop the oldest events down to max_events (``keep``, the file just written, last); return how many."""
        excess = start = sum(entry.count for entry in entries) - self.max_events
        for entry in entries:
            if excess <= 0:
                break
            claim_path = self._take(os.path.join(self.path, entry.file), entry.name) if entry.free and entry.file != keep else None
            if claim_path is None:
                continue
            cut = entry.count
            if cut > excess:  # its oldest records only; unreadable (OSError, ValueError from _load()), it goes whole
                with contextlib.suppress(OSError, ValueError):
                    document = _load(claim_path)
                    document['records'] = document['records'][excess:]
                    self._write_file('%s.%s.%d.json' % (entry.stamp, entry.fp, len(document['records'])), document)
                    cut = excess
            _unlink(claim_path)
            excess -= cut
        return start - excess

    def _take(self, path, name):
        """Claim the file at ``path`` (again) by renaming it: the claimed path, or None if another run was faster."""
        claim_path = os.path.join(self.path, '%s.claim-%d-%s' % (name, int(time.time() * 1000), self._owner))
        try:
            os.rename(path, claim_path)
        except (FileNotFoundError, FileExistsError):
            return None
        return claim_path

    def claim(self, endpoint):
        """Claim every batch waiting for ``endpoint``, oldest first: ``(batches, problems)``.

        A batch has its file's ``name``, ``stamp`` and ``claim_path``, and ``records`` like those given to write(), this
        run's to deliver or give back; ``problems`` are messages about files that could not be read (renamed to
        ``*.corrupt``, not to be tried again).
        """
        batches, problems = [], []
        for entry in self._entries():
            if entry.fp != endpoint.fingerprint[:16] or not entry.free:
                continue
            try:
                claim_path = self._take(os.path.join(self.path, entry.file), entry.name)
            except OSError as exc:
                problems.append('cannot claim the Flashduty spool file %s: %s' % (os.path.join(self.path, entry.name), exc.strerror or exc))
                continue
            if claim_path is None:
                continue
            try:
                document = _load(claim_path)
                if document.get('endpoint') != endpoint.fingerprint:
                    # Another endpoint whose fingerprint starts the same way: give it back.
                    os.rename(claim_path, os.path.join(self.path, entry.name))
                    continue
                records = [record for record in document['records']
                           if isinstance(record, dict) and isinstance(record.get('event'), dict)]
            except (OSError, ValueError) as exc:  # a UnicodeDecodeError too
                corrupt = os.path.join(self.path, entry.name + '.corrupt')
                try:
                    os.rename(claim_path, corrupt)
                except OSError:
                    corrupt = claim_path
                problems.append('ignored the unreadable Flashduty spool file %s (%s); it was left as %s'
                                % (entry.name, endpoint.redact(exc), corrupt))
                continue
            batches.append(types.SimpleNamespace(name=entry.name, stamp=entry.stamp, claim_path=claim_path, records=records))
        return batches, problems

    def renew(self, batch):
        """Refresh a claim so that other runs keep respecting it; False when it was taken over meanwhile."""
        try:
            new_path = self._take(batch.claim_path, batch.name)
        except OSError:
            new_path = None
        batch.claim_path = new_path or batch.claim_path
        return new_path is not None

    def finish(self, batch, endpoint, remaining=()):
        """Release a claimed batch, ``remaining`` records written back under its stamp (unless another run took the
        claim over meanwhile: that run sends them); return how many old events were dropped to keep the bound."""
        if not os.path.exists(batch.claim_path):
            return 0
        dropped = self._write_batch(endpoint, list(remaining), batch.stamp, ignore=os.path.basename(batch.claim_path))
        _unlink(batch.claim_path)
        return dropped
