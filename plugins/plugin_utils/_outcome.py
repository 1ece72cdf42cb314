# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""How a play went, as the recap tells it: per-host outcomes, changed tasks with their hosts, failures and why.

Private to this collection: not a public API, may change without notice.

The callback appends one ``(host, increments, task id, time)`` tuple per task result
(the hot path), names each task once when it starts (PlayLog.name_task), and
PlayLog.add() folds the results in once per task. What Ansible does not
tell callbacks directly is inferred the same way on every ansible-core:
- hosts of a ``serial`` batch that never started (the play was aborted before
  it) never ran;
- a final failure of a task with ``any_errors_fatal`` (or ``run_once``, which
  linear treats alike), or more failures in a batch than
  ``max_fail_percentage`` allows, stops the other hosts of that batch.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import label_value, truncate, MAX_LABEL_VALUE_LENGTH
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

FAILURE = 'failed'
UNREACHABLE_HOST = 'unreachable'

_LIST_IN_DESCRIPTION = 400


def new_counters():
    return [0] * len(COUNTERS)


class PlayLog:
    """What one play did, gathered from its task results and batches."""

    __slots__ = ('counters', 'changed', 'failures', 'last_result', 'batches', 'batch_started', 'task_names')

    def __init__(self):
        self.counters = {}        # host -> new_counters()
        self.changed = {}         # task key -> (task name, {host: None}), in the order tasks first changed a host
        self.failures = {}        # host -> (kind, task name, reason or None, stops the batch)
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

    @property
    def ran(self):
        """Whether any task started in the play."""
        return any(started is not None for started in self.batch_started)

    def host_started(self, host):
        """When the batch of ``host`` started its first task (None when it never did)."""
        for hosts, started in zip(self.batches, self.batch_started):
            if host in hosts:
                return started
        return None

    def name_task(self, task_id, name):
        self.task_names[task_id] = name

    def add(self, outcomes):
        """Fold in the ``(host, increments, task id, time)`` tuples the callback gathered."""
        counters = self.counters
        last = self.last_result
        changed = self.changed
        for host, increments, task_id, when in outcomes:
            counts = counters.get(host)
            if counts is None:
                counts = counters[host] = new_counters()
            for index in increments:
                counts[index] += 1
            last[host] = when
            if increments is RESULT_CHANGED or increments is RESULT_IGNORED_CHANGED:
                record = changed.get(task_id)
                if record is None:
                    record = changed[task_id] = (self.task_names.get(task_id) or 'a task', {})
                record[1][host] = None

    def add_failure(self, host, kind, task_name, reason, stops_batch):
        self.failures[host] = (kind, task_name, reason, stops_batch)

    def verdict(self, targets, failed, unreachable, max_fail_percentage=None):
        """``(not_run, stopped, aborted)`` for the play: hosts that never ran, hosts stopped by another host's
        failure, and whether Ansible aborted the play. ``failed`` and ``unreachable`` are the final sets."""
        ran = set()
        last_batch = None
        for hosts, started in zip(self.batches, self.batch_started):
            if started is not None:
                ran.update(hosts)
                last_batch = hosts
        not_run = set(host for host in targets if host not in ran)
        bad = failed | unreachable
        stopping = False
        if last_batch is not None:
            stopping = any(self.failures.get(host, (None, None, None, False))[3] for host in bad & last_batch)
            if not stopping and max_fail_percentage is not None and last_batch:
                stopping = len(bad & last_batch) / len(last_batch) > max_fail_percentage / 100.0
        stopped = set(host for host in last_batch if host not in bad) if stopping else set()
        aborted = bool(bad) and bool(stopped or not_run)
        return not_run, stopped, aborted

    def summary(self, hosts, failed, unreachable, not_run, stopped, aborted):
        """How the play went for ``hosts`` (a change's): a dict with the outcome, the host lists in ``hosts`` order,
        the task totals, the changed tasks ``[(name, [hosts])]`` and problems by kind ``[(name, reason, [hosts])]``."""
        totals = new_counters()
        lists = dict(ok=[], changed=[], failed=[], unreachable=[], not_run=[], stopped=[])
        for host in hosts:
            counts = self.counters.get(host)
            if counts is not None:
                for index, count in enumerate(counts):
                    totals[index] += count
                if counts[CHANGED]:
                    lists['changed'].append(host)
            if host in unreachable:
                lists['unreachable'].append(host)
            elif host in failed:
                lists['failed'].append(host)
            elif host in not_run:
                lists['not_run'].append(host)
            elif host in stopped:
                lists['stopped'].append(host)
            else:
                lists['ok'].append(host)
        bad = lists['failed'] or lists['unreachable']
        if aborted and (lists['not_run'] or lists['stopped']):
            outcome = OUTCOME_ABORTED
        elif bad and not lists['ok']:
            outcome = OUTCOME_FAILED
        elif bad:
            outcome = OUTCOME_PARTIALLY_FAILED
        else:
            outcome = OUTCOME_SUCCEEDED
        tasks = []
        for name, task_hosts in self.changed.values():
            mine = [host for host in hosts if host in task_hosts]  # in the play's order of hosts, not the order results came
            if mine:
                tasks.append((name, mine))
        summary = dict(outcome=outcome, totals=dict(zip(COUNTERS, totals)), tasks=tasks,
                       problems=dict((kind, self._problems(kind, lists[kind])) for kind in (FAILURE, UNREACHABLE_HOST)))
        summary.update(lists)
        return summary

    def _problems(self, kind, hosts):
        groups = {}
        for host in hosts:
            dummy, name, reason, dummy2 = self.failures.get(host, (kind, None, None, False))
            groups.setdefault((name, reason), []).append(host)
        return [(name or 'an unknown task', reason, members) for (name, reason), members in groups.items()]


