"""Functional tests of the flashcat.flashduty.change_events callback: real ansible-playbook runs
against the local receiver (tools/flashduty_receiver.py), asserting exactly what it received.

The playbooks and the inventory live in tests/functional/callback/; each test copies that
directory to its tmp_path and adds what is per-run (the vaulted push URL, extra inventories).
"""
# pylint: disable=missing-function-docstring,redefined-outer-name,import-error

import getpass
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flashduty_receiver import Receiver, closed_port

HERE = Path(__file__).resolve().parent / "callback"
VENV_BIN = Path(sys.executable).parent
VAULT_PASSWORD = "correct horse battery staple"
CALLBACK = "flashcat.flashduty.change_events"
KEY_RE = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{6}-(\d+)$")


# --------------------------------------------------------------------------- helpers

def ansible_version():
    out = subprocess.run([str(VENV_BIN / "python"), "-c", "from ansible.release import __version__; print(__version__)"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


ANSIBLE_VERSION = ansible_version()
CONTROLLER = {"controller_user": getpass.getuser(), "controller_host": socket.gethostname(), "ansible_version": ANSIBLE_VERSION}


def changes(events):
    """{change_key: [events in arrival order]}, sorted by key (= by run, then play index, then host).

    Events of one change arrive in order; different changes go out in parallel, in any order.
    """
    result = {}
    for event in events:
        result.setdefault(event["change_key"], []).append(event)
    return dict(sorted(result.items()))


def flat(events):
    """The events grouped by change (see changes()), as one list."""
    return [event for group in changes(events).values() for event in group]


def statuses(events):
    return {key: [event["change_status"] for event in group] for key, group in changes(events).items()}


def warnings_in(text):
    """Our warnings, one string each (Ansible wraps long warnings over several lines on 2.16)."""
    found = []
    current = None
    for line in text.splitlines():
        if line.lstrip().startswith("[WARNING]:"):
            current = line.split("[WARNING]:", 1)[1].strip()
            found.append(current)
        elif current is not None and line.strip() and not line.lstrip().startswith(("[", "TASK", "PLAY", "ok:", "changed:", "fatal:")):
            found[-1] += " " + line.strip()
        else:
            current = None
    return [warning for warning in found if "Flashduty" in warning or "flashduty" in warning]


def assert_rc(proc, expected=0):
    assert proc.returncode == expected, (f"rc={proc.returncode}, expected {expected}\n--- stdout ---\n{proc.stdout[-6000:]}"
                                         f"\n--- stderr ---\n{proc.stderr[-3000:]}")


def assert_clean(proc, *secrets_):
    """No traceback, no core "Failure using method" warning, no secret."""
    for text in (proc.stdout, proc.stderr):
        assert "Traceback" not in text
        assert "Failure using method" not in text
        assert "Callback dispatch" not in text
        for secret in secrets_:
            assert secret not in text


def vault(project, name, value, path):
    """Append ``name: !vault ...`` (value encrypted with VAULT_PASSWORD) to ``path``."""
    proc = subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(project / "vault-password"),
                           "--stdin-name", name], input=value, capture_output=True, text=True, check=True,
                          env=dict(os.environ, ANSIBLE_HOME=str(project / ".ansible")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        if handle.tell() == 0:
            handle.write("---\n")
        handle.write(proc.stdout)


@pytest.fixture
def project(tmp_path, receiver):
    """tests/functional/callback copied to tmp_path, with the receiver's push URL vaulted in group_vars/all."""
    dst = tmp_path / "project"
    shutil.copytree(HERE, dst)
    (dst / "vault-password").write_text(VAULT_PASSWORD + "\n", encoding="utf-8")
    vault(dst, "flashduty_push_url", receiver.push_url, dst / "inventory" / "group_vars" / "all" / "vault.yml")
    return dst


@pytest.fixture
def cb_env(ansible_env, tmp_path):
    """The ansible-playbook environment with the callback enabled, a private spool, and a GitHub Actions identity."""
    env = dict(ansible_env)
    env.update(
        ANSIBLE_CALLBACKS_ENABLED=CALLBACK,
        FLASHDUTY_SPOOL_DIR=str(tmp_path / "spool"),
        FLASHDUTY_LABEL_VARS="app_version",
        GITHUB_ACTIONS="true", GITHUB_SERVER_URL="https://github.example.com", GITHUB_REPOSITORY="acme/shop",
        GITHUB_RUN_ID="4242", GITHUB_WORKFLOW="deploy", GITHUB_REF_NAME="main", GITHUB_SHA="0123abc", GITHUB_ACTOR="alice",
    )
    return env


@pytest.fixture
def play(run_playbook, project, cb_env):
    """``play(playbook, *args, env=None, vault=True)``: ansible-playbook in the project with the callback on."""

    def run(playbook, *args, env=None, vault=True, **overrides):
        full = dict(cb_env if env is None else env)
        full.update(overrides)
        full = {name: value for name, value in full.items() if value is not None}  # None: unset
        cmd = ["-i", "inventory/hosts.yml", playbook, *args]
        if vault:
            cmd += ["--vault-password-file", "vault-password"]
        return run_playbook(cmd, env=full, cwd=project)

    return run


GITHUB_LABELS = {"ci_system": "github_actions", "ci_job_id": "4242", "ci_job_name": "deploy", "ci_repository": "acme/shop",
                 "ci_ref": "main", "ci_commit": "0123abc", "ci_actor": "alice"}
GITHUB_LINK = "https://github.example.com/acme/shop/actions/runs/4242"


# --------------------------------------------------------------------------- the main story

def test_two_plays_report_labels_keys_and_statuses(play, receiver, ansible_env, project):
    proc = play("site.yml", ANSIBLE_FORKS="1")  # one fork: host output in a stable order, to compare below
    assert_rc(proc)
    assert_clean(proc, receiver.integration_key)
    assert warnings_in(proc.stdout + proc.stderr) == []
    events = receiver.events
    assert list(statuses(events).values()) == [["Processing", "Done"], ["Processing", "Done"]]  # the muted play sent nothing
    (key1, (start1, done1)), (key2, (start2, done2)) = changes(events).items()
    run_id = KEY_RE.match(key1).group(0).rsplit("-", 1)[0]
    assert key1 == run_id + "-1" and key2 == run_id + "-2"

    # revision: the project is no git work tree, so the CI's commit (GITHUB_SHA) stands for it.
    common = dict(playbook="site.yml", revision="0123abc", check_mode="false", run_id=run_id, app_version="1.2.3", team="platform",
                  env="production", **CONTROLLER, **GITHUB_LABELS)
    assert start1["labels"] == dict(common, play="Deploy web", hosts="web1,web2", groups="prod,web", host_count="2",
                                    host_pattern="web")
    assert done1["labels"] == dict(start1["labels"], outcome="succeeded", ok_count="2", changed_count="1", failed_count="0",
                                   unreachable_count="0")
    assert start2["labels"] == dict(common, play="Migrate db", hosts="db1", groups="db,prod", host_count="1", host_pattern="db")
    assert done2["labels"]["changed_count"] == "0" and done2["labels"]["outcome"] == "succeeded"

    assert start1["title"] == done1["title"] == "Ansible: Deploy web on web1 and web2"
    assert start2["title"] == "Ansible: Migrate db on db1"
    assert all(event["link"] == GITHUB_LINK for event in events)
    assert start1["description"].startswith('Ansible play "Deploy web" started on 2 hosts: web1, web2.')
    assert done1["description"].splitlines()[:2] == ['Ansible play "Deploy web" finished on 2 hosts: 2 ok (1 changed), 0 failed, 0 unreachable.',
                                                     'Changed: "Change web1 only" on web1']
    # event_time is when it happened: the start of play 1 is not after its end, nor after play 2's start.
    assert start1["event_time"] <= done1["event_time"] <= start2["event_time"] <= done2["event_time"] <= time.time()

    # The playbook's output and exit code are those of a run without the callback.
    plain = dict(ansible_env, ANSIBLE_FORKS="1")
    baseline = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/hosts.yml", "site.yml", "--vault-password-file",
                               "vault-password"], cwd=project, env=plain, capture_output=True, text=True, check=False)
    assert (baseline.returncode, baseline.stdout, baseline.stderr) == (proc.returncode, proc.stdout, proc.stderr)


