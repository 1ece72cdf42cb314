"""The change_events callback under ansible-runner, the engine of AWX/AAP.

AWX runs a job as ``ansible-runner`` over a private data directory: the project in
``project/``, the inventory in ``inventory/``, job environment (credentials injected by a
custom credential type, ``ANSIBLE_CALLBACKS_ENABLED`` from the job template) in
``env/envvars``. This test lays out the same directory and runs ``ansible-runner run``.

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


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


@pytest.mark.parametrize("enabled_by", ["envvars", "project_ansible_cfg"])
def test_job_with_callback_enabled_reports_the_play(tmp_path, ansible_env, receiver, enabled_by):
    """``envvars``: ANSIBLE_CALLBACKS_ENABLED in the job environment (AWX's "Extra Environment Variables", or
    the execution environment image). ``project_ansible_cfg``: the recipe of docs/docsite/rst/awx_aap.rst, for
    AWX refuses ANSIBLE_* variables in credential injectors: the project's ansible.cfg enables the callback
    switched off, and the Flashduty credential injects FLASHDUTY_PUSH_URL and FLASHDUTY_ENABLED=true.
    """
    data_dir = tmp_path / "job"
    _write(data_dir / "project" / "site.yml", """
        - name: Deploy checkout
          hosts: web
          gather_facts: false
          tasks:
            - name: Do the work
              ansible.builtin.debug:
                msg: deploying on {{ inventory_hostname }}
        """)
    _write(data_dir / "inventory" / "hosts", f"""
        [web]
        web1
        web2

        [web:vars]
        ansible_connection=local
        ansible_python_interpreter={sys.executable}
        """)
    # What AWX puts in a job's environment, and what the Flashduty credential injects.
    envvars = {
        "FLASHDUTY_PUSH_URL": receiver.push_url,
        "ANSIBLE_COLLECTIONS_PATH": ansible_env["ANSIBLE_COLLECTIONS_PATH"],
        "JOB_ID": "4242",
        "AWX_HOST": "https://awx.example.com",
    }
    if enabled_by == "envvars":
        envvars["ANSIBLE_CALLBACKS_ENABLED"] = "flashcat.flashduty.change_events"
    else:
        envvars["FLASHDUTY_ENABLED"] = "true"
        _write(data_dir / "project" / "ansible.cfg", """
            [defaults]
            callbacks_enabled = flashcat.flashduty.change_events

            [flashduty]
            # Off unless the job's Flashduty credential injects FLASHDUTY_ENABLED=true.
            enabled = false
            """)
    (data_dir / "env").mkdir()
    (data_dir / "env" / "envvars").write_text(yaml.safe_dump(envvars), encoding="utf-8")
    os.chmod(data_dir / "env" / "envvars", 0o600)
    (data_dir / "env" / "extravars").write_text(yaml.safe_dump({"awx_job_id": 4242,
                                                                "awx_job_template_name": "Deploy checkout"}),
                                                encoding="utf-8")

    env = {k: v for k, v in ansible_env.items() if k != "ANSIBLE_COLLECTIONS_PATH"}
    result = subprocess.run(
        [str(RUNNER_CLI), "run", str(data_dir), "--playbook", "site.yml", "--ident", "job-4242"],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False,
    )
    output = f"rc={result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    assert result.returncode == 0, output
    assert (data_dir / "artifacts" / "job-4242" / "rc").read_text(encoding="utf-8").strip() == "0"
    try:
        events = receiver.wait_for_events(2, timeout=10)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{output}")
    assert [e["change_status"] for e in events] == ["Processing", "Done"], (events, output)
    assert events[0]["change_key"] == events[1]["change_key"]
    assert "Deploy checkout" in events[0]["title"]
    # The AWX job is the change's link and is in its labels.
    assert events[1]["link"] == "https://awx.example.com/#/jobs/playbook/4242"
    assert events[1]["labels"]["ci_system"] == "awx"
    assert events[1]["labels"]["ci_job_id"] == "4242"
    # The job's output and events (what AWX stores and shows) never hold the integration key.
    # (artifacts/<ident>/command records the job's environment, injected secret included: that is
    # ansible-runner's own record of its input, which AWX keeps to itself.)
    artifacts = "".join(p.read_text(encoding="utf-8", errors="replace")
                        for p in (data_dir / "artifacts").rglob("*") if p.is_file() and p.name != "command")
    assert receiver.push_url not in result.stdout + result.stderr + artifacts


def test_job_without_the_credential_is_silent(tmp_path, ansible_env, receiver):
    """With the recipe's ansible.cfg, a job template without the Flashduty credential reports nothing, quietly."""
    data_dir = tmp_path / "job"
    _write(data_dir / "project" / "site.yml", """
        - name: Rotate logs
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Do the work
              ansible.builtin.debug:
                msg: rotating
        """)
    _write(data_dir / "project" / "ansible.cfg", """
        [defaults]
        callbacks_enabled = flashcat.flashduty.change_events

        [flashduty]
        enabled = false
        """)
    (data_dir / "env").mkdir()
    (data_dir / "env" / "envvars").write_text(
        yaml.safe_dump({"ANSIBLE_COLLECTIONS_PATH": ansible_env["ANSIBLE_COLLECTIONS_PATH"]}), encoding="utf-8")
    env = {k: v for k, v in ansible_env.items() if k != "ANSIBLE_COLLECTIONS_PATH"}
    result = subprocess.run(
        [str(RUNNER_CLI), "run", str(data_dir), "--playbook", "site.yml"],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flashduty" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    assert receiver.requests == []
