# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # How to reach Flashduty: shared by the change_event task and the change_events callback.
    DOCUMENTATION = r"""
options:
  push_url:
    description:
      - The push URL of a Flashduty B(Custom Change Events) integration, as the Flashduty console shows it,
        for example C(https://api.flashcat.cloud/event/push/change/standard?integration_key=...).
      - The URL carries the integration key, so treat it as a secret and keep it in a vaulted variable.
        It is never shown in output; messages show C(...?integration_key=****).
      - Mutually exclusive with O(integration_key).
    type: str
  integration_key:
    description:
      - The integration key alone; the push URL is then built from O(api_url).
      - A secret, like O(push_url). Mutually exclusive with O(push_url).
    type: str
  api_url:
    description:
      - Base URL of the Flashduty API, used with O(integration_key).
      - Change it for private-cloud or regional deployments.
      - When not set, C(https://api.flashcat.cloud) is used.
    type: str
  timeout:
    description:
      - Seconds each attempt may take, from connecting to the last byte of the answer, in wall-clock time
        whatever the server does (an answer trickled one byte at a time is cut at this deadline too).
      - More than 0, at most 300.
    type: float
    default: 10
  retries:
    description:
      - How many times to retry an event after a transient failure (timeout, connection error,
        HTTP 429 honouring C(Retry-After), 500, 502, 503, 504), with exponential backoff and jitter.
      - Other errors, such as a wrong integration key, fail at once.
      - From 0 to 10.
    type: int
    default: 3
  validate_certs:
    description:
      - Verify the TLS certificate of the Flashduty endpoint.
      - Only set this to V(false) for a private deployment with a certificate you cannot verify; prefer O(ca_path).
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file of CA certificates to verify the endpoint with, instead of the system's.
    type: path
notes:
  - The HTTPS proxy in the C(https_proxy) environment variable is used, except for hosts listed in C(no_proxy).
"""

    # Adds the sources plugins read their options from.
    PLUGINS = r"""
options:
  push_url:
    env:
      - name: FLASHDUTY_PUSH_URL
    ini:
      - section: flashduty
        key: push_url
    vars:
      - name: flashduty_push_url
  integration_key:
    env:
      - name: FLASHDUTY_INTEGRATION_KEY
    ini:
      - section: flashduty
        key: integration_key
    vars:
      - name: flashduty_integration_key
  api_url:
    env:
      - name: FLASHDUTY_API_URL
    ini:
      - section: flashduty
        key: api_url
    vars:
      - name: flashduty_api_url
  timeout:
    env:
      - name: FLASHDUTY_TIMEOUT
    ini:
      - section: flashduty
        key: timeout
  retries:
    env:
      - name: FLASHDUTY_RETRIES
    ini:
      - section: flashduty
        key: retries
  validate_certs:
    env:
      - name: FLASHDUTY_VALIDATE_CERTS
    ini:
      - section: flashduty
        key: validate_certs
  ca_path:
    env:
      - name: FLASHDUTY_CA_PATH
    ini:
      - section: flashduty
        key: ca_path
"""
