"""Unit tests of the change_events callback's bookkeeping, with fake plays, results and sender.

Real playbooks are in tests/functional/test_callback.py; these cover what a real run cannot
reach cheaply or deterministically: signal deferral, forked workers, internal errors, serial
batches, the cost of a task result.
"""
# pylint: disable=missing-function-docstring,protected-access,too-few-public-methods

import signal

import pytest

from ansible_collections.flashcat.flashduty.plugins.callback import change_events
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _play_vars, _run_end
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._sender import FlushReport

URL_A = "https://flashduty.example.com/event/push/change/standard?integration_key=aaaa1111"
URL_B = "https://flashduty.example.com/event/push/change/standard?integration_key=bbbb2222"

OPTIONS = dict(enabled=True, status_map=None, per_host=False, changed_only=False, check_mode="skip", label_vars=[], task_names=True, flush_timeout=1.0,
               max_rate=40.0, spool_dir=None, timeout=10.0, retries=3, validate_certs=True, ca_path=None, push_url=None,
               integration_key=None, api_url=None)


class FakeDisplay:
    verbosity = 0

    def __init__(self):
        self.warnings = []

    def warning(self, message, *args, **kwargs):
        self.warnings.append(message)

    def display(self, *args, **kwargs):
        pass

    vv = vvv = vvvv = display


class FakeSender:
    def __init__(self):
        self.calls = []
        self.messages = []

    def submit(self, endpoint, event):
        self.calls.append(("submit", endpoint.url, event))

    def replay(self, endpoint):
        self.calls.append(("replay", endpoint.url))

    def flush(self, timeout, write_ahead=False):
        assert write_ahead, "the end of the run writes what is pending to the spool before it waits"
        self.calls.append(("flush", timeout))
        return FlushReport()

    def cut(self):
        self.calls.append(("cut",))

    def drain_messages(self):
        messages, self.messages = self.messages, []
        return messages

    def close(self):
        self.calls.append(("close",))

    def events(self, url=None):
        return [call[2] for call in self.calls if call[0] == "submit" and (url is None or call[1] == url)]


class Named:
    def __init__(self, name):
        self.name = name


class FakeHost(Named):
    def __init__(self, name, groups):
        super().__init__(name)
        self._groups = [Named(group) for group in groups + ["all"]]

    def get_groups(self):
        return self._groups


class FakeInventory:
    def __init__(self, batch):
        self.batch = batch

    def get_hosts(self, pattern, order=None):
        return FakeReader.hosts if self.batch is None else self.batch


class FakePlay:
    def __init__(self, name="Deploy", hosts="web", uuid="play-1", check_mode=False, batch=None):
        self.batch = batch  # the hosts of this serial batch (FakeHost objects), or None for every target
        self.name = name
        self.hosts = [hosts]
        self._uuid = uuid
        self.check_mode = check_mode
        self.order, self.max_fail_percentage = None, None
        self._removed_hosts = []
        self.vars = {}

    def get_name(self):
        return self.name

    def get_variable_manager(self):
        manager = FakeVariableManager()
        manager._inventory = FakeInventory(self.batch)
        return manager


class FakeVariableManager:
    extra_vars = {}


class FakeReader:
    """Stands for _play_vars.PlayReader: hosts and per-host-set variables given by the test."""

    hosts = []
    values = {}        # host name -> variables (the first host of each set is asked)
    problems = {}      # host name -> [VariableProblem]
    calls = 0

    def __init__(self, play, names=()):
        self.play = play
        self.variable_manager = FakeVariableManager()

    def target_hosts(self, exclude=()):
        return [host for host in FakeReader.hosts if host.name not in exclude]

    def classes(self, hosts):
        sets = {}
        for host in hosts:
            sets.setdefault(tuple(group.name for group in host.get_groups()), []).append(host)
        return list(sets.values())

    def variables(self, host, decrypted=None):
        FakeReader.calls += 1
        return dict(FakeReader.values.get(host.name, {})), list(FakeReader.problems.get(host.name, []))


