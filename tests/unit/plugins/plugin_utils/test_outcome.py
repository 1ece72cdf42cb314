"""Unit tests of plugins/plugin_utils/_outcome.py: how a play went, as the recap tells it."""
# pylint: disable=missing-function-docstring

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import MAX_DESCRIPTION_LENGTH
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._outcome import (
    RESULT_CHANGED,
    RESULT_FAILED,
    RESULT_IGNORED_CHANGED,
    RESULT_OK,
    RESULT_SKIPPED,
    PlayLog,
    end_description,
    outcome_labels,
)

CONTEXT = "Playbook site.yml, run r."


def log_of(batches, results):
    log = PlayLog()
    for number, hosts in enumerate(batches):
        log.start_batch(hosts)
        log.first_task(float(number))
    for _host, _increments, task_id, _time in results:
        if task_id is not None:
            log.task_names[task_id] = "Task " + task_id
    log.add(results)
    return log


def test_changed_tasks_keep_the_order_they_ran_with_their_hosts():
    log = log_of([["a", "b", "c"]], [("a", RESULT_CHANGED, "1", 1.0), ("b", RESULT_OK, "1", 1.5), ("c", RESULT_CHANGED, "1", 2.0),
                                     ("b", RESULT_IGNORED_CHANGED, "2", 3.0), ("a", RESULT_SKIPPED, None, 4.0),
                                     ("a", RESULT_CHANGED, "1", 5.0)])  # a handler run twice lists its host once
    summary = log.summary(["a", "b", "c"], set(), set(), set(), set(), False)
    assert summary["tasks"] == [("Task 1", ["a", "c"]), ("Task 2", ["b"])]
    assert summary["changed"] == ["a", "b", "c"] and summary["outcome"] == "succeeded"
    assert summary["totals"] == dict(ok=5, changed=4, failed=0, skipped=1, unreachable=0, ignored=1, rescued=0)
    assert log.last_result == {"a": 5.0, "b": 3.0, "c": 2.0}
    assert log.summary(["b"], set(), set(), set(), set(), False)["tasks"] == [("Task 2", ["b"])]  # per host: its own tasks


def test_a_serial_batch_that_never_started_never_ran_and_the_play_was_aborted():
    log = PlayLog()
    log.start_batch(["a"])
    assert log.first_task(10.0) == frozenset(["a"]) and log.first_task(11.0) is None
    log.add([("a", RESULT_FAILED, "1", 12.0)])
    log.failures["a"] = ("Task 1", "boom", False)
    not_run, stopped, aborted = log.verdict(["a", "b", "c", "d"], {"a"}, set())
    assert (not_run, stopped, aborted) == ({"b", "c", "d"}, set(), True)
    summary = log.summary(["a", "b", "c", "d"], {"a"}, set(), not_run, stopped, aborted)
    assert summary["outcome"] == "aborted" and summary["ok"] == [] and summary["not_run"] == ["b", "c", "d"]
    assert summary["problems"]["failed"] == [("Task 1", "boom", ["a"])]
    labels = dict(outcome_labels(summary))
    assert labels["not_run_count"] == "3" and labels["not_run_hosts"] == "b,c,d" and labels["outcome"] == "aborted"
    assert "stopped_count" not in labels
    assert log.batch_started == [10.0]


def test_a_fatal_failure_stops_the_rest_of_its_batch():
    log = log_of([["a", "b", "c"]], [("a", RESULT_OK, "1", 1.0), ("b", RESULT_OK, "1", 1.0), ("c", RESULT_OK, "1", 1.0),
                                     ("a", RESULT_FAILED, "2", 2.0)])
    log.failures["a"] = ("Task 2", "boom", True)
    not_run, stopped, aborted = log.verdict(["a", "b", "c"], {"a"}, set())
    assert (not_run, stopped, aborted) == (set(), {"b", "c"}, True)
    summary = log.summary(["a", "b", "c"], {"a"}, set(), not_run, stopped, aborted)
    assert summary["outcome"] == "aborted" and summary["stopped"] == ["b", "c"] and summary["ok"] == []
    # per-host: the stopped host's own change is aborted, the failed one failed
    assert log.summary(["b"], {"a"}, set(), not_run, stopped, aborted)["outcome"] == "aborted"
    assert log.summary(["a"], {"a"}, set(), not_run, stopped, aborted)["outcome"] == "failed"
    # Without any_errors_fatal the others carry on: partially failed.
    log.failures["a"] = ("Task 2", "boom", False)
    assert log.verdict(["a", "b", "c"], {"a"}, set()) == (set(), set(), False)
    # max_fail_percentage: 1 of 3 is over 30 %, not over 50 %.
    assert log.verdict(["a", "b", "c"], {"a"}, set(), max_fail_percentage=30)[2] is True
    assert log.verdict(["a", "b", "c"], {"a"}, set(), max_fail_percentage=50)[2] is False