def test_limit_tags_and_skip_tags_become_labels(play, receiver):
    proc = play("site.yml", "--limit", "web1,db1", "--tags", "deploy", "--skip-tags", "slow")
    assert_rc(proc)
    start1, done1, start2, done2 = flat(receiver.events)
    assert (start1["labels"]["hosts"], start1["labels"]["limit"]) == ("web1", "web1,db1")
    assert (start1["labels"]["tags"], start1["labels"]["skip_tags"]) == ("deploy", "slow")
    assert start1["labels"]["host_count"] == "1" and start1["labels"]["groups"] == "prod,web"
    assert start2["labels"]["hosts"] == "db1"
    assert "limit: web1,db1" in start1["description"] and "tags: deploy" in start1["description"]


def test_a_play_matching_no_host_sends_nothing(play, receiver):
    proc = play("site.yml", "--limit", "web2")
    assert_rc(proc)
    assert list(statuses(receiver.events).values()) == [["Processing", "Done"]]
    assert receiver.events[0]["labels"]["hosts"] == "web2"


def test_check_mode_sends_nothing_by_default_and_planned_on_request(play, receiver):
    proc = play("site.yml", "--check")
    assert_rc(proc)
    assert receiver.events == []
    assert warnings_in(proc.stdout + proc.stderr) == []

    proc = play("site.yml", "--check", FLASHDUTY_CHECK_MODE="planned")
    assert_rc(proc)
    assert list(statuses(receiver.events).values()) == [["Planned"], ["Planned"]]
    first, second = flat(receiver.events)
    assert first["labels"]["check_mode"] == "true" and first["labels"]["changed_count"] == "1"
    assert first["description"].splitlines()[:2] == ['Ansible play "Deploy web" ran in check mode on 2 hosts: 2 ok (1 would change), '
                                                     "0 failed, 0 unreachable.", 'Would change: "Change web1 only" on web1']
    assert second["labels"]["changed_count"] == "0"


