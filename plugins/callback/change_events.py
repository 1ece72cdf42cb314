# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: change_events
type: notification
short_description: Report every play to Flashduty as a change event
version_added: 1.0.0
description:
  - Reports each play as one change in Flashduty under one change key, V(Processing) when it starts and V(Done)
    when it ends (V(Canceled) when the run stops first), with how it went in the description and the labels.
    O(status_map) changes these statuses.
  - The endpoint is read for each play from the variables C(flashduty_push_url), or C(flashduty_integration_key)
    with C(flashduty_api_url), vaulted or not, else from O(push_url), O(integration_key) and O(api_url).
  - "Play variables: C(flashduty_enabled=false) mutes a play (or the hosts it is set for); C(flashduty_labels)
    adds labels; C(flashduty_change_key), C(flashduty_change_title) and C(flashduty_change_link) replace the
    generated key, title and link; C(flashduty_report_play=false) in a play's C(vars) reports no change for it."
  - Once a P(flashcat.flashduty.change_event#module) task (or the C(flashcat.flashduty.change) role) has sent an
    event for a change key, the callback sends nothing more under that key in the run.
  - "The V(Done) event says what changed: each changed task by name with its hosts, in the order they ran; each
    failed or unreachable host with the failing task and the first line of its message (never for a C(no_log) task);
    the task totals of the play recap. Its outcome is the recap's: V(aborted) when Ansible stopped the play early
    (C(serial), C(any_errors_fatal)), and hosts that never ran or were stopped are not counted ok. O(task_names)
    leaves task names and messages out."
  - A play in which no task ran (C(--tags) or C(--start-at-task) skipped them all) is not reported. An ad-hoc run
    (C(ansible) with callbacks loaded) is titled and labelled with its module.
  - Sending never slows the playbook or changes its output or exit code; what is not delivered within
    O(flush_timeout) is spooled for the next run, written there before the wait, so that a second Ctrl-C or SIGTERM
    loses nothing. Events Flashduty refuses are named after the play recap, in one warning per kind of refusal and
    endpoint.
  - The R(callback guide,ansible_collections.flashcat.flashduty.docsite.callback) lists every label, with an
    example payload.
author:
  - Flashcat (@flashcat)
requirements:
  - Enabled in C(callbacks_enabled) (C(ansible.cfg)) or E(ANSIBLE_CALLBACKS_ENABLED).
extends_documentation_fragment:
  - flashcat.flashduty.connection
  - flashcat.flashduty.connection.plugins
options:
  enabled:
    description:
      - Set to V(false) to turn the callback off without removing it from C(callbacks_enabled).
      - To mute one play, set the variable C(flashduty_enabled) to V(false) for it instead.
    type: bool
    default: true
    env:
      - name: FLASHDUTY_ENABLED
    ini:
      - section: flashduty
        key: enabled
  check_mode:
    description:
      - What to send for plays run in check mode (C(--check), or C(check_mode) on the play).
      - V(skip) sends nothing.
      - V(planned) sends one V(Planned) event when the play ends, saying what would have changed.
    type: str
    choices: [skip, planned]
    default: skip
    env:
      - name: FLASHDUTY_CHECK_MODE
    ini:
      - section: flashduty
        key: check_mode
  per_host:
    description:
      - Send one change per host instead of one per play, each with the label C(host=<inventory_hostname>)
        and the change key suffixed with C(-<inventory_hostname>), for alert rules that match on a host label.
      - Large plays then send many events; they are sent at O(max_rate) per second.
    type: bool
    default: false
    env:
      - name: FLASHDUTY_PER_HOST
    ini:
      - section: flashduty
        key: per_host
  changed_only:
    description:
      - Report only plays that changed something (in per-host mode, only hosts that changed).
      - The V(Processing) event is then held back and sent, with its original time, together with the end event,
        and only when a task reported a change.
    type: bool
    default: false
    env:
      - name: FLASHDUTY_CHANGED_ONLY
    ini:
      - section: flashduty
        key: changed_only
  status_map:
    description:
      - The change status sent at each phase of a play, as a dict or a string of C(phase=Status) pairs such as
        V(failed=Canceled,started=Processing). Phases left out keep their default.
      - "Phases: C(started) (the play starts), C(succeeded) (it ended without failed or unreachable hosts),
        C(failed) (it ended with some), C(interrupted) (the run stopped before the play ended), C(planned)
        (check mode with O(check_mode=planned))."
      - Statuses are Flashduty's V(Planned), V(Ready), V(Processing), V(Canceled) and V(Done).
    type: raw
    default:
      started: Processing
      succeeded: Done
      failed: Done
      interrupted: Canceled
      planned: Planned
    env:
      - name: FLASHDUTY_STATUS_MAP
    ini:
      - section: flashduty
        key: status_map
  task_names:
    description:
      - Set to V(false) to leave the names of tasks and the messages of failed tasks out of descriptions; the hosts that
        changed or failed and the counts are still reported.
    type: bool
    default: true
    version_added: 1.1.0
    env:
      - name: FLASHDUTY_TASK_NAMES
    ini:
      - section: flashduty
        key: task_names
  label_vars:
    description:
      - Names of variables whose values become labels of the same name, for example V(app_version).
      - They are read and templated like C(flashduty_labels), for the play's hosts; an undefined variable adds
        no label. Lists and dicts become compact JSON.
    type: list
    elements: str
    default: []
    env:
      - name: FLASHDUTY_LABEL_VARS
    ini:
      - section: flashduty
        key: label_vars
  flush_timeout:
    description:
      - The longest, in seconds, the end of the run waits for events still being delivered; also the longest a
        slow or dead endpoint can delay a playbook.
      - Events not delivered by then are written to the spool and sent by the next run.
      - From 0 to 600.
    type: float
    default: 5
    env:
      - name: FLASHDUTY_FLUSH_TIMEOUT
    ini:
      - section: flashduty
        key: flush_timeout
  max_rate:
    description:
      - At most this many requests per second to Flashduty, over all endpoints and retries; more than 0, at most 1000.
      - Flashduty documents a limit of 50 requests per second per account for its Open API, and none for the push
        endpoint; the default stays under the Open API's.
    type: float
    default: 40
    env:
      - name: FLASHDUTY_MAX_RATE
    ini:
      - section: flashduty
        key: max_rate
  spool_dir:
    description:
      - Directory (created with mode 0700) where events that could not be delivered wait for the next run.
      - It never holds the integration key or the push URL.
      - A symbolic link, a directory owned by another user or one other users may enter (mode other than 0700)
        is refused with a warning, not followed or chmod-ed; events not delivered by the end of the run are then lost.
    type: path
    default: ~/.ansible/flashduty/spool
    env:
      - name: FLASHDUTY_SPOOL_DIR
    ini:
      - section: flashduty
        key: spool_dir
notes:
  - A numeric option out of its range (O(timeout), O(retries), O(flush_timeout), O(max_rate)) gives one warning naming
    the option and the range, and its default is used.
  - Variables are read for one host of each set of hosts with the same groups and no host-level C(flashduty_*)
    variable, so templates in C(flashduty_labels) that use per-host variables take the value of the first such host.
  - A play's end is sent when the next play starts or the run ends, since Ansible does not tell callbacks when a play
    ends.
  - Spooled events are delivered by the next run that uses the same push URL, before its own events, or by the
    playbook C(flashcat.flashduty.flush_spool).
seealso:
  - module: flashcat.flashduty.change_event
"""

EXAMPLES = r"""
# ansible.cfg: report every play, wait at most 5 s for delivery at the end of the run,
# and add the values of the variables app_version and team as labels:
#
#   [defaults]
#   callbacks_enabled = flashcat.flashduty.change_events
#
#   [flashduty]
#   flush_timeout = 5
#   label_vars = app_version, team

# group_vars/all/vault.yml: the push URL, vaulted, for every host
# (ansible-vault encrypt_string --stdin-name flashduty_push_url >> group_vars/all/vault.yml):
#
#   flashduty_push_url: !vault |
#     $ANSIBLE_VAULT;1.1;AES256
#     ...

# group_vars/prod.yml: labels on every change of prod hosts, templated in each play.
flashduty_labels:
  env: prod
  service: "{{ service_name | default('checkout') }}"

# A play reported under a ticket number as its change key, and a play not reported:
#
#   - name: Upgrade OpenSSL
#     hosts: web
#     vars:
#       flashduty_change_key: CHG-1234
#     roles:
#       - openssl
#
#   - name: Rotate logs
#     hosts: all
#     vars:
#       flashduty_enabled: false
#     tasks:
#       - name: Rotate
#         ansible.builtin.command: logrotate /etc/logrotate.conf
"""

import functools
import os
import time
import uuid

from ansible import context
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.callback import CallbackBase
from ansible.release import __version__ as ansible_version

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import OPTION_RANGES, FlashdutyError, option_problem, redact, url_warnings
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _outcome, _play, _play_vars, _revision
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play_changes import (
    ChangeMaker, PlayState, batch_hosts, host_name, result_data, runs_something, task_id, task_label, task_of)
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._run_end import RunEnd

# Tasks whose results are change events the playbook sent itself (the role sends through the same task).
_EXPLICIT_ACTIONS = frozenset(('flashcat.flashduty.change_event',))
_ADHOC_PLAYBOOK = '__adhoc_playbook__'

WARNING_PREFIX = 'Flashduty change events: '
# Kept out of flush_timeout for stopping the sending threads, writing the spool and exiting, so that
# the end of a run with a dead endpoint stays within flush_timeout in all.
FLUSH_RESERVE = 0.25


def _guarded(method):
    """Run a callback method so that it never raises, and so that a SIGTERM arriving inside it waits for its end."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._end:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # never core's generic "Failure using method" warning, never a traceback
                self._internal_error(method.__name__, exc)
        return None

    return wrapper


class CallbackModule(CallbackBase):
    """Reports plays to Flashduty as change events; see DOCUMENTATION."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'notification'
    CALLBACK_NAME = 'flashcat.flashduty.change_events'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None, options=None):
        self._end = RunEnd(self._finish, lambda: self._sender is not None and self._sender.cut(), self._internal_error)
        self._play = self._outcomes = self._playbook = self._git_revision = self._sender = self._reported_counts = None
        self._play_index = self._playbooks_started = 0
        self._clock = float
        self._dead_hosts, self._warned, self._replayed = set(), set(), set()
        self._replay_report = False
        self._run_id = '%s-%s' % (time.strftime('%Y%m%dT%H%M%S', time.gmtime()), uuid.uuid4().hex[:6])
        self._user, self._controller = _play.controller_identity()
        super(CallbackModule, self).__init__(display=display, options=options)

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super(CallbackModule, self).set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        try:
            self._read_options()
        except Exception as exc:
            self._internal_error('set_options', exc)
            self.disabled = True

    def _read_options(self):
        if not self.get_option('enabled'):
            self.disabled = True
            return
        status_map, problems = _play.parse_status_map(self.get_option('status_map'))
        for problem in problems:
            self._warn_once(problem)
        per_host = bool(self.get_option('per_host'))
        self._planned = self.get_option('check_mode') == 'planned'
        # When each task result came is only needed for the end of each host's own change (per-host mode).
        self._clock = time.time if per_host else float
        self._label_vars = [name.strip() for name in (self.get_option('label_vars') or []) if name and name.strip()]
        self._flush_timeout = float(self._number_option('flush_timeout'))
        self._max_rate = float(self._number_option('max_rate'))
        self._spool_dir = self.get_option('spool_dir')
        self._client_options = dict(timeout=float(self._number_option('timeout')), retries=int(self._number_option('retries')),
                                    validate_certs=self.get_option('validate_certs'), ca_path=self.get_option('ca_path'))
        option_endpoint = dict(push_url=self.get_option('push_url'), integration_key=self.get_option('integration_key'),
                               api_url=self.get_option('api_url'))
        self._maker = ChangeMaker(self._warn_once, lambda message: self._display.vvv(WARNING_PREFIX + message), option_endpoint,
                                  self._label_vars, per_host, self._run_id, status_map, changed_only=bool(self.get_option('changed_only')),
                                  task_names=bool(self.get_option('task_names')))
        self._ci = _play.detect_ci(os.environ)  # the environment, once per run; AWX's extra vars are read per play

    def _number_option(self, name):
        """A numeric option, or its default with one warning when it is out of the range OPTION_RANGES gives it."""
        value = self.get_option(name)
        problem = option_problem(name, value)
        if problem is not None:
            value = OPTION_RANGES[name][3]
            self._warn_once('%s; the default %g is used' % (problem, value))
        return value

    def _warn_once(self, message, key=None):
        """One warning per distinct problem and run. ``message`` must already be redacted."""
        key = message if key is None else key
        if key not in self._warned:
            self._warned.add(key)
            self._display.warning(WARNING_PREFIX + message)

    def _internal_error(self, where, exc):
        text = exc.message if isinstance(exc, FlashdutyError) else redact(_play_vars.error_text(exc))
        self._warn_once('%s failed, reporting may be incomplete: %s' % (where, text), key=('internal', where, text))

    def _show_messages(self):
        """The sender's warnings (already redacted: it knows the keys), shown from the main thread."""
        for message in self._sender.drain_messages() if self._sender is not None else ():
            self._display.warning(message if message.startswith('Flashduty') else WARNING_PREFIX + message)

    @_guarded
    def v2_playbook_on_start(self, playbook):
        self._playbooks_started += 1
        path = getattr(playbook, '_file_name', None)
        if path == _ADHOC_PLAYBOOK:
            self._maker.module = context.CLIARGS.get('module_name') or 'command'
        elif path:
            self._playbook = _play.playbook_label(path)
            started = time.monotonic()
            self._git_revision = _revision.git_revision(os.path.dirname(os.path.abspath(path)))
            self._display.vvv('Flashduty change events: revision %s read in %.3f s'
                              % (self._git_revision or '(not a git work tree)', time.monotonic() - started))

    @_guarded
    def v2_playbook_on_play_start(self, play):
        if self._end.finished:
            return
        current = self._play
        if current is not None and current.uuid == play._uuid:
            # The next serial batch of the same play: still one change.
            current.batches.append(play)
            current.log.start_batch(batch_hosts(play))
            return
        self._close_play()
        self._play_index += 1
        state = self._play = PlayState(play, self._play_index)
        if state.check_mode and not self._planned:
            return
        self._open_changes(play, state)
        state.log.start_batch(batch_hosts(play))
        self._show_messages()

    def _open_changes(self, play, state):
        now = time.time()  # when the play started, whatever the time spent below or the delivery takes
        started = time.monotonic()
        reader = _play_vars.PlayReader(play, names=_play_vars.PLAY_VARIABLES + tuple(self._label_vars))
        hosts = reader.target_hosts(exclude=self._dead_hosts)
        if not hosts:
            return
        state.targets = [host.name for host in hosts]
        module = self._maker.module
        pattern = _play.host_pattern(play.hosts)
        state.name = 'ad-hoc %s' % module if module else '%s' % (play.get_name() or pattern,)
        endpoints = {}
        classes = reader.classes(hosts)
        for members in classes:
            resolved = self._maker.resolve(reader, members, state.name)
            if resolved is not None:
                endpoints.setdefault(resolved[0], []).append((members, resolved[1]))
        self._display.vvv('Flashduty change events: play "%s": %d hosts, variables resolved for %d host set(s) in %.3f s'
                          % (state.name, len(hosts), len(classes), time.monotonic() - started))
        if not endpoints:
            return
        self._end.install()
        cli = context.CLIARGS
        ci = self._ci or _play.detect_ci(os.environ, reader.variable_manager.extra_vars) or {}
        state.context = dict(play=state.name, playbook=self._playbook, pattern=pattern, limit=cli.get('subset') or None,
                             tags=list(cli.get('tags') or ()), skip_tags=cli.get('skip_tags'), check_mode=state.check_mode,
                             ansible_version=ansible_version, run_id=self._run_id, module=module, ci_labels=ci.get('labels'),
                             revision=self._git_revision or _revision.ci_revision(ci.get('labels')),
                             controller_user=self._user, controller_host=self._controller)
        # The collection's own playbooks report no change of their own (send_change_event sends its event as a task);
        # flush_spool also wants to hear what became of the spool. Either way the spool for the play's push URL is replayed.
        replay_only = boolean(play.vars.get('flashduty_replay_only', False), strict=False)
        self._replay_report = self._replay_report or replay_only
        state.replay_only = replay_only or not boolean(play.vars.get('flashduty_report_play', True), strict=False)
        state.secrets = tuple(secret for endpoint in endpoints for secret in endpoint.secrets)
        order = dict((host.name, index) for index, host in enumerate(hosts))
        for endpoint, parts in endpoints.items():
            if endpoint not in self._replayed:
                self._replayed.add(endpoint)
                self._get_sender().replay(endpoint)
            if state.replay_only:
                continue
            for warning in url_warnings(endpoint, self._client_options['validate_certs']):
                self._warn_once(warning)
            state.changes.extend(self._maker.changes(state, endpoint, parts, order, ci.get('link'), now))
        if state.changes:
            self._outcomes = state.outcomes

    # Task results (keep these tiny): they run once per host and task. Each appends (host name, counters to add,
    # task id, time) to the play's outcomes, or does nothing when the play is not reported (self._outcomes is None);
    # the play's log folds them in once per task. Only failures, rare, do more: they keep the failing task and reason.

    def v2_runner_on_ok(self, result, **kwargs):
        outcomes = self._outcomes
        if outcomes is not None:
            try:
                if result.is_changed():  # only a change needs its task, to be listed
                    outcomes.append((host_name(result), _outcome.RESULT_CHANGED, task_id(result), self._clock()))
                else:
                    outcomes.append((host_name(result), _outcome.RESULT_OK, None, self._clock()))
            except Exception as exc:
                self._internal_error('v2_runner_on_ok', exc)

    def v2_runner_on_skipped(self, result, **kwargs):
        outcomes = self._outcomes
        if outcomes is not None:
            try:
                outcomes.append((host_name(result), _outcome.RESULT_SKIPPED, None, self._clock()))
            except Exception as exc:
                self._internal_error('v2_runner_on_skipped', exc)

    @_guarded
    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        if self._outcomes is not None:
            self._play.add_failure(host_name(result), task_of(result), result, self._clock(), ignored=ignore_errors)

    @_guarded
    def v2_runner_on_unreachable(self, result, **kwargs):
        if self._outcomes is not None:
            self._play.add_failure(host_name(result), task_of(result), result, self._clock(), unreachable=True)

    @_guarded
    def v2_playbook_on_task_start(self, task, is_conditional=False):
        # No warning from here: it would come between the task's header and its results.
        state = self._play
        if state is not None and state.changes:
            state.log.add(state.outcomes)
            state.log.task_names[getattr(task, '_uuid', None)] = task_label(task)
            batch = state.log.first_task(time.time()) if runs_something(task) else None
            if batch is not None:
                for endpoint, event in self._maker.start_events(state, batch, state.log.batch_started[-1]):
                    self._get_sender().submit(endpoint, event)
        # While a change_event task runs, read the events it sends; other tasks' results pay nothing for this.
        if (getattr(task, 'resolved_action', None) or getattr(task, 'action', None)) in _EXPLICIT_ACTIONS:
            self.v2_runner_on_ok = self._explicit_ok  # an instance attribute: Ansible looks the method up per call
        elif 'v2_runner_on_ok' in self.__dict__:
            del self.v2_runner_on_ok

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def _explicit_ok(self, result, **kwargs):
        CallbackModule.v2_runner_on_ok(self, result, **kwargs)
        try:
            outcome = result_data(result)
            for item in outcome.get('results') or [outcome]:
                event = item.get('event') if isinstance(item, dict) else None
                # status_code: Flashduty (or the receiver) answered; check mode and skipped tasks sent nothing.
                if isinstance(event, dict) and event.get('change_key') and item.get('status_code') is not None:
                    self._maker.explicit['%s' % event['change_key']] = event.get('change_status')
        except Exception as exc:
            self._internal_error('reading a change_event result', exc)

    @_guarded
    def v2_playbook_on_stats(self, stats):
        if self._end.finished:
            return
        # Ansible sends this after each playbook of the command line: see _run_end for a signal during its flush.
        self._end.ending = True
        try:
            self._close_play()
            self._flush()
        finally:
            self._end.ending = False
        if self._end.stop_after_flush and self._playbooks_started < len(context.CLIARGS.get('args') or ()):
            self._end.stop_after_flush = False
            raise KeyboardInterrupt()

    def _close_play(self, interrupted=None):
        """Send the end of the current play: ``interrupted`` says why the run stopped before it ended."""
        state, self._play, self._outcomes = self._play, None, None
        if state is None or not state.changes:
            return
        state.log.add(state.outcomes)
        failed, unreachable = state.final_failures()
        if not interrupted:
            self._dead_hosts.update(failed | unreachable)
        for endpoint, event in self._maker.end_events(state, failed, unreachable, interrupted, time.time()):
            self._sender.submit(endpoint, event)

    def _flush(self):
        if self._sender is None:
            return
        # Written ahead: whatever is not delivered is in the spool before the wait, should the process be killed in it.
        report = self._sender.flush(max(0.0, self._flush_timeout - FLUSH_RESERVE), write_ahead=True)
        # What went wrong is in the sender's own warnings (one per endpoint and problem).
        self._show_messages()
        # Its counts are the run's so far: the flush at exit, after the one at the end of the playbook, repeats them only
        # if something happened in between.
        counts = (report.delivered, report.failed, report.spooled, report.dropped, report.lost)
        if report.timed_out or counts != self._reported_counts:
            self._display.vv(report.summary())
            if self._replay_report:  # flush_spool: what it delivered and what is left, at default verbosity
                self._display.display(report.replay_summary(self._sender.spool))
        self._reported_counts = counts

    def _finish(self, reason):
        """Close what is open as interrupted, deliver within the flush timeout, stop the threads."""
        try:  # only after a play was reported: the options were read
            self._close_play(interrupted=reason)
            self._flush()
        finally:
            if self._sender is not None:  # the threads stop even after an internal error above
                self._sender.close()

    def _get_sender(self):
        if self._sender is None:
            from ansible_collections.flashcat.flashduty.plugins.plugin_utils._sender import open_sender

            self._sender = open_sender(self._spool_dir, self._warn_once, client_options=self._client_options, max_rate=self._max_rate)
        return self._sender
