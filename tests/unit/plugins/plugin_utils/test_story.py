"""Unit tests of plugins/plugin_utils/_story.py: the text of a play's end, within Flashduty's 2,048 characters."""
# pylint: disable=missing-function-docstring

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._story import (
    HIDDEN_REASON,
    changed_line,
    compose,
    first_line,
    host_ranges,
    hosts_text,
    problem_lines,
    reason_of,
)


def test_host_ranges_merge_runs_of_three_or_more_with_the_same_width():
    assert host_ranges(["web1", "web2", "web3", "db1", "db2", "x"]) == ["web[1:3]", "db1", "db2", "x"]
    assert host_ranges(["node08", "node09", "node10", "node11"]) == ["node[08:11]"]
    assert host_ranges(["n9", "n10", "n11"]) == ["n9", "n10", "n11"]  # widths differ: web[9:11] would also mean web09
    assert host_ranges(["a1", "a3", "a4", "a5"]) == ["a1", "a[3:5]"]


def test_hosts_text_lists_in_full_then_ranges_then_cuts_with_a_count():
    assert hosts_text(["web1", "web2", "web3"], 100) == "web1, web2, web3"
    assert hosts_text(["web1", "web2", "web3"], 12) == "web[1:3]"
    names = ["web%d" % index for index in range(1, 100)] + ["db%d" % index for index in range(0, 40, 2)]
    text = hosts_text(names, 50)
    assert len(text) <= 50 and text.startswith("web[1:9], web[10:99], db0") and text.endswith(" more")
    shown = text.count("db")
    assert text.endswith(", +%d more" % (20 - shown))


def test_changed_line_names_tasks_with_their_hosts_in_order():
    tasks = [("Render the application config", ["web1", "web2", "web3"]), ("Restart the application", ["web1", "web2", "web3"])]
    assert changed_line(tasks, 500) == ('Changed: "Render the application config" on web1, web2, web3; '
                                        '"Restart the application" on web1, web2, web3')
    compact = 'Changed: "Render the application config" on web[1:3]; "Restart the application" on web[1:3]'
    assert changed_line(tasks, len(compact)) == compact
    assert changed_line(tasks, 500, names=False) == "Changed (2 tasks): web1, web2, web3"
    assert changed_line([], 500) == ""


def test_changed_line_summarises_many_tasks_and_hosts():
    tasks = [("Task %d" % index, ["node%03d" % host for host in range(index, 500, 7)]) for index in range(100)]
    line = changed_line(tasks, 1200)
    assert len(line) <= 1200
    assert line.startswith('Changed: "Task 0" on node000, node007, ')
    assert line.endswith(" more tasks")
    assert "+" in line.split(";")[0]  # the hosts of a task are cut with +N more


def test_problem_lines_group_hosts_by_task_and_reason():
    problems = [("Apply schema migrations", 'relation "users" already exists', ["db1"]), ("Reach", None, ["db2", "db3"])]
    assert problem_lines("Failed", problems, 500) == ['Failed: "Apply schema migrations" on db1: relation "users" already exists',
                                                      'Failed: "Reach" on db2, db3']
    assert problem_lines("Failed", problems, 500, names=False) == ["Failed: db1", "Failed: db2, db3"]
    many = [("Task %d" % index, "reason %d" % index, ["h%d" % index]) for index in range(200)]
    lines = problem_lines("Failed", many, 400)
    assert sum(len(line) + 1 for line in lines) <= 400 + 40
    assert lines[-1].startswith("Failed: +") and lines[-1].endswith(" more hosts")


def test_reason_is_the_first_line_of_msg_and_never_for_no_log():
    assert reason_of({"msg": "\n  boom at line 3\nTraceback..."}, False) == "boom at line 3"
    assert len(reason_of({"msg": "x" * 1000}, False)) == 200
    assert reason_of({"msg": "secret"}, True) == HIDDEN_REASON
    assert reason_of({"censored": "the output has been hidden", "msg": "secret"}, False) == HIDDEN_REASON
    assert reason_of({"stderr": "disk full"}, False) == "disk full"
    assert reason_of({}, False) is None
    key = "0123456789abcdef0123456789abcdef"
    text = reason_of({"msg": "POST https://api.flashcat.cloud/x?integration_key=%s failed; key %s" % (key, key)}, False, (key,))
    assert key not in text and "****" in text
    assert HIDDEN_REASON == "hidden by no_log"
    assert first_line("") == ""


def test_compose_never_cuts_the_head_and_tail():
    head = "Ansible play \"p\" finished: 1 ok."
    tail = ["Tasks: ok=1", "Playbook site.yml, run r."]
    text = compose(head, [lambda room: ["x" * 5000], lambda room: ["Changed: " + "y" * (room - 20)]], tail)
    assert len(text) <= 2048
    lines = text.splitlines()
    assert lines[0] == head and lines[-2:] == tail
    assert lines[1].startswith("Changed: ")  # the section too long for the room is left out, the next one fits
