# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""How a play went, as the recap tells it: per-host outcomes, changed tasks with their hosts, failures and why.

Private to this collection: not a public API, may change without notice.

What Ansible does not tell callbacks is inferred the same way on every ansible-core:
- hosts of a ``serial`` batch that never started (the play was aborted before it) never ran;
- a final failure of a task with ``any_errors_fatal`` (or ``run_once``, which linear treats alike), or more
  failures in a batch than ``max_fail_percentage`` allows, stops the other hosts of that batch.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _play, _story

# Indexes in the per-host result counters (a small list per host), in the recap's order of names.
OK, CHANGED, FAILED, SKIPPED, UNREACHABLE, IGNORED, RESCUED = range(7)
COUNTERS = ('ok', 'changed', 'failed', 'skipped', 'unreachable', 'ignored', 'rescued')

# What one task result adds to its host's counters, as the strategy adds it to the recap.
RESULT_OK = (OK,)
RESULT_CHANGED = (OK, CHANGED)
RESULT_SKIPPED = (SKIPPED,)
RESULT_IGNORED = (OK, IGNORED)
RESULT_IGNORED_CHANGED = (OK, IGNORED, CHANGED)
RESULT_RESCUED = (RESCUED,)
RESULT_FAILED = (FAILED,)
RESULT_UNREACHABLE = (UNREACHABLE,)

OUTCOME_SUCCEEDED = 'succeeded'
OUTCOME_PARTIALLY_FAILED = 'partially_failed'
OUTCOME_FAILED = 'failed'
OUTCOME_ABORTED = 'aborted'
OUTCOME_INTERRUPTED = 'interrupted'


class PlayLog:
    """What one play did. The callback appends ``(host, increments, task id, time)`` per task result (the hot
    path), names each task once when it starts, and add() folds the results in once per task."""

    __slots__ = ('counters', 'changed', 'failures', 'last_result', 'batches', 'batch_started', 'task_names')

    def __init__(self):
        self.counters = {}        # host -> a counter per COUNTERS
        self.changed = {}         # task id -> (task name, {host: None}), in the order tasks first changed a host
        self.failures = {}        # host -> (task name, reason or None, stops the batch)
        self.last_result = {}     # host -> time of its last task result
        self.batches = []         # host names of each serial batch, in order
        self.batch_started = []   # per batch: time its first task started, None until then
        self.task_names = {}      # task id -> name, from the task's start

    def start_batch(self, hosts):
        self.batches.append(frozenset(hosts))
        self.batch_started.append(None)

    def first_task(self, now):
        """Note that a task starts; returns the current batch's hosts the first time, else None."""
        if not self.batches or self.batch_started[-1] is not None:
            return None
        self.batch_started[-1] = now
        return self.batches[-1]

    def add(self, outcomes):
        """Fold ``outcomes`` in, and empty it."""
        counters, last, changed = self.counters, self.last_result, self.changed
        for host, increments, task_id, when in outcomes:
            counts = counters.get(host)
            if counts is None:
                counts = counters[host] = [0] * len(COUNTERS)
            for index in increments:
                counts[index] += 1
            last[host] = when
            if increments is RESULT_CHANGED or increments is RESULT_IGNORED_CHANGED:
                record = changed.get(task_id)
                if record is None:
                    record = changed[task_id] = (self.task_names.get(task_id) or 'a task', {})
                record[1][host] = None
        del outcomes[:]

    def verdict(self, targets, failed, unreachable, max_fail_percentage=None):
        """``(not_run, stopped, aborted)``: hosts that never ran, hosts stopped by another host's failure, and
        whether Ansible aborted the play. ``failed`` and ``unreachable`` are the final sets."""
        started = [hosts for hosts, at in zip(self.batches, self.batch_started) if at is not None]
        ran = set().union(*started)
        not_run = set(host for host in targets if host not in ran)
        bad = failed | unreachable
        last_batch = started[-1] if started else frozenset()
        stopping = any(self.failures.get(host, (None, None, False))[2] for host in bad & last_batch)
        if not stopping and max_fail_percentage is not None and last_batch:
            stopping = len(bad & last_batch) / len(last_batch) > max_fail_percentage / 100.0
        stopped = set(last_batch - bad) if stopping else set()
        return not_run, stopped, bool(bad) and bool(stopped or not_run)

    def summary(self, hosts, failed, unreachable, not_run, stopped, aborted):
        """How the play went for ``hosts`` (a change's): a dict with the outcome, the host lists in ``hosts`` order,
        the task totals, the changed tasks ``[(name, [hosts])]`` and problems by kind ``[(name, reason, [hosts])]``."""
        totals = [0] * len(COUNTERS)
        lists = dict(ok=[], changed=[], failed=[], unreachable=[], not_run=[], stopped=[])
        for host in hosts:
            counts = self.counters.get(host)
            if counts is not None:
                totals = [total + count for total, count in zip(totals, counts)]
                if counts[CHANGED]:
                    lists['changed'].append(host)
            for kind, members in (('unreachable', unreachable), ('failed', failed), ('not_run', not_run), ('stopped', stopped)):
                if host in members:
                    lists[kind].append(host)
                    break
            else:
                lists['ok'].append(host)
        bad = lists['failed'] or lists['unreachable']
        if aborted and (lists['not_run'] or lists['stopped']):
            outcome = OUTCOME_ABORTED
        else:
            outcome = (OUTCOME_PARTIALLY_FAILED if lists['ok'] else OUTCOME_FAILED) if bad else OUTCOME_SUCCEEDED
        # In the play's order of hosts, not the order results came.
        tasks = [(name, [host for host in hosts if host in task_hosts]) for name, task_hosts in self.changed.values()]
        summary = dict(outcome=outcome, totals=dict(zip(COUNTERS, totals)), tasks=[task for task in tasks if task[1]],
                       problems=dict((kind, self._problems(lists[kind])) for kind in ('failed', 'unreachable')))
        summary.update(lists)
        return summary

    def _problems(self, hosts):
        groups = {}
        for host in hosts:
            name, reason, dummy = self.failures.get(host, (None, None, False))
            groups.setdefault((name, reason), []).append(host)
        return [(name or 'an unknown task', reason, members) for (name, reason), members in groups.items()]


