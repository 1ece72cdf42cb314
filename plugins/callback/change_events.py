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
  - Reports each play as one change in Flashduty, so that when an alert fires the on-call engineer sees which hosts
    Ansible changed, with which play, and how it went, next to the alert.
  - A play sends V(Processing) when it starts and V(Done) when it ends, with the same change key, so Flashduty
    merges them into one change spanning the play. A play whose hosts partly failed still ends V(Done), with the
    outcome (failed and unreachable hosts, counts) in its description and labels. A run interrupted before the play
    ended (Ctrl-C, SIGTERM, a fatal error) sends V(Canceled). O(status_map) changes these statuses.
  - The change key is C(<run id>-<play index>), unique per run and play, unless the variable
    C(flashduty_change_key) is set. With C(serial), all batches of a play are one change.
  - Each event carries the time it happened, not the time it was delivered.
  - The title names the play and its hosts (the variable C(flashduty_change_title) overrides it); the link points
    to the CI job or AWX/AAP job that ran the playbook (the variable C(flashduty_change_link) overrides it).
  - The push URL is read for each play from the play's variables, including inventory C(group_vars) and
    C(host_vars), as C(flashduty_push_url), or C(flashduty_integration_key) with C(flashduty_api_url). They may be
    vaulted. Without them, the environment (E(FLASHDUTY_PUSH_URL)...) and then C(ansible.cfg) are used.
    When the hosts of one play resolve different push URLs (say prod and staging C(group_vars) name different
    Flashduty integrations), each push URL gets its own change, covering only its hosts.
  - The play variable C(flashduty_enabled=false) (in the play, C(group_vars) or extra vars) mutes a play, or the
    hosts it applies to. C(flashduty_labels), a dict templated in the play's context, adds labels.
  - "Labels set on every change: C(play), C(hosts) (the target hosts after C(--limit), long lists summarised with a count of
    the rest, like web1,web2,... (+498 more)), C(groups) (their groups and parent groups, without C(all) and C(ungrouped)),
    C(host_count), C(playbook), C(host_pattern), C(limit), C(tags) and C(skip_tags) (when set), C(check_mode),
    C(run_id), C(controller_user), C(controller_host), C(ansible_version); in per-host mode C(host)."
  - "At the end of a play: C(outcome) (V(succeeded), V(partially_failed), V(failed) or V(interrupted)),
    C(ok_count), C(changed_count), C(failed_count), C(unreachable_count) (numbers of hosts), and C(failed_hosts)
    and C(unreachable_hosts) when there are any."
  - "From CI, when detected: C(ci_system) (V(github_actions), V(gitlab_ci), V(jenkins) or V(awx)), C(ci_job_id),
    C(ci_job_name), C(ci_repository), C(ci_ref), C(ci_commit), C(ci_actor)."
  - Flashduty accepts at most 50 labels. C(flashduty_labels) and O(label_vars) win over the automatic labels
    when the cap is reached; the automatic labels left out (the least important first, from the end of the lists
    above) are named in one warning.
  - Sending never slows the playbook down or changes its output or exit code. Events go out from background
    threads; at the end of the run the callback waits at most O(flush_timeout) seconds, and what is not delivered
    by then is written to the spool (O(spool_dir)) and sent by the next run; it is written there before the
    wait, so that a second Ctrl-C or SIGTERM (which ends the wait at once) loses nothing. Events Flashduty
    refuses are named at the end of the run, in one warning per kind of refusal and endpoint quoting their
    C(request_id).
  - Enable it with C(callbacks_enabled = flashcat.flashduty.change_events) in the C([defaults]) section of
    C(ansible.cfg) or with E(ANSIBLE_CALLBACKS_ENABLED=flashcat.flashduty.change_events), and store the push URL
    vaulted; see the examples.
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
    type: float
    default: 5
    env:
      - name: FLASHDUTY_FLUSH_TIMEOUT
    ini:
      - section: flashduty
        key: flush_timeout
  max_rate:
    description:
      - At most this many requests per second to Flashduty, over all endpoints and retries.
      - Flashduty allows 50 requests per second per account.
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
    type: path
    default: ~/.ansible/flashduty/spool
    env:
      - name: FLASHDUTY_SPOOL_DIR
    ini:
      - section: flashduty
        key: spool_dir
