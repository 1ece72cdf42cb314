"""Functional tests of what the change_events callback tells: outcomes as the play recap has them, changed
tasks with their hosts, failures with their reasons, per-host truth, ad-hoc runs and the playbook's revision.
Real ansible-playbook (and ansible) runs against the local receiver; each test checks what the receiver got
against the recap Ansible printed.
"""
# pylint: disable=missing-function-docstring,redefined-outer-name,import-error,wrong-import-position,unused-import
# ruff: noqa: F811  (the fixtures imported from test_callback are, as pytest means them, redefined as arguments)

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_callback import (  # noqa: E402,F401  (the fixtures and helpers of the callback's main tests)
    VENV_BIN,
    assert_clean,
    assert_rc,
    cb_env,
    changes,
    flat,
    play,
    project,
    statuses,
)

RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)\s+rescued=(\d+)"
                        r"\s+ignored=(\d+)", re.MULTILINE)
RECAP_NAMES = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")


def recap(stdout):
    """{host: {ok: n, ...}} from the PLAY RECAP of a run."""
    return {match.group(1): dict(zip(RECAP_NAMES, map(int, match.groups()[1:]))) for match in RECAP_LINE.finditer(stdout)}


def totals_line(recap_hosts, hosts=None):
    """The description's ``Tasks:`` line the recap implies for ``hosts`` (all by default)."""
    sums = dict.fromkeys(RECAP_NAMES, 0)
    for host, counts in recap_hosts.items():
        if hosts is None or host in hosts:
            for name, count in counts.items():
                sums[name] += count
    names = ("ok", "changed", "failed", "skipped", "unreachable", "ignored", "rescued")
    return "Tasks: " + " ".join("%s=%s" % (name, sums[name]) for name in names)


def done_of(events):
    (done,) = [event for event in events if event["change_status"] == "Done"]
    return done


# --------------------------------------------------------------------------- outcomes as the recap


def test_a_serial_abort_reports_the_hosts_that_never_ran(play, receiver):
    proc = play("abort.yml")
    assert_rc(proc, 2)
    assert_clean(proc, receiver.integration_key)
    assert recap(proc.stdout).keys() == {"web1"}  # Ansible aborted after the first batch
    done = done_of(receiver.events)
    labels = done["labels"]
    assert (labels["outcome"], labels["ok_count"], labels["failed_count"], labels["failed_hosts"]) == ("aborted", "0", "1", "web1")
    assert (labels["not_run_count"], labels["not_run_hosts"]) == ("3", "web2,db1,stg1")
    lines = done["description"].splitlines()
    assert lines[0] == 'Ansible play "Roll out in batches" was aborted by failures on 4 hosts: 0 ok (0 changed), 1 failed, ' \
                       '0 unreachable, 3 never ran.'
    assert 'Failed: "Apply schema migrations" on web1: relation "users" already exists' in lines
    assert "Never ran: web2, db1, stg1" in lines
    assert totals_line(recap(proc.stdout)) in lines
    assert "second line" not in done["description"]

    # Per-host mode: the hosts that never ran have no change at all; web1's failed.
    receiver.clear()
    proc = play("abort.yml", FLASHDUTY_PER_HOST="true")
    assert_rc(proc, 2)
    (key, events), = changes(receiver.events).items()
    assert key.endswith("-web1") and [event["change_status"] for event in events] == ["Processing", "Done"]
    assert events[1]["labels"]["outcome"] == "failed"