def test_lifecycle_serial_end_play_and_rescue(play, receiver):
    proc = play("lifecycle.yml")
    assert_rc(proc)
    groups = changes(receiver.events)
    # The play that meta: end_play ends before any task ran is no change: two changes, plays 1 and 3.
    assert [[event["change_status"] for event in group] for group in groups.values()] == [["Processing", "Done"]] * 2
    assert [key.rsplit("-", 1)[1] for key in groups] == ["1", "3"]
    rolling, rescued = groups.values()
    # serial: 1 runs two batches of the same play: still one change, covering both hosts.
    assert rolling[0]["labels"]["hosts"] == "web1,web2" and rolling[1]["labels"]["changed_count"] == "2"
    assert 'Changed: "Roll" on web1, web2' in rolling[1]["description"]
    # A failure the block rescued is no failure of the play.
    assert rescued[1]["labels"]["outcome"] == "succeeded" and rescued[1]["labels"]["failed_count"] == "0"
    assert "rescued=1" in rescued[1]["description"]


def test_failed_and_unreachable_hosts_at_vvvv(play, receiver, project, cb_env, ansible_env):
    dark = project / "dark.yml"
    dark.write_text(f"---\ndark:\n  hosts:\n    dark1:\n      ansible_connection: ssh\n      ansible_host: 127.0.0.1\n"
                    f"      ansible_port: {closed_port()}\n      ansible_user: nobody\n", encoding="utf-8")
    env = dict(cb_env, FLASHDUTY_STATUS_MAP="failed=Canceled, started=Ready", ANSIBLE_LOG_PATH=str(project / "ansible.log"))
    proc = play("failures.yml", "-i", "dark.yml", "-vvvv", env=env)
    baseline = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/hosts.yml", "-i", "dark.yml", "failures.yml",
                               "--vault-password-file", "vault-password"], cwd=project, env=ansible_env, capture_output=True, text=True,
                              check=False)
    assert_rc(proc, baseline.returncode)
    assert baseline.returncode in (2, 4)
    secret = receiver.integration_key
    assert_clean(proc, secret)
    assert secret not in (project / "ansible.log").read_text(encoding="utf-8")
    (first_start, first_end), (second_start, second_end) = changes(receiver.events).values()
    assert (first_start["change_status"], first_end["change_status"]) == ("Ready", "Canceled")  # status_map
    labels = first_end["labels"]
    assert labels["hosts"] == "web1,web2,dark1" and labels["groups"] == "dark,prod,web"
    assert (labels["outcome"], labels["failed_hosts"], labels["unreachable_hosts"]) == ("partially_failed", "web2", "dark1")
    assert (labels["ok_count"], labels["changed_count"], labels["failed_count"], labels["unreachable_count"]) == ("1", "1", "1", "1")
    assert 'Failed: "Fail on web2" on web2: web2 is broken' in first_end["description"].splitlines()
    assert 'Unreachable: "Reach every host" on dark1: ' in first_end["description"]
    # Ansible leaves failed and unreachable hosts out of the next play; so does its change.
    assert second_start["labels"]["hosts"] == "web1" and second_end["change_status"] == "Done"


def test_sigint_cancels_the_open_change(receiver, project, cb_env):
    proc, out = start(project, cb_env, "slow.yml")
    try:
        receiver.wait_for_events(1, timeout=60)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 99
        events = receiver.wait_for_events(2, timeout=10)
    finally:
        stop(proc)
    assert [event["change_status"] for event in events] == ["Processing", "Canceled"]
    canceled = events[1]
    assert canceled["labels"]["outcome"] == "interrupted"
    assert canceled["description"].startswith('Ansible play "Slow play" was interrupted (SIGINT) before it ended')
    assert canceled["event_time"] >= events[0]["event_time"]
    assert "Traceback" not in out.read_text(encoding="utf-8")


def test_sigterm_cancels_the_open_change_and_still_terminates(receiver, project, cb_env):
    proc, out = start(project, cb_env, "slow.yml")
    try:
        receiver.wait_for_events(1, timeout=60)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM  # killed by the signal, as without the callback
        events = receiver.wait_for_events(2, timeout=10)
    finally:
        stop(proc)
    assert [event["change_status"] for event in events] == ["Processing", "Canceled"]
    assert "(SIGTERM)" in events[1]["description"]
    assert "Traceback" not in out.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- forced stops: write before you wait
#
# The endpoint is a black hole (requests are held, never answered) and flush_timeout is 60 s: without the
# spool written ahead, a second signal during that wait would lose every event of the run.