notes:
  - Variables are read for one host of each set of hosts with the same groups and no host-level C(flashduty_*)
    variable (or variable named in O(label_vars)), so templates in C(flashduty_labels) that use per-host variables
    such as C(inventory_hostname) take the value of the first such host.
  - Hosts that failed or were unreachable in an earlier play of the run are not targets of later plays, as in Ansible.
  - Ansible tells callbacks when a play starts, not when it ends, so a play's end is sent when the next play starts
    or the run ends. A fatal error between two plays (a bad host pattern, say) thus reports the play before it as
    interrupted.
  - Spooled events are delivered by the next run that uses the same push URL, before its own events. To deliver
    them without waiting for one, run the playbook C(flashcat.flashduty.flush_spool) with this callback
    enabled; its play sets the variable C(flashduty_replay_only=true), which replays the spool for the play's push
    URL and reports nothing of its own.
  - Events for the same change are delivered in order. The V(Done) event of the last play is sent when the run
    ends; an endpoint that does not answer delays the end of the run by at most O(flush_timeout).
seealso:
  - module: flashcat.flashduty.change_event
"""

EXAMPLES = r"""
# ansible.cfg: report every play, wait at most 5 s for delivery at the end of the run,
# and add the values of the variables app_version and team as labels.
#
#   [defaults]
#   callbacks_enabled = flashcat.flashduty.change_events
#
#   [flashduty]
#   flush_timeout = 5
#   label_vars = app_version, team
#
# The push URL, vaulted, for every host:
#   ansible-vault encrypt_string '<push url>' --name flashduty_push_url >> group_vars/all/vault.yml
#
# Or from the environment, e.g. in CI:
#   ANSIBLE_CALLBACKS_ENABLED=flashcat.flashduty.change_events FLASHDUTY_PUSH_URL=... ansible-playbook site.yml

# group_vars/prod.yml: labels for every change on prod hosts, templated per play.
flashduty_labels:
  env: prod
  service: "{{ service_name | default('checkout') }}"

# group_vars/staging.yml: staging hosts report to another Flashduty integration.
#   flashduty_push_url: !vault |
#     $ANSIBLE_VAULT;1.1;AES256
#     ...

# In a play (or with -e): a ticket as the change key, and a quiet play.
# - name: Rotate logs
#   hosts: all
#   vars:
#     flashduty_enabled: false
"""

import atexit
import functools
import operator
import os
import signal
import threading
import time
import uuid

from ansible import context
from ansible.errors import AnsibleError
from ansible.executor.task_result import TaskResult
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.callback import CallbackBase
from ansible.release import __version__ as ansible_version

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    ENDPOINT_VARIABLES,
    endpoint_settings,
    FlashdutyError,
    build_event,
    redact,
    resolve_endpoint,
    url_warnings,
)
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _play
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play import CHANGED, FAILED, IGNORED, OK, RESCUED, SKIPPED, UNREACHABLE

# What one task result adds to its host's counters.
_OK = (OK,)
_OK_CHANGED = (OK, CHANGED)
_SKIPPED = (SKIPPED,)
_IGNORED = (OK, IGNORED)
_IGNORED_CHANGED = (OK, IGNORED, CHANGED)
_RESCUED = (RESCUED,)
_FAILED = (FAILED,)
_UNREACHABLE = (UNREACHABLE,)

# The host of a task result: its public ``host`` on ansible-core 2.19+, where ``_host`` is deprecated.
_host_name = operator.attrgetter('host.name' if isinstance(getattr(TaskResult, 'host', None), property) else '_host.name')

WARNING_PREFIX = 'Flashduty change events: '
# Kept out of flush_timeout for stopping the sending threads, writing the spool and exiting, so that
# the end of a run with a dead endpoint stays within flush_timeout in all.
FLUSH_RESERVE = 0.25
_ENDPOINT_NAMES = frozenset(ENDPOINT_VARIABLES)


def _guarded(method):
    """Run a callback method so that it never raises, and so that a SIGTERM arriving inside it waits for its end."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._busy += 1
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # never core's generic "Failure using method" warning, never a traceback
            self._internal_error(method.__name__, exc)
        finally:
            self._busy -= 1
            if not self._busy and self._deferred_signal is not None:
                signum, self._deferred_signal = self._deferred_signal, None
                self._terminate(signum, None)
        return None

    return wrapper


