# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plain Python values from Ansible's variables, on the controller.

Private to this collection: not a public API, may change without notice.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections.abc import Mapping


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
