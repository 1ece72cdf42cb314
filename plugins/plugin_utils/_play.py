# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A play as a Flashduty change: labels, title, description, link and CI context.

Private to this collection: not a public API, may change without notice.

Plain Python working on names, counts and dicts, so that the callback
``flashcat.flashduty.change_events`` and the role ``flashcat.flashduty.change``
compute the same automatic labels from the same facts. Reading those facts from
a running play (targets, variables) is _play_vars.py's work: nothing here
imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import getpass
import os
import socket
from collections.abc import Mapping

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    CHANGE_STATUSES,
    MAX_DESCRIPTION_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    label_key,
    label_value,
    normalize_labels_masked,
    truncate,
)

# Groups every host is in: never worth a label.
IMPLICIT_GROUPS = frozenset(('all', 'ungrouped'))

# The automatic labels, most important first: when user labels leave too little room
# under Flashduty's cap of 50, they are dropped from the end of this list.
AUTOMATIC_LABELS = (
    'host',                 # per-host mode only: the inventory_hostname of the change
    'play',
    'hosts',
    'groups',
    'outcome',
    'failed_hosts',
    'unreachable_hosts',
    'not_run_hosts',
    'stopped_hosts',
    'host_count',
    'ok_count',
    'changed_count',
    'failed_count',
    'unreachable_count',
    'not_run_count',
    'stopped_count',
    'playbook',
    'revision',
    'host_pattern',
    'module',           # ad-hoc runs only: the module ansible ran
    'limit',
    'tags',
    'skip_tags',
    'check_mode',
    'run_id',
    'ci_system',
    'ci_job_id',
    'ci_job_name',
    'ci_repository',
    'ci_ref',
    'ci_commit',
    'ci_actor',
    'controller_user',
    'controller_host',
    'ansible_version',
)
_LABEL_RANK = dict((name, rank) for rank, name in enumerate(AUTOMATIC_LABELS))

# What each phase of a play is reported as, unless the status_map option says otherwise.
DEFAULT_STATUS_MAP = dict(started='Processing', succeeded='Done', failed='Done', interrupted='Canceled', planned='Planned')

TITLE_MAX_LENGTH = 200
_LIST_IN_DESCRIPTION = 400


# ---------------------------------------------------------------- names and lists

def summarize_names(names, limit=MAX_LABEL_VALUE_LENGTH, separator=','):
    """Join ``names``, cut to ``limit`` characters as ``web1,web2,... (+498 more)``."""
    names = ['%s' % (name,) for name in names]
    text = separator.join(names)
    if len(text) <= limit:
        return text
    total = len(names)
    kept = 0
    length = 0
    for index, name in enumerate(names):
        length += len(name) + (len(separator) if index else 0)
        tail = '%s... (+%d more)' % (separator, total - index - 1)
        if length + len(tail) > limit:
            break
        kept = index + 1
    if kept == 0:
        return truncate('... (%d in all)' % total, limit)
    return '%s%s... (+%d more)' % (separator.join(names[:kept]), separator, total - kept)


