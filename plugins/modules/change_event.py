#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: change_event
short_description: Send a change event to Flashduty
version_added: 1.0.0
description:
  - Sends one change event to a Flashduty B(Custom Change Events) integration, so that Flashduty can show
    the change next to the alerts and incidents that follow it.
  - Events with the same O(change_key) are merged by Flashduty into one change, for example a V(Processing)
    event when a deployment starts and a V(Done) event when it ends.
  - The event is sent from the controller by the action plugin of the same name, so no C(delegate_to) is
    needed. Use C(run_once) to send one event for a play rather than one per host.
  - The endpoint comes from O(push_url) or O(integration_key), else from the variables C(flashduty_push_url),
    C(flashduty_integration_key) and C(flashduty_api_url) (which may be vaulted), else from the environment
    variables E(FLASHDUTY_PUSH_URL), E(FLASHDUTY_INTEGRATION_KEY) and E(FLASHDUTY_API_URL).
  - The variable C(flashduty_enabled) set to V(false) turns the task into a no-op.
author:
  - Flashcat (@flashcat)
options:
  change_key:
    description:
      - Identifies the change. Events with the same key are merged into one change in Flashduty.
      - Usually a ticket number or a deployment identifier.
      - At most 256 characters; a longer key fails the task (shortened, two keys could merge different changes).
      - Defaults to the variable C(flashduty_change_key) when that is set.
    type: str
    required: true
  change_status:
    description:
      - Where the change stands. V(Planned) when it is submitted, V(Ready) when it is about to start
        (may carry a future O(event_time)), V(Processing) while it runs, V(Canceled) when it was cancelled
        or rolled back, V(Done) when it completed.
    type: str
    required: true
    choices: [Planned, Ready, Processing, Canceled, Done]
    aliases: [status]
  title:
    description:
      - Title of the change, as the on-call engineer will see it in the incident's change history.
      - Longer than 512 characters is truncated, with a warning.
      - "Defaults to the variable C(flashduty_change_title) when that is set, else, with O(automatic_labels),
        to the title the P(flashcat.flashduty.change_events#callback) callback gives the play
        (C(Ansible: deploy on web1, web2 and web3)). Required otherwise."
    type: str
  description:
    description:
      - What the change does. Longer than 2048 characters is truncated, with a warning.
      - The integration key or push URL found in the description, the title, the change key, the link or a label is
        masked as C(****), with one warning, before the event is shown, sent or spooled.
    type: str
  link:
    description:
      - URL of the change's details, such as the CI job, AWX job or ticket.
      - Defaults to the variable C(flashduty_change_link) when that is set.
    type: str
  labels:
    description:
      - Labels that relate the change to alerts and incidents, such as C(service), C(cluster), C(team) or C(owner).
      - Merged over the variable C(flashduty_labels); the task's labels win.
      - Names are sent in Prometheus style, letters, digits and underscores not starting with a digit; other names are
        rewritten, with one warning naming the old and new names (C(k8s-cluster) becomes C(k8s_cluster),
        C(app.kubernetes.io/name) becomes C(app_kubernetes_io_name), C(2fa) becomes C(_2fa)). The task fails on a name
        that is empty or longer than 128 characters once rewritten, or that two labels share once rewritten.
        At most 50 labels.
      - Values of any type become strings; booleans as V(true)/V(false), lists and dictionaries as compact JSON.
        A null value leaves the label out. Values longer than 2048 characters are truncated, with a warning.
    type: dict
  event_time:
    description:
      - When the change happened, as Unix time in seconds or an ISO 8601 time such as V(2026-11-26T17:40:00Z)
        (times without a zone are taken as UTC).
      - A number of 10^11 or more (seconds after the year 5138) is refused as milliseconds; any ISO 8601 time is taken.
      - Defaults to the time the task runs.
    type: raw
  automatic_labels:
    description:
      - "Add the labels the P(flashcat.flashduty.change_events#callback) callback gives a play, computed by the
        same code from the task's play: C(play), C(hosts), C(groups), C(host_count), C(playbook), C(host_pattern),
        C(limit), C(tags), C(skip_tags), C(check_mode), C(controller_user), C(controller_host), C(ansible_version)
        and the C(ci_*) labels of a detected CI system."
      - Without O(link) or C(flashduty_change_link), the link then points to the detected CI or AWX/AAP job.
      - The task's O(labels) and C(flashduty_labels) win over automatic labels of the same name; when the
        total would pass 50, the least important automatic labels are left out with a warning.
      - The same default as the role's O(flashcat.flashduty.change#role:main:flashduty_change_automatic_labels)
        and the C(flashcat.flashduty.send_change_event) playbook's C(automatic_labels). Set to V(false)
        to send only O(labels) and C(flashduty_labels).
      - Needs the action plugin (the normal case); the module run on its own sends the event without them, with a warning.
    type: bool
    default: true
  total_timeout:
    description:
      - The longest, in seconds, the task spends on the event, retries and waits included, in wall-clock time
        whatever the server does. When the next attempt could not finish within it, the task fails with the
        last error, naming this limit.
      - A C(Retry-After) longer than what is left ends the retries too.
      - More than 0, at most 3600. An out-of-range O(timeout), O(retries) or O(total_timeout) fails the task with a
        message naming the option and its range, before anything is sent.
    type: float
    default: 30
extends_documentation_fragment:
  - flashcat.flashduty.connection
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: Validates the event and returns it in RV(event) without sending it.
  diff_mode:
    support: none
  platform:
    platforms: all
seealso:
  - plugin: flashcat.flashduty.change_events
    plugin_type: callback
    description: Reports every play as a change, with no task to add.
"""

EXAMPLES = r"""
- name: Tell Flashduty the deploy finished (push URL from the vaulted flashduty_push_url variable)
  flashcat.flashduty.change_event:
    change_key: "deploy-{{ app_version }}"
    change_status: Done
    title: "Deploy checkout {{ app_version }}"
    labels:
      service: checkout
      replicas: 3
      canary: true
  run_once: true

- name: Open a change before a risky step, with an explicit push URL
  flashcat.flashduty.change_event:
    push_url: "{{ vault_flashduty_push_url }}"
    change_key: "{{ ticket }}"
    status: Processing
    title: "Migrate orders database ({{ ticket }})"
    description: "Schema migration 42 on {{ ansible_play_hosts | length }} hosts"
    link: "https://tickets.example.com/{{ ticket }}"
    labels:
      service: orders
      team: storage
  run_once: true

- name: Report through a private deployment with an integration key
  flashcat.flashduty.change_event:
    integration_key: "{{ vault_flashduty_integration_key }}"
    api_url: https://flashduty.example.internal
    ca_path: /etc/pki/tls/certs/internal-ca.pem
    change_key: CHG-1234
    change_status: Ready
    title: Rotate TLS certificates
    event_time: "2026-12-01T02:00:00Z"
  run_once: true

- name: Report a failed change as canceled
  block:
    - name: Deploy
      ansible.builtin.include_tasks: deploy.yml
  rescue:
    - name: Tell Flashduty the deploy was rolled back
      flashcat.flashduty.change_event:
        change_key: "deploy-{{ app_version }}"
        change_status: Canceled
        title: "Deploy checkout {{ app_version }}"
        description: "Failed on {{ ansible_failed_task.name }}; rolled back"
      run_once: true
"""

RETURN = r"""
event:
  description:
    - The change event as sent to Flashduty (or, in check mode, as it would be sent). Never holds the integration key.
  returned: when the task's options were valid
  type: dict
  sample:
    change_status: Done
    change_key: deploy-1.2.0
    title: Deploy checkout 1.2.0
    event_time: 1795714800
    labels:
      service: checkout
      replicas: "3"
      canary: "true"
request_id:
  description: Flashduty's identifier for the request; quote it to Flashduty support.
  returned: when Flashduty answered
  type: str
  sample: 0f5a9c3e2b7d4e1f8a6b5c4d3e2f1a0b
status_code:
  description: HTTP status of Flashduty's last answer.
  returned: when Flashduty answered
  type: int
  sample: 200
endpoint:
  description: The URL the event was sent to, with the integration key masked.
  returned: always, once the endpoint is known
  type: str
  sample: https://api.flashcat.cloud/event/push/change/standard?integration_key=****
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.flashcat.flashduty.plugins.module_utils._client import run_change_event
from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import (
    CHANGE_EVENT_MUTUALLY_EXCLUSIVE,
    change_event_argument_spec,
    endpoint_settings,
)


def main():
    module = AnsibleModule(argument_spec=change_event_argument_spec(), mutually_exclusive=CHANGE_EVENT_MUTUALLY_EXCLUSIVE,
                           supports_check_mode=True)
    if module.params['automatic_labels']:
        module.warn('automatic_labels: needs the play, which only the action plugin on the controller has; sent without them')
    result = run_change_event(module.params, module.check_mode, endpoint_settings(os.environ, 'environment'))
    for warning in result.pop('warnings', []):
        module.warn(warning)
    if result.pop('failed', False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
