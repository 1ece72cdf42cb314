"""The role flashcat.flashduty.change in real playbooks, against the local receiver.

Each test runs ``ansible-playbook`` (from the venv running pytest: ansible-core 2.16 under
.venv/oldest, the newest under .venv/newest) and asserts on what the receiver accepted.
"""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

VAULT_PASSWORD = "role-test-vault-password"
GENERATED_KEY = re.compile(r"^ansible-[A-Za-z0-9_.-]+-\d{8}T\d{6}Z-[0-9a-f]{8}$")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path, ansible_env, receiver):
    """A project dir: inventory (web: web1, web2; db: db1, all local) with the push URL vaulted in group_vars."""
    _write(tmp_path / "vault_password", VAULT_PASSWORD + "\n")
    vaulted = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-vault"), "encrypt_string", "--vault-password-file",
         str(tmp_path / "vault_password"), "--stdin-name", "flashduty_push_url"],
        input=receiver.push_url, env=ansible_env, text=True, capture_output=True, check=True,
    ).stdout
    inventory = tmp_path / "inventory"
    _write(inventory / "hosts.yml", f"""
        all:
          vars:
            ansible_connection: local
            ansible_python_interpreter: {sys.executable}
          children:
            web:
              hosts:
                web1:
                web2:
            db:
              hosts:
                db1:
        """)
    _write(inventory / "group_vars" / "all" / "vault.yml", "---\n" + vaulted)
    _write(inventory / "group_vars" / "all" / "labels.yml", """
        flashduty_labels:
          team: payments
        """)
    return tmp_path


@pytest.fixture
def play(project, run_playbook):
    """``play(text, *args)``: write the playbook text to site.yml and run it with the project's inventory."""

    def run(text, *args):
        playbook = _write(project / "site.yml", text)
        return run_playbook(["-i", project / "inventory", "--vault-password-file", project / "vault_password",
                             *args, playbook])

    return run


def _output(result):
    return f"rc={result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-3000:]}"


START_FINISH = """
    - name: Deploy web
      hosts: web
      gather_facts: false
      tasks:
        - name: Open the change
          ansible.builtin.include_role:
            name: flashcat.flashduty.change
            tasks_from: start
          vars:
            flashduty_change_labels:
              service: checkout
        - name: Do the work
          ansible.builtin.debug:
            msg: working on {{ inventory_hostname }}
        - name: Close the change
          ansible.builtin.include_role:
            name: flashcat.flashduty.change
            tasks_from: finish
          vars:
            flashduty_change_labels:
              service: checkout

    - name: Migrate db
      hosts: db
      gather_facts: false
      tasks:
        - name: Open the change
          ansible.builtin.include_role:
            name: flashcat.flashduty.change
            tasks_from: start
        - name: Close the change
          ansible.builtin.include_role:
            name: flashcat.flashduty.change
            tasks_from: finish
    """


def test_start_and_finish_send_one_change_per_play(play, receiver):
    result = play(START_FINISH)
    assert result.returncode == 0, _output(result)
    events = receiver.events
    assert [e["change_status"] for e in events] == ["Processing", "Done", "Processing", "Done"], events
    web_open, web_done, db_open, db_done = events
    # One event per play (run_once), start and finish under the same generated key, a new key per play.
    assert web_open["change_key"] == web_done["change_key"]
    assert db_open["change_key"] == db_done["change_key"]
    assert web_open["change_key"] != db_open["change_key"]
    assert GENERATED_KEY.match(web_open["change_key"]), web_open["change_key"]
    assert web_open["change_key"].startswith("ansible-Deploy-web-")
    assert web_open["title"] == "Ansible: Deploy web on web1 and web2"
    assert db_done["title"] == "Ansible: Migrate db on db1"
    # flashduty_labels (group_vars), the role's own labels, and the automatic ones.
    assert web_open["labels"]["team"] == "payments"
    assert web_open["labels"]["service"] == "checkout"
    assert "service" not in db_open["labels"]
    assert "Deploy web" in web_open["labels"].values(), web_open["labels"]
    assert "description" not in web_done
    assert isinstance(web_open["event_time"], int)


def test_rescue_reports_canceled_with_the_failure(play, receiver):
    result = play("""
        - name: Deploy web
          hosts: web
          gather_facts: false
          tasks:
            - name: Open the change
              ansible.builtin.include_role:
                name: flashcat.flashduty.change
                tasks_from: start
            - name: Deploy, and report a failure as Canceled
              block:
                - name: Install the release
                  ansible.builtin.fail:
                    msg: release 1.2.3 not found
              rescue:
                - name: Report the change as canceled
                  ansible.builtin.include_role:
                    name: flashcat.flashduty.change
                    tasks_from: finish
                  vars:
                    flashduty_change_status: Canceled
                - name: Fail the play after reporting
                  ansible.builtin.fail:
                    msg: deploy failed
            - name: Close the change
              ansible.builtin.include_role:
                name: flashcat.flashduty.change
                tasks_from: finish
        """)
    assert result.returncode == 2, _output(result)
    events = receiver.events
    assert [e["change_status"] for e in events] == ["Processing", "Canceled"], events
    assert events[0]["change_key"] == events[1]["change_key"]
    assert events[1]["description"].startswith('Task "Install the release" failed on web1: release 1.2.3 not found')