def playbook_label(path):
    """A playbook's path as a label: relative to the working directory when below it, else its file name."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        relative = path
    return relative if not relative.startswith('..') else os.path.basename(path)


def hosts_phrase(hosts, shown=3):
    """``web1``, ``web1, web2 and web3`` or ``web1, web2, web3 and 497 more``."""
    hosts = list(hosts)
    if not hosts:
        return 'no hosts'
    if len(hosts) == 1:
        return hosts[0]
    if len(hosts) <= shown:
        return '%s and %s' % (', '.join(hosts[:-1]), hosts[-1])
    return '%s and %d more' % (', '.join(hosts[:shown]), len(hosts) - shown)


def visible_groups(group_names):
    """Sorted group names without ``all`` and ``ungrouped``."""
    return sorted(set(group_names) - IMPLICIT_GROUPS)


# ---------------------------------------------------------------- status mapping

def parse_status_map(value):
    """The status for each phase of a play, from the ``status_map`` option. Returns ``(mapping, warnings)``.

    ``value`` is a dict or a string of ``phase=Status`` pairs separated by commas or
    spaces, e.g. ``failed=Canceled,started=Ready``; phases not given keep their default.
    Phases: started, succeeded, failed, interrupted, planned.
    """
    mapping = dict(DEFAULT_STATUS_MAP)
    warnings = []
    if value is None or value == '':
        return mapping, warnings
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for item in value.replace(',', ' ').split():
            phase, sep, status = item.partition('=')
            if not sep:
                phase, sep, status = item.partition(':')
            if not sep:
                warnings.append('status_map: %r is not phase=Status (for example failed=Canceled); ignored' % item)
                continue
            pairs.append((phase, status))
    else:
        return mapping, ['status_map: must be a mapping or a string such as "failed=Canceled,started=Processing"; the defaults are used']
    for phase, status in pairs:
        phase = '%s' % (phase,)
        status = '%s' % (status,)
        phase = phase.strip()
        status = status.strip()
        if phase not in DEFAULT_STATUS_MAP:
            warnings.append('status_map: unknown phase %r (known: %s); ignored' % (phase, ', '.join(sorted(DEFAULT_STATUS_MAP))))
            continue
        match = [known for known in CHANGE_STATUSES if known.lower() == status.lower()]
        if not match:
            warnings.append('status_map: %s=%s is not a Flashduty change status (one of %s); %s stays %s'
                            % (phase, status, ', '.join(CHANGE_STATUSES), phase, mapping[phase]))
            continue
        mapping[phase] = match[0]
    return mapping, warnings


# ---------------------------------------------------------------- CI context

def _first(*values):
    for value in values:
        if value not in (None, ''):
            return '%s' % (value,)
    return None


def detect_ci(environ, variables=None):
    """The CI system or job runner this run comes from, if any.

    Returns ``{'system': ..., 'link': ..., 'labels': {...}}`` (``None`` when no CI is
    recognised). ``environ`` is the environment (``os.environ``); ``variables`` the
    run's extra vars, where AWX/AAP puts ``awx_job_id`` (or ``tower_job_id``).
    Recognised, in this order: AWX/AAP (``JOB_ID`` with ``AWX_HOST``, or the
    ``awx_*``/``tower_*`` extra vars), GitHub Actions, GitLab CI, Jenkins.
    """
    variables = variables or {}

    def var(name):
        return _first(variables.get('awx_' + name), variables.get('tower_' + name))

    awx_job = var('job_id') or (_first(environ.get('JOB_ID')) if environ.get('AWX_HOST') else None)
    if awx_job:
        base = _first(environ.get('AWX_HOST'), environ.get('TOWER_HOST'))
        return dict(system='awx', link=('%s/#/jobs/playbook/%s' % (base.rstrip('/'), awx_job)) if base else None, labels=dict(
            ci_system='awx', ci_job_id=awx_job, ci_job_name=var('job_template_name'),
            ci_ref=_first(var('job_scm_branch'), var('project_scm_branch')),
            ci_commit=_first(var('project_revision'), environ.get('PROJECT_REVISION')),
            ci_actor=var('user_name')))
    if environ.get('GITHUB_ACTIONS') == 'true' or environ.get('GITHUB_RUN_ID'):
        server = _first(environ.get('GITHUB_SERVER_URL'), 'https://github.com')
        repository = _first(environ.get('GITHUB_REPOSITORY'))
        run_id = _first(environ.get('GITHUB_RUN_ID'))
        link = None
        if repository and run_id:
            link = '%s/%s/actions/runs/%s' % (server.rstrip('/'), repository, run_id)
            if environ.get('GITHUB_RUN_ATTEMPT') not in (None, '', '1'):
                link += '/attempts/%s' % environ['GITHUB_RUN_ATTEMPT']
        return dict(system='github_actions', link=link, labels=dict(
            ci_system='github_actions', ci_job_id=run_id, ci_job_name=_first(environ.get('GITHUB_WORKFLOW')),
            ci_repository=repository, ci_ref=_first(environ.get('GITHUB_REF_NAME'), environ.get('GITHUB_REF')),
            ci_commit=_first(environ.get('GITHUB_SHA')), ci_actor=_first(environ.get('GITHUB_ACTOR'))))
    if environ.get('GITLAB_CI') or environ.get('CI_JOB_URL'):
        return dict(system='gitlab_ci', link=_first(environ.get('CI_JOB_URL')), labels=dict(
            ci_system='gitlab_ci', ci_job_id=_first(environ.get('CI_JOB_ID')), ci_job_name=_first(environ.get('CI_JOB_NAME')),
            ci_repository=_first(environ.get('CI_PROJECT_PATH')),
            ci_ref=_first(environ.get('CI_COMMIT_REF_NAME')), ci_commit=_first(environ.get('CI_COMMIT_SHA')),
            ci_actor=_first(environ.get('GITLAB_USER_LOGIN'))))
    if environ.get('JENKINS_URL') or environ.get('BUILD_URL'):
        # GIT_URL is left out on purpose: it may carry credentials.
        return dict(system='jenkins', link=_first(environ.get('BUILD_URL')), labels=dict(
            ci_system='jenkins', ci_job_id=_first(environ.get('BUILD_NUMBER')), ci_job_name=_first(environ.get('JOB_NAME')),
            ci_ref=_first(environ.get('GIT_BRANCH'), environ.get('BRANCH_NAME')), ci_commit=_first(environ.get('GIT_COMMIT')),
            ci_actor=_first(environ.get('BUILD_USER_ID'))))
    return None


def controller_identity():
    """``(user, host)`` of the machine running ansible-playbook."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry, e.g. an arbitrary uid in a container
        user = '%s' % os.getuid() if hasattr(os, 'getuid') else None
    try:
        host = socket.gethostname()
    except OSError:
        host = None
    return user, host


