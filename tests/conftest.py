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
from collection_link import COLLECTIONS_DIR, REPO_ROOT, ansible_environment, ensure_collection_link  # noqa: E402  (tools/ is not a package)

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


@pytest.fixture
def ansible_env(tmp_path):
    """Environment for running ansible-* commands in a subprocess: ``ansible_environment`` of
    tools/collection_link.py (nothing inherited from ``ANSIBLE_*``, ``FLASHDUTY_*`` or the CI variables
    the callback reads, so a test run in GitHub Actions sees the same labels; ``ANSIBLE_CALLBACKS_ENABLED``
    absent: set it in the test that needs it), with ANSIBLE_HOME under this test's ``tmp_path``.
    Tests may change the returned dict freely (it is a new one per test).
    """
    return ansible_environment(tmp_path / "ansible_home")


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