def test_any_errors_fatal_stops_the_other_hosts_and_they_are_not_ok(play, receiver):
    proc = play("fatal.yml")
    assert_rc(proc, 2)
    stats = recap(proc.stdout)
    assert stats["web2"]["failed"] == 0 and stats["web2"]["ok"] == 1  # the recap counts them ok, Ansible stopped them
    done = done_of(receiver.events)
    labels = done["labels"]
    assert (labels["outcome"], labels["ok_count"], labels["failed_hosts"]) == ("aborted", "0", "web1")
    assert (labels["stopped_count"], labels["stopped_hosts"]) == ("3", "web2,db1,stg1")
    lines = done["description"].splitlines()
    assert lines[0].endswith("0 ok (0 changed), 1 failed, 0 unreachable, 3 stopped.")
    assert "Stopped when the play was aborted: web2, db1, stg1" in lines
    assert totals_line(stats) in lines


def test_totals_match_the_recap_and_changed_tasks_are_named_with_their_hosts(play, receiver):
    proc = play("story.yml", ANSIBLE_FORKS="1")
    assert_rc(proc)
    assert_clean(proc, receiver.integration_key)
    stats = recap(proc.stdout)
    done = done_of(receiver.events)
    lines = done["description"].splitlines()
    assert totals_line(stats) in lines  # include_tasks, the ignored failure, the rescue and run_once as the recap counts them
    assert stats["db1"]["ignored"] == 1 and stats["web2"]["rescued"] == 1
    assert lines[0] == 'Ansible play "Release the application" finished on 3 hosts: 3 ok (2 changed), 0 failed, 0 unreachable.'
    # In the order they ran, the handler last; a host that changed nothing in a task is not listed for it.
    assert 'Changed: "Render the application config" on web1, web2; "Verify the config" on web2; ' \
           '"Restart the application" on web1, web2' in lines
    assert done["labels"]["changed_count"] == "2" and done["labels"]["outcome"] == "succeeded"

    receiver.clear()
    proc = play("story.yml", FLASHDUTY_PER_HOST="true", FLASHDUTY_TASK_NAMES="false")
    assert_rc(proc)
    by_host = {group[1]["labels"]["host"]: group[1] for group in changes(receiver.events).values()}
    assert "Changed (2 tasks): web1" in by_host["web1"]["description"].splitlines()
    assert "Changed (3 tasks): web2" in by_host["web2"]["description"].splitlines()
    assert "Changed" not in by_host["db1"]["description"]
    assert all("Render" not in event["description"] for event in receiver.events)
    for host, event in by_host.items():
        assert totals_line(stats, [host]) in event["description"].splitlines()


def test_failures_say_why_but_no_log_hides_it_and_the_key_is_masked(play, receiver):
    proc = play("secrets.yml")
    assert_rc(proc, 2)
    done = done_of(receiver.events)
    lines = done["description"].splitlines()
    assert 'Failed: "Use the database password" on web1: hidden by no_log' in lines
    assert 'Failed: "Call Flashduty" on web2: POST http://127.0.0.1:%d/event/push/change/standard?integration_key=**** failed' \
           % receiver.port in lines
    for event in receiver.events:
        text = repr(event)
        assert "hunter2" not in text and receiver.integration_key not in text
    assert (done["labels"]["outcome"], done["labels"]["failed_hosts"]) == ("failed", "web1,web2")


# --------------------------------------------------------------------------- per host, per play, ad-hoc


