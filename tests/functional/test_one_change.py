"""One deploy, one change: the callback, the task, the role and the collection's playbooks together.

Real ansible-playbook runs with the change_events callback enabled against the local receiver,
counting change keys and final statuses. The role example is taken from the guide
(docs/docsite/rst/task_and_role.rst) and run as written.
"""
# pylint: disable=missing-function-docstring,redefined-outer-name,import-error

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rst_blocks import code_blocks

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CALLBACK = "flashcat.flashduty.change_events"
VAULT_PASSWORD = "one change"
NO_INVENTORY_WARNINGS = ("No inventory was parsed", "provided hosts list is empty")


def final_statuses(events):
    """{change_key: [statuses in arrival order]}: one key per change Flashduty shows."""
    found = {}
    for event in events:
        found.setdefault(event["change_key"], []).append(event["change_status"])
    return found


def rst_block(path, marker):
    """The body of the ``.. code-block::`` in ``path`` whose text contains ``marker``."""
    return next(block.body for block in code_blocks(path) if marker in block.body)


def output(proc):
    return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


@pytest.fixture
def project(tmp_path, receiver, ansible_env):
    """An inventory (web1, web2 on the local machine) with the receiver's push URL vaulted in group_vars/all."""
    root = tmp_path / "project"
    (root / "inventory" / "group_vars" / "all").mkdir(parents=True)
    (root / "inventory" / "hosts.yml").write_text(textwrap.dedent("""\
        ---
        all:
          vars:
            ansible_connection: local
            ansible_python_interpreter: "{{ ansible_playbook_python }}"
          children:
            web:
              hosts:
                web1:
                web2:
        """), encoding="utf-8")
    (root / "vault-password").write_text(VAULT_PASSWORD + "\n", encoding="utf-8")
    vaulted = subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(root / "vault-password"),
                              "--stdin-name", "flashduty_push_url"], input=receiver.push_url, env=ansible_env, cwd=root,
                             capture_output=True, text=True, check=True).stdout
    (root / "inventory" / "group_vars" / "all" / "vault.yml").write_text("---\n" + vaulted, encoding="utf-8")
    return root


@pytest.fixture
def cb_env(ansible_env, tmp_path):
    return dict(ansible_env, ANSIBLE_CALLBACKS_ENABLED=CALLBACK, FLASHDUTY_SPOOL_DIR=str(tmp_path / "spool"))


def test_send_change_event_playbook_is_the_only_change(run_playbook, cb_env, receiver, tmp_path):
    """The CI recipe: the playbook with the callback on sends release-123 and nothing else, and no inventory warnings."""
    env = dict(cb_env, FLASHDUTY_PUSH_URL=receiver.push_url)
    proc = run_playbook(["-i", "localhost,", "flashcat.flashduty.send_change_event", "-e", "change_key=release-123",
                         "-e", "change_status=Done", "-e", "title='Deploy 1.2'"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert final_statuses(receiver.events) == {"release-123": ["Done"]}
    for warning in NO_INVENTORY_WARNINGS:
        assert warning not in proc.stdout + proc.stderr
    assert receiver.integration_key not in proc.stdout + proc.stderr


def test_role_block_rescue_example_ends_as_the_role_said(run_playbook, cb_env, receiver, project):
    """The guide's start / rescue finish Canceled / fail example: one change, CHG-900, ending Canceled."""
    example = rst_block(REPO_ROOT / "docs" / "docsite" / "rst" / "task_and_role.rst", "Close the change as canceled")
    (project / "deploy.yml").write_text("---\n" + example, encoding="utf-8")
    proc = run_playbook(["-i", "inventory/hosts.yml", "deploy.yml", "--vault-password-file", "vault-password",
                         "-e", "ticket=CHG-900", "-e", "app_version=1.2.0"], env=cb_env, cwd=project)
    assert proc.returncode == 2, output(proc)  # the play fails after reporting, as the example says
    assert "reported as canceled" in proc.stdout
    changes = final_statuses(receiver.events)
    assert list(changes) == ["CHG-900"], changes
    assert changes["CHG-900"][-1] == "Canceled"
    assert "Done" not in changes["CHG-900"]


def test_a_task_sent_change_is_not_reopened_by_later_plays(run_playbook, cb_env, receiver, project):
    """A change key a task closed stays closed when a later play of the run carries the same key; others go on."""
    (project / "two_plays.yml").write_text(textwrap.dedent("""\
        ---
        - name: Deploy
          hosts: web
          gather_facts: false
          vars:
            flashduty_change_key: CHG-901
          tasks:
            - name: Report the deploy as done
              flashcat.flashduty.change_event:
                change_status: Done
                title: Deploy 1.2.0
              run_once: true
            - name: Work after the report
              ansible.builtin.debug:
                msg: still going

        - name: Verify
          hosts: web
          gather_facts: false
          vars:
            flashduty_change_key: CHG-901
          tasks:
            - name: Look around
              ansible.builtin.debug:
                msg: verifying

        - name: Unrelated
          hosts: web1
          gather_facts: false
          tasks:
            - name: Noop
              ansible.builtin.debug:
                msg: hello
        """), encoding="utf-8")
    proc = run_playbook(["-i", "inventory/hosts.yml", "two_plays.yml", "--vault-password-file", "vault-password"],
                        env=cb_env, cwd=project)
    assert proc.returncode == 0, output(proc)
    changes = final_statuses(receiver.events)
    assert changes.pop("CHG-901") == ["Processing", "Done"]  # the callback's start, then the task's Done; no second Done
    assert list(changes.values()) == [["Processing", "Done"]]  # the unrelated play, reported by the callback as usual


def test_flush_spool_fails_without_a_push_url_then_delivers_with_the_inventory(run_playbook, cb_env, receiver, project):
    receiver.add_fault("blackhole", times=None)
    (project / "site.yml").write_text(textwrap.dedent("""\
        ---
        - name: Deploy
          hosts: web
          gather_facts: false
          tasks:
            - name: Work
              ansible.builtin.debug:
                msg: working
        """), encoding="utf-8")
    spooled = run_playbook(["-i", "inventory/hosts.yml", "site.yml", "--vault-password-file", "vault-password"],
                           env=dict(cb_env, FLASHDUTY_FLUSH_TIMEOUT="1", FLASHDUTY_RETRIES="0"), cwd=project)
    assert spooled.returncode == 0, output(spooled)
    assert receiver.events == []
    receiver.clear_faults()

    # Without the inventory (the command the 1.0.0 docs gave), the push URL is unknown: say so, fail.
    lost = run_playbook(["flashcat.flashduty.flush_spool"], env=cb_env, cwd=project)
    assert lost.returncode == 2, output(lost)
    assert "Spooled events wait for the push URL" in lost.stdout and "-i inventory" in lost.stdout
    assert receiver.events == []

    # The documented command: the inventory and its vault password.
    flushed = run_playbook(["-i", "inventory/hosts.yml", "flashcat.flashduty.flush_spool", "--vault-password-file", "vault-password"],
                           env=cb_env, cwd=project)
    assert flushed.returncode == 0, output(flushed)
    assert list(final_statuses(receiver.events).values()) == [["Processing", "Done"]]  # site.yml's play, nothing of its own
    assert "Flashduty change events: 2 spooled events delivered, 0 left in" in flushed.stdout  # default verbosity
    assert not list(Path(cb_env["FLASHDUTY_SPOOL_DIR"]).glob("*.json"))
    assert receiver.integration_key not in flushed.stdout + flushed.stderr
