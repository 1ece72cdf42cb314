"""Hostile servers: every request is bounded by a wall-clock deadline, and a cut answer is retried.

Real ansible-playbook runs against the local receiver answering one byte every 0.5 s (``trickle_headers``,
``trickle_body``), with a chunked body that never ends (``endless_chunked``), or with a header block cut
short (``cut_headers``; tools/flashduty_receiver.py). A per-read socket timeout never fires against the
slow ones: only a deadline on the whole request ends them.

- The task (timeout 2, retries 1, total_timeout 6) fails naming the deadline that ended it (each attempt's
  2 s timeout; with timeout 4 the second attempt is cut by the total_timeout), and takes at most
  total_timeout + 1 s more than the same task against a healthy receiver.
- The callback's end-of-run wait stays within flush_timeout + 1 s, the playbook's return code is
  unchanged, the events are spooled and the next run delivers each exactly once (fault_matrix.run_trial,
  the fault matrix's cases of the same names).
- A header block cut once is retried: the task succeeds, the callback delivers every event once.

The integration key appears in no output, log, result or spool.
"""
# pylint: disable=missing-function-docstring,redefined-outer-name,import-error

import json

import fault_matrix as faults  # tools/ (tests/conftest.py puts it on sys.path)
import pytest

TOTAL_TIMEOUT = 6
FLUSH_TIMEOUT = 3
SLACK = 1.0  # the bound past each deadline (total_timeout, flush_timeout)
SLOW_KINDS = ("trickle_headers", "trickle_body", "endless_chunked")
# A run that has not ended by then hangs: killed, and the test fails saying so (a per-read timeout alone trickles for minutes).
RUN_TIMEOUT = 30
# What the task's message says ended the last attempt (plugins/module_utils/_client.py).
TIMED_OUT = "no complete answer from 127.0.0.1 within {limit}"

TASK_PLAYBOOK = f"""---
- name: Report one change
  hosts: web1
  gather_facts: false
  tasks:
    - name: Note the time before the task
      ansible.builtin.set_fact:
        started_at: "{{{{ now().timestamp() }}}}"

    - name: Tell Flashduty
      flashcat.flashduty.change_event:
        change_key: hostile-server
        change_status: Done
        title: Deploy behind a hostile server
        timeout: "{{{{ lookup('ansible.builtin.env', 'TASK_TIMEOUT') }}}}"
        retries: 1
        total_timeout: {TOTAL_TIMEOUT}
      register: sent
      ignore_errors: true

    - name: Save the result and how long the task took
      ansible.builtin.copy:
        content: "{{{{ {{'sent': sent, 'seconds': now().timestamp() - (started_at | float)}} | to_json }}}}"
        dest: "{{{{ lookup('ansible.builtin.env', 'RESULTS_FILE') }}}}"
        mode: "0600"
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The fault matrix's context (a receiver and its project, the push URL vaulted) with task.yml added,
    flush_timeout 3 s for the callback, a cut fault that clears after one request; and the task's time
    against the healthy receiver (``hostile.healthy_seconds``)."""
    with faults.Context(tmp_path_factory.mktemp("hostile"), transient_failures=1, run_timeout=RUN_TIMEOUT,
                        callback_env={"FLASHDUTY_FLUSH_TIMEOUT": str(FLUSH_TIMEOUT)}) as ctx:
        (ctx.project() / "task.yml").write_text(TASK_PLAYBOOK, encoding="utf-8")
        _run, results = run_task(ctx, "healthy")
        assert results["sent"].get("changed") and not results["sent"].get("failed"), results
        ctx.healthy_seconds = results["seconds"]
        yield ctx


def run_task(ctx, name, timeout=2):
    """task.yml (callback off, the task's ``timeout`` as given) against the receiver as it is now:
    ``(Run, saved results)``; the key in no output."""
    out_dir = ctx.workdir / "task" / name
    results_file = out_dir / "results.json"
    run = faults.run_playbook(ctx.project(), "task.yml", out_dir, name, callback=False, timeout=RUN_TIMEOUT,
                              extra_env={"RESULTS_FILE": str(results_file), "TASK_TIMEOUT": str(timeout)})
    assert run.rc != faults.KILLED, (f"ansible-playbook was still running after {RUN_TIMEOUT} s and was killed: the task did not "
                                     f"end within its {TOTAL_TIMEOUT} s total_timeout (see {out_dir})")
    assert run.rc == 0 and results_file.exists(), f"rc {run.rc}\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    assert faults.key_places(ctx.key, [(name, run)], out_dir / "no-spool", out_dir) == []
    return run, json.loads(results_file.read_text(encoding="utf-8"))