def outcome_labels(summary):
    """The labels a play's end adds, from PlayLog.summary(), as ``(name, value)`` pairs (unordered)."""
    values = dict(
        outcome=summary['outcome'],
        ok_count=len(summary['ok']),
        changed_count=len(summary['changed']),
        failed_count=len(summary['failed']),
        unreachable_count=len(summary['unreachable']),
        failed_hosts=_play.summarize_names(summary['failed']) if summary['failed'] else None,
        unreachable_hosts=_play.summarize_names(summary['unreachable']) if summary['unreachable'] else None,
    )
    for kind in ('not_run', 'stopped'):
        if summary[kind]:
            values[kind + '_count'] = len(summary[kind])
            values[kind + '_hosts'] = _play.summarize_names(summary[kind])
    pairs = []
    for name, value in values.items():
        value = label_value(value)
        if value is not None and value != '':
            pairs.append((name, truncate(value, MAX_LABEL_VALUE_LENGTH)))
    return pairs


def end_description(play, hosts, summary, context_line, interrupted=None, check_mode=False, task_names=True, what='play'):
    """The description of a play's last event: the outcome first, then failures with their reasons, hosts that
    never ran or were stopped, the changed tasks with their hosts, the task totals and ``context_line``;
    never over 2,048 characters, and the outcome, totals and context are never the part cut."""
    count = len(hosts)
    plural = '' if count == 1 else 's'
    subject = 'Ansible %s "%s"' % (what, play)
    if interrupted:
        head = '%s was interrupted (%s) before it ended, on %d host%s' % (subject, interrupted, count, plural)
    elif check_mode:
        head = '%s ran in check mode on %d host%s' % (subject, count, plural)
    elif summary['outcome'] == OUTCOME_ABORTED:
        head = '%s was aborted by failures on %d host%s' % (subject, count, plural)
    elif summary['outcome'] == OUTCOME_SUCCEEDED:
        head = '%s finished on %d host%s' % (subject, count, plural)
    else:
        head = '%s finished with failures on %d host%s' % (subject, count, plural)
    verb = 'would change' if check_mode else 'changed'
    head += ': %d ok (%d %s), %d failed, %d unreachable' % (
        len(summary['ok']), len(summary['changed']), verb, len(summary['failed']), len(summary['unreachable']))
    for kind, words in (('stopped', 'stopped'), ('not_run', 'never ran')):
        if summary[kind]:
            head += ', %d %s' % (len(summary[kind]), words)
    head += '.'

    def problems(title, kind):
        return lambda room: _story.problem_lines(title, summary['problems'][kind], room, names=task_names)

    def hosts_line(title, kind):
        def section(room):
            if not summary[kind]:
                return []
            return ['%s: %s' % (title, _story.hosts_text(summary[kind], max(12, min(room, _LIST_IN_DESCRIPTION) - len(title) - 2)))]
        return section

    def changed(room):
        return [_story.changed_line(summary['tasks'], room, verb='Would change' if check_mode else 'Changed', names=task_names)]

    totals = summary['totals']
    tail = ['Tasks: ' + ' '.join('%s=%d' % (name, totals[name]) for name in COUNTERS), context_line]
    sections = [problems('Failed', FAILURE), problems('Unreachable', UNREACHABLE_HOST),
                hosts_line('Stopped when the play was aborted', 'stopped'), hosts_line('Never ran', 'not_run'), changed]
    return _story.compose(head, sections, tail)
