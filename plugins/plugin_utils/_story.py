# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The text of a play's end event: what it changed, where it failed and why, within Flashduty's 2,048 characters.

Private to this collection: not a public API, may change without notice.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import MAX_DESCRIPTION_LENGTH, redact, truncate
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play import fit, plural

REASON_LENGTH = 200
# The context line (playbook, who, revision) may take at most this much of the description.
_CONTEXT_LENGTH = 400
_NUMBERED = re.compile(r'^(.*?)(\d+)$')
# Fewer consecutive hosts than this stay listed one by one: web[1:2] says no more than web1, web2.
_MIN_RANGE = 3
HIDDEN_REASON = 'hidden by no_log'


def first_line(text, limit=REASON_LENGTH):
    """The first non-blank line of ``text``, cut to ``limit`` characters (None: not cut)."""
    line = next((line.strip() for line in ('%s' % (text,)).splitlines() if line.strip()), '')
    return truncate(line, limit) if limit else line


def _runs(names):
    """``[(text, number of names)]``: runs of consecutive numbers with the same prefix and width as ``web[1:3]``."""
    runs = []  # (prefix, members); prefix None for a name without a number
    for name in names:
        match = _NUMBERED.match(name)
        prefix = match.group(1) if match else None
        members = runs[-1][1] if runs and prefix is not None and runs[-1][0] == prefix else ()
        if members and len(members[-1]) == len(name) and int(members[-1][len(prefix):]) + 1 == int(match.group(2)):
            members.append(name)
        else:
            runs.append((prefix, [name]))
    texts = []
    for prefix, members in runs:
        if prefix is not None and len(members) >= _MIN_RANGE:
            texts.append(('%s[%s:%s]' % (prefix, members[0][len(prefix):], members[-1][len(prefix):]), len(members)))
        else:
            texts.extend((member, 1) for member in members)
    return texts


def host_ranges(names):
    """Names with runs of consecutive numbers written as Ansible inventory ranges: web1, web2, web3 -> web[1:3]."""
    return [text for text, dummy in _runs(names)]


def hosts_text(names, limit):
    """``web1, web2, web3`` in full when it fits ``limit``, else with ranges, else cut as ``web[1:40], db1, +12 more``."""
    names = list(names)
    text = ', '.join(names)
    if len(text) <= limit:
        return text
    runs = _runs(names)
    return fit([part for part, dummy in runs], limit, ', ', ', +%d more', '%d hosts' % len(names), [size for dummy, size in runs])


def changed_line(tasks, limit, verb='Changed', names=True):
    """``Changed: "Render config" on web1, web2; "Restart" on web1`` within ``limit``, from ``[(task name, [hosts])]``.
    Without ``names``: the hosts only, with the number of tasks."""
    if not tasks:
        return ''
    if not names:
        head = '%s (%s): ' % (verb, plural(len(tasks), 'task'))
        return head + hosts_text(dict.fromkeys(host for dummy, hosts in tasks for host in hosts), max(10, limit - len(head)))
    head = verb + ': '
    for join in (', '.join, lambda hosts: ', '.join(host_ranges(hosts))):
        text = head + '; '.join('"%s" on %s' % (name, join(hosts)) for name, hosts in tasks)
        if len(text) <= limit:
            return text
    # Each task gets an equal share of the room, at least enough to name it and a few hosts.
    share = max(80, (limit - len(head)) // len(tasks))
    items = []
    length = len(head)
    for index, (name, hosts) in enumerate(tasks):
        label = '"%s" on ' % truncate(name, 80)
        item = label + hosts_text(hosts, max(12, share - len(label)))
        left = len(tasks) - index - 1
        extra = len(item) + (2 if items else 0)
        if length + extra + (len('; +%d more tasks' % left) if left else 0) > limit:
            break
        items.append(item)
        length += extra
    left = len(tasks) - len(items)
    text = head + '; '.join(items)
    if left:
        text += ('; ' if items else '') + '+%s' % plural(left, 'more task')
    return truncate(text, limit)


def problem_lines(title, problems, limit, names=True):
    """``Failed: "Apply migrations" on db1: relation "users" already exists`` per ``(task name, reason or None, [hosts])``;
    hosts past ``limit`` are counted in a last ``Failed: +N more hosts``. Without ``names``: no task names, no reasons."""
    lines = []
    length = shown = 0
    for name, reason, hosts in problems:
        head = '%s: "%s" on ' % (title, truncate(name, 120)) if names else '%s: ' % title
        tail = ': %s' % reason if (reason and names) else ''
        room = limit - length - len(head) - len(tail) - 30
        if room < 12:
            break
        lines.append(head + hosts_text(hosts, room) + tail)
        length += len(lines[-1]) + 1
        shown += len(hosts)
    left = sum(len(hosts) for dummy, dummy2, hosts in problems) - shown
    return lines + (['%s: +%s' % (title, plural(left, 'more host'))] if left else [])


def reason_of(result, no_log, secrets=()):
    """A short reason from a failed or unreachable task result, ``secrets`` masked; HIDDEN_REASON for ``no_log``
    tasks and censored results."""
    if not isinstance(result, dict):
        return None
    if no_log or 'censored' in result:
        return HIDDEN_REASON
    for field in ('msg', 'reason', 'stderr', 'module_stderr', 'exception'):
        value = result.get(field)
        if isinstance(value, str) and value.strip():
            return redact(first_line(value), secrets)
    return None


def compose(head, sections, tail, limit=MAX_DESCRIPTION_LENGTH):
    """``head``, ``sections`` (callables from the room left to lines, most important first) and ``tail`` lines:
    the head and tail (the outcome, the task totals, the context) are never cut, the sections get what is left."""
    tail = [truncate(line, _CONTEXT_LENGTH) for line in tail]
    room = limit - len(head) - sum(len(line) + 1 for line in tail) - 1
    lines = [head]
    for section in sections:
        if room <= 20:
            break
        for line in section(room):
            if len(line) + 1 > room:
                break
            if line:
                lines.append(line)
                room -= len(line) + 1
    return truncate('\n'.join(lines + tail), limit)
