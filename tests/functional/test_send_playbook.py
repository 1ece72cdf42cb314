"""The playbook flashcat.flashduty.send_change_event, run by its FQCN against the local receiver."""

import subprocess
import sys
from pathlib import Path

PLAYBOOK = "flashcat.flashduty.send_change_event"


def _output(result):
    return f"rc={result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-3000:]}"


def test_sends_one_event_with_url_from_environment(run_playbook, ansible_env, receiver):
    """The command in the docs: `-e title='Deploy 1.2'` reaches Ansible as `title=Deploy 1.2` (shell quotes gone)."""
    env = dict(ansible_env, FLASHDUTY_PUSH_URL=receiver.push_url)
    result = run_playbook([PLAYBOOK, "-e", "change_key=CHG-1", "-e", "change_status=Done", "-e", "title=Deploy 1.2",
                           "-e", "link=https://ci.example.com/jobs/7", "-e", "labels=service=checkout,replicas=3"],
                          env=env)
    assert result.returncode == 0, _output(result)
    (event,) = receiver.events
    assert event["change_key"] == "CHG-1"
    assert event["change_status"] == "Done"
    assert event["title"] == "Deploy 1.2"
    assert event["link"] == "https://ci.example.com/jobs/7"
    assert event["labels"]["service"] == "checkout"
    assert event["labels"]["replicas"] == "3"
    assert receiver.push_url not in result.stdout + result.stderr


def test_vaulted_url_description_event_time_and_no_automatic_labels(run_playbook, ansible_env, receiver, tmp_path):
    """flashduty_push_url vaulted in a vars file given with -e @file; JSON extra vars for the optional fields."""
    password_file = tmp_path / "vault_password"
    password_file.write_text("send-playbook-test\n", encoding="utf-8")
    vaulted = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-vault"), "encrypt_string", "--vault-password-file", str(password_file),
         "--stdin-name", "flashduty_push_url"],
        input=receiver.push_url, env=ansible_env, text=True, capture_output=True, check=True,
    ).stdout
    vault_file = tmp_path / "vault.yml"
    vault_file.write_text("---\n" + vaulted, encoding="utf-8")
    result = run_playbook([PLAYBOOK, "--vault-password-file", password_file, "-e", f"@{vault_file}",
                           "-e", '{"change_key": "CHG-2", "change_status": "Ready", "title": "Rotate certificates",'
                                 ' "description": "All front ends", "event_time": "2030-01-02T03:04:05Z",'
                                 ' "labels": {"team": "edge", "canary": true}, "automatic_labels": false}'])
    assert result.returncode == 0, _output(result)
    (event,) = receiver.events
    assert event["change_status"] == "Ready"
    assert event["description"] == "All front ends"
    assert event["event_time"] == 1893553445
    assert event["labels"] == {"team": "edge", "canary": "true"}


def test_quoted_title_and_stray_words_with_a_description(run_playbook, ansible_env, receiver):
    env = dict(ansible_env, FLASHDUTY_PUSH_URL=receiver.push_url)
    quoted = run_playbook([PLAYBOOK, "-e", "change_key=CHG-5 change_status=Processing", "-e", "title='Deploy 1.2 to web'"],
                          env=env)
    assert quoted.returncode == 0, _output(quoted)
    assert [(e["change_status"], e["title"]) for e in receiver.events] == [("Processing", "Deploy 1.2 to web")]
    ambiguous = run_playbook([PLAYBOOK, "-e", "change_key=CHG-5", "-e", "change_status=Done", "-e", "title=Deploy",
                              "-e", "description=Roll out 1.2"], env=env)
    assert ambiguous.returncode == 2, _output(ambiguous)
    assert "belong to no variable" in ambiguous.stdout and "out 1.2" in ambiguous.stdout, _output(ambiguous)
    assert len(receiver.events) == 1


def test_missing_variables_are_named(run_playbook, receiver):
    result = run_playbook([PLAYBOOK, "-e", "change_status=Done"])
    assert result.returncode == 2, _output(result)
    message = result.stdout
    assert "Missing: -e change_key=..., -e title=.... Usage:" in message, _output(result)
    assert "-e change_status" not in message.split("Missing:")[1].split("Usage:")[0]
    # No endpoint anywhere: the task says so, naming every source it reads, as everywhere else.
    nowhere = run_playbook([PLAYBOOK, "-e", "change_key=CHG-6", "-e", "change_status=Done", "-e", "title=T"])
    assert nowhere.returncode == 2, _output(nowhere)
    assert "push_url: no Flashduty push URL given" in nowhere.stdout, _output(nowhere)
    assert all(source in nowhere.stdout for source in ("flashduty_push_url", "FLASHDUTY_PUSH_URL", "[flashduty] section of ansible.cfg"))
    assert receiver.requests == []


def test_the_push_url_may_come_from_ansible_cfg(run_playbook, ansible_env, receiver, tmp_path):
    config = tmp_path / "ansible.cfg"
    config.write_text("[flashduty]\npush_url = %s\n" % receiver.push_url, encoding="utf-8")
    result = run_playbook([PLAYBOOK, "-e", "change_key=CHG-7", "-e", "change_status=Done", "-e", "title=T"],
                          env=dict(ansible_env, ANSIBLE_CONFIG=str(config)))
    assert result.returncode == 0, _output(result)
    assert [e["change_key"] for e in receiver.events] == ["CHG-7"]
    assert receiver.integration_key not in result.stdout + result.stderr


def test_empty_value_counts_as_missing_and_bad_status_is_named(run_playbook, ansible_env, receiver):
    env = dict(ansible_env, FLASHDUTY_PUSH_URL=receiver.push_url)
    empty = run_playbook([PLAYBOOK, "-e", "change_key=", "-e", "change_status=Done", "-e", "title=T"], env=env)
    assert empty.returncode == 2, _output(empty)
    assert "Missing: -e change_key=...." in empty.stdout, _output(empty)
    bad = run_playbook([PLAYBOOK, "-e", "change_key=CHG-3", "-e", "change_status=Finished", "-e", "title=T"], env=env)
    assert bad.returncode == 2, _output(bad)
    assert "change_status" in bad.stdout and "Finished" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
    labels = run_playbook([PLAYBOOK, "-e", "change_key=CHG-3", "-e", "change_status=Done", "-e", "title=T",
                           "-e", "labels=service"], env=env)
    assert labels.returncode == 2, _output(labels)
    assert "name=value pairs" in labels.stdout, _output(labels)
    assert receiver.requests == []
