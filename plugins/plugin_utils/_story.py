# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The text of a play's end event: what it changed, where it failed and why, within Flashduty's 2,048 characters.

Private to this collection: not a public API, may change without notice.
Plain Python on names and strings; the facts come from _outcome.PlayLog.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import MAX_DESCRIPTION_LENGTH, truncate

REASON_LENGTH = 200
# The context line (playbook, who, revision) may take at most this much of the description.
_CONTEXT_LENGTH = 400
_NUMBERED = re.compile(r'^(.*?)(\d+)$')
_RANGE = re.compile(r'^.*\[(\d+):(\d+)\]$')
# Fewer consecutive hosts than this stay listed one by one: web[1:2] says no more than web1, web2.
_MIN_RANGE = 3
_HIDDEN = 'hidden by no_log'


def first_line(text, limit=REASON_LENGTH):
    """The first non-blank line of ``text``, cut to ``limit`` characters."""
    for line in ('%s' % (text,)).splitlines():
        line = line.strip()
        if line:
            return truncate(line, limit)
    return ''


def host_ranges(names):
    """Names with runs of consecutive numbers written as Ansible inventory ranges: web1, web2, web3 -> web[1:3].

    Order is kept; a run merges names with the same prefix and number width, and at least three members.
    """
    runs = []  # [prefix, width, first digits, last number, members]; prefix None for a name without a number
    for name in names:
        match = _NUMBERED.match(name)
        if match is None:
            runs.append([None, 0, '', 0, [name]])
            continue
        prefix, digits = match.groups()
        last = runs[-1] if runs else None
        if last is not None and last[0] == prefix and last[1] == len(digits) and int(digits) == last[3] + 1:
            last[3] = int(digits)
            last[4].append(name)
            continue
        runs.append([prefix, len(digits), digits, int(digits), [name]])
    texts = []
    for prefix, _width, first, _last, members in runs:
        if prefix is not None and len(members) >= _MIN_RANGE:
            texts.append('%s[%s:%s]' % (prefix, first, members[-1][len(prefix):]))
        else:
            texts.extend(members)
    return texts


def hosts_text(names, limit):
    """``web1, web2, web3`` in full when it fits ``limit``, else with ranges, else cut as ``web[1:40], db1, +12 more``."""
    names = list(names)
    text = ', '.join(names)
    if len(text) <= limit:
        return text
    parts = host_ranges(names)
    text = ', '.join(parts)
    if len(text) <= limit:
        return text
    sizes = [_range_size(part) for part in parts]
    left = len(names)
    kept = []
    length = 0
    for part, size in zip(parts, sizes):
        extra = len(part) + (2 if kept else 0)
        rest = left - size
        if length + extra + (len(', +%d more' % rest) if rest else 0) > limit:
            break
        kept.append(part)
        length += extra
        left = rest
    if not kept:
        return truncate('%d hosts' % len(names), limit)
    return ', '.join(kept) + (', +%d more' % left if left else '')


def _range_size(part):
    match = _RANGE.match(part)
    if match is None:
        return 1
    return int(match.group(2)) - int(match.group(1)) + 1


def changed_line(tasks, limit, verb='Changed', names=True):
    """``Changed: "Render config" on web1, web2; "Restart" on web1`` within ``limit`` characters.

    ``tasks`` lists ``(task name, [hosts])`` in the order the tasks ran. Without
    ``names`` the line lists the hosts only, with the number of tasks. Long
    lists are summarised: host ranges, ``+N more`` hosts, ``+N more tasks``.
    """
    if not tasks:
        return ''
    if not names:
        hosts = []
        seen = set()
        for _name, task_hosts in tasks:
            for host in task_hosts:
                if host not in seen:
                    seen.add(host)
                    hosts.append(host)
        head = '%s (%d task%s): ' % (verb, len(tasks), '' if len(tasks) == 1 else 's')
        return head + hosts_text(hosts, max(10, limit - len(head)))
    head = verb + ': '
    full = head + '; '.join('"%s" on %s' % (name, ', '.join(hosts)) for name, hosts in tasks)
    if len(full) <= limit:
        return full
    compact = head + '; '.join('"%s" on %s' % (name, ', '.join(host_ranges(hosts))) for name, hosts in tasks)
    if len(compact) <= limit:
        return compact
    # Each task gets an equal share of the room, at least enough to name it and a few hosts.
    share = max(80, (limit - len(head)) // len(tasks))
    items = []
    length = len(head)
    for index, (name, hosts) in enumerate(tasks):
        label = '"%s" on ' % truncate(name, 80)
        item = label + hosts_text(hosts, max(12, share - len(label)))
        left = len(tasks) - index - 1
        reserve = len('; +%d more tasks' % left) if left else 0
        extra = len(item) + (2 if items else 0)
        if length + extra + reserve > limit:
            break
        items.append(item)
        length += extra
    left = len(tasks) - len(items)
    text = head + '; '.join(items)
    if left:
        text += ('; ' if items else '') + '+%d more task%s' % (left, '' if left == 1 else 's')
    return truncate(text, limit)


def problem_lines(title, problems, limit, names=True):
    """``Failed: "Apply migrations" on db1: relation "users" already exists``, one line per task and reason.

    ``problems`` lists ``(task name, reason or None, [hosts])``; a reason of None
    (no_log, or task names left out) is not shown. Lines past ``limit`` are
    counted in a last ``Failed: +N more hosts`` line.
    """
    lines = []
    length = 0
    total = sum(len(hosts) for _name, _reason, hosts in problems)
    shown = 0
    for name, reason, hosts in problems:
        if names:
            head = '%s: "%s" on ' % (title, truncate(name, 120))
        else:
            head = '%s: ' % title
        tail = ': %s' % reason if (reason and names) else ''
        room = limit - length - len(head) - len(tail) - 30
        if room < 12:
            break
        line = head + hosts_text(hosts, room) + tail
        lines.append(line)
        length += len(line) + 1
        shown += len(hosts)
    if shown < total:
        lines.append('%s: +%d more host%s' % (title, total - shown, '' if total - shown == 1 else 's'))
    return lines


def reason_of(result, no_log, secrets=(), redact=None):
    """A short reason from a failed or unreachable task result (``msg``, first line, about 200 characters).

    ``no_log`` tasks (and censored results) give None: their message, result and
    item are never shown. ``redact(text, secrets)`` masks integration keys.
    """
    if no_log or not isinstance(result, dict) or 'censored' in result:
        return None
    for field in ('msg', 'reason', 'stderr', 'module_stderr', 'exception'):
        value = result.get(field)
        if isinstance(value, str) and value.strip():
            text = first_line(value)
            return redact(text, secrets) if redact is not None else text
    return None


def compose(head, sections, tail, limit=MAX_DESCRIPTION_LENGTH):
    """``head`` line, then ``sections`` (callables taking the room left, returning lines), then ``tail`` lines.

    The head and tail (the outcome summary, the task totals, the context) are
    never cut; the sections, most important first, get what is left.
    """
    tail = [line if len(line) <= _CONTEXT_LENGTH else truncate(line, _CONTEXT_LENGTH) for line in tail]
    room = limit - len(head) - sum(len(line) + 1 for line in tail) - 1
    lines = [head]
    for section in sections:
        if room <= 20:
            break
        for line in section(room):
            if not line:
                continue
            if len(line) + 1 > room:
                break
            lines.append(line)
            room -= len(line) + 1
    lines.extend(tail)
    return truncate('\n'.join(lines), limit)


HIDDEN_REASON = _HIDDEN