class FakeTask:
    def __init__(self, name="Deploy it", uuid="task-1", ignore_unreachable=False, no_log=False, any_errors_fatal=False):
        self.name = name
        self._uuid = uuid
        self.ignore_unreachable = ignore_unreachable
        self.no_log = no_log
        self.any_errors_fatal = any_errors_fatal
        self.run_once = False
        self.action = "ansible.builtin.debug"
        self.implicit = False

    def get_name(self):
        return self.name


TASK = FakeTask()


class Result:
    """A task result as callbacks get it: ``_host``, ``_task``, ``_result`` on every ansible-core, ``host``, ``task`` and
    ``result`` too from 2.19 on."""

    def __init__(self, host, changed=False, ignore_unreachable=False, task=None, data=None):
        self.host = self._host = host
        self.task = self._task = task or (FakeTask(ignore_unreachable=True) if ignore_unreachable else TASK)
        self.result = self._result = data if data is not None else {"msg": "it broke"}
        self._changed = changed

    def is_changed(self):
        return self._changed


@pytest.fixture(autouse=True)
def fake_reader(monkeypatch):
    monkeypatch.setattr(_play_vars, "PlayReader", FakeReader)
    FakeReader.hosts = [FakeHost("web1", ["web", "prod"]), FakeHost("web2", ["web", "prod"]), FakeHost("stg1", ["staging"])]
    FakeReader.values = {"web1": {"flashduty_push_url": URL_A}, "stg1": {"flashduty_push_url": URL_A}}
    FakeReader.problems = {}
    FakeReader.calls = 0
    monkeypatch.setattr(_run_end.RunEnd, "install", lambda self: None)


def make(**options):
    callback = change_events.CallbackModule(display=FakeDisplay())
    values = dict(OPTIONS, **options)
    callback.get_option = values.__getitem__
    callback._read_options()
    sender = FakeSender()

    def get_sender():
        callback._sender = sender
        return sender

    callback._get_sender = get_sender
    callback.fake = sender
    return callback


def open_play(callback, play, task=TASK):
    """A play starts, then its first task: the changes start with it."""
    callback.v2_playbook_on_play_start(play)
    callback.v2_playbook_on_task_start(task, False)


def statuses(sender, url=None):
    return [(event["change_key"].rsplit("-", 1)[-1], event["change_status"]) for event in sender.events(url)]


# ---------------------------------------------------------------- lifecycle


def test_one_change_for_all_serial_batches():
    callback = make()
    batch1, batch2 = FakePlay(), FakePlay()
    open_play(callback, batch1)
    callback.v2_runner_on_ok(Result(FakeReader.hosts[0], changed=True))
    callback.v2_playbook_on_play_start(batch2)  # same _uuid: the next batch
    callback.v2_runner_on_ok(Result(FakeReader.hosts[1]))
    callback.v2_playbook_on_stats(None)
    assert statuses(callback.fake) == [("1", "Processing"), ("1", "Done")]
    done = callback.fake.events()[-1]
    assert done["labels"]["changed_count"] == "1" and done["labels"]["ok_count"] == "3"
    assert FakeReader.calls == 2  # two host sets (web/prod and staging), resolved once for the play


def test_rescued_failures_do_not_count_and_later_plays_skip_dead_hosts():
    callback = make()
    web1, web2, stg1 = FakeReader.hosts
    first = FakePlay()
    open_play(callback, first)
    first._removed_hosts.append("web2")
    callback.v2_runner_on_failed(Result(web2))                     # stands: web2 is in the play's removed hosts
    callback.v2_runner_on_failed(Result(web1))                     # rescued: not in them
    callback.v2_runner_on_failed(Result(stg1), ignore_errors=True)  # ignored
    callback.v2_runner_on_unreachable(Result(stg1, ignore_unreachable=True))
    open_play(callback, FakePlay(name="Next", uuid="play-2"))
    callback.v2_playbook_on_stats(None)
    events = callback.fake.events()
    done = events[1]
    assert (done["change_status"], done["labels"]["outcome"], done["labels"]["failed_hosts"]) == ("Done", "partially_failed", "web2")
    assert "rescued=1" in done["description"] and "ignored=2" in done["description"]
    assert events[2]["labels"]["hosts"] == "web1,stg1"


