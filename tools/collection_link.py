"""Where Ansible and Python find this repository as the collection ``flashcat.flashduty``, and the
clean environment ansible-* commands of the tests and benchmarks run in.

``.build/collections/ansible_collections/flashcat/flashduty`` is a relative symlink to the repo
root (the Makefile's ``collections-link`` target makes the same one). Used by tests/conftest.py
and the scripts in bench/.
"""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS_DIR = REPO_ROOT / ".build" / "collections"
COLLECTION_LINK = COLLECTIONS_DIR / "ansible_collections" / "flashcat" / "flashduty"

# The environment variables by which the callback and the change_event action recognise a CI system
# (detect_ci in plugins/plugin_utils/_play.py; tests/unit/tools/test_collection_link.py fails when the two differ).
CI_VARIABLES = frozenset((
    "AWX_HOST", "TOWER_HOST", "JOB_ID", "PROJECT_REVISION",
    "GITHUB_ACTIONS", "GITHUB_RUN_ID", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ATTEMPT", "GITHUB_WORKFLOW",
    "GITHUB_REF_NAME", "GITHUB_REF", "GITHUB_SHA", "GITHUB_ACTOR",
    "GITLAB_CI", "CI_JOB_URL", "CI_JOB_ID", "CI_JOB_NAME", "CI_PROJECT_PATH", "CI_COMMIT_REF_NAME", "CI_COMMIT_SHA",
    "GITLAB_USER_LOGIN",
    "JENKINS_URL", "BUILD_URL", "BUILD_NUMBER", "JOB_NAME", "GIT_BRANCH", "BRANCH_NAME", "GIT_COMMIT", "BUILD_USER_ID",
))


def ensure_collection_link():
    """Make COLLECTION_LINK a relative symlink to the repo root, atomically (concurrent runs may race)."""
    target = os.path.join("..", "..", "..", "..")
    if COLLECTION_LINK.is_symlink() and os.readlink(COLLECTION_LINK) == target:
        return
    COLLECTION_LINK.parent.mkdir(parents=True, exist_ok=True)
    tmp = COLLECTION_LINK.with_name(f".flashduty.{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, COLLECTION_LINK)


def ansible_environment(home, collections=COLLECTIONS_DIR, drop_prefixes=()):
    """A new environment dict for running ansible-* commands in a subprocess.

    From ``os.environ`` are dropped: ``ANSIBLE_*``, ``FLASHDUTY_*``, CI_VARIABLES (a run from CI must
    report the same labels as one from a laptop) and names starting with any of ``drop_prefixes``. Then
    PATH has the running Python's bin directory first (where the venv's ansible-* commands are), the
    collections come from ``collections``, ANSIBLE_HOME is ``home`` (created) with the local and remote
    temp dirs under it, and there is no colour, no host key checking and no retry files.
    ``ANSIBLE_CALLBACKS_ENABLED`` is absent (an empty value crashes ansible-core 2.19+): callers that
    want a callback set it.
    """
    drop = ("ANSIBLE_", "FLASHDUTY_", *drop_prefixes)
    env = {name: value for name, value in os.environ.items() if not name.startswith(drop) and name not in CI_VARIABLES}
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)]),
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / "remote_tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    return env
