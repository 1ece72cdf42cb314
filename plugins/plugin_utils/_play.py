# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A play as a Flashduty change: labels, title, description, link and CI context.

Private to this collection: not a public API, may change without notice.

Plain Python on names, counts and dicts, shared by the callback and the change_event task; reading them
from a running play is _play_vars.py's work: nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import getpass
import os
import socket
from collections.abc import Mapping

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    CHANGE_STATUSES, MAX_DESCRIPTION_LENGTH, MAX_LABEL_VALUE_LENGTH, MAX_LABELS, label_key, label_value, normalize_labels_masked, truncate)

# The automatic labels, most important first: when user labels leave too little room
# under Flashduty's cap of 50, they are dropped from the end of this list.
# 'host' is set in per-host mode only, 'module' for ad-hoc runs only.
AUTOMATIC_LABELS = (
    'host', 'play', 'hosts', 'groups', 'outcome', 'failed_hosts', 'unreachable_hosts', 'not_run_hosts', 'stopped_hosts',
    'host_count', 'ok_count', 'changed_count', 'failed_count', 'unreachable_count', 'not_run_count', 'stopped_count',
    'playbook', 'revision', 'host_pattern', 'module', 'limit', 'tags', 'skip_tags', 'check_mode', 'run_id',
    'ci_system', 'ci_job_id', 'ci_job_name', 'ci_repository', 'ci_ref', 'ci_commit', 'ci_actor',
    'controller_user', 'controller_host', 'ansible_version',
)
_LABEL_RANK = dict((name, rank) for rank, name in enumerate(AUTOMATIC_LABELS))

# What each phase of a play is reported as, unless the status_map option says otherwise.
DEFAULT_STATUS_MAP = dict(started='Processing', succeeded='Done', failed='Done', interrupted='Canceled', planned='Planned')

TITLE_MAX_LENGTH = 200
LIST_IN_DESCRIPTION = 400


def plural(count, noun):
    return '%d %s%s' % (count, noun, '' if count == 1 else 's')


def fit(parts, limit, separator, more, nothing, sizes=None):
    """``parts`` joined, or as many as fit in ``limit`` and then ``more % names left out`` (``sizes``: names per part, 1 by default),
    or else ``nothing``."""
    text = separator.join(parts)
    if len(text) <= limit:
        return text
    left = sum(sizes) if sizes else len(parts)
    kept = []
    length = -len(separator)
    for part, size in zip(parts, sizes or [1] * len(parts)):
        length += len(separator) + len(part)
        if length + (len(more % (left - size)) if left > size else 0) > limit:
            break
        kept.append(part)
        left -= size
    return separator.join(kept) + more % left if kept else truncate(nothing, limit)


def summarize_names(names, limit=MAX_LABEL_VALUE_LENGTH, separator=','):
    """Join ``names``, cut to ``limit`` characters as ``web1,web2,... (+498 more)``."""
    names = ['%s' % (name,) for name in names]
    return fit(names, limit, separator, separator + '... (+%d more)', '... (%d in all)' % len(names))


def playbook_label(path):
    """A playbook's path as a label: relative to the working directory when below it, else its file name."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith('..') else os.path.basename(path)


def hosts_phrase(hosts, shown=3):
    """``web1``, ``web1, web2 and web3`` or ``web1, web2, web3 and 497 more``."""
    hosts = list(hosts)
    if len(hosts) <= 1:
        return hosts[0] if hosts else 'no hosts'
    if len(hosts) <= shown:
        return '%s and %s' % (', '.join(hosts[:-1]), hosts[-1])
    return '%s and %d more' % (', '.join(hosts[:shown]), len(hosts) - shown)


def visible_groups(group_names):
    return sorted(set(group_names) - {'all', 'ungrouped'})


def parse_status_map(value):
    """The ``status_map`` option (a dict, or ``phase=Status`` pairs such as ``failed=Canceled,started=Ready``)
    over DEFAULT_STATUS_MAP. Returns ``(mapping, warnings)``."""
    mapping, warnings = dict(DEFAULT_STATUS_MAP), []
    if value is None or value == '':
        return mapping, warnings
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for item in value.replace(',', ' ').split():
            phase, sep, status = item.partition('=' if '=' in item else ':')
            if sep:
                pairs.append((phase, status))
            else:
                warnings.append('status_map: %r is not phase=Status (for example failed=Canceled); ignored' % item)
    else:
        return mapping, ['status_map: must be a mapping or a string such as "failed=Canceled,started=Processing"; the defaults are used']
    for phase, status in pairs:
        phase, status = ('%s' % (phase,)).strip(), ('%s' % (status,)).strip()
        match = [known for known in CHANGE_STATUSES if known.lower() == status.lower()]
        if phase not in mapping:
            warnings.append('status_map: unknown phase %r (known: %s); ignored' % (phase, ', '.join(sorted(DEFAULT_STATUS_MAP))))
        elif not match:
            warnings.append('status_map: %s=%s is not a Flashduty change status (one of %s); %s stays %s'
                            % (phase, status, ', '.join(CHANGE_STATUSES), phase, mapping[phase]))
        else:
            mapping[phase] = match[0]
    return mapping, warnings


def _first(*values):
    for value in values:
        if value not in (None, ''):
            return '%s' % (value,)
    return None


def detect_ci(environ, variables=None):
    """``{'system': ..., 'link': ..., 'labels': {...}}`` for AWX/AAP, GitHub Actions, GitLab CI or Jenkins (in this order), else None.
    ``variables`` are the run's extra vars, where AWX/AAP puts ``awx_job_id`` (or ``tower_job_id``)."""
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