def test_unreachable_everywhere_is_a_failed_outcome_with_mapped_status():
    callback = make(status_map="failed=Canceled")
    open_play(callback, FakePlay())
    for host in FakeReader.hosts:
        callback.v2_runner_on_unreachable(Result(host))
    callback.v2_playbook_on_stats(None)
    done = callback.fake.events()[-1]
    assert (done["change_status"], done["labels"]["outcome"], done["labels"]["unreachable_hosts"]) == ("Canceled", "failed", "web1,web2,stg1")


def test_at_exit_without_stats_cancels_the_open_change_once():
    callback = make()
    open_play(callback, FakePlay())
    callback._end.at_exit()
    callback._end.at_exit()
    assert statuses(callback.fake) == [("1", "Processing"), ("1", "Canceled")]
    assert "the run stopped before the play ended" in callback.fake.events()[-1]["description"]
    assert callback.fake.calls[-2:] == [("flush", 1.0 - change_events.FLUSH_RESERVE), ("close",)]


def test_at_exit_after_stats_sends_nothing_more():
    callback = make()
    open_play(callback, FakePlay())
    callback.v2_playbook_on_stats(None)
    count = len(callback.fake.events())
    callback._end.at_exit()
    assert len(callback.fake.events()) == count == 2


def test_check_mode_is_skipped_or_planned():
    callback = make()
    open_play(callback, FakePlay(check_mode=True))
    callback.v2_runner_on_ok(Result(FakeReader.hosts[0], changed=True))
    callback.v2_playbook_on_stats(None)
    assert callback.fake.events() == [] and callback._sender is None

    callback = make(check_mode="planned")
    open_play(callback, FakePlay(check_mode=True))
    callback.v2_runner_on_ok(Result(FakeReader.hosts[0], changed=True))
    callback.v2_playbook_on_stats(None)
    (planned,) = callback.fake.events()
    assert planned["change_status"] == "Planned" and planned["labels"]["check_mode"] == "true"


def test_changed_only_holds_processing_with_its_own_time(monkeypatch):
    clock = iter([1000.0, 1100.0, 1200.0, 1300.0])
    monkeypatch.setattr(change_events.time, "time", lambda: next(clock))
    callback = make(changed_only=True)
    open_play(callback, FakePlay())
    assert callback.fake.events() == []
    callback.v2_runner_on_ok(Result(FakeReader.hosts[0], changed=True))
    callback.v2_playbook_on_play_start(FakePlay(uuid="play-2"))  # ends play 1 (changed), starts play 2
    callback.v2_playbook_on_stats(None)                        # ends play 2 (nothing changed): nothing sent
    # Processing when the play started (1000), though sent only with the end; the task start took 1100 (per-play mode
    # does not time task results).
    assert [(event["change_status"], event["event_time"]) for event in callback.fake.events()] == [("Processing", 1000), ("Done", 1200)]


def test_per_host_mode_keys_and_labels():
    callback = make(per_host=True)
    open_play(callback, FakePlay())
    events = callback.fake.events()
    assert [event["change_key"].split("-", 2)[2] for event in events] == ["1-web1", "1-web2", "1-stg1"]
    assert [event["labels"]["host"] for event in events] == ["web1", "web2", "stg1"]
    assert events[2]["labels"]["groups"] == "staging"


