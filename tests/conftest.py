"""Shared pytest set-up for tests/unit and tests/functional.

Importing this file (pytest does it before collecting any test):
- makes ``.build/collections/ansible_collections/flashcat/flashduty`` a symlink to the
  repo root and puts ``.build/collections`` on ``sys.path``, so that
  ``import ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty`` works;
- exports ``ANSIBLE_COLLECTIONS_PATH=<repo>/.build/collections`` for in-process Ansible code;
- puts ``tools/`` on ``sys.path`` (``import flashduty_receiver``);
- removes ``FLASHDUTY_*`` variables from the test process, so a developer's shell
  (a real push URL, say) never leaks into a test.

Fixtures: ``repo_root``, ``ansible_env``, ``receiver``, ``run_playbook``.
"""

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS_DIR))
from collection_link import COLLECTIONS_DIR, REPO_ROOT, ensure_collection_link  # noqa: E402  (tools/ is not a package)

# The venv running pytest: ansible-playbook and friends sit next to its python.
VENV_BIN = Path(sys.executable).parent

ensure_collection_link()
if str(COLLECTIONS_DIR) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_DIR))
os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS_DIR)
for _name in [n for n in os.environ if n.startswith("FLASHDUTY_")]:
    del os.environ[_name]


@pytest.fixture(scope="session")
def repo_root():
    """Absolute path of the repository (= collection) root."""
    return REPO_ROOT


# What the callback reads to detect a CI system (plugins/plugin_utils/_play.py, detect_ci).
CI_VARIABLES = frozenset((
    "GITHUB_ACTIONS", "GITHUB_RUN_ID", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ATTEMPT", "GITHUB_WORKFLOW",
    "GITHUB_REF", "GITHUB_REF_NAME", "GITHUB_SHA", "GITHUB_ACTOR", "GITLAB_CI", "CI_JOB_URL", "CI_JOB_ID", "CI_JOB_NAME",
    "CI_PROJECT_PATH", "CI_COMMIT_REF_NAME", "CI_COMMIT_SHA", "GITLAB_USER_LOGIN", "JENKINS_URL", "BUILD_URL", "BUILD_NUMBER",
    "JOB_NAME", "GIT_BRANCH", "BRANCH_NAME", "GIT_COMMIT", "BUILD_USER_ID", "JOB_ID", "AWX_HOST", "TOWER_HOST", "PROJECT_REVISION",
))


@pytest.fixture
def ansible_env(tmp_path):
    """Environment for running ansible-* commands in a subprocess.

    Inherited ``ANSIBLE_*`` and ``FLASHDUTY_*`` variables, and those by which the callback
    detects a CI system (a test run in GitHub Actions must see the same labels), are dropped, then: PATH has the
    venv's bin first, the collection comes from ``.build/collections``, no colour, no host
    key checking, no retry files, and ANSIBLE_HOME and the local/remote temp dirs live
    under this test's ``tmp_path``. ``ANSIBLE_CALLBACKS_ENABLED`` is deliberately absent
    (an empty value crashes ansible-core 2.19+): set it in the test that needs it.
    Tests may change the returned dict freely (it is a new one per test).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "FLASHDUTY_")) and k not in CI_VARIABLES}
    ansible_home = tmp_path / "ansible_home"
    ansible_home.mkdir(exist_ok=True)
    env.update(
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_DIR),
        ANSIBLE_HOME=str(ansible_home),
        ANSIBLE_LOCAL_TEMP=str(ansible_home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(ansible_home / "remote_tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    return env


@pytest.fixture
def receiver():
    """A started local Flashduty-compatible receiver (tools/flashduty_receiver.py) on a free
    loopback port. It accepts a random 32-hex integration key; ``receiver.push_url`` is the URL to push to.
    Stopped when the test ends.
    """
    from flashduty_receiver import Receiver

    rcv = Receiver(integration_key=secrets.token_hex(16), port=0, quiet=True)
    rcv.start()
    try:
        yield rcv
    finally:
        rcv.stop()


@pytest.fixture
def run_playbook(ansible_env, tmp_path):
    """Return ``run(args, env=None, cwd=None, timeout=120) -> subprocess.CompletedProcess``.

    Runs ``ansible-playbook`` from the venv running pytest with ``args`` (a list), text mode,
    stdout/stderr captured, no stdin. ``env`` defaults to this test's ``ansible_env`` and
    ``cwd`` to ``tmp_path``. The return code is not checked. If the run outlives
    ``timeout`` seconds, its whole process group is killed and the test fails with the
    output so far.
    """
    playbook_cmd = str(VENV_BIN / "ansible-playbook")

    def run(args, env=None, cwd=None, timeout=120):
        cmd = [playbook_cmd, *(str(a) for a in args)]
        proc = subprocess.Popen(
            cmd,
            env=ansible_env if env is None else env,
            cwd=str(tmp_path if cwd is None else cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so a timeout kills the forks too
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(
                f"ansible-playbook timed out after {timeout}s: {cmd}\n"
                f"--- stdout (tail) ---\n{stdout[-4000:]}\n--- stderr (tail) ---\n{stderr[-4000:]}"
            )
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)

    return run
