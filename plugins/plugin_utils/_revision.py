# -*- coding: utf-8 -*-
# Copyright (c) flashcat.flashduty contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Which version of the playbooks ran: the short git commit of the playbook's directory, or the CI's commit.

Private to this collection: not a public API, may change without notice.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess

# Long enough to stay unique in big repositories, short enough for a label someone reads.
SHORT_LENGTH = 12


def _git(directory, *args):
    # GIT_OPTIONAL_LOCKS=0: git status must not take the index lock another git command may be holding.
    env = dict(os.environ, GIT_OPTIONAL_LOCKS='0', LC_ALL='C')
    for name in ('GIT_DIR', 'GIT_WORK_TREE', 'GIT_INDEX_FILE'):
        env.pop(name, None)  # the playbook's own repository, not one the environment points at
    proc = subprocess.run(['git', '-C', directory] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env, timeout=2.0, check=False)
    return proc.stdout.decode('utf-8', 'replace').strip() if proc.returncode == 0 else None


def git_revision(directory):
    """``<short commit>``, with ``-dirty`` as git describe --dirty adds it, for the git work tree holding ``directory``;
    None outside one, without git, or when git does not answer within the timeout."""
    if not directory or not os.path.isdir(directory):
        return None
    try:
        commit = _git(directory, 'rev-parse', '--short=%d' % SHORT_LENGTH, 'HEAD')
        if not commit:
            return None
        # A failed git status (None) is no evidence of changes.
        return commit + ('-dirty' if _git(directory, 'status', '--porcelain', '--untracked-files=no') else '')
    except (OSError, subprocess.SubprocessError):
        return None


def ci_revision(ci_labels):
    """The CI's commit (``ci_commit``), shortened like git's; None when the CI gives none."""
    return ('%s' % ((ci_labels or {}).get('ci_commit') or '',)).strip()[:SHORT_LENGTH] or None