def test_each_push_url_gets_its_hosts_and_is_replayed_first():
    FakeReader.values["stg1"] = {"flashduty_push_url": URL_B, "flashduty_labels": {"env": "staging"}}
    callback = make()
    open_play(callback, FakePlay())
    calls = [call[:2] for call in callback.fake.calls]
    assert calls == [("replay", URL_A), ("replay", URL_B), ("submit", URL_A), ("submit", URL_B)]
    assert callback.fake.events(URL_A)[0]["labels"]["hosts"] == "web1,web2"
    assert callback.fake.events(URL_B)[0]["labels"]["hosts"] == "stg1"
    assert callback.fake.events(URL_B)[0]["labels"]["env"] == "staging"
    open_play(callback, FakePlay(uuid="play-2"))
    assert [call for call in callback.fake.calls if call[0] == "replay"] == [("replay", URL_A), ("replay", URL_B)]  # once per URL


def test_muted_hosts_and_plays():
    FakeReader.values["stg1"] = {"flashduty_push_url": URL_A, "flashduty_enabled": False}
    callback = make()
    open_play(callback, FakePlay())
    assert callback.fake.events()[0]["labels"]["hosts"] == "web1,web2"
    FakeReader.values["web1"]["flashduty_enabled"] = "no"
    open_play(callback, FakePlay(uuid="play-2"))
    assert len(callback.fake.events()) == 2  # Done of play 1 only


def test_variable_problems_warn_once_and_do_not_report():
    FakeReader.problems = {"web1": [_play_vars.VariableProblem("flashduty_push_url", "Attempting to decrypt but no vault secrets found")],
                           "stg1": [_play_vars.VariableProblem("flashduty_push_url", "Attempting to decrypt but no vault secrets found")]}
    callback = make()
    open_play(callback, FakePlay())
    open_play(callback, FakePlay(uuid="play-2"))
    callback.v2_playbook_on_stats(None)
    assert callback.fake.events() == []
    (warning,) = callback._display.warnings
    assert "flashduty_push_url" in warning and "vault password" in warning


def test_bad_link_is_dropped_with_a_warning_and_label_problems_are_named():
    FakeReader.values["web1"].update(flashduty_change_link="not a url", flashduty_labels={"ok": 1, "not ok": 2})
    callback = make()
    open_play(callback, FakePlay())
    event = callback.fake.events()[0]
    assert "link" not in event and event["labels"]["ok"] == "1" and "not ok" not in event["labels"]
    assert event["labels"]["not_ok"] == "2"  # rewritten, not dropped
    assert len(callback._display.warnings) == 2


def test_a_refused_change_key_is_named_short_and_masked():
    FakeReader.values["web1"].update(flashduty_change_key="k" * 5000 + "aaaa1111")
    callback = make()
    open_play(callback, FakePlay())
    assert callback.fake.events() == []
    (warning,) = callback._display.warnings
    assert "change_key: is 5004 characters long; at most 256 are allowed" in warning  # its key masked first
    assert len(warning) < 400 and "aaaa1111" not in warning


def test_internal_errors_become_one_warning_never_an_exception(monkeypatch):
    callback = make()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(callback, "_open_changes", broken)
    open_play(callback, FakePlay())
    open_play(callback, FakePlay(uuid="play-2"))
    callback.v2_runner_on_ok(object())  # not even a result
    assert len([w for w in callback._display.warnings if "RuntimeError: boom" in w]) == 1
    assert all("Traceback" not in warning for warning in callback._display.warnings)


def test_sender_messages_are_shown_between_plays_and_at_the_end_never_under_a_task():
    callback = make()
    open_play(callback, FakePlay())
    callback.fake.messages.append("Flashduty spool not replayed: cannot read the Flashduty spool directory /x: denied")
    callback.v2_playbook_on_task_start(object(), False)
    callback.v2_playbook_on_handler_task_start(object())
    assert callback._display.warnings == []  # not between a task's header and its results
    callback.v2_playbook_on_play_start(FakePlay(name="Verify", uuid="play-2"))
    assert callback._display.warnings == ["Flashduty spool not replayed: cannot read the Flashduty spool directory /x: denied"]
    callback.fake.messages.append("Flashduty refused 8 change events at https://example.com/x?integration_key=****: HTTP 401")
    callback.v2_playbook_on_stats(None)
    assert callback._display.warnings[1:] == [
        "Flashduty refused 8 change events at https://example.com/x?integration_key=****: HTTP 401"]


