# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Runs flashcat.flashduty.change_event on the controller, with variables as fallbacks."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import configparser
import os

from ansible import constants as C
from ansible import context
from ansible.errors import AnsibleError
from ansible.release import __version__ as ansible_version
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.errors import UnsupportedError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.flashcat.flashduty.plugins.module_utils._client import run_change_event
from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    CHANGE_EVENT_MUTUALLY_EXCLUSIVE,
    ENDPOINT_SETTINGS,
    INI_SECTION,
    MAX_LABELS,
    FlashdutyError,
    change_event_argument_spec,
    endpoint_settings,
    redact,
    require_mapping,
)
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _play
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play_vars import plain

FQCN = 'flashcat.flashduty.change_event'
# Task options that default to a play or inventory variable when the task leaves them out.
OPTION_VARIABLES = (('change_key', 'flashduty_change_key'), ('title', 'flashduty_change_title'),
                    ('link', 'flashduty_change_link'))


class ActionModule(ActionBase):
    """Sends the event from the controller: no delegate_to, no module shipped to the host."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        try:
            if not boolean(self._variable(task_vars, 'flashduty_enabled', True), strict=False):
                return dict(result, changed=False, skipped=True, msg='flashduty_enabled is false: no change event sent')
            params = self._validated_params(task_vars)
            # Task argument > play or inventory variable > environment > ansible.cfg, as everywhere.
            fallbacks = [endpoint_settings(os.environ, 'environment'), ini_endpoint_settings()]
            if not (params.get('push_url') or params.get('integration_key')):
                fallbacks.insert(0, dict((setting, self._variable(task_vars, variable)) for setting, variable, _env, _ini in ENDPOINT_SETTINGS))
            elif params.get('integration_key') and not params.get('api_url'):
                # A key given to the task still goes to the API URL of the variable, before the environment's.
                fallbacks.insert(0, {'api_url': self._variable(task_vars, 'flashduty_api_url')})
        except FlashdutyError as exc:
            return dict(result, failed=True, changed=False, msg=exc.message)
        outcome = run_change_event(params, self._task.check_mode, *fallbacks)
        for warning in outcome.pop('warnings', []):
            self._display.warning(warning)
        result.update(outcome)
        return result

    def _validated_params(self, task_vars):
        args = dict(self._task.args)
        for option, variable in OPTION_VARIABLES:
            if args.get(option) is None:
                args[option] = self._variable(task_vars, variable)
        if args.get('labels') is not None:
            require_mapping(args['labels'])
        validation = ArgumentSpecValidator(change_event_argument_spec(), mutually_exclusive=CHANGE_EVENT_MUTUALLY_EXCLUSIVE).validate(args)
        if validation.error_messages:  # worded as Ansible's modules word them: an unknown option names the module
            raise FlashdutyError(redact('; '.join(
                'Unsupported parameters for (%s) module: %s' % (FQCN, error.msg) if isinstance(error, UnsupportedError) else error.msg
                for error in validation.errors.errors)))
        params = validation.validated_parameters
        shared_labels = self._variable(task_vars, 'flashduty_labels')
        if shared_labels is not None:
            require_mapping(shared_labels, 'flashduty_labels')
        labels = dict(shared_labels or {})
        labels.update(params['labels'] or {})
        if params['automatic_labels']:
            play = self._play_facts(task_vars)
            ci_link = play.pop('ci_link')
            if params.get('title') is None:
                params['title'] = _play.change_title(play['play'], play['hosts'])
            if params.get('link') is None:
                params['link'] = ci_link
            if len(labels) <= MAX_LABELS:  # more is the task's error to report, not for automatic labels to hide
                labels, dropped = _play.cap_labels(_play.automatic_labels(**play), labels)
                if dropped:
                    self._display.warning('Flashduty allows %d labels: left out the automatic labels %s' % (MAX_LABELS, ', '.join(dropped)))
        params['labels'] = labels
        return params

    def _play_facts(self, task_vars):
        """What the change_events callback labels a play with, from this task's play and magic variables."""
        play = self._task.get_play()
        hosts = list(task_vars.get('ansible_play_hosts_all') or ())
        targets = set(hosts)
        groups = (name for name, members in (task_vars.get('groups') or {}).items() if targets.intersection(members))
        user, controller = _play.controller_identity()
        ci = _play.detect_ci(os.environ, task_vars) or {}
        cli = context.CLIARGS
        return dict(
            hosts=hosts, groups=_play.visible_groups(groups), play=plain(task_vars.get('ansible_play_name') or play.get_name()),
            playbook=','.join(_play.playbook_label(path) for path in cli.get('args') or ()) or None, pattern=play.hosts,
            limit=cli.get('subset') or None, tags=cli.get('tags'), skip_tags=cli.get('skip_tags'),
            check_mode=bool(self._task.check_mode), controller_user=user, controller_host=controller,
            ansible_version=ansible_version, ci_labels=ci.get('labels'), ci_link=ci.get('link'))

    def _variable(self, task_vars, name, default=None):
        """A variable templated and, when vaulted, decrypted; ``default`` when undefined."""
        if name not in task_vars:
            return default
        try:
            return plain(self._templar.template(task_vars[name]))
        except AnsibleError as exc:
            raise FlashdutyError('%s: could not be templated or decrypted: %s'
                                 % (name, redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)), field=name)


def ini_endpoint_settings():
    """The endpoint settings of the [flashduty] section of the ansible.cfg in use, read as Ansible reads it."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(';',))
    try:
        parser.read(C.CONFIG_FILE or (), encoding='utf-8')
    except (configparser.Error, OSError, UnicodeDecodeError):
        return {}  # Ansible itself has read the file already: nothing here is worth failing the task for
    return endpoint_settings(dict(parser.items(INI_SECTION, raw=True)), 'ini') if parser.has_section(INI_SECTION) else {}


def main():
    """Validate a task's arguments as ActionModule.run() does (a variable may fill some), and exit; nothing is sent.

    Never run by Ansible: for linters that run the main() of the plugin an action resolves to (ansible-lint's args rule).
    """
    from ansible.module_utils.basic import AnsibleModule  # looked up at call time: the linter substitutes it

    spec = change_event_argument_spec()
    for option, _variable in OPTION_VARIABLES:
        spec[option] = dict(spec[option], required=False)
    module = AnsibleModule(argument_spec=spec, mutually_exclusive=CHANGE_EVENT_MUTUALLY_EXCLUSIVE, supports_check_mode=True)
    module.exit_json(changed=False, msg='the arguments are valid')
