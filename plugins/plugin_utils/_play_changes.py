# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The changes a play makes, for the change_events callback: which hosts report where (the Endpoint a set of
hosts resolves to), under which key, title, link and labels, and the events that start and end them.

Private to this collection: not a public API, may change without notice.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import operator

from ansible.executor.task_result import TaskResult
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    ENDPOINT_VARIABLES, FlashdutyError, build_event, endpoint_settings, resolve_endpoint, truncate)
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _outcome, _play, _story

_ENDPOINT_NAMES = frozenset(ENDPOINT_VARIABLES)
# The host, task and data of a task result: public ``host``, ``task`` and ``result`` on ansible-core 2.19+,
# where the underscored names are deprecated.
_PUBLIC = isinstance(getattr(TaskResult, 'host', None), property)
host_name = operator.attrgetter('host.name' if _PUBLIC else '_host.name')
task_of = operator.attrgetter('task' if _PUBLIC else '_task')
# Results keep only the id of their task (a str): holding the task copies of a whole task would keep them alive.
task_id = operator.attrgetter('task._uuid' if _PUBLIC else '_task._uuid')
result_data = operator.attrgetter('result' if isinstance(getattr(TaskResult, 'result', None), functools.cached_property) else '_result')
_CHANGE_SETTINGS = ('flashduty_change_key', 'flashduty_change_title', 'flashduty_change_link')
_FACT_ACTIONS = frozenset(('gather_facts', 'setup', 'ansible.builtin.gather_facts', 'ansible.builtin.setup',
                           'ansible.legacy.gather_facts', 'ansible.legacy.setup'))
# meta tasks (end_play, flush_handlers...) steer the play and run nothing on its hosts.
_META_ACTIONS = frozenset(('meta', 'ansible.builtin.meta', 'ansible.legacy.meta'))


class PlayState:
    """What the callback tracks about the current play. ``outcomes``: ``(host name, counter indexes to add, task id,
    time)`` per task result, until folded into ``log``; ``secrets``: the integration keys of the play's push URLs,
    masked in what is taken from results; ``context``: automatic_labels()' keyword arguments, and context_line()'s."""

    __slots__ = ('uuid', 'index', 'name', 'check_mode', 'changes', 'outcomes', 'log', 'failed', 'unreachable', 'batches',
                 'context', 'targets', 'secrets', 'replay_only')

    def __init__(self, play, index):
        self.uuid = play._uuid
        self.index = index
        self.check_mode = bool(play.check_mode)
        self.batches = [play]
        self.name = self.context = None
        self.changes = []
        self.outcomes = []
        self.targets = []
        self.secrets = ()
        self.failed, self.unreachable = set(), set()
        self.log = _outcome.PlayLog()
        self.replay_only = False

    def final_failures(self):
        """Hosts that failed (errors not ignored, not rescued: the strategy takes a rescued failure back out of the
        play's removed hosts) and hosts unreachable in the play."""
        return self.failed & set().union(*(play._removed_hosts for play in self.batches)), set(self.unreachable)

    def add_failure(self, host, task, result, when, ignored=False, unreachable=False):
        """A failed (or ``unreachable``) task result: counted, and unless ``ignored`` or rescued, kept with the failing
        task and the first line of its message (never for no_log, keys masked)."""
        if unreachable and getattr(task, 'ignore_unreachable', False):
            ignored = True
        if ignored:
            changed = not unreachable and result.is_changed()
            self.outcomes.append((host, _outcome.RESULT_IGNORED_CHANGED if changed else _outcome.RESULT_IGNORED, task._uuid, when))
            return
        # The strategy has already taken a failure a block rescues out of the play's removed hosts.
        if not unreachable and host not in self.batches[-1]._removed_hosts:
            self.outcomes.append((host, _outcome.RESULT_RESCUED, task._uuid, when))
            return
        self.outcomes.append((host, _outcome.RESULT_UNREACHABLE if unreachable else _outcome.RESULT_FAILED, task._uuid, when))
        (self.unreachable if unreachable else self.failed).add(host)
        reason = _story.reason_of(result_data(result), getattr(task, 'no_log', False), self.secrets)
        # linear stops every host of the batch after such a failure (any_errors_fatal, or run_once alike).
        stops = bool(getattr(task, 'any_errors_fatal', False) or getattr(task, 'run_once', False))
        self.log.failures[host] = (task_label(task), reason, stops)