def test_disabled_and_bad_status_map():
    callback = change_events.CallbackModule(display=FakeDisplay())
    callback.get_option = dict(OPTIONS, enabled=False).__getitem__
    callback._read_options()
    assert callback.disabled
    callback = make(status_map="failed=Sideways")
    assert callback._maker._status_map["failed"] == "Done"
    assert len(callback._display.warnings) == 1 and "Sideways" in callback._display.warnings[0]


def test_a_play_where_no_task_ran_is_no_change():
    callback = make()
    callback.v2_playbook_on_play_start(FakePlay())
    facts = FakeTask(name="Gathering Facts", uuid="facts")
    facts.implicit, facts.action = True, "ansible.builtin.gather_facts"
    callback.v2_playbook_on_task_start(facts, False)  # fact gathering alone changes nothing
    callback.v2_runner_on_ok(Result(FakeReader.hosts[0], task=facts))
    callback.v2_playbook_on_stats(None)
    assert callback.fake.events() == []


def test_per_host_changes_have_their_own_labels_batches_and_times(monkeypatch):
    clock = iter(range(1000, 2000, 100))
    monkeypatch.setattr(change_events.time, "time", lambda: float(next(clock)))
    web1, web2, stg1 = FakeReader.hosts
    FakeReader.values["web1"]["flashduty_labels"] = {"app_version": "1.0"}
    FakeReader.values["stg1"]["flashduty_labels"] = {"app_version": "2.0", "team": "qa"}
    callback = make(per_host=True)
    open_play(callback, FakePlay(batch=[web1]))                 # 1000 play, 1100 its first task
    callback.v2_runner_on_ok(Result(web1, changed=True))        # 1200
    open_play(callback, FakePlay(batch=[web2, stg1]))           # 1300 its first task
    callback.v2_runner_on_ok(Result(stg1))                      # 1400
    callback.v2_runner_on_ok(Result(web2, changed=True))        # 1500
    callback.v2_playbook_on_stats(None)
    events = {(event["labels"]["host"], event["change_status"]): event for event in callback.fake.events()}
    assert {host: (events[host, "Processing"]["event_time"], events[host, "Done"]["event_time"]) for host in ("web1", "web2", "stg1")} == {
        "web1": (1100, 1200), "web2": (1300, 1500), "stg1": (1300, 1400)}
    assert events["web1", "Done"]["labels"]["app_version"] == "1.0" and "team" not in events["web1", "Done"]["labels"]
    assert events["web2", "Done"]["labels"]["app_version"] == "1.0"
    assert (events["stg1", "Done"]["labels"]["app_version"], events["stg1", "Done"]["labels"]["team"]) == ("2.0", "qa")
    assert 'Changed: "Deploy it" on web1' in events["web1", "Done"]["description"]
    assert "Changed" not in events["stg1", "Done"]["description"]


def test_a_failed_no_log_task_shows_its_name_but_never_its_message():
    callback = make()
    play = FakePlay()
    open_play(callback, play)
    play._removed_hosts.extend(["web1", "web2"])  # failures that stand
    web1, web2, dummy = FakeReader.hosts
    secret = FakeTask(name="Use the token", uuid="task-2", no_log=True)
    callback.v2_runner_on_failed(Result(web1, task=secret, data={"censored": "the output has been hidden due to no_log"}))
    leaky = FakeTask(name="Call the API", uuid="task-3")
    callback.v2_runner_on_failed(Result(web2, task=leaky, data={"msg": "POST %s failed" % URL_A}))
    callback.v2_playbook_on_stats(None)
    description = callback.fake.events()[-1]["description"]
    assert 'Failed: "Use the token" on web1: hidden by no_log' in description
    assert 'Failed: "Call the API" on web2: POST ' in description and "aaaa1111" not in description