def automatic_labels(hosts, groups, play, playbook=None, pattern=None, limit=None, tags=None, skip_tags=None,
                     check_mode=False, run_id=None, controller_user=None, controller_host=None, ansible_version=None,
                     ci_labels=None, host=None, revision=None, module=None):
    """The labels every change of a play carries, as ordered ``(name, value)`` pairs; tags ``('all',)`` are left out.
    ``groups`` come from visible_groups(); ``host`` is set in per-host mode, ``module`` for ad-hoc runs."""
    tags = [tag for tag in (tags or ()) if tag]
    skip_tags = [tag for tag in (skip_tags or ()) if tag]
    values = dict(host=host, play=play, hosts=summarize_names(hosts), groups=summarize_names(groups), host_count=len(hosts),
                  playbook=playbook, revision=revision, host_pattern=host_pattern(pattern), module=module, limit=limit,
                  tags=','.join(tags) if tags != ['all'] else None, skip_tags=','.join(skip_tags), check_mode=bool(check_mode),
                  run_id=run_id, controller_user=controller_user, controller_host=controller_host, ansible_version=ansible_version)
    values.update(ci_labels or {})
    return label_pairs(values)


def host_pattern(hosts):
    if isinstance(hosts, (list, tuple)):
        return ','.join('%s' % (item,) for item in hosts)
    return '%s' % (hosts,) if hosts is not None else None


def label_pairs(values):
    """``(name, value)`` label pairs from a dict, in AUTOMATIC_LABELS order, without the empty ones."""
    pairs = [(name, truncate(label_value(value), MAX_LABEL_VALUE_LENGTH)) for name, value in values.items()
             if label_value(value) not in (None, '')]
    return sorted(pairs, key=label_rank)


def label_rank(pair):
    """Where a ``(name, value)`` label goes: in AUTOMATIC_LABELS order, others after."""
    return _LABEL_RANK.get(pair[0], len(_LABEL_RANK))


def clean_user_labels(labels, source, secrets=()):
    """User labels usable as Flashduty labels, leniently (see normalize_labels_masked). Returns ``(labels, warnings, masked)``."""
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
            merged.setdefault(key, {})[value] = None
    return dict((key, truncate(','.join(values), MAX_LABEL_VALUE_LENGTH)) for key, values in merged.items())


def cap_labels(automatic, user, limit=MAX_LABELS):
    """The automatic ``(name, value)`` pairs and the user's label dict under Flashduty's cap: ``(labels, dropped names)``.
    User labels win: they override automatic labels of the same name, and the least important automatic ones make room."""
    user_items = list(user.items())
    dropped = [key for key, dummy in user_items[limit:]]
    user_items = user_items[:limit]
    user_names = set(label_key(key) for key, dummy in user_items)  # a user's k8s-cluster is k8s_cluster once sent
    automatic = [(name, value) for name, value in automatic if name not in user_names]
    room = limit - len(user_items)
    dropped.extend(name for name, dummy in automatic[room:])
    labels = dict(automatic[:room])
    labels.update(user_items)
    return labels, dropped


def change_title(play, hosts, host=None, module=None):
    """``Ansible: deploy checkout on web1, web2 and web3``, or ``Ansible ad-hoc: ansible.builtin.ping on web1``."""
    head = 'Ansible ad-hoc: %s' % module if module else 'Ansible: %s' % play
    return truncate('%s on %s' % (head, host if host is not None else hosts_phrase(hosts)), TITLE_MAX_LENGTH)


def context_line(playbook=None, pattern=None, limit=None, tags=None, check_mode=False, controller_user=None, controller_host=None,
                 ansible_version=None, run_id=None, revision=None, module=None, **_labels_only):
    """The last line of every description: what ran, where, by whom, at which revision (from automatic_labels()'
    keyword arguments, hosts and groups aside)."""
    tags = ','.join(tag for tag in (tags or ()) if tag and tag != 'all')
    parts = [text % value for text, value in (('hosts: %s', pattern), ('limit: %s', limit), ('tags: %s', tags)) if value]
    parts += (['check mode'] if check_mode else []) + (['revision %s' % revision] if revision else [])
    who = ['by %s' % '@'.join(part for part in (controller_user, controller_host) if part)] if controller_user or controller_host else []
    who += [text % value for text, value in (('with ansible-core %s', ansible_version), ('run %s', run_id)) if value]
    line = 'Playbook %s' % playbook if playbook else 'Ad-hoc run' + (' of %s' % module if module else '')
    if parts:
        line += ' (%s)' % '; '.join(parts)
    return line + ''.join(', ' + part for part in who) + '.'


def start_description(play, hosts, context, what='play'):
    """The description of a play's first event; ``context`` holds context_line()'s keyword arguments."""
    hosts_text = summarize_names(hosts, LIST_IN_DESCRIPTION, ', ')
    text = 'Ansible %s "%s" started on %s: %s.\n%s' % (what, play, plural(len(hosts), 'host'), hosts_text, context_line(**context))
    return truncate(text, MAX_DESCRIPTION_LENGTH)
