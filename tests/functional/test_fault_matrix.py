"""The delivery guarantees under faults, in small: four cases of the fault matrix (tools/fault_matrix.py), run by pytest.

Each case is a real ansible-playbook run (2 plays x 5 local hosts, the callback on, the push URL vaulted)
against the local receiver with the fault injected, then a recovery run with the endpoint healthy and the
same spool. fault_matrix.check checks every guarantee (no event lost after recovery, none twice, Processing
before Done, the playbook's return code unchanged, the integration key nowhere in the output, the -vvvv
log or the spool, the spool private); the tests add what each case must show. The full matrix, with wall
times, is ``python bench/faults.py`` (docs/docsite/rst/delivery.rst).
"""
# pylint: disable=missing-function-docstring,redefined-outer-name,import-error

import fault_matrix as faults  # tools/ (tests/conftest.py puts it on sys.path)
import pytest

# The end of a run with a dead endpoint waits at most flush_timeout; this much more is allowed for a busy machine.
SLACK = 2.0


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """One receiver and its projects (vaulted once) for the module's cases."""
    with faults.Context(tmp_path_factory.mktemp("faults")) as ctx:
        yield ctx


def run(matrix, case_id):
    trial = faults.run_trial(matrix, faults.CASES_BY_ID[case_id], 1)
    assert not trial.problems, "\n".join(trial.problems)
    expected = faults.EVENTS_PER_RUN
    assert (trial.rc, trial.sent, trial.received + trial.refused_warned, trial.duplicates) == (0, expected, expected, 0)
    assert not trial.leaks and not trial.order
    return trial


def test_transient_503_is_retried_within_the_run(matrix):
    trial = run(matrix, "503")
    assert trial.faulted == faults.DEFAULT_TRANSIENT
    assert trial.requests == faults.EVENTS_PER_RUN + faults.DEFAULT_TRANSIENT
    assert trial.received == faults.EVENTS_PER_RUN
    assert trial.spooled == 0 and trial.warnings == []


@pytest.mark.parametrize("case_id", ["blackhole", "refused"])
def test_dead_endpoint_delays_by_at_most_the_flush_timeout_then_the_next_run_delivers(matrix, case_id):
    trial = run(matrix, case_id)
    assert trial.spooled == faults.EVENTS_PER_RUN
    assert trial.received == faults.EVENTS_PER_RUN  # all of them by the recovery run, with their own event_time
    assert len(trial.warnings) == 1 and "spooled" in trial.warnings[0], trial.warnings
    assert trial.flush <= faults.DEFAULT_FLUSH_TIMEOUT + 0.5
    assert trial.tail is not None and trial.tail <= faults.DEFAULT_FLUSH_TIMEOUT + SLACK


def test_permanent_401_is_not_retried_and_is_one_warning_at_the_end(matrix):
    trial = run(matrix, "401")
    assert trial.requests == trial.faulted == faults.EVENTS_PER_RUN
    assert trial.received == 0 and trial.spooled == 0
    # One warning for the kind of refusal and endpoint, counting the events and quoting their request_ids.
    assert len(trial.warnings) == 1, trial.warnings
    assert trial.warnings[0].startswith("Flashduty refused %d change events at " % faults.EVENTS_PER_RUN)
    assert "HTTP 401 Unauthorized" in trial.warnings[0]
    assert trial.refused_warned == faults.EVENTS_PER_RUN