# ---------------------------------------------------------------- signals


def test_sigterm_inside_a_callback_method_waits_for_its_end(monkeypatch):
    callback = make()
    redelivered = []
    monkeypatch.setattr(callback._end, "redeliver", redelivered.append)
    open_play(callback, FakePlay())
    original = callback._maker.start_events

    def start_while_signalled(state, *args, **kwargs):
        result = original(state, *args, **kwargs)
        if state.index == 2:
            callback._end.on_signal(signal.SIGTERM, None)  # arrives while the callback is busy: deferred
            assert redelivered == []
        return result

    monkeypatch.setattr(callback._maker, "start_events", start_while_signalled)
    open_play(callback, FakePlay(uuid="play-2"))
    assert redelivered == [signal.SIGTERM]
    assert statuses(callback.fake) == [("1", "Processing"), ("1", "Done"), ("2", "Processing"), ("2", "Canceled")]
    assert "(SIGTERM)" in callback.fake.events()[-1]["description"]
    assert callback.fake.calls[-2:] == [("flush", 1.0 - change_events.FLUSH_RESERVE), ("close",)]
    callback.v2_playbook_on_stats(None)  # the run may go on briefly: nothing more is sent
    assert len(callback.fake.events()) == 4


def test_a_forked_worker_only_passes_the_signal_on(monkeypatch):
    callback = make()
    open_play(callback, FakePlay())
    redelivered = []
    monkeypatch.setattr(callback._end, "redeliver", redelivered.append)
    monkeypatch.setattr(_run_end.os, "getpid", lambda: -1)
    callback._end.on_signal(signal.SIGTERM, None)
    callback._end.at_exit()
    assert redelivered == [signal.SIGTERM]
    assert statuses(callback.fake) == [("1", "Processing")]


def test_sigint_is_noted_and_passed_to_the_previous_handler():
    callback = make()
    seen = []
    callback._end._previous[signal.SIGINT] = lambda signum, frame: seen.append(signum)
    callback._end.on_signal(signal.SIGINT, None)
    assert seen == [signal.SIGINT] and callback._end.interrupted_by == "SIGINT"


def test_a_signal_during_the_end_of_the_run_cuts_the_wait_and_raises_nothing(monkeypatch):
    callback = make()
    redelivered = []
    monkeypatch.setattr(callback._end, "redeliver", redelivered.append)
    callback._end._previous[signal.SIGINT] = lambda signum, frame: pytest.fail("Ctrl-C at the end must not stop the end")
    open_play(callback, FakePlay())
    flush = callback.fake.flush

    def flush_while_signalled(timeout, write_ahead=False):
        if not redelivered and ("cut",) not in callback.fake.calls:
            callback._end.on_signal(signal.SIGINT, None)   # Ctrl-C after PLAY RECAP
            callback._end.on_signal(signal.SIGTERM, None)  # and SIGTERM: the process still ends by it, after the flush
            assert redelivered == []
        return flush(timeout, write_ahead)

    monkeypatch.setattr(callback.fake, "flush", flush_while_signalled)
    callback.v2_playbook_on_stats(None)
    assert callback.fake.calls[-5:-2] == [("cut",), ("cut",), ("flush", 1.0 - change_events.FLUSH_RESERVE)]
    assert callback.fake.calls[-2:] == [("flush", 1.0 - change_events.FLUSH_RESERVE), ("close",)]  # SIGTERM: finish, then die
    assert redelivered == [signal.SIGTERM] and statuses(callback.fake) == [("1", "Processing"), ("1", "Done")]
    assert callback._display.warnings == []