# ---------------------------------------------------------------- labels

def automatic_labels(hosts, groups, play, playbook=None, pattern=None, limit=None, tags=None, skip_tags=None,
                     check_mode=False, run_id=None, controller_user=None, controller_host=None, ansible_version=None,
                     ci_labels=None, host=None, revision=None, module=None):
    """The labels every change of a play carries, as an ordered list of ``(name, value)``.

    ``hosts`` and ``groups`` are lists of names (groups already without ``all`` and
    ``ungrouped``, see visible_groups); long lists are summarised to fit a label
    value. ``tags`` and ``skip_tags`` are lists; ``('all',)`` and empty lists are
    left out, like an unset ``limit``. ``host`` is set in per-host mode, ``module`` for ad-hoc runs.
    """
    tags = [tag for tag in (tags or ()) if tag]
    if tags == ['all']:
        tags = []
    skip_tags = [tag for tag in (skip_tags or ()) if tag]
    if isinstance(pattern, (list, tuple)):
        pattern = ','.join('%s' % (item,) for item in pattern)
    values = dict(
        host=host,
        play=play,
        hosts=summarize_names(hosts) if hosts else None,
        groups=summarize_names(groups) if groups else None,
        host_count=len(hosts),
        playbook=playbook,
        revision=revision,
        host_pattern=pattern,
        module=module,
        limit=limit,
        tags=','.join(tags) if tags else None,
        skip_tags=','.join(skip_tags) if skip_tags else None,
        check_mode=bool(check_mode),
        run_id=run_id,
        controller_user=controller_user,
        controller_host=controller_host,
        ansible_version=ansible_version,
    )
    values.update(ci_labels or {})
    return _ordered(values)


def _ordered(values):
    pairs = []
    for name, value in values.items():
        value = label_value(value)
        if value is None or value == '':
            continue
        pairs.append((name, truncate(value, MAX_LABEL_VALUE_LENGTH)))
    pairs.sort(key=lambda pair: _LABEL_RANK.get(pair[0], len(_LABEL_RANK)))
    return pairs


def clean_user_labels(labels, source, secrets=()):
    """User labels usable as Flashduty labels. Returns ``(labels, warnings, masked)``.

    The protocol's rules, leniently: names are rewritten to Prometheus style, and
    a label whose name cannot be (empty, too long, the same as another's once
    rewritten) is left out alone, with a warning naming ``source``. ``None``
    values drop the label, as in the change_event task. ``secrets`` are masked,
    and the labels where they were found named in ``masked``, for the one
    warning of the event (see build_event).
    """
    if labels is None:
        return {}, [], []
    if not isinstance(labels, Mapping):
        return {}, ['%s must be a mapping of label names to values; it is ignored' % source], []
    return normalize_labels_masked(labels, source, secrets, strict=False)


