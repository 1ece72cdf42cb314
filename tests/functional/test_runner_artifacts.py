"""The AWX/runner guide's advice: a push URL in the job's environment lands in ansible-runner's
``artifacts/<ident>/command`` with its key; injected as an extra variable it does not.

ansible-runner is installed in .venv/newest only: under .venv/oldest the test is skipped.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ansible_runner") is None,
    reason="ansible-runner is not installed in this venv (only .venv/newest has it)",
)

RUNNER_CLI = Path(sys.executable).parent / "ansible-runner"


@pytest.mark.parametrize("injected_as", ["env", "extra_vars"])
def test_where_the_push_url_lands_in_runner_artifacts(tmp_path, ansible_env, receiver, injected_as):
    data_dir = tmp_path / "job"
    (data_dir / "project").mkdir(parents=True)
    (data_dir / "project" / "site.yml").write_text(textwrap.dedent("""\
        - name: Deploy checkout
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Do the work
              ansible.builtin.debug:
                msg: deploying
        """), encoding="utf-8")
    envvars = {"ANSIBLE_COLLECTIONS_PATH": ansible_env["ANSIBLE_COLLECTIONS_PATH"],
               "ANSIBLE_CALLBACKS_ENABLED": "flashcat.flashduty.change_events", "JOB_ID": "7", "AWX_HOST": "https://awx.example.com"}
    extravars = {"awx_job_id": 7}
    if injected_as == "env":
        envvars["FLASHDUTY_PUSH_URL"] = receiver.push_url  # the credential type's `env` injector
    else:
        extravars["flashduty_push_url"] = receiver.push_url  # the guide's `extra_vars` injector
    (data_dir / "env").mkdir()
    (data_dir / "env" / "envvars").write_text(yaml.safe_dump(envvars), encoding="utf-8")
    (data_dir / "env" / "extravars").write_text(yaml.safe_dump(extravars), encoding="utf-8")
    os.chmod(data_dir / "env" / "envvars", 0o600)
    os.chmod(data_dir / "env" / "extravars", 0o600)
    env = {k: v for k, v in ansible_env.items() if k != "ANSIBLE_COLLECTIONS_PATH"}
    result = subprocess.run([str(RUNNER_CLI), "run", str(data_dir), "--playbook", "site.yml", "--ident", "job-7"],
                            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert [event["change_status"] for event in receiver.wait_for_events(2, timeout=10)] == ["Processing", "Done"]
    command = (data_dir / "artifacts" / "job-7" / "command").read_text(encoding="utf-8")
    others = "".join(path.read_text(encoding="utf-8", errors="replace") for path in (data_dir / "artifacts").rglob("*")
                     if path.is_file() and path.name != "command")
    assert receiver.integration_key not in others + result.stdout + result.stderr
    if injected_as == "env":
        assert receiver.integration_key in command  # ansible-runner records the job's environment: the leak the guide names
    else:
        assert receiver.integration_key not in command
