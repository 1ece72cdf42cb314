# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A running play's targets and variables, read through Ansible's inventory and VariableManager.

Private to this collection: not a public API, may change without notice.

The only code of the collection's change reporting that touches Ansible's
objects (some of them private: ``VariableManager._inventory``, its fact
caches, the inventory's sources), kept apart from the plain Python of _play.py
so that tests/unit/plugins/plugin_utils/test_play_vars.py can check it against
a real inventory and VariableManager on every supported ansible-core.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections.abc import Mapping

from ansible.errors import AnsibleError
from ansible.template import Templar
from ansible.vars.plugins import get_vars_from_inventory_sources, get_vars_from_path

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import ENDPOINT_VARIABLES, redact

# Variables read per play, besides those the label_vars option names.
PLAY_VARIABLES = ENDPOINT_VARIABLES + ('flashduty_enabled', 'flashduty_labels', 'flashduty_change_key', 'flashduty_change_title',
                                       'flashduty_change_link')


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
                text = first_line(exc) if isinstance(exc, AnsibleError) else '%s: %s' % (type(exc).__name__, first_line(exc))
                # Messages may quote the value: mask a key in a URL, and the whole text of a plain value.
                problems.append(VariableProblem(name, redact(text, [raw] if isinstance(raw, str) else ())))
                continue
            if vaulted:
                decrypted[id(raw)] = (raw, result[name])  # the reference keeps the id from being reused
        return result, problems


def first_line(exc):
    """The first non-blank line of an exception's message (Ansible errors add the task's source after it)."""
    text = '%s' % (exc,)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def plain(value):
    """Convert a templated Ansible value to plain Python data.

    Vaulted strings (``AnsibleVaultEncryptedUnicode`` on 2.16,
    ``EncryptedString`` on 2.19+) are not ``str`` and only decrypt when
    formatted, which raises ``AnsibleError`` on a missing or wrong vault
    password: call this where that error is handled. Unsafe and tagged
    subclasses of ``str``, ``dict`` and ``list`` become the plain types, so
    that ``json.dumps`` and ``type(...) is str`` behave.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return dict((plain(key), plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return bytes(value)
    return '%s' % (value,)