def test_hosts_that_never_ran_without_failures_do_not_make_an_abort():
    log = log_of([["a"]], [("a", RESULT_OK, "1", 1.0)])
    not_run, stopped, aborted = log.verdict(["a", "b"], set(), set())  # meta: end_play in the first batch
    assert (not_run, aborted) == ({"b"}, False)
    assert log.summary(["a", "b"], set(), set(), not_run, stopped, aborted)["outcome"] == "succeeded"


def test_end_description_says_what_changed_and_what_failed_and_why():
    log = log_of([["web1", "web2", "db1"]], [("web1", RESULT_CHANGED, "Render", 1.0), ("web2", RESULT_CHANGED, "Render", 1.0),
                                             ("db1", RESULT_FAILED, "Migrate", 2.0)])
    log.failures["db1"] = ("Apply schema migrations", 'relation "users" already exists', False)
    log.failures["dark1"] = ("Reach", "Failed to connect", False)
    summary = log.summary(["web1", "web2", "db1", "dark1"], {"db1"}, {"dark1"}, set(), set(), False)
    text = end_description("Deploy", ["web1", "web2", "db1", "dark1"], summary, CONTEXT)
    assert text.splitlines() == [
        'Ansible play "Deploy" finished with failures on 4 hosts: 2 ok (2 changed), 1 failed, 1 unreachable.',
        'Failed: "Apply schema migrations" on db1: relation "users" already exists',
        'Unreachable: "Reach" on dark1: Failed to connect',
        'Changed: "Task Render" on web1, web2',
        "Tasks: ok=2 changed=2 failed=1 skipped=0 unreachable=0 ignored=0 rescued=0",
        CONTEXT]
    hidden = end_description("Deploy", ["web1", "web2", "db1", "dark1"], summary, CONTEXT, task_names=False)
    assert "Apply schema" not in hidden and "users" not in hidden and "Render" not in hidden
    assert "Failed: db1" in hidden and "Changed (1 task): web1, web2" in hidden


def test_end_description_of_a_huge_play_keeps_the_outcome_totals_and_context():
    hosts = ["node%04d.example.com" % index for index in range(2000)]
    results = [(host, RESULT_CHANGED, "task%d" % task, 1.0) for task in range(40) for host in hosts[task:]]
    log = log_of([hosts], results)
    for host in hosts[:700]:
        log.failures[host] = ("Task x", "reason of %s" % host, False)
    summary = log.summary(hosts, set(hosts[:700]), set(hosts[700:900]), set(), set(), False)
    text = end_description("Deploy", hosts, summary, CONTEXT)
    lines = text.splitlines()
    assert len(text) <= MAX_DESCRIPTION_LENGTH
    assert lines[0] == 'Ansible play "Deploy" finished with failures on 2000 hosts: 1100 ok (2000 changed), 700 failed, 200 unreachable.'
    assert lines[-2].startswith("Tasks: ok=") and lines[-1] == CONTEXT
    assert any(line.startswith("Failed: +") for line in lines)
    interrupted = end_description("Deploy", hosts[:1], log.summary(hosts[:1], set(), set(), set(), set(), False), CONTEXT,
                                  interrupted="SIGINT")
    assert interrupted.startswith('Ansible play "Deploy" was interrupted (SIGINT) before it ended, on 1 host: ')
    planned = end_description("Deploy", hosts[:1], log.summary(hosts[:1], set(), set(), set(), set(), False), CONTEXT, check_mode=True)
    assert "ran in check mode" in planned and "would change" in planned and 'Would change: "Task task0"' in planned