def test_ctrl_c_in_the_next_playbook_of_the_command_line_still_stops_the_run():
    callback = make()
    seen = []
    callback._end._previous[signal.SIGINT] = lambda signum, frame: seen.append(signum)
    open_play(callback, FakePlay())
    callback.v2_playbook_on_stats(None)  # the first playbook's end: Ansible goes on with the next one
    callback.v2_playbook_on_play_start(FakePlay(uuid="play-2"))
    callback._end.on_signal(signal.SIGINT, None)
    assert seen == [signal.SIGINT] and ("cut",) not in callback.fake.calls


@pytest.mark.parametrize("playbooks", [1, 2])
def test_ctrl_c_after_a_recap_stops_the_run_only_if_more_playbooks_follow(monkeypatch, playbooks):
    monkeypatch.setattr(change_events.context, "CLIARGS", {"args": ("site.yml", "verify.yml")[:playbooks]})
    callback = make()
    callback.v2_playbook_on_start(object())
    open_play(callback, FakePlay())
    flush = callback.fake.flush

    def flush_while_signalled(timeout, write_ahead=False):
        callback._end.on_signal(signal.SIGINT, None)
        return flush(timeout, write_ahead)

    monkeypatch.setattr(callback.fake, "flush", flush_while_signalled)
    if playbooks == 1:
        callback.v2_playbook_on_stats(None)  # the end of the run: it ends as it would have, with its exit code
    else:
        with pytest.raises(KeyboardInterrupt):  # the next playbook is not run, as without the callback
            callback.v2_playbook_on_stats(None)
    assert statuses(callback.fake) == [("1", "Processing"), ("1", "Done")] and ("cut",) in callback.fake.calls


def test_a_second_signal_after_the_first_ctrl_c_only_cuts(monkeypatch):
    callback = make()
    redelivered = []
    monkeypatch.setattr(callback._end, "redeliver", redelivered.append)
    open_play(callback, FakePlay())
    flush = callback.fake.flush

    def flush_while_signalled(timeout, write_ahead=False):
        callback._end.on_signal(signal.SIGINT, None)
        callback._end.on_signal(signal.SIGTERM, None)
        return flush(timeout, write_ahead)

    monkeypatch.setattr(callback.fake, "flush", flush_while_signalled)
    callback._end.interrupted_by = "SIGINT"
    callback._end.at_exit()  # the first Ctrl-C ended the run: the Canceled event, then the bounded wait
    assert statuses(callback.fake) == [("1", "Processing"), ("1", "Canceled")]
    assert callback.fake.calls[-4:] == [("cut",), ("cut",), ("flush", 1.0 - change_events.FLUSH_RESERVE), ("close",)]
    assert redelivered == []  # the process is exiting already, with Ansible's code


def test_core_resetting_ctrl_c_to_its_default_does_not_unhook_us(monkeypatch):
    callback = make()
    installed = []
    monkeypatch.setattr(_run_end.signal, "getsignal", lambda signum: signal.SIG_DFL)
    monkeypatch.setattr(_run_end.signal, "signal", lambda signum, handler: installed.append((signum, handler)))

    def core_handler(signum, frame):  # ansible-core 2.19+: back to the default action, then KeyboardInterrupt
        raise KeyboardInterrupt()

    callback._end._previous[signal.SIGINT] = core_handler
    with pytest.raises(KeyboardInterrupt):
        callback._end.on_signal(signal.SIGINT, None)
    assert installed == [(signal.SIGINT, callback._end.on_signal)]
    assert callback._end._previous[signal.SIGINT] == signal.SIG_DFL  # a second Ctrl-C mid-play kills, as without us


def test_redeliver_restores_the_previous_handler(monkeypatch):
    callback = make()
    installed = []
    killed = []
    monkeypatch.setattr(_run_end.signal, "signal", lambda signum, handler: installed.append((signum, handler)))
    monkeypatch.setattr(_run_end.os, "kill", lambda pid, signum: killed.append(signum))
    previous = object()
    callback._end._previous[signal.SIGTERM] = previous
    callback._end.redeliver(signal.SIGTERM)
    assert installed == [(signal.SIGTERM, previous)] and killed == [signal.SIGTERM]