def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def spooled_events(spool_dir):
    """The events waiting in the spool, oldest batch first."""
    events = []
    for path in sorted(Path(spool_dir).glob("*.json")):
        events += [record["event"] for record in json.loads(path.read_text(encoding="utf-8"))["records"]]
    return events


def stopped_twice(receiver, project, cb_env, playbook, first, second, after):
    """Run ``playbook`` against a black hole, send ``first`` once ``after`` is in the output, then ``second``.

    Returns (rc, seconds from the last signal to the exit, output).
    """
    receiver.add_fault("blackhole", times=None)
    proc, out = start(project, dict(cb_env, FLASHDUTY_FLUSH_TIMEOUT="60"), playbook)
    try:
        assert wait_for(lambda: receiver.requests), "the play never started"
        if first is not None:
            time.sleep(0.5)
            os.kill(proc.pid, first)
        assert wait_for(lambda: after in out.read_text(encoding="utf-8")), out.read_text(encoding="utf-8")
        time.sleep(1.0)  # the end of the run is now waiting for the black hole
        sent = time.monotonic()
        os.kill(proc.pid, second)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        stop(proc)
    return rc, took, out.read_text(encoding="utf-8")


def recovered_exactly_once(play, receiver, cb_env, spooled):
    """A next run with the endpoint back delivers every spooled event once, in order per change."""
    receiver.clear_faults()
    assert_rc(play("site.yml", "--limit", "web1"))
    got = statuses(receiver.events)
    for key, group in changes(spooled).items():
        assert got[key] == [event["change_status"] for event in group], (key, got)
    assert spooled_events(cb_env["FLASHDUTY_SPOOL_DIR"]) == []


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["then-SIGINT", "then-SIGTERM"])
def test_a_second_signal_during_the_wait_for_canceled_loses_nothing(receiver, project, cb_env, play, second):
    rc, took, output = stopped_twice(receiver, project, cb_env, "slow.yml", signal.SIGINT, second, "User interrupted execution")
    assert rc == 99 and took < 5, (rc, took)  # Ansible's code for Ctrl-C; the wait was cut short
    spooled = spooled_events(cb_env["FLASHDUTY_SPOOL_DIR"])
    assert [event["change_status"] for event in spooled] == ["Processing", "Canceled"] and receiver.events == []
    assert "Traceback" not in output and receiver.integration_key not in output
    recovered_exactly_once(play, receiver, cb_env, spooled)


def test_sigterm_twice_loses_nothing_and_still_terminates(receiver, project, cb_env, play):
    receiver.add_fault("blackhole", times=None)
    proc, out = start(project, dict(cb_env, FLASHDUTY_FLUSH_TIMEOUT="60"), "slow.yml")
    try:
        assert wait_for(lambda: receiver.requests)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(1.5)  # the handler is now waiting (up to 60 s) for the Canceled event to go out
        assert proc.poll() is None
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        stop(proc)
    assert rc == -signal.SIGTERM and took < 5, (rc, took)  # killed by the signal, as without the callback
    spooled = spooled_events(cb_env["FLASHDUTY_SPOOL_DIR"])
    assert [event["change_status"] for event in spooled] == ["Processing", "Canceled"] and receiver.events == []
    assert "(SIGTERM)" in spooled[1]["description"] and "Traceback" not in out.read_text(encoding="utf-8")
    recovered_exactly_once(play, receiver, cb_env, spooled)


def test_ctrl_c_after_the_recap_spools_at_once_and_keeps_the_exit_code(receiver, project, cb_env, play):
    rc, took, output = stopped_twice(receiver, project, cb_env, "site.yml", None, signal.SIGINT, "PLAY RECAP")
    assert rc == 0 and took < 5, (rc, took)
    assert "User interrupted execution" not in output and "Traceback" not in output
    spooled = spooled_events(cb_env["FLASHDUTY_SPOOL_DIR"])
    assert list(statuses(spooled).values()) == [["Processing", "Done"]] * 2 and receiver.events == []
    assert any("spooled" in warning for warning in warnings_in(output))
    recovered_exactly_once(play, receiver, cb_env, spooled)


def start(project, env, playbook):
    out = project / "output.txt"
    handle = out.open("w", encoding="utf-8")
    proc = subprocess.Popen([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/hosts.yml", playbook, "--vault-password-file",
                             "vault-password"], cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)
    handle.close()
    return proc, out