class _Change:
    """One change of a play: one Endpoint, and one host in per-host mode.

    ``labels`` are the automatic labels as ``(name, value)`` pairs, most important
    first; ``user_labels`` those of flashduty_labels and label_vars; ``held`` the
    start event kept back in changed-only mode.
    """

    __slots__ = ('endpoint', 'key', 'title', 'link', 'hosts', 'labels', 'user_labels', 'start_time', 'held')

    def __init__(self, endpoint, key, title, link, hosts, labels, user_labels, start_time):
        self.endpoint = endpoint
        self.key = key
        self.title = title
        self.link = link
        self.hosts = hosts
        self.labels = labels
        self.user_labels = user_labels
        self.start_time = start_time
        self.held = None


class _PlayState:
    """What the callback tracks about the current play."""

    __slots__ = ('uuid', 'index', 'name', 'check_mode', 'changes', 'outcomes', 'counters', 'failed', 'unreachable', 'batches',
                 'context')

    def __init__(self, play, index, check_mode):
        self.uuid = play._uuid
        self.index = index
        self.name = None
        self.check_mode = check_mode
        self.changes = []
        self.outcomes = []     # (host name, counter indexes to add) per task result, until _tally()
        self.counters = {}
        self.failed = set()
        self.unreachable = set()
        self.batches = [play]
        self.context = None