def test_main_entry_point_explicit_options_and_roles_keyword(play, receiver):
    result = play("""
        - name: Release checkout
          hosts: web
          gather_facts: false
          roles:
            - role: flashcat.flashduty.change
              flashduty_change_status: Ready
              flashduty_change_key: CHG-42
              flashduty_change_title: Release checkout 2.0
              flashduty_change_description: Blue/green switch
              flashduty_change_link: https://tickets.example.com/CHG-42
              flashduty_change_labels:
                service: checkout
                replicas: 3
                canary: true
                dropped: null
          tasks:
            - name: Report the release done, with no automatic labels
              ansible.builtin.include_role:
                name: flashcat.flashduty.change
              vars:
                flashduty_change_status: Done
                flashduty_change_key: CHG-42
                flashduty_change_automatic_labels: false
        """)
    assert result.returncode == 0, _output(result)
    ready, done = receiver.events
    assert ready["change_status"] == "Ready" and done["change_status"] == "Done"
    assert ready["change_key"] == done["change_key"] == "CHG-42"
    assert ready["title"] == "Release checkout 2.0"
    assert done["title"] == "Ansible: Release checkout"
    assert ready["description"] == "Blue/green switch"
    assert ready["link"] == "https://tickets.example.com/CHG-42"
    assert {k: ready["labels"][k] for k in ("service", "replicas", "canary", "team")} == {
        "service": "checkout", "replicas": "3", "canary": "true", "team": "payments"}
    assert "dropped" not in ready["labels"]
    # Without automatic labels only flashduty_labels remain; with them there are more.
    assert done["labels"] == {"team": "payments"}
    assert set(ready["labels"]) > {"service", "replicas", "canary", "team"}


def test_main_without_status_fails_validation(play, receiver):
    result = play("""
        - name: Release
          hosts: web
          gather_facts: false
          tasks:
            - name: Report
              ansible.builtin.include_role:
                name: flashcat.flashduty.change
        """)
    assert result.returncode == 2, _output(result)
    assert "flashduty_change_status" in result.stdout
    assert "required" in result.stdout
    assert receiver.events == []


def test_finish_rejects_a_status_that_does_not_close(play, receiver):
    result = play("""
        - name: Release
          hosts: web
          gather_facts: false
          tasks:
            - name: Close with a wrong status
              ansible.builtin.include_role:
                name: flashcat.flashduty.change
                tasks_from: finish
              vars:
                flashduty_change_status: Processing
        """)
    assert result.returncode == 2, _output(result)
    assert "flashduty_change_status" in result.stdout
    assert "Done, Canceled" in result.stdout
    assert receiver.events == []


def test_muted_and_check_mode_send_nothing(play, receiver):
    muted = play("""
        - name: Muted
          hosts: web
          gather_facts: false
          vars:
            flashduty_enabled: false
          tasks:
            - name: Open the change
              ansible.builtin.include_role:
                name: flashcat.flashduty.change
                tasks_from: start
        """)
    assert muted.returncode == 0, _output(muted)
    checked = play("""
        - name: Checked
          hosts: web
          gather_facts: false
          tasks:
            - name: Open the change
              ansible.builtin.include_role:
                name: flashcat.flashduty.change
                tasks_from: start
        """, "--check")
    assert checked.returncode == 0, _output(checked)
    assert receiver.events == []
    assert receiver.requests == []


def test_argument_specs_render_and_match_the_tasks(repo_root, ansible_env):
    """ansible-doc renders the three entry points; every option the tasks read is documented."""
    doc = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-t", "role", "--json",
                          "flashcat.flashduty.change"], env=ansible_env, text=True, capture_output=True, check=False)
    assert doc.returncode == 0, doc.stderr
    entry_points = json.loads(doc.stdout)["flashcat.flashduty.change"]["entry_points"]
    assert set(entry_points) == {"main", "start", "finish"}
    assert entry_points["main"]["options"]["flashduty_change_status"]["required"] is True
    assert entry_points["finish"]["options"]["flashduty_change_status"]["default"] == "Done"
    assert "flashduty_change_status" not in entry_points["start"]["options"]
    documented = set().union(*(set(ep["options"]) for ep in entry_points.values()))
    tasks = "\n".join(p.read_text(encoding="utf-8") for p in sorted((repo_root / "roles/change/tasks").glob("*.yml")))
    used = set(re.findall(r"\b(flashduty_change_[a-z_]+)\b", tasks))
    assert used == documented, (used, documented)
    # No role defaults: they would leak into plays that list the role under `roles:` (see defaults/main.yml).
    assert yaml.safe_load((repo_root / "roles/change/defaults/main.yml").read_text(encoding="utf-8")) is None
    readme = (repo_root / "roles/change/README.md").read_text(encoding="utf-8")
    for option in documented:
        assert f"`{option}`" in readme, option