def unexpected(result):
    """A failure from an exception in the plugin rather than its own message (see test_change_event.py)."""
    msg = result.get("msg", "")
    return msg.startswith(("Task failed:", "Unexpected failure")) or "Traceback" in str(result.get("exception", ""))


# --------------------------------------------------------------------------- the task


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind, timeout, limit", [(kind, 2, "the timeout of 2.0 s") for kind in SLOW_KINDS] + [
    # 4 s, a backoff under 0.5 s, then a second attempt the total_timeout cuts at 6 s.
    ("endless_chunked", 4, f"the total_timeout of {TOTAL_TIMEOUT:.1f} s"),
])
def test_task_against_a_slow_answer_fails_by_its_deadlines(hostile, kind, timeout, limit):
    receiver = hostile.receiver
    receiver.reset()
    receiver.add_fault(kind, times=None)
    run, results = run_task(hostile, f"{kind}-{timeout}", timeout)
    sent = results["sent"]
    assert sent.get("failed") and not unexpected(sent), sent
    assert TIMED_OUT.format(limit=limit) in sent["msg"] and "after 2 attempts" in sent["msg"], sent["msg"]
    assert "fatal: [web1]: FAILED!" in run.stdout
    took = results["seconds"] - hostile.healthy_seconds
    assert took <= TOTAL_TIMEOUT + SLACK, f"the task took {took:.1f} s longer than against a healthy receiver"
    assert [entry["fault"] for entry in receiver.requests] == [kind, kind]
    assert receiver.events == []


@pytest.mark.timeout(120)
def test_task_retries_a_cut_header_block_and_delivers_once(hostile):
    receiver = hostile.receiver
    receiver.reset()
    receiver.add_fault("cut_headers", times=1)
    _run, results = run_task(hostile, "cut_headers")
    sent = results["sent"]
    assert sent.get("changed") and not sent.get("failed"), sent.get("msg", sent)
    (record,) = receiver.records
    assert sent["request_id"] == record["request_id"] and record["event"]["change_key"] == "hostile-server"
    assert [entry["fault"] for entry in receiver.requests] == ["cut_headers", None]


# --------------------------------------------------------------------------- the callback


def trial(hostile, case_id):
    """One fault-matrix trial (first run with the fault, recovery run healthy, same spool), every guarantee checked."""
    result = faults.run_trial(hostile, faults.CASES_BY_ID[case_id], 1)
    timing = (f"end-of-run wait {'?' if result.tail is None else f'{result.tail:.1f}'} s, the callback's flushes "
              f"{'?' if result.flush is None else f'{result.flush:.1f}'} s in all, {result.spooled} events spooled")
    assert not result.problems, "\n".join(result.problems + [timing])
    expected = faults.EVENTS_PER_RUN
    assert (result.rc, result.recovery_rc, result.sent, result.received, result.duplicates) == (0, 0, expected, expected, 0)
    assert not result.leaks and result.left_in_spool == 0
    return result


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", SLOW_KINDS)
def test_callback_against_a_slow_answer_waits_at_most_the_flush_timeout_then_spools(hostile, kind):
    result = trial(hostile, kind)
    assert result.spooled == faults.EVENTS_PER_RUN  # none delivered by the first run, all of them by the next
    assert result.faulted == result.requests > 0
    assert result.tail is not None and result.tail <= FLUSH_TIMEOUT + SLACK, f"end-of-run wait {result.tail:.1f} s"
    assert result.flush is not None and result.flush <= FLUSH_TIMEOUT + 0.5
    assert len(result.warnings) == 1 and "spooled" in result.warnings[0], result.warnings


@pytest.mark.timeout(150)
def test_callback_retries_a_cut_header_block_and_delivers_every_event_once(hostile):
    result = trial(hostile, "cut_headers")
    assert result.faulted == 1 and result.requests == faults.EVENTS_PER_RUN + 1
    assert result.spooled == 0 and result.warnings == []