def test_per_host_changes_carry_their_own_labels_and_times(play, receiver, project):
    host_vars = project / "inventory" / "host_vars"
    host_vars.mkdir()
    for host, version in (("web1", "1.0"), ("web2", "2.0"), ("db1", "3.0")):
        (host_vars / f"{host}.yml").write_text(f"---\napp_version: '{version}'\n", encoding="utf-8")
    (project / "inventory" / "group_vars" / "db.yml").write_text("---\nflashduty_labels:\n  team: dba\n", encoding="utf-8")
    proc = play("paced.yml", FLASHDUTY_PER_HOST="true")
    assert_rc(proc)
    groups = list(changes(receiver.events).values())
    assert all([event["change_status"] for event in group] == ["Processing", "Done"] for group in groups)
    serial = {group[0]["labels"]["host"]: group for group in groups if group[0]["labels"]["play"] == "One by one"}
    free = {group[0]["labels"]["host"]: group for group in groups if group[0]["labels"]["play"] == "Each at its pace"}
    assert {host: (group[1]["labels"]["app_version"], group[1]["labels"].get("team")) for host, group in serial.items()} == {
        "web1": ("1.0", "platform"), "web2": ("2.0", "platform"), "db1": ("3.0", "dba")}
    # serial: 1: each host's change spans its own batch (1.1 s of work: event times are whole seconds), one after the other.
    order = [serial[host] for host in ("web1", "web2", "db1")]
    for (start, done), (next_start, _done) in zip(order, order[1:]):
        assert start["event_time"] < done["event_time"] <= next_start["event_time"]
    # free: web1 is done long before web2 (3 s of work; event times are whole seconds).
    assert free["web2"][1]["event_time"] - free["web1"][1]["event_time"] > 1.0
    assert 'Changed: "Work as long as the host needs" on web2' in free["web2"][1]["description"]


def test_a_play_whose_tasks_are_all_skipped_is_no_change(play, receiver):
    proc = play("tagged.yml", "--tags", "deploy")
    assert_rc(proc)
    assert [group[0]["labels"]["play"] for group in changes(receiver.events).values()] == ["Deploy"]
    receiver.clear()
    proc = play("tagged.yml", "--start-at-task", "Housekeeping")
    assert_rc(proc)
    assert [group[0]["labels"]["play"] for group in changes(receiver.events).values()] == ["Untagged"]
    assert list(statuses(receiver.events).values()) == [["Processing", "Done"]]


def test_ad_hoc_runs_are_titled_with_the_module_and_pattern(project, receiver, cb_env):
    env = dict(cb_env, ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    proc = subprocess.run([str(VENV_BIN / "ansible"), "-i", "inventory/hosts.yml", "web", "-m", "ansible.builtin.ping",
                           "--vault-password-file", "vault-password"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert_rc(proc)
    assert_clean(proc, receiver.integration_key)
    start, done = flat(receiver.events)
    assert start["title"] == done["title"] == "Ansible ad-hoc: ansible.builtin.ping on web1 and web2"
    labels = done["labels"]
    assert (labels["play"], labels["module"], labels["host_pattern"], labels["outcome"]) == (
        "ad-hoc ansible.builtin.ping", "ansible.builtin.ping", "web", "succeeded")
    assert "playbook" not in labels
    assert "__adhoc_playbook__" not in repr(receiver.events)
    assert done["description"].startswith('Ansible ad-hoc run of "ansible.builtin.ping" finished on 2 hosts: 2 ok (0 changed)')
    assert "Ad-hoc run of ansible.builtin.ping (hosts: web" in done["description"]


# --------------------------------------------------------------------------- revision


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_revision_label_is_the_playbooks_commit(play, receiver, project, cb_env):
    no_ci = {name: value for name, value in cb_env.items() if not name.startswith("GITHUB_")}
    proc = play("site.yml", "--limit", "web1", env=no_ci)
    assert_rc(proc)
    assert all("revision" not in event["labels"] for event in receiver.events)  # no repository, no CI commit

    identity = dict(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com",
                    HOME=str(project), PATH="/usr/bin:/bin")

    def git(*args):
        return subprocess.run(["git", *args], cwd=project, env=identity, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "playbooks")
    head = git("rev-parse", "--short=12", "HEAD")
    receiver.clear()
    assert_rc(play("site.yml", "--limit", "web1"))  # the work tree wins over the CI's commit
    assert {event["labels"]["revision"] for event in receiver.events} == {head}
    assert f"revision {head})" in receiver.events[0]["description"]
    (project / "site.yml").write_text((project / "site.yml").read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    receiver.clear()
    assert_rc(play("site.yml", "--limit", "web1"))
    assert {event["labels"]["revision"] for event in receiver.events} == {head + "-dirty"}