class Change:
    """One change of a play: one Endpoint, and one ``host`` in per-host mode. ``labels`` are the automatic labels
    as ``(name, value)`` pairs, most important first; ``user_labels`` those of flashduty_labels and label_vars
    (``masked`` names those where the integration key was masked); ``held`` the start event kept back in
    changed-only mode."""

    __slots__ = ('endpoint', 'key', 'title', 'link', 'hosts', 'labels', 'user_labels', 'masked', 'start_time', 'held', 'host',
                 'started')

    def __init__(self, endpoint, key, title, link, hosts, labels, user_labels, start_time, host=None, masked=()):
        self.endpoint = endpoint
        self.key = key
        self.title = title
        self.link = link
        self.hosts = hosts
        self.host = host
        self.labels = labels
        self.user_labels = user_labels
        self.masked = masked
        self.start_time = start_time
        self.held = None
        self.started = False      # its start event was sent (or held): a task of its hosts started


class ChangeMaker:
    """Makes the changes of each play of a run, and their events. ``warn(message, key=None)`` shows a warning once
    per key, ``note(message)`` a line at -vvv; ``option_endpoint`` holds the callback's push_url, integration_key
    and api_url options, used when the play's variables name no endpoint; ``module`` is the module of an ad-hoc
    run; ``explicit`` maps the change keys a change_event task reported in this run to the last status it sent:
    the callback sends nothing more under them; ``decrypted`` caches vaulted values (see PlayReader.variables)."""

    def __init__(self, warn, note, option_endpoint, label_vars, per_host, run_id, status_map, changed_only=False, task_names=True):
        self._warn = warn
        self._note = note
        self._option_endpoint = option_endpoint
        self._label_vars = label_vars
        self._per_host = per_host
        self._run_id = run_id
        self._status_map = status_map
        self._changed_only = changed_only
        self._task_names = task_names
        self.module = None
        self.explicit, self.decrypted = {}, {}

    def resolve(self, reader, members, play_name):
        """``(Endpoint, variables)`` for a set of hosts that resolve alike, or None when they are not reported."""
        values, problems = reader.variables(members[0], self.decrypted)
        if 'flashduty_enabled' in values:
            try:
                if not boolean(values['flashduty_enabled'], strict=True):
                    return None  # muted: no warning about the rest either
            except TypeError:
                self._warn('flashduty_enabled should be a boolean, got %r; taken as true' % (values['flashduty_enabled'],),
                           key=('enabled', '%r' % (values['flashduty_enabled'],)))
        for problem in problems:
            hint = ('; plays using it are not reported. If it is vaulted, give ansible-playbook the vault password '
                    '(--vault-id, --vault-password-file or --ask-vault-pass)') if problem.name in _ENDPOINT_NAMES else ''
            self._warn('the variable %s could not be decrypted or templated: %s%s' % (problem.name, problem.message, hint),
                       key=('variable', problem.name))
        if any(problem.name in _ENDPOINT_NAMES for problem in problems):
            return None
        source = endpoint_settings(values, 'variable')
        try:
            endpoint = resolve_endpoint(source, self._option_endpoint)
        except FlashdutyError as exc:
            if exc.field == 'push_url' and not any(source.values()) and not any(self._option_endpoint.values()):
                self._warn('no Flashduty push URL for play "%s" (hosts %s): set the variable flashduty_push_url '
                           '(vaulted, in group_vars/all for instance), the environment variable FLASHDUTY_PUSH_URL or '
                           'push_url in the [flashduty] section of ansible.cfg. Plays without one are not reported.'
                           % (play_name, _play.hosts_phrase([host.name for host in members])), key='no push url')
            else:
                self._warn('%s; plays using it are not reported' % exc.message, key=('url', exc.message))
            return None
        return endpoint, values

    def changes(self, state, endpoint, parts, order, ci_link, now):
        """The changes of ``endpoint`` in the play of ``state``, whose ``parts`` are ``(hosts, variables)`` pairs, hosts in ``order``."""
        if self._per_host:  # each host has the labels and settings of its own set of hosts, not those of the others
            units = [([host], self._settings([part], endpoint)) for part in parts for host in part[0]]
        else:
            units = [(sorted((host for members, dummy in parts for host in members), key=lambda host: order[host.name]),
                      self._settings(parts, endpoint))]
        changes = []
        for hosts, (user_labels, settings, masked) in units:
            names = [host.name for host in hosts]
            host = names[0] if self._per_host else None
            groups = _play.visible_groups(group.name for member in hosts for group in member.get_groups())
            key = settings.get('flashduty_change_key') or '%s-%d' % (self._run_id, state.index)
            key = '%s-%s' % (key, host) if host else key
            title = settings.get('flashduty_change_title') or _play.change_title(state.name, names, host=host, module=self.module)
            labels = _play.automatic_labels(names, groups, host=host, **state.context)
            changes.append(Change(endpoint, key, title, settings.get('flashduty_change_link') or ci_link, names, labels,
                                  dict(user_labels), now, host=host, masked=masked))
        changes.sort(key=lambda change: order[change.hosts[0]])
        return changes

    def _settings(self, parts, endpoint):
        """The user labels of a change's sets of hosts (flashduty_labels and label_vars, merged), its first key,
        title and link settings, and where the integration key was masked in the labels."""
        user_sets, settings, masked = [], {}, []
        for _members, values in parts:
            labels, problems, where = _play.clean_user_labels(values.get('flashduty_labels'), 'flashduty_labels', endpoint.secrets)
            extra = dict((name, values[name]) for name in self._label_vars if name in values)
            more, more_problems, more_where = _play.clean_user_labels(extra, 'label_vars', endpoint.secrets)
            for name, value in more.items():
                labels.setdefault(name, value)
            for problem in problems + more_problems:
                self._warn(problem)
            user_sets.append(labels)
            masked.extend(field for field in where + more_where if field not in masked)
            for name in _CHANGE_SETTINGS:
                value = values.get(name)
                if name not in settings and value not in (None, ''):
                    settings[name] = '%s' % (value,)
        return _play.merge_user_labels(user_sets), settings, masked

    def _subject(self, state):
        """What descriptions name, and what it is: the play, or the module of an ad-hoc run."""
        return (self.module, 'ad-hoc run of') if self.module else (state.name, 'play')

    def start_events(self, state, batch, now):
        """``(endpoint, event)`` pairs starting the changes of the hosts in ``batch``, whose first task starts: in
        per-play mode a change starts when the play did, in per-host mode when its host's batch starts its first task.
        In changed-only mode the start event is held back, to be sent with the end event."""
        subject, what = self._subject(state)
        events = []
        for change in state.changes:
            if change.started or (change.host is not None and change.host not in batch):
                continue
            if change.key in self.explicit:
                continue  # an earlier play's task reported this change: what the playbook said stands
            change.started = True
            if change.host is not None:
                change.start_time = now
            if state.check_mode or state.replay_only:
                continue  # check mode: one Planned event when the play ends; replay only: no event at all
            event = self._event(change, self._status_map['started'], _play.start_description(subject, change.hosts, state.context, what=what),
                                self._labels(change.labels, change.user_labels, final=False), change.start_time)
            if self._changed_only:
                change.held = event
            elif event is not None:
                events.append((change.endpoint, event))
        return events

    def end_events(self, state, failed, unreachable, interrupted, now):
        """``(endpoint, event)`` pairs ending the play's started changes; ``interrupted`` says why the run stopped first."""
        not_run, stopped, aborted = (set(), set(), False) if interrupted else state.log.verdict(
            state.targets, failed, unreachable, state.batches[0].max_fail_percentage)
        context_line = _play.context_line(**state.context)
        subject, what = self._subject(state)
        events = []
        for change in state.changes:
            if not change.started:
                continue  # no task of its hosts ran
            if change.key in self.explicit:
                self._note('change %s ends as the playbook reported it (%s): no end event of its own' % (change.key, self.explicit[change.key]))
                continue
            summary = state.log.summary(change.hosts, failed, unreachable, not_run, stopped, aborted)
            if (self._changed_only and not summary['changed']) or (state.check_mode and interrupted):
                continue
            if state.check_mode:
                status = self._status_map['planned']
            elif interrupted:
                status = self._status_map['interrupted']
                summary['outcome'] = _outcome.OUTCOME_INTERRUPTED
            else:
                status = self._status_map['succeeded' if summary['outcome'] == _outcome.OUTCOME_SUCCEEDED else 'failed']
            description = _outcome.end_description(subject, change.hosts, summary, context_line, interrupted=interrupted,
                                                   check_mode=state.check_mode, task_names=self._task_names, what=what)
            labels = sorted(change.labels + _outcome.outcome_labels(summary), key=_play.label_rank)
            # Per-host mode: a host's change ends with its own last task result (its batch, its pace under free).
            end = now if change.host is None or interrupted else state.log.last_result.get(change.host, now)
            event = self._event(change, status, description, self._labels(labels, change.user_labels, final=True),
                                max(end, change.start_time))
            if event is not None:  # the held start event first
                events.extend((change.endpoint, item) for item in (change.held, event) if item is not None)
        return events

    def _labels(self, automatic, user, final):
        """The labels of one event, capped; the labels left out are named once, for final events."""
        labels, dropped = _play.cap_labels(automatic, user)
        if dropped and final:
            self._warn('%d labels are more than the %d Flashduty accepts: the labels from flashduty_labels and label_vars '
                       'were kept and these were left out: %s' % (len(labels) + len(dropped), _play.MAX_LABELS, ', '.join(dropped)),
                       key=('dropped', tuple(dropped)))
        return labels

    def _event(self, change, status, description, labels, event_time):
        try:
            event, warnings = build_event(status, change.key, change.title, description, change.link, labels, event_time,
                                          secrets=change.endpoint.secrets, masked=change.masked)
        except FlashdutyError as exc:
            if exc.field != 'link' or not change.link:
                shown = change.endpoint.redact(truncate(change.key, 80))  # the key itself may be the problem
                self._warn('%s; change %s is not reported' % (exc.message, shown), key=('event', exc.message))
                return None
            self._warn('%s (from flashduty_change_link); the change is reported without a link' % exc.message,
                       key=('link', exc.message))
            change.link = None
            return self._event(change, status, description, labels, event_time)
        for warning in warnings:
            self._warn(warning)
        return event


def runs_something(task):
    """Whether a task starting makes the play a change: not a meta task, nor the implicit fact gathering alone."""
    action = getattr(task, 'action', None)
    return action not in _META_ACTIONS and not (getattr(task, 'implicit', False) and action in _FACT_ACTIONS)


def task_label(task):
    try:
        name = task.get_name()
    except Exception:  # a task whose name cannot be rendered is still a task
        name = getattr(task, 'action', None)
    return ('%s' % (name or 'unnamed task',)).strip()


def batch_hosts(play):
    """The hosts of the serial batch a play start announces: the inventory is restricted to them while it runs."""
    return [host.name for host in play.get_variable_manager()._inventory.get_hosts(play.hosts, order=play.order)]