def merge_user_labels(label_sets):
    """One label set from several (the host groups of one change): different values are joined with commas."""
    merged = {}
    for labels in label_sets:
        for key, value in labels.items():
            values = merged.setdefault(key, [])
            if value not in values:
                values.append(value)
    return dict((key, truncate(','.join(values), MAX_LABEL_VALUE_LENGTH)) for key, values in merged.items())


def cap_labels(automatic, user, limit=MAX_LABELS):
    """Combine automatic ``(name, value)`` pairs and the user's label dict under Flashduty's cap.

    User labels win: they override automatic labels of the same name and, when the
    cap is reached, automatic labels are dropped from the least important. Returns
    ``(labels, dropped)`` where ``dropped`` lists the names left out.
    """
    user_items = list(user.items())
    dropped = []
    if len(user_items) > limit:
        dropped.extend(key for key, dummy in user_items[limit:])
        user_items = user_items[:limit]
    user_names = set(label_key(key) for key, dummy in user_items)  # a user's k8s-cluster is k8s_cluster once sent
    automatic = [(name, value) for name, value in automatic if name not in user_names]
    room = max(0, limit - len(user_items))
    dropped.extend(name for name, dummy in automatic[room:])
    labels = dict(automatic[:room])
    labels.update(user_items)
    return labels, dropped


# ---------------------------------------------------------------- title and description

def change_title(play, hosts, host=None, module=None):
    """A title naming the play and its target: ``Ansible: deploy checkout on web1, web2 and web3``, or for an
    ad-hoc run its module: ``Ansible ad-hoc: ansible.builtin.ping on web1 and web2``."""
    target = host if host is not None else hosts_phrase(hosts)
    if module:
        return truncate('Ansible ad-hoc: %s on %s' % (module, target), TITLE_MAX_LENGTH)
    return truncate('Ansible: %s on %s' % (play, target), TITLE_MAX_LENGTH)


def context_line(playbook=None, pattern=None, limit=None, tags=None, check_mode=False, user=None, controller=None,
                 ansible_version=None, run_id=None, revision=None, module=None):
    """The last line of every description: what ran, where, by whom, at which revision."""
    parts = []
    if pattern:
        parts.append('hosts: %s' % pattern)
    if limit:
        parts.append('limit: %s' % limit)
    tags = [tag for tag in (tags or ()) if tag and tag != 'all']
    if tags:
        parts.append('tags: %s' % ','.join(tags))
    if check_mode:
        parts.append('check mode')
    if revision:
        parts.append('revision %s' % revision)
    who = []
    if user or controller:
        who.append('by %s' % '@'.join(part for part in (user, controller) if part))
    if ansible_version:
        who.append('with ansible-core %s' % ansible_version)
    if run_id:
        who.append('run %s' % run_id)
    line = 'Playbook %s' % playbook if playbook else 'Ad-hoc run' + (' of %s' % module if module else '')
    if parts:
        line += ' (%s)' % '; '.join(parts)
    if who:
        line += ', ' + ', '.join(who)
    return line + '.'


def start_description(play, hosts, context, what='play'):
    """The description of a play's first event; ``context`` holds context_line()'s keyword arguments."""
    lines = ['Ansible %s "%s" started on %d host%s: %s.'
             % (what, play, len(hosts), '' if len(hosts) == 1 else 's', summarize_names(hosts, _LIST_IN_DESCRIPTION, ', ')),
             context_line(**context)]
    return truncate('\n'.join(lines), MAX_DESCRIPTION_LENGTH)


def default_change_key(run_id, play_index, host=None):
    """``<run id>-<play index>``, with ``-<host>`` in per-host mode."""
    key = '%s-%d' % (run_id, play_index)
    return key if host is None else '%s-%s' % (key, host)


def host_change_key(key, host):
    """A user's change key made per host (per-host mode)."""
    return '%s-%s' % (key, host)