def outcome_labels(summary):
    """The labels a play's end adds, from PlayLog.summary(), as ``(name, value)`` pairs."""
    values = dict((kind + '_count', len(summary[kind])) for kind in ('ok', 'changed', 'failed', 'unreachable'))
    values['outcome'] = summary['outcome']
    for kind in ('failed', 'unreachable', 'not_run', 'stopped'):
        if summary[kind]:
            values.update({kind + '_count': len(summary[kind]), kind + '_hosts': _play.summarize_names(summary[kind])})
    return _play.label_pairs(values)


def end_description(play, hosts, summary, context_line, interrupted=None, check_mode=False, task_names=True, what='play'):
    """The description of a play's last event: the outcome first, then failures with their reasons, hosts that
    never ran or were stopped, the changed tasks with their hosts, the task totals and ``context_line``;
    never over 2,048 characters, and the outcome, totals and context are never the part cut."""
    on = _play.plural(len(hosts), 'host')
    if interrupted:
        head = 'was interrupted (%s) before it ended, on %s' % (interrupted, on)
    elif check_mode:
        head = 'ran in check mode on %s' % on
    else:
        head = {OUTCOME_ABORTED: 'was aborted by failures on %s', OUTCOME_SUCCEEDED: 'finished on %s'}.get(
            summary['outcome'], 'finished with failures on %s') % on
    verb = 'Would change' if check_mode else 'Changed'
    head = 'Ansible %s "%s" %s: %d ok (%d %s), %d failed, %d unreachable%s.' % (
        what, play, head, len(summary['ok']), len(summary['changed']), verb.lower(), len(summary['failed']), len(summary['unreachable']),
        ''.join(', %d %s' % (len(summary[kind]), words) for kind, words in (('stopped', 'stopped'), ('not_run', 'never ran')) if summary[kind]))

    def problems(title, kind):
        return lambda room: _story.problem_lines(title, summary['problems'][kind], room, names=task_names)

    def hosts_line(title, kind):
        return lambda room: ['%s: %s' % (title, _story.hosts_text(summary[kind], max(12, min(room, _play.LIST_IN_DESCRIPTION) - len(title) - 2)))
                             ] if summary[kind] else []

    totals = summary['totals']
    tail = ['Tasks: ' + ' '.join('%s=%d' % (name, totals[name]) for name in COUNTERS), context_line]
    return _story.compose(head, [problems('Failed', 'failed'), problems('Unreachable', 'unreachable'),
                                 hosts_line('Stopped when the play was aborted', 'stopped'), hosts_line('Never ran', 'not_run'),
                                 lambda room: [_story.changed_line(summary['tasks'], room, verb=verb, names=task_names)]], tail)
