# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The changes a play makes, for the change_events callback: which hosts report where, under which key and labels.

Private to this collection: not a public API, may change without notice.

The callback reads a play's variables for each set of hosts that resolve alike
(``_play_vars.PlayReader``); ChangeMaker turns them into the Endpoint those
hosts report to, then into one Change per endpoint, or one per host in
per-host mode, each with its key, title, link and labels.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    ENDPOINT_VARIABLES,
    FlashdutyError,
    endpoint_settings,
    resolve_endpoint,
)
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _play

_ENDPOINT_NAMES = frozenset(ENDPOINT_VARIABLES)
_CHANGE_SETTINGS = ('flashduty_change_key', 'flashduty_change_title', 'flashduty_change_link')


class Change:
    """One change of a play: one Endpoint, and one host in per-host mode.

    ``labels`` are the automatic labels as ``(name, value)`` pairs, most important
    first; ``user_labels`` those of flashduty_labels and label_vars (``masked`` names
    those where the integration key was masked); ``held`` the start event kept back
    in changed-only mode.
    """

    __slots__ = ('endpoint', 'key', 'title', 'link', 'hosts', 'labels', 'user_labels', 'masked', 'start_time', 'held', 'host',
                 'started')

    def __init__(self, endpoint, key, title, link, hosts, labels, user_labels, start_time, host=None, masked=()):
        self.endpoint = endpoint
        self.key = key
        self.title = title
        self.link = link
        self.hosts = hosts
        self.labels = labels
        self.user_labels = user_labels
        self.masked = masked
        self.start_time = start_time
        self.held = None
        self.host = host          # per-host mode: the host of this change
        self.started = False      # its start event was sent (or held): a task of its hosts started


class ChangeMaker:
    """Makes the changes of each play of a run.

    ``warn(message, key=None)`` shows a warning once per key; ``option_endpoint``
    holds the callback's push_url, integration_key and api_url options, used when
    the play's variables name no endpoint; ``run_id`` makes the default change
    keys; ``module`` is the module of an ad-hoc run, which titles name.
    """

    def __init__(self, warn, option_endpoint, label_vars, per_host, run_id, module=None):
        self._warn = warn
        self._option_endpoint = option_endpoint
        self._label_vars = label_vars
        self._per_host = per_host
        self._run_id = run_id
        self.module = module

    def resolve(self, reader, members, play_name, decrypted):
        """``(Endpoint, variables)`` for a set of hosts that resolve alike, or None when they are not reported.

        ``decrypted`` is the run's cache of decrypted vaulted values (see PlayReader.variables).
        """
        values, problems = reader.variables(members[0], decrypted)
        if 'flashduty_enabled' in values:
            try:
                if not boolean(values['flashduty_enabled'], strict=True):
                    return None  # muted: no warning about the rest either
            except TypeError:
                self._warn('flashduty_enabled should be a boolean, got %r; taken as true' % (values['flashduty_enabled'],),
                           key=('enabled', '%r' % (values['flashduty_enabled'],)))
        broken = set()
        for problem in problems:
            broken.add(problem.name)
            hint = ''
            if problem.name in _ENDPOINT_NAMES:
                hint = ('; plays using it are not reported. If it is vaulted, give ansible-playbook the vault password '
                        '(--vault-id, --vault-password-file or --ask-vault-pass)')
            self._warn('the variable %s could not be decrypted or templated: %s%s' % (problem.name, problem.message, hint),
                       key=('variable', problem.name))
        if broken & _ENDPOINT_NAMES:
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

    def changes(self, play_name, play_index, endpoint, parts, order, common, ci_link, now):
        """The changes of ``endpoint``, whose ``parts`` are ``(hosts, variables)`` pairs, hosts in ``order``.

        ``common`` holds automatic_labels()' keyword arguments shared by every change of the play.
        """
        hosts = sorted((host for members, dummy in parts for host in members), key=lambda host: order[host.name])
        if not self._per_host:
            names = [host.name for host in hosts]
            user_labels, settings, masked = self._settings(parts, endpoint)
            groups = _play.visible_groups(group.name for host in hosts for group in host.get_groups())
            key = settings.get('flashduty_change_key') or _play.default_change_key(self._run_id, play_index)
            title = settings.get('flashduty_change_title') or _play.change_title(play_name, names, module=self.module)
            labels = _play.automatic_labels(names, groups, **common)
            link = settings.get('flashduty_change_link') or ci_link
            return [Change(endpoint, key, title, link, names, labels, user_labels, now, masked=masked)]
        # Per-host mode: each host has the labels and settings of its own set of hosts, not those of the others.
        changes = []
        for members, values in parts:
            user_labels, settings, masked = self._settings([(members, values)], endpoint)
            user_key = settings.get('flashduty_change_key')
            link = settings.get('flashduty_change_link') or ci_link
            for host in members:
                groups = _play.visible_groups(group.name for group in host.get_groups())
                key = _play.host_change_key(user_key, host.name) if user_key else _play.default_change_key(self._run_id, play_index, host.name)
                title = settings.get('flashduty_change_title') or _play.change_title(play_name, [host.name], host=host.name,
                                                                                     module=self.module)
                labels = _play.automatic_labels([host.name], groups, host=host.name, **common)
                changes.append(Change(endpoint, key, title, link, [host.name], labels, dict(user_labels), now, host=host.name,
                                      masked=masked))
        changes.sort(key=lambda change: order[change.host])
        return changes

    def _settings(self, parts, endpoint):
        """The user labels of a change's sets of hosts (merged), its first key, title and link settings, and where
        the integration key was masked in the labels."""
        user_sets = []
        settings = {}
        masked = []
        for _members, values in parts:
            labels, where = self._user_labels(values, endpoint.secrets)
            user_sets.append(labels)
            masked.extend(field for field in where if field not in masked)
            for name in _CHANGE_SETTINGS:
                value = values.get(name)
                if name not in settings and value not in (None, ''):
                    settings[name] = '%s' % (value,)
        return _play.merge_user_labels(user_sets), settings, masked

    def _user_labels(self, values, secrets):
        """The labels of flashduty_labels and label_vars, and where the integration key was masked in them."""
        labels, problems, masked = _play.clean_user_labels(values.get('flashduty_labels'), 'flashduty_labels', secrets)
        extra = dict((name, values[name]) for name in self._label_vars if name in values)
        more, more_problems, more_masked = _play.clean_user_labels(extra, 'label_vars', secrets)
        for name, value in more.items():
            labels.setdefault(name, value)
        for problem in problems + more_problems:
            self._warn(problem)
        return labels, masked + more_masked
