# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A play as a Flashduty change: targets, labels, title, description, link and CI context.

Private to this collection: not a public API, may change without notice.

The first part is plain Python working on names and counts, so that the
callback ``flashcat.flashduty.change_events`` and the role
``flashcat.flashduty.change`` compute the same automatic labels from the same
facts. The Ansible adapters at the end (``PlayReader``) read those facts from a
running play for the callback; they are the only code here touching Ansible
objects.
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
    FlashdutyError,
    label_value,
    normalize_labels,
    redact,
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


def clean_user_labels(labels, source):
    """User labels usable as Flashduty labels. Returns ``(labels, warnings)``.

    Each label is checked alone with the protocol's rules, so that one bad name
    (``team-name``) drops only that label, with a warning naming ``source``.
    ``None`` values drop the label, as in the change_event task.
    """
    if labels is None:
        return {}, []
    if not isinstance(labels, Mapping):
        return {}, ['%s must be a mapping of label names to values; it is ignored' % source]
    result = {}
    warnings = []
    for key, value in labels.items():
        try:
            normalized, dummy = normalize_labels({key: value}, field=source)
        except FlashdutyError as exc:
            warnings.append('%s; the label is left out' % exc.message)
            continue
        result.update(normalized)
    return result, warnings


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
    user_names = set(key for key, dummy in user_items)
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


# ---------------------------------------------------------------- Ansible adapters

# Variables read per play, besides those the label_vars option names.
PLAY_VARIABLES = ('flashduty_push_url', 'flashduty_integration_key', 'flashduty_api_url', 'flashduty_enabled',
                  'flashduty_labels', 'flashduty_change_key', 'flashduty_change_title', 'flashduty_change_link')


# Vaulted strings: ansible-core 2.16 to 2.18, and 2.19 on.
VAULTED_TYPES = frozenset(('AnsibleVaultEncryptedUnicode', 'EncryptedString'))


class VariableProblem(Exception):
    """A play variable that could not be templated or decrypted (the message is redacted, safe to show)."""

    def __init__(self, name, message):
        super(VariableProblem, self).__init__(message)
        self.name = name
        self.message = message


class PlayReader:
    """Reads what a change needs from a running play.

    Target hosts come from the inventory (``--limit`` applied, all ``serial``
    batches). Variables are those of the play for one of its hosts, so that
    inventory group_vars and host_vars count, templated in that context and
    decrypted. Resolving variables costs about 0.4-1 ms per host, so hosts are
    put in classes that must resolve alike: the same groups and no host-level
    variable among those read (inventory host vars, host_vars files, facts and
    set_fact). Each class is resolved once, with its first host.
    """

    def __init__(self, play, names=PLAY_VARIABLES):
        self.play = play
        self.variable_manager = play.get_variable_manager()
        self.loader = play.get_loader()
        # The inventory is reachable only as the variable manager's private attribute (every version tried).
        self.inventory = self.variable_manager._inventory
        self.names = frozenset(names)

    def target_hosts(self, exclude=()):
        """The play's hosts after --limit, across all serial batches, less ``exclude`` (names)."""
        hosts = self.inventory.get_hosts(self.play.hosts, order=getattr(self.play, 'order', None), ignore_restrictions=True)
        return [host for host in hosts if host.name not in exclude]

    def classes(self, hosts):
        """Group ``hosts`` into lists that resolve their variables alike (see the class docstring)."""
        classes = {}
        for host in hosts:
            groups = frozenset(group.name for group in host.get_groups())
            key = ('host', host.name) if self._has_host_level(host) else ('groups', groups)
            members = classes.get(key)
            if members is None:
                classes[key] = members = []
            members.append(host)
        return list(classes.values())

    def _has_host_level(self, host):
        names = self.names
        if not names.isdisjoint(host.get_vars()):
            return True
        for cache_name in ('_vars_cache', '_nonpersistent_fact_cache'):
            cache = getattr(self.variable_manager, cache_name, None)
            if cache and not names.isdisjoint(cache.get(host.name, ())):
                return True
        try:
            facts = self.variable_manager._fact_cache.get(host.name)
        except Exception:  # a cache plugin may raise anything on a missing or broken entry
            facts = None
        if facts and not names.isdisjoint(facts):
            return True
        return not names.isdisjoint(self._host_plugin_vars(host))

    def _host_plugin_vars(self, host):
        """Variables vars plugins (host_vars files) give the host itself, as get_vars() would load them."""
        from ansible.vars.plugins import get_vars_from_inventory_sources, get_vars_from_path

        data = {}
        try:
            data.update(get_vars_from_inventory_sources(self.loader, self.inventory._sources, [host], 'task'))
            basedir = self.loader.get_basedir()
            if basedir:
                data.update(get_vars_from_path(self.loader, basedir, [host], 'task'))
        except Exception:  # when in doubt, resolve the host on its own
            return self.names
        return data

    def variables(self, host, decrypted=None):
        """The play's variables for ``host``, templated and as plain Python, limited to ``names``.

        Returns ``(values, problems)``: undefined variables are absent from
        ``values``; each variable that could not be templated or decrypted is a
        VariableProblem in ``problems`` (the others are still returned).
        ``decrypted`` is a dict kept by the caller across calls: a vaulted value
        (the same object for every host of a group_vars file) is then decrypted
        once, not once per set of hosts (decrypting costs several milliseconds).
        """
        from ansible.errors import AnsibleError
        from ansible.template import Templar

        from ansible_collections.flashcat.flashduty.plugins.plugin_utils._variables import plain

        all_vars = self.variable_manager.get_vars(play=self.play, host=host)
        templar = Templar(loader=self.loader, variables=all_vars)
        result = {}
        problems = []
        for name in sorted(self.names):
            if name not in all_vars:
                continue
            raw = all_vars[name]
            vaulted = decrypted is not None and type(raw).__name__ in VAULTED_TYPES
            if vaulted:
                hit = decrypted.get(id(raw))
                if hit is not None and hit[0] is raw:
                    result[name] = hit[1]
                    continue
            try:
                result[name] = plain(templar.template(raw))
            except Exception as exc:  # AnsibleError, or a broken lookup or filter: reported alike
                text = _first_line(exc) if isinstance(exc, AnsibleError) else '%s: %s' % (type(exc).__name__, _first_line(exc))
                # Messages may quote the value: mask a key in a URL, and the whole text of a plain value.
                problems.append(VariableProblem(name, redact(text, [raw] if isinstance(raw, str) else ())))
                continue
            if vaulted:
                decrypted[id(raw)] = (raw, result[name])  # the reference keeps the id from being reused
        return result, problems


def _first_line(exc):
    text = '%s' % (exc,)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
