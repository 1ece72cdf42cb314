# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A running play's targets and variables, read through Ansible's inventory and VariableManager.

Private to this collection: not a public API, may change without notice.

The only part of the change reporting that touches Ansible's objects, some of them private
(``VariableManager._inventory``, its fact caches, the inventory's sources): test_play_vars.py checks it
against a real inventory and VariableManager on every supported ansible-core.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections import namedtuple
from collections.abc import Mapping

from ansible.errors import AnsibleError
from ansible.template import Templar
from ansible.vars.plugins import get_vars_from_inventory_sources, get_vars_from_path

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import ENDPOINT_VARIABLES, redact
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _story

# Variables read per play, besides those the label_vars option names.
PLAY_VARIABLES = ENDPOINT_VARIABLES + ('flashduty_enabled', 'flashduty_labels', 'flashduty_change_key', 'flashduty_change_title',
                                       'flashduty_change_link')
# Vaulted strings: ansible-core 2.16 to 2.18, and 2.19 on.
VAULTED_TYPES = frozenset(('AnsibleVaultEncryptedUnicode', 'EncryptedString'))
# A play variable that could not be templated or decrypted (the message is redacted, safe to show).
VariableProblem = namedtuple('VariableProblem', 'name message')


class PlayReader:
    """Reads what a change needs from a running play: its target hosts, and its variables for a host.

    Resolving variables costs about 0.4-1 ms per host, so hosts are put in classes that must resolve alike (the
    same groups, no host-level variable among those read) and each class is resolved once, with its first host.
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
        hosts = self.inventory.get_hosts(self.play.hosts, order=self.play.order, ignore_restrictions=True)
        return [host for host in hosts if host.name not in exclude]

    def classes(self, hosts):
        """``hosts`` in lists that resolve their variables alike."""
        classes = {}
        for host in hosts:
            key = host.name if self._has_host_level(host) else frozenset(group.name for group in host.get_groups())
            classes.setdefault(key, []).append(host)
        return list(classes.values())

    def _has_host_level(self, host):
        names, manager = self.names, self.variable_manager
        try:
            facts = manager._fact_cache.get(host.name)
        except Exception:  # a cache plugin may raise anything on a missing or broken entry
            facts = None
        if not all(names.isdisjoint(values or ()) for values in (host.get_vars(), manager._vars_cache.get(host.name),
                                                                 manager._nonpersistent_fact_cache.get(host.name), facts)):
            return True
        try:  # what vars plugins (host_vars files) give the host itself, as get_vars() loads it
            if not names.isdisjoint(get_vars_from_inventory_sources(self.loader, self.inventory._sources, [host], 'task')):
                return True
            basedir = self.loader.get_basedir()
            return bool(basedir) and not names.isdisjoint(get_vars_from_path(self.loader, basedir, [host], 'task'))
        except Exception:  # when in doubt, resolve the host on its own
            return True

    def variables(self, host, decrypted=None):
        """The play's variables for ``host`` among ``names``, templated, as plain Python: ``(values, [VariableProblem])``.

        ``decrypted`` is a dict the caller keeps across calls, so that a vaulted value (the same object for every
        host of a group_vars file) is decrypted once, not once per class (it costs milliseconds).
        """
        all_vars = self.variable_manager.get_vars(play=self.play, host=host)
        templar = Templar(loader=self.loader, variables=all_vars)
        result = {}
        problems = []
        for name in sorted(self.names):
            if name not in all_vars:
                continue
            raw = all_vars[name]
            vaulted = decrypted is not None and type(raw).__name__ in VAULTED_TYPES
            hit = decrypted.get(id(raw)) if vaulted else None
            if hit is not None and hit[0] is raw:
                result[name] = hit[1]
                continue
            try:
                result[name] = plain(templar.template(raw))
            except Exception as exc:  # AnsibleError, or a broken lookup or filter: reported alike
                text = error_text(exc)
                # Messages may quote the value: mask a key in a URL, and the whole text of a plain value.
                problems.append(VariableProblem(name, redact(text, [raw] if isinstance(raw, str) else ())))
                continue
            if vaulted:
                decrypted[id(raw)] = (raw, result[name])  # the reference keeps the id from being reused
        return result, problems


def error_text(exc):
    """An error in one line, the first of its message (Ansible errors add the task's source after it): an Ansible
    error's own, any other's with its type."""
    line = _story.first_line(exc, None) or type(exc).__name__
    return line if isinstance(exc, AnsibleError) else '%s: %s' % (type(exc).__name__, line)


def plain(value):
    """A templated Ansible value as plain Python data: unsafe and tagged ``str``, ``dict`` and ``list`` become the
    plain types. Vaulted strings decrypt here, raising AnsibleError without the right vault password."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict((plain(key), plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    for kind in (bool, int, float, bytes):  # bool first: it is an int
        if isinstance(value, kind):
            return kind(value)
    return '%s' % (value,)