class CallbackModule(CallbackBase):
    """Reports plays to Flashduty as change events; see DOCUMENTATION."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'notification'
    CALLBACK_NAME = 'flashcat.flashduty.change_events'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None, options=None):
        self._busy = 0
        self._deferred_signal = None
        self._play = None
        self._outcomes = None  # the current play's outcomes list while its results are counted
        self._play_index = 0
        self._playbook = None
        self._dead_hosts = set()
        self._warned = set()
        self._sender = None
        self._reported_counts = None
        self._replayed = set()
        self._decrypted = {}
        self._run_id = '%s-%s' % (time.strftime('%Y%m%dT%H%M%S', time.gmtime()), uuid.uuid4().hex[:6])
        self._user, self._controller = _play.controller_identity()
        self._status_map = dict(_play.DEFAULT_STATUS_MAP)
        self._finished = False
        self._ending = False  # the end of the run (its flush) has begun: a signal now shortens it
        self._playbooks_started = 0
        self._stop_after_flush = False  # Ctrl-C in the flush after a playbook that is not the last
        self._pid = os.getpid()
        self._handlers_installed = False
        self._previous_handlers = {}
        self._interrupted_by = None
        self._config_ok = False
        super(CallbackModule, self).__init__(display=display, options=options)

    # ---------------------------------------------------------------- options

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
        self._status_map, problems = _play.parse_status_map(self.get_option('status_map'))
        for problem in problems:
            self._warn_once(problem)
        self._per_host = bool(self.get_option('per_host'))
        self._changed_only = bool(self.get_option('changed_only'))
        self._check_mode_policy = self.get_option('check_mode') or 'skip'
        self._label_vars = [name.strip() for name in (self.get_option('label_vars') or []) if name and name.strip()]
        self._flush_timeout = max(0.0, float(self.get_option('flush_timeout')))
        self._max_rate = self.get_option('max_rate')
        self._spool_dir = self.get_option('spool_dir')
        self._client_options = dict(timeout=self.get_option('timeout'), retries=self.get_option('retries'),
                                    validate_certs=self.get_option('validate_certs'), ca_path=self.get_option('ca_path'))
        self._option_endpoint = dict(push_url=self.get_option('push_url'), integration_key=self.get_option('integration_key'),
                                     api_url=self.get_option('api_url'))
        self._ci = _play.detect_ci(os.environ)
        self._config_ok = True

    # ---------------------------------------------------------------- warnings

    def _warn_once(self, message, key=None):
        """One warning per distinct problem and run. ``message`` must already be redacted."""
        key = message if key is None else key
        if key in self._warned:
            return
        self._warned.add(key)
        self._display.warning(WARNING_PREFIX + message)

    def _internal_error(self, where, exc):
        if isinstance(exc, FlashdutyError):
            text = exc.message
        elif isinstance(exc, AnsibleError):
            text = redact(_play._first_line(exc))
        else:
            text = redact('%s: %s' % (type(exc).__name__, _play._first_line(exc)))
        self._warn_once('%s failed, reporting may be incomplete: %s' % (where, text), key=('internal', where, text))

    def _show_messages(self):
        """The sender's warnings (already redacted: it knows the keys), shown from the main thread."""
        if self._sender is None:
            return
        for message in self._sender.drain_messages():
            self._display.warning(message if message.startswith('Flashduty') else WARNING_PREFIX + message)

    # ---------------------------------------------------------------- playbook and plays

    @_guarded
    def v2_playbook_on_start(self, playbook):
        self._playbooks_started += 1
        path = getattr(playbook, '_file_name', None)
        if path:
            self._playbook = _play.playbook_label(path)

    @_guarded
    def v2_playbook_on_play_start(self, play):
        if not self._config_ok or self._finished:
            return
        current = self._play
        if current is not None and current.uuid == play._uuid:
            # The next serial batch of the same play: still one change.
            current.batches.append(play)
            return
        self._close_play()
        self._play_index += 1
        check_mode = bool(getattr(play, 'check_mode', False))
        state = _PlayState(play, self._play_index, check_mode)
        self._play = state
        if check_mode and self._check_mode_policy != 'planned':
            return
        self._open_changes(play, state)
        self._show_messages()

    def _open_changes(self, play, state):
        now = time.time()  # when the play started, whatever the time spent below or the delivery takes
        started = time.monotonic()
        reader = _play.PlayReader(play, names=_play.PLAY_VARIABLES + tuple(self._label_vars))
        hosts = reader.target_hosts(exclude=self._dead_hosts)
        if not hosts:
            return
        state.name = '%s' % (play.get_name() or _pattern(play.hosts),)
        order = dict((host.name, index) for index, host in enumerate(hosts))
        endpoints = {}
        classes = reader.classes(hosts)
        for members in classes:
            resolved = self._resolve_class(reader, members, state)
            if resolved is None:
                continue
            endpoint, values = resolved
            endpoints.setdefault(endpoint, []).append((members, values))
        self._display.vvv('Flashduty change events: play "%s": %d hosts, variables resolved for %d host set(s) in %.3f s'
                          % (state.name, len(hosts), len(classes), time.monotonic() - started))
        if not endpoints:
            return
        self._install_handlers()
        cli = context.CLIARGS
        state.context = dict(playbook=self._playbook, pattern=_pattern(play.hosts), limit=cli.get('subset') or None,
                             tags=list(cli.get('tags') or ()), check_mode=state.check_mode, user=self._user,
                             controller=self._controller, ansible_version=ansible_version, run_id=self._run_id)
        ci = self._ci or _play.detect_ci(os.environ, reader.variable_manager.extra_vars)
        # A play of playbooks/flush_spool.yml: deliver what earlier runs spooled, report nothing of its own.
        replay_only = boolean(play.vars.get('flashduty_replay_only', False), strict=False)
        for endpoint, parts in endpoints.items():
            if endpoint not in self._replayed:
                self._replayed.add(endpoint)
                self._get_sender().replay(endpoint)
            if replay_only:
                continue
            for warning in url_warnings(endpoint, self._client_options['validate_certs']):
                self._warn_once(warning)
            self._add_changes(state, endpoint, parts, order, ci, cli, now)
        if state.changes:
            self._outcomes = state.outcomes
        if state.check_mode or replay_only:
            return  # check mode: one Planned event when the play ends; replay only: no event at all
        for change in state.changes:
            event = self._event(change, self._status_map['started'], _play.start_description(state.name, change.hosts, state.context),
                                self._labels(change.labels, change.user_labels, final=False), change.start_time)
            if event is None:
                continue
            if self._changed_only:
                change.held = event  # sent with the end event, if the play changes something
            else:
                self._sender.submit(change.endpoint, event)

    def _resolve_class(self, reader, members, state):
        """``(Endpoint, variables)`` for a set of hosts that resolve alike, or None when they are not reported."""
        values, problems = reader.variables(members[0], self._decrypted)
        if 'flashduty_enabled' in values:
            try:
                if not boolean(values['flashduty_enabled'], strict=True):
                    return None  # muted: no warning about the rest either
            except TypeError:
                self._warn_once('flashduty_enabled should be a boolean, got %r; taken as true' % (values['flashduty_enabled'],),
                                key=('enabled', '%r' % (values['flashduty_enabled'],)))
        broken = set()
        for problem in problems:
            broken.add(problem.name)
            what = 'could not be decrypted or templated'
            hint = ''
            if problem.name in _ENDPOINT_NAMES:
                hint = ('; plays using it are not reported. If it is vaulted, give ansible-playbook the vault password '
                        '(--vault-id, --vault-password-file or --ask-vault-pass)')
            self._warn_once('the variable %s %s: %s%s' % (problem.name, what, problem.message, hint),
                            key=('variable', problem.name))
        if broken & _ENDPOINT_NAMES:
            return None
        source = endpoint_settings(values, 'variable')
        try:
            endpoint = resolve_endpoint(source, self._option_endpoint)
        except FlashdutyError as exc:
            if exc.field == 'push_url' and not any(source.values()) and not any(self._option_endpoint.values()):
                self._warn_once('no Flashduty push URL for play "%s" (hosts %s): set the variable flashduty_push_url '
                                '(vaulted, in group_vars/all for instance), the environment variable FLASHDUTY_PUSH_URL or '
                                'push_url in the [flashduty] section of ansible.cfg. Plays without one are not reported.'
                                % (state.name, _play.hosts_phrase([host.name for host in members])), key='no push url')
            else:
                self._warn_once('%s; plays using it are not reported' % exc.message, key=('url', exc.message))
            return None
        return endpoint, values

    def _add_changes(self, state, endpoint, parts, order, ci, cli, now):
        hosts = sorted((host for members, dummy in parts for host in members), key=lambda host: order[host.name])
        names = [host.name for host in hosts]
        user_sets = []
        settings = {}
        for _members, values in parts:
            user_sets.append(self._user_labels(values))
            for name in ('flashduty_change_key', 'flashduty_change_title', 'flashduty_change_link'):
                value = values.get(name)
                if name not in settings and value not in (None, ''):
                    settings[name] = '%s' % (value,)
        user_labels = _play.merge_user_labels(user_sets)
        link = settings.get('flashduty_change_link') or (ci or {}).get('link')
        ci_labels = (ci or {}).get('labels')
        common = dict(play=state.name, playbook=self._playbook, pattern=_pattern(state.batches[0].hosts),
                      limit=cli.get('subset') or None, tags=cli.get('tags'), skip_tags=cli.get('skip_tags'),
                      check_mode=state.check_mode, run_id=self._run_id, controller_user=self._user,
                      controller_host=self._controller, ansible_version=ansible_version, ci_labels=ci_labels)
        user_key = settings.get('flashduty_change_key')
        user_title = settings.get('flashduty_change_title')
        if not self._per_host:
            groups = _play.visible_groups(group.name for host in hosts for group in host.get_groups())
            key = user_key or _play.default_change_key(self._run_id, state.index)
            title = user_title or _play.change_title(state.name, names)
            labels = _play.automatic_labels(names, groups, **common)
            state.changes.append(_Change(endpoint, key, title, link, names, labels, user_labels, now))
            return
        for host in hosts:
            groups = _play.visible_groups(group.name for group in host.get_groups())
            key = _play.host_change_key(user_key, host.name) if user_key else _play.default_change_key(self._run_id, state.index, host.name)
            title = user_title or _play.change_title(state.name, [host.name], host=host.name)
            labels = _play.automatic_labels([host.name], groups, host=host.name, **common)
            state.changes.append(_Change(endpoint, key, title, link, [host.name], labels, user_labels, now))

    def _user_labels(self, values):
        labels, problems = _play.clean_user_labels(values.get('flashduty_labels'), 'flashduty_labels')
        extra = {}
        for name in self._label_vars:
            if name in values:
                extra[name] = values[name]
        more, more_problems = _play.clean_user_labels(extra, 'label_vars')
        for name, value in more.items():
            labels.setdefault(name, value)
        for problem in problems + more_problems:
            self._warn_once(problem)
        return labels

    # ---------------------------------------------------------------- task results (keep these tiny)
    #
    # They run once per host and task on the strategy's thread: each appends (host name, counters to add)
    # to the play's outcomes, or does nothing when the play is not reported (self._outcomes is None);
    # _tally() adds them up once per task.

    def v2_runner_on_ok(self, result, **kwargs):
        outcomes = self._outcomes
        if outcomes is not None:
            try:
                outcomes.append((_host_name(result), _OK_CHANGED if result.is_changed() else _OK))
            except Exception as exc:
                self._internal_error('v2_runner_on_ok', exc)

    def v2_runner_on_skipped(self, result, **kwargs):
        outcomes = self._outcomes
        if outcomes is not None:
            try:
                outcomes.append((_host_name(result), _SKIPPED))
            except Exception as exc:
                self._internal_error('v2_runner_on_skipped', exc)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        outcomes = self._outcomes
        if outcomes is None:
            return
        try:
            name = _host_name(result)
            if ignore_errors:
                outcomes.append((name, _IGNORED_CHANGED if result.is_changed() else _IGNORED))
                return
            state = self._play
            # The strategy has already taken a failure a block rescues out of the play's removed hosts.
            removed = getattr(state.batches[-1], '_removed_hosts', None)
            if isinstance(removed, list) and name not in removed:
                outcomes.append((name, _RESCUED))
            else:
                outcomes.append((name, _FAILED))
                state.failed.add(name)
        except Exception as exc:
            self._internal_error('v2_runner_on_failed', exc)

    def v2_runner_on_unreachable(self, result, **kwargs):
        outcomes = self._outcomes
        if outcomes is None:
            return
        try:
            name = _host_name(result)
            task = getattr(result, 'task', None) or result._task
            if getattr(task, 'ignore_unreachable', False):
                outcomes.append((name, _IGNORED))
            else:
                outcomes.append((name, _UNREACHABLE))
                self._play.unreachable.add(name)
        except Exception as exc:
            self._internal_error('v2_runner_on_unreachable', exc)

    def _tally(self):
        """Add the outcomes gathered since the last call to the play's per-host counters."""
        state = self._play
        if state is None or not state.outcomes:
            return
        counters = state.counters
        for name, increments in state.outcomes:
            host = counters.get(name)
            if host is None:
                host = counters[name] = _play.new_counters()
            for index in increments:
                host[index] += 1
        del state.outcomes[:]

    # No warning from here: it would come between the task's header and its results.
    @_guarded
    def v2_playbook_on_task_start(self, task, is_conditional):
        self._tally()

    @_guarded
    def v2_playbook_on_handler_task_start(self, task):
        self._tally()

    # ---------------------------------------------------------------- the end of plays and of the run

    @_guarded
    def v2_playbook_on_stats(self, stats):
        if not self._config_ok or self._finished:
            return
        # Ansible sends this after each playbook of the command line: a signal during its flush shortens the wait,
        # and a Ctrl-C then still stops the run if more playbooks follow.
        self._ending = True
        try:
            self._close_play()
            self._flush()
        finally:
            self._ending = self._finished
        if self._stop_after_flush and self._playbooks_started < len(context.CLIARGS.get('args') or ()):
            self._stop_after_flush = False
            raise KeyboardInterrupt()

    def _close_play(self, interrupted=None):
        """Send the end of the current play: ``interrupted`` says why the run stopped before it ended."""
        self._tally()
        state, self._play = self._play, None
        self._outcomes = None
        if state is None or not state.changes:
            return
        now = time.time()
        failed, unreachable = _final_failures(state)
        if not interrupted:
            self._dead_hosts.update(failed)
            self._dead_hosts.update(unreachable)
        for change in state.changes:
            summary = _play.play_outcome(change.hosts, state.counters, failed, unreachable)
            if state.check_mode:
                if interrupted or (self._changed_only and not summary['changed']):
                    continue
                status = self._status_map['planned']
            elif self._changed_only and not summary['changed']:
                continue
            elif interrupted:
                status = self._status_map['interrupted']
                summary['outcome'] = _play.OUTCOME_INTERRUPTED
            elif summary['outcome'] == _play.OUTCOME_SUCCEEDED:
                status = self._status_map['succeeded']
            else:
                status = self._status_map['failed']
            description = _play.end_description(state.name, change.hosts, summary, state.context, interrupted=interrupted,
                                                check_mode=state.check_mode)
            labels = sorted(change.labels + _play.outcome_labels(summary), key=_rank)
            event = self._event(change, status, description, self._labels(labels, change.user_labels, final=True), now)
            if event is None:
                continue
            if change.held is not None:
                self._sender.submit(change.endpoint, change.held)
                change.held = None
            self._sender.submit(change.endpoint, event)

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
        self._reported_counts = counts

    def _finish(self, reason):
        """Close what is open as interrupted, deliver within the flush timeout, stop the threads."""
        if self._finished:
            return
        self._finished = True
        self._ending = True
        try:
            if self._config_ok:
                self._close_play(interrupted=reason)
                self._flush()
        finally:
            if self._sender is not None:  # the threads stop even after an internal error above
                self._sender.close()

    def _at_exit(self):
        if os.getpid() != self._pid:
            return
        try:
            self._finish(self._interrupted_by or 'the run stopped before the play ended')
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            self._internal_error('the end of the run', exc)

    # ---------------------------------------------------------------- signals

    def _install_handlers(self):
        """atexit (Ctrl-C and fatal errors end there) and SIGTERM (which skips atexit); once, from the main thread."""
        if self._handlers_installed:
            return
        self._handlers_installed = True
        self._pid = os.getpid()
        atexit.register(self._at_exit)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(signum)
                if signum == signal.SIGINT and not callable(previous):
                    continue  # SIGINT ignored (a background job) or not handled in Python: leave it alone
                signal.signal(signum, self._on_signal)
                self._previous_handlers[signum] = previous
            except (ValueError, OSError, TypeError):
                continue

    def _on_signal(self, signum, frame):
        if self._ending and os.getpid() == self._pid:
            return self._cut_the_end(signum)
        if signum == signal.SIGINT:
            # Ctrl-C: remember why, and let Ansible handle it as before; atexit sends the Canceled events.
            self._interrupted_by = 'SIGINT'
            previous = self._previous_handlers.get(signum)
            if os.getpid() == self._pid and callable(previous):
                try:
                    return previous(signum, frame)
                finally:
                    self._stay_in_front(signum)
            return self._redeliver(signum)
        if os.getpid() != self._pid:
            return self._redeliver(signum)  # a forked worker inherited the handler
        if self._busy:
            self._deferred_signal = signum  # handled when the callback method running now returns
            return None
        return self._terminate(signum, frame)

    def _stay_in_front(self, signum):
        """Handle ``signum`` again after a handler that put another in place (ansible-core's resets Ctrl-C to the
        default action), keeping that one as the previous handler: a second Ctrl-C during the end of the run
        must reach _cut_the_end(); before it, it does what it would have done without us."""
        if not self._handlers_installed:
            return
        try:
            current = signal.getsignal(signum)
            if current != self._on_signal:  # pylint: disable=comparison-with-callable
                self._previous_handlers[signum] = current
                signal.signal(signum, self._on_signal)
        except (ValueError, OSError, TypeError):
            pass

    def _cut_the_end(self, signum):
        """A signal during the end of the run (a second Ctrl-C, SIGTERM...): stop waiting for delivery, lose nothing.

        What is not delivered is in the spool already (the flush wrote it ahead), and the flush spools what
        is left as soon as it sees the cut. No exception is raised here, so that the end of the run is not
        broken off halfway and the playbook's exit code stays its own; a SIGTERM that came inside a callback
        method still ends the process once that method returns. Only flags are set: this may run while the
        main thread holds the sender's lock.
        """
        self._interrupted_by = self._interrupted_by or signal.Signals(signum).name
        if self._sender is not None:
            self._sender.cut()
        if signum != signal.SIGINT and self._busy and not self._finished:
            self._deferred_signal = signum
        elif signum == signal.SIGINT and not self._finished:
            self._stop_after_flush = True
        return None

    def _terminate(self, signum, frame):
        try:
            self._interrupted_by = signal.Signals(signum).name
            self._finish(self._interrupted_by)
        except Exception as exc:
            try:
                self._internal_error('the %s handler' % self._interrupted_by, exc)
            except Exception:  # output may be unusable inside a signal handler (a reentrant write)
                pass
        finally:
            self._redeliver(signum)

    def _redeliver(self, signum):
        """Put the previous handler back and deliver the signal again, as if we had never been there."""
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        try:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, OSError, TypeError):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    # ---------------------------------------------------------------- events

    def _get_sender(self):
        if self._sender is None:
            from ansible_collections.flashcat.flashduty.plugins.plugin_utils._sender import EventSender
            from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import Spool

            spool = None
            if self._spool_dir:
                try:
                    spool = Spool(self._spool_dir)
                except Exception as exc:
                    self._warn_once('the spool directory %s cannot be used (%s): events not delivered by the end of the run '
                                    'will be lost' % (self._spool_dir, exc))
            self._sender = EventSender(client_options=self._client_options, max_rate=self._max_rate, spool=spool)
        return self._sender

    def _labels(self, automatic, user, final):
        """The labels of one event, capped; the labels left out are named once, for final events."""
        labels, dropped = _play.cap_labels(automatic, user)
        if dropped and final:
            self._warn_once('%d labels are more than the %d Flashduty accepts: the labels from flashduty_labels and label_vars '
                            'were kept and these were left out: %s' % (len(labels) + len(dropped), _play.MAX_LABELS, ', '.join(dropped)),
                            key=('dropped', tuple(dropped)))
        return labels

    def _event(self, change, status, description, labels, event_time):
        try:
            event, warnings = build_event(status, change.key, change.title, description, change.link, labels, event_time)
        except FlashdutyError as exc:
            if exc.field != 'link' or not change.link:
                self._warn_once('%s; change %s is not reported' % (exc.message, change.key), key=('event', exc.message))
                return None
            self._warn_once('%s (from flashduty_change_link); the change is reported without a link' % exc.message,
                            key=('link', exc.message))
            change.link = None
            return self._event(change, status, description, labels, event_time)
        for warning in warnings:
            self._warn_once(warning)
        return event


def _pattern(hosts):
    if isinstance(hosts, (list, tuple)):
        return ','.join('%s' % (item,) for item in hosts)
    return '%s' % (hosts,) if hosts is not None else None


def _rank(pair):
    return _play._LABEL_RANK.get(pair[0], len(_play._LABEL_RANK))


def _final_failures(state):
    """Hosts that failed (errors not ignored, not rescued) and hosts unreachable in the play.

    A failure later rescued by a block is taken back from the play's removed hosts by
    the strategy; when that list is available it settles which failures stood.
    """
    removed = set()
    for play in state.batches:
        hosts = getattr(play, '_removed_hosts', None)
        if not isinstance(hosts, list):
            return set(state.failed), set(state.unreachable)
        removed.update(hosts)
    return set(host for host in state.failed if host in removed), set(state.unreachable)