def stop(proc):
    """Kill what is left of the run (on 2.16 a worker outlives its killed parent)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def test_per_host_mode(play, receiver):
    proc = play("site.yml", FLASHDUTY_PER_HOST="true")
    assert_rc(proc)
    groups = changes(receiver.events)
    keys = list(groups)
    run_id = keys[0].rsplit("-", 2)[0]
    assert keys == [f"{run_id}-1-web1", f"{run_id}-1-web2", f"{run_id}-2-db1"]
    assert all([event["change_status"] for event in group] == ["Processing", "Done"] for group in groups.values())
    web1 = groups[keys[0]][1]
    assert web1["labels"]["host"] == web1["labels"]["hosts"] == "web1"
    assert (web1["labels"]["host_count"], web1["labels"]["changed_count"]) == ("1", "1")
    assert groups[keys[1]][1]["labels"]["changed_count"] == "0"
    assert web1["title"] == "Ansible: Deploy web on web1"


def test_changed_only_mode(play, receiver):
    proc = play("site.yml", FLASHDUTY_CHANGED_ONLY="true")
    assert_rc(proc)
    (key, (start_event, done_event)), = changes(receiver.events).items()  # only the play that changed something
    assert key.endswith("-1")
    assert (start_event["change_status"], done_event["change_status"]) == ("Processing", "Done")
    assert start_event["event_time"] <= done_event["event_time"]
    assert "outcome" not in start_event["labels"]

    receiver.clear()
    proc = play("site.yml", FLASHDUTY_CHANGED_ONLY="true", FLASHDUTY_PER_HOST="true")
    assert_rc(proc)
    assert [key.rsplit("-", 1)[1] for key in changes(receiver.events)] == ["web1"]


def test_missing_vault_password_warns_once_and_changes_nothing(play, receiver, project, ansible_env):
    proc = play("site.yml", "-vvv", vault=False)
    warnings = warnings_in(proc.stdout + proc.stderr)
    assert len(warnings) == 1, "\n".join(warnings)
    assert "flashduty_push_url" in warnings[0] and "vault password" in warnings[0]
    assert receiver.events == []
    baseline = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/hosts.yml", "site.yml"], cwd=project, env=ansible_env,
                              capture_output=True, text=True, check=False)
    assert_rc(proc, baseline.returncode)
    assert_clean(proc, receiver.integration_key)


def test_no_push_url_anywhere_warns_once(play, receiver, project):
    (project / "inventory" / "group_vars" / "all" / "vault.yml").unlink()
    proc = play("site.yml")
    assert_rc(proc)
    warnings = warnings_in(proc.stdout + proc.stderr)
    assert len(warnings) == 1 and "no Flashduty push URL" in warnings[0] and "FLASHDUTY_PUSH_URL" in warnings[0], warnings
    assert receiver.events == []

    # The environment is the fallback.
    proc = play("site.yml", FLASHDUTY_PUSH_URL=receiver.push_url)
    assert_rc(proc)
    assert len(changes(receiver.events)) == 2


def test_ansible_cfg_comes_after_variables_and_environment(play, receiver, project):
    (project / "inventory" / "group_vars" / "all" / "vault.yml").unlink()
    with Receiver(integration_key=secrets.token_hex(16), quiet=True) as configured:
        (project / "ansible.cfg").write_text(f"[flashduty]\npush_url = {configured.push_url}\nper_host = true\n"
                                             "label_vars = app_version, missing_var\n", encoding="utf-8")
        proc = play("site.yml", "--limit", "web1", ANSIBLE_CONFIG=str(project / "ansible.cfg"), FLASHDUTY_LABEL_VARS=None)
        assert_rc(proc)
        assert_clean(proc, configured.integration_key)
        events = configured.events
        assert [event["change_key"].rsplit("-", 1)[1] for event in events] == ["web1", "web1"]  # per_host from ansible.cfg
        assert events[0]["labels"]["app_version"] == "1.2.3" and "missing_var" not in events[0]["labels"]
        proc = play("site.yml", "--limit", "web1", ANSIBLE_CONFIG=str(project / "ansible.cfg"), FLASHDUTY_PUSH_URL=receiver.push_url)
        assert_rc(proc)
        assert len(configured.events) == 2 and len(receiver.events) == 2  # the environment wins over ansible.cfg


def test_the_callback_can_be_turned_off(play, receiver):
    assert_rc(play("site.yml", FLASHDUTY_ENABLED="false"))
    assert receiver.events == []


def test_one_change_per_push_url(play, receiver, project):
    host_vars = project / "inventory" / "host_vars"
    host_vars.mkdir()
    # Host-level variables count too: web2 is muted, db1 adds a label (and is resolved on its own).
    (host_vars / "web2.yml").write_text("---\nflashduty_enabled: false\n", encoding="utf-8")
    (host_vars / "db1.yml").write_text("---\nflashduty_labels:\n  role: database\n", encoding="utf-8")
    with Receiver(integration_key=secrets.token_hex(16), quiet=True) as staging:
        (project / "inventory" / "group_vars" / "staging.yml").write_text(
            f"---\nflashduty_push_url: '{staging.push_url}'\nflashduty_labels:\n  env: staging\n", encoding="utf-8")
        proc = play("everywhere.yml", "-vvv")
        assert_rc(proc)
        assert_clean(proc, receiver.integration_key, staging.integration_key)
        (prod_key, prod), = changes(receiver.events).items()
        (staging_key, stage), = changes(staging.events).items()
    assert prod_key == staging_key
    assert [event["change_status"] for event in prod] == [event["change_status"] for event in stage] == ["Processing", "Done"]
    labels = prod[1]["labels"]
    assert (labels["hosts"], labels["groups"], labels["env"], labels["role"]) == ("web1,db1", "db,prod,web", "production", "database")
    assert (stage[1]["labels"]["hosts"], stage[1]["labels"]["groups"], stage[1]["labels"]["env"]) == ("stg1", "staging", "staging")
    assert "role" not in stage[1]["labels"]
    assert prod[0]["title"] == "Ansible: Patch everything on web1 and db1"
    # web2 and db1 are resolved on their own (host_vars), web1 and stg1 each with its group set.
    assert 'play "Patch everything": 4 hosts, variables resolved for 4 host set(s)' in proc.stdout


def test_extra_vars_label_key_title_and_link_are_templated(play, receiver, project):
    extra = {
        "ticket": "CHG-7",
        "flashduty_labels": {"ticket": "{{ ticket }}", "service": "shop", "replicas": 3, "dropped": None, "k8s-cluster": "eu1",
                             "app.kubernetes.io/name": "shop"},
        "flashduty_change_key": "{{ ticket }}-{{ 40 + 2 }}",
        "flashduty_change_title": "Release {{ app_version }} ({{ ticket }})",
        "flashduty_change_link": "https://tickets.example.com/{{ ticket }}",
    }
    (project / "extra.json").write_text(json.dumps(extra), encoding="utf-8")
    proc = play("site.yml", "-e", "@extra.json")
    assert_rc(proc)
    warnings = warnings_in(proc.stdout + proc.stderr)
    # Names Flashduty's alert API would not take are rewritten, not dropped: one warning naming old and new.
    assert len(warnings) == 1 and "'k8s-cluster' -> 'k8s_cluster', 'app.kubernetes.io/name' -> 'app_kubernetes_io_name'" in warnings[0], warnings
    # One key for the whole run: both plays are one change, opened and closed twice.
    assert statuses(receiver.events) == {"CHG-7-42": ["Processing", "Done", "Processing", "Done"]}
    for event in receiver.events:
        assert event["title"] == "Release 1.2.3 (CHG-7)"
        assert event["link"] == "https://tickets.example.com/CHG-7"
        # Extra vars win over group_vars: no team/env labels from prod.yml.
        assert {k: event["labels"].get(k) for k in ("ticket", "service", "replicas", "dropped", "team")} == {
            "ticket": "CHG-7", "service": "shop", "replicas": "3", "dropped": None, "team": None}
        assert event["labels"]["k8s_cluster"] == "eu1" and event["labels"]["app_kubernetes_io_name"] == "shop"
        assert "k8s-cluster" not in event["labels"]


def test_the_key_in_labels_and_title_is_masked_shown_spooled_and_sent(play, receiver, project, cb_env):
    # The common mistake: the push URL templated into a label, a label_vars variable and the title.
    extra = {"flashduty_labels": {"url": "{{ flashduty_push_url }}", "service": "shop"},
             "leak": "{{ flashduty_push_url | string | urlsplit('query') }}",
             "flashduty_change_title": "Deploy with {{ flashduty_push_url }}"}
    (project / "extra.json").write_text(json.dumps(extra), encoding="utf-8")
    secret = receiver.integration_key
    log = project / "ansible.log"
    receiver.add_fault("status", times=None, status=503)  # first run: every event goes to the spool
    first = play("site.yml", "-e", "@extra.json", "-vvvv", FLASHDUTY_LABEL_VARS="leak", FLASHDUTY_FLUSH_TIMEOUT="1", FLASHDUTY_RETRIES="0",
                 ANSIBLE_LOG_PATH=str(log))
    assert_rc(first)
    spooled = [path for path in Path(cb_env["FLASHDUTY_SPOOL_DIR"]).rglob("*") if path.is_file()]
    assert spooled and all(secret not in path.read_text(encoding="utf-8") for path in spooled)
    receiver.clear_faults()
    second = play("site.yml", "-e", "@extra.json", "-vvvv", FLASHDUTY_LABEL_VARS="leak", ANSIBLE_LOG_PATH=str(log))
    assert_rc(second)
    for proc in (first, second):
        assert_clean(proc, secret)
        masked = [warning for warning in warnings_in(proc.stdout + proc.stderr) if "was masked" in warning]
        assert len(masked) == 1, masked
        assert "flashduty_labels.url" in masked[0] and "label_vars.leak" in masked[0] and "title" in masked[0]
    assert secret not in log.read_text(encoding="utf-8")
    assert len(receiver.events) == 8  # both runs, the first one's from the spool
    assert secret not in json.dumps(receiver.requests)
    for event in receiver.events:
        assert event["labels"]["url"].endswith("?integration_key=****") and event["labels"]["leak"] == "integration_key=****"
        assert event["title"].startswith("Deploy with http") and event["title"].endswith("?integration_key=****")


def test_refused_events_become_warnings_with_request_id(play, receiver):
    receiver.add_fault("status", times=1, status=400, code="InvalidParameter", message="nope")
    proc = play("site.yml")
    assert_rc(proc)
    refused = [request for request in receiver.requests if not request["accepted"]]
    assert len(refused) == 1
    warnings = warnings_in(proc.stdout + proc.stderr)
    assert any(refused[0]["request_id"] in warning for warning in warnings), warnings
    assert len(receiver.events) == 3


def test_a_refusal_on_every_push_is_one_warning_after_each_recap(receiver, project, cb_env):
    receiver.add_fault("status", times=None, status=401)
    # Two playbooks (Ansible prints a PLAY RECAP after each); warnings (stderr) in place among the rest.
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/hosts.yml", "site.yml", "lifecycle.yml",
                           "--vault-password-file", "vault-password"], cwd=project, env=dict(cb_env, PYTHONUNBUFFERED="1"),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    refused = [request for request in receiver.requests if not request["accepted"]]
    assert len(refused) >= 6 and receiver.events == []
    warnings = warnings_in(proc.stdout)
    assert len(warnings) == 2, "\n".join(warnings)
    counts = [int(re.match(r"Flashduty refused (\d+) change events at http://127\.0\.0\.1:%d/" % receiver.port, warning).group(1))
              for warning in warnings]
    assert sum(counts) == len(refused) and all("HTTP 401 Unauthorized" in warning for warning in warnings)
    assert refused[0]["request_id"] in warnings[0]
    # Each once, after its playbook's recap and before the next play: never between a task's header and its results.
    blocks = re.split(r"^PLAY RECAP", proc.stdout, flags=re.MULTILINE)
    assert len(blocks) == 3 and "[WARNING]" not in blocks[0]
    for block in blocks[1:]:
        assert block.count("[WARNING]") == 1
        assert "PLAY [" not in block[:block.index("[WARNING]")]
    assert "Traceback" not in proc.stdout and receiver.integration_key not in proc.stdout


def test_undelivered_events_are_spooled_then_replayed_first(play, receiver, cb_env):
    receiver.add_fault("status", times=None, status=503)
    started = time.monotonic()
    proc = play("site.yml", FLASHDUTY_FLUSH_TIMEOUT="1", FLASHDUTY_RETRIES="0")
    assert time.monotonic() - started < 30
    assert_rc(proc)
    assert any("spooled" in warning for warning in warnings_in(proc.stdout + proc.stderr))
    assert receiver.events == []
    spooled = [path for path in Path(cb_env["FLASHDUTY_SPOOL_DIR"]).rglob("*") if path.is_file()]
    assert spooled and all(receiver.integration_key not in path.read_text(encoding="utf-8") for path in spooled)
    # The run id of the first run, from a request it made (run ids begin with the second they started
    # in, so two runs within one second cannot be told apart by sorting them).
    first_run_id = next(request["body"]["change_key"] for request in receiver.requests if request["body"]).rsplit("-", 1)[0]
    receiver.clear_faults()
    proc = play("site.yml", "--limit", "web1")
    assert_rc(proc)
    groups = changes(receiver.events)
    runs = set(key.rsplit("-", 1)[0] for key in groups)
    assert len(runs) == 2 and first_run_id in runs and list(statuses(receiver.events).values()) == [["Processing", "Done"]] * 3
    first_run = [key for key in groups if key.startswith(first_run_id + "-")]
    assert len(first_run) == 2  # both plays of the first run, delivered by the second, with their own times
    assert max(event["event_time"] for key in first_run for event in groups[key]) <= min(
        event["event_time"] for key in groups if key not in first_run for event in groups[key])


def test_a_symlinked_spool_dir_is_refused_with_one_warning_and_its_target_untouched(play, receiver, tmp_path):
    # A spool_dir in a shared /tmp that someone made a link to a directory of theirs, here root's.
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.chmod(target, 0o755)
    (target / "notes.txt").write_text("root's file\n", encoding="utf-8")
    link = tmp_path / "shared-tmp-spool"
    link.symlink_to(target)
    before = (os.stat(target).st_mode, os.stat(target).st_uid, sorted(os.listdir(target)))
    receiver.add_fault("status", times=None, status=503)  # nothing delivered: the run would spool every event
    proc = play("site.yml", FLASHDUTY_SPOOL_DIR=str(link), FLASHDUTY_FLUSH_TIMEOUT="1", FLASHDUTY_RETRIES="0")
    assert_rc(proc)
    assert_clean(proc, receiver.integration_key)
    about_the_spool = [warning for warning in warnings_in(proc.stdout + proc.stderr) if "spool directory" in warning]
    assert len(about_the_spool) == 1 and "is a symbolic link; refusing to follow it" in about_the_spool[0], about_the_spool
    assert (os.stat(target).st_mode, os.stat(target).st_uid, sorted(os.listdir(target))) == before
    assert (target / "notes.txt").read_text(encoding="utf-8") == "root's file\n"
    assert link.is_symlink()


def test_numeric_options_out_of_range_warn_once_and_fall_back_to_their_defaults(play, receiver):
    proc = play("site.yml", FLASHDUTY_TIMEOUT="-1", FLASHDUTY_RETRIES="99", FLASHDUTY_MAX_RATE="0", FLASHDUTY_FLUSH_TIMEOUT="-3")
    assert_rc(proc)
    assert_clean(proc, receiver.integration_key)
    assert sorted(warnings_in(proc.stdout + proc.stderr)) == [
        "Flashduty change events: flush_timeout: must be from 0 to 600 seconds, got -3.0; the default 5 is used",
        "Flashduty change events: max_rate: must be greater than 0 and at most 1000 requests per second, got 0.0; the default 40 is used",
        "Flashduty change events: retries: must be from 0 to 10, got 99; the default 3 is used",
        "Flashduty change events: timeout: must be greater than 0 and at most 300 seconds, got -1.0; the default 10 is used",
    ]
    assert list(statuses(receiver.events).values()) == [["Processing", "Done"], ["Processing", "Done"]]


def test_flush_spool_playbook_delivers_the_spool_and_reports_nothing_else(play, receiver, cb_env):
    receiver.add_fault("blackhole", times=None)
    assert_rc(play("site.yml", FLASHDUTY_FLUSH_TIMEOUT="1", FLASHDUTY_RETRIES="0"))
    assert receiver.events == []
    receiver.clear_faults()
    proc = play("flashcat.flashduty.flush_spool")
    assert_rc(proc)
    assert_clean(proc, receiver.integration_key)
    assert list(statuses(receiver.events).values()) == [["Processing", "Done"]] * 2  # the two plays of site.yml, nothing more
    assert not [path for path in Path(cb_env["FLASHDUTY_SPOOL_DIR"]).rglob("*.json") if path.is_file()]


def test_flush_spool_playbook_says_how_to_enable_the_callback(play, receiver, cb_env):
    proc = play("flashcat.flashduty.flush_spool", ANSIBLE_CALLBACKS_ENABLED=None)
    assert proc.returncode == 2
    assert "ANSIBLE_CALLBACKS_ENABLED=flashcat.flashduty.change_events ansible-playbook flashcat.flashduty.flush_spool" in proc.stdout
    assert receiver.requests == []


def test_a_thousand_hosts_caps_and_summarises_labels(play, receiver, project, cb_env):
    racks = ["rack%02d" % index for index in range(10)]
    lines = ["---", "fleet:", "  children:"]
    for number, rack in enumerate(racks):
        lines += [f"    {rack}:", "      hosts:"]
        lines += [f"        node{number * 100 + index:04d}.{rack}.dc1.example.com:" for index in range(100)]
    (project / "fleet-inventory.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    user = {"label%02d" % index: "value %d" % index for index in range(44)}  # + app_version (label_vars): 45 user labels
    (project / "inventory" / "group_vars" / "fleet.yml").write_text("---\n" + json.dumps({"flashduty_labels": user}) + "\n",
                                                                    encoding="utf-8")
    started = time.monotonic()
    proc = play("fleet.yml", "-i", "fleet-inventory.yml", "-vvv")
    elapsed = time.monotonic() - started
    assert_rc(proc)
    start_event, done_event = flat(receiver.events)
    for event in (start_event, done_event):
        labels = event["labels"]
        assert len(labels) == 50
        assert {k: v for k, v in labels.items() if k.startswith("label")} == user
        assert len(labels["hosts"]) <= 2048 and labels["hosts"].startswith("node0000.rack00.dc1.example.com,node0001.")
        assert re.search(r",\.\.\. \(\+\d+ more\)$", labels["hosts"])
        assert labels["groups"] == ",".join(["fleet"] + racks)
    assert set(start_event["labels"]) - set(user) == {"app_version", "play", "hosts", "groups", "host_count", "playbook"}
    assert set(done_event["labels"]) - set(user) == {"app_version", "play", "hosts", "groups", "outcome", "host_count"}
    assert done_event["labels"]["host_count"] == "1000"
    assert done_event["title"] == "Ansible: Fleet rollout on node0000.rack00.dc1.example.com, node0001.rack00.dc1.example.com, " \
                                  "node0002.rack00.dc1.example.com and 997 more"
    assert len(done_event["description"]) <= 2048
    warnings = warnings_in(proc.stdout + proc.stderr)
    assert len(warnings) == 1 and "were left out: " in warnings[0] and "ok_count" in warnings[0], warnings
    resolved = re.search(r'play "Fleet rollout": 1000 hosts, variables resolved for (\d+) host set\(s\) in ([\d.]+) s', proc.stdout)
    assert resolved and resolved.group(1) == "10"  # one per rack: 10 get_vars() calls, not 1,000
    # The delivery summary (-vv), once: the flush at exit has nothing new to add to the one at the end of the playbook.
    assert len(re.findall(r"Flashduty change events: 2 delivered", proc.stdout)) == 1, proc.stdout[-2000:]
    print(f"1,000 hosts: run {elapsed:.1f} s, variables resolved in {resolved.group(2)} s")
