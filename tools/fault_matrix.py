"""The fault matrix's machinery: a project, a receiver with a fault injected, one case run and checked.

Shared by the fault-matrix tests (tests/functional/test_fault_matrix.py) and the benchmark that prints
the whole matrix with wall times (bench/faults.py, whose docstring describes the method). Standard
library only; import it with ``tools/`` on ``sys.path`` (tests/conftest.py puts it there).

A case (``CASES``) is one fault kind. ``run_trial(ctx, case, index)`` plays it once: a first
``ansible-playbook`` run (2 plays x 5 local hosts, the callback on, the push URL vaulted, a private
spool) against the ``Context``'s receiver with the fault injected, then a recovery run with the endpoint
healthy and the same spool; ``check`` fills ``Trial.problems`` with every broken guarantee (an event lost
or delivered twice, the order broken, the integration key in an output, the log or the spool, the spool
readable by others, the playbook's return code changed).
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from collection_link import ansible_environment  # tools/ is on sys.path: the caller put it there
from flashduty_receiver import PUSH_PATH, Receiver, closed_port

CALLBACK = "flashcat.flashduty.change_events"
VAULT_PASSWORD = "fault matrix vault password"
FIRST_PLAYBOOK = "site.yml"
RECOVERY_PLAYBOOK = "recovery.yml"
PLAYS = 2
EVENTS_PER_RUN = 2 * PLAYS  # Processing + Done per play
DEFAULT_TRANSIENT = 3       # failures before a transient fault clears: the default retries (3) still recover
DEFAULT_FLUSH_TIMEOUT = 5.0  # the callback's default, which these runs keep
RUN_TIMEOUT = 180.0
KILLED = -9  # the rc of a run killed at its timeout
SUMMARY_RE = re.compile(r"Flashduty change events: (?P<counts>[^;\n]*); flush (?P<flush>[\d.]+) s(?:, timed out with (?P<pending>\d+) pending)?")
RECAP_RE = re.compile(r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) .*\| PLAY RECAP", re.MULTILINE)
COUNT_RE = re.compile(r"(\d+) (delivered|refused|spooled|dropped from the full spool|lost)")

INVENTORY = """---
# 5 local hosts in two groups; every play targets all of them.
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  children:
    web:
      hosts:
        web1:
        web2:
        web3:
    db:
      hosts:
        db1:
        db2:
"""

PLAYBOOK = """---
- name: Deploy the application
  hosts: all
  gather_facts: false
  tasks:
    - name: Reach the host
      ansible.builtin.ping:

    - name: Say what changed
      ansible.builtin.debug:
        msg: deployed on {{ inventory_hostname }}
      changed_when: true

- name: Verify the application
  hosts: all
  gather_facts: false
  tasks:
    - name: Reach the host
      ansible.builtin.ping:

    - name: Say it is fine
      ansible.builtin.debug:
        msg: verified {{ inventory_hostname }}
"""


# --------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    """One fault kind.

    ``mode``: ``transient`` (faults for the first requests, recovered within the run), ``outage`` (every
    request of the first run fails), ``permanent`` (refusals, not retried), ``slow`` (every answer of the
    first run comes ``latency`` seconds late). ``faults``: receiver fault rules (``times`` None is filled in
    for transient ones). ``refused``: events refused for good per run. ``duplicates_expected``: delivery is
    at least once there (an answer that comes after the flush deadline): duplicates are shown, not failed.
    """

    id: str
    label: str
    mode: str
    faults: tuple = ()
    refused: int = 0
    refused_port: bool = False
    latency: float = 0.0
    duplicates_expected: bool = False
    default: bool = True


def transient(kind, **rule):
    return dict(rule, kind=kind, times=None)


CASES = (
    Case("500", "HTTP 500, transient", "transient", (transient("status", status=500),)),
    Case("502", "HTTP 502, transient", "transient", (transient("status", status=502),)),
    Case("503", "HTTP 503, transient", "transient", (transient("status", status=503),)),
    Case("504", "HTTP 504, transient", "transient", (transient("status", status=504),)),
    Case("429", "HTTP 429, transient", "transient", (transient("ratelimit"),)),
    Case("429-retry-after", "HTTP 429 + Retry-After: 1, transient", "transient", (transient("ratelimit", retry_after=1),)),
    Case("reset", "connection reset, transient", "transient", (transient("reset"),)),
    Case("close", "closed without answer, transient", "transient", (transient("close"),)),
    Case("refused", "connection refused, whole run", "outage", refused_port=True),
    Case("blackhole", "black hole, whole run", "outage", (dict(kind="blackhole", times=None),)),
    # Hostile servers: only a wall-clock deadline per request ends these; a per-read timeout never fires.
    Case("trickle_headers", "headers 1 byte / 0.5 s, whole run", "outage", (dict(kind="trickle_headers", times=None),)),
    Case("trickle_body", "body 1 byte / 0.5 s, whole run", "outage", (dict(kind="trickle_body", times=None),)),
    Case("endless_chunked", "endless chunked body, whole run", "outage", (dict(kind="endless_chunked", times=None),)),
    Case("cut_headers", "header block cut short, transient", "transient", (transient("cut_headers"),)),
    Case("400", "HTTP 400, one event (permanent)", "permanent", (dict(kind="status", status=400, times=1),), refused=1),
    Case("401", "HTTP 401, every event (permanent)", "permanent", (dict(kind="status", status=401, times=None),), refused=EVENTS_PER_RUN),
    # Not in the default set: what "at least once" means. Answers come 6 s late, so the events still in
    # flight at the flush deadline are spooled although the receiver accepts them later; the next run sends them again.
    Case("slow", "answers 6 s late, whole run (at least once)", "slow", latency=6.0, duplicates_expected=True, default=False),
)
CASES_BY_ID = {case.id: case for case in CASES}


# --------------------------------------------------------------------------- set-up


def venv_bin():
    """The directory of the ansible-* commands: next to the Python running this script."""
    return Path(sys.executable).parent


def make_project(directory, push_url):
    """Write the inventory, the two playbooks, ansible.cfg and the vaulted push URL; return the project path."""
    project = Path(directory)
    if project.exists():
        shutil.rmtree(project)
    (project / "inventory" / "group_vars" / "all").mkdir(parents=True)
    (project / "ansible.cfg").write_text("[defaults]\nstdout_callback = default\n", encoding="utf-8")
    (project / "inventory" / "hosts.yml").write_text(INVENTORY, encoding="utf-8")
    (project / FIRST_PLAYBOOK).write_text(PLAYBOOK, encoding="utf-8")
    (project / RECOVERY_PLAYBOOK).write_text(PLAYBOOK, encoding="utf-8")
    password = project / "vault-password"
    password.write_text(VAULT_PASSWORD + "\n", encoding="utf-8")
    password.chmod(0o600)
    env = ansible_environment(project / ".ansible")
    env["ANSIBLE_CONFIG"] = str(project / "ansible.cfg")
    # The URL goes through stdin, never the command line (ps would show it).
    proc = subprocess.run([str(venv_bin() / "ansible-vault"), "encrypt_string", "--vault-password-file", str(password),
                           "--stdin-name", "flashduty_push_url"], input=push_url, capture_output=True, text=True, env=env,
                          cwd=str(project), check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"ansible-vault encrypt_string failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
    (project / "inventory" / "group_vars" / "all" / "vault.yml").write_text("---\n" + proc.stdout, encoding="utf-8")
    return project


def listening(port):
    """True when something accepts connections on this loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def push_url_for(port, key):
    return f"http://127.0.0.1:{port}{PUSH_PATH}?integration_key={key}"


class Context:
    """What every case shares: the integration key, a receiver and its project, and a project whose endpoint refuses.

    Use as a context manager (the receiver stops at exit).
    """

    def __init__(self, workdir, transient_failures=DEFAULT_TRANSIENT, callback_env=None, run_timeout=RUN_TIMEOUT):
        """``callback_env``: environment variables for every run of a trial, such as ``FLASHDUTY_FLUSH_TIMEOUT``;
        ``run_timeout``: seconds after which a run is killed."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.transient_failures = transient_failures
        self.callback_env = dict(callback_env or {})
        self.run_timeout = run_timeout
        self.key = secrets.token_hex(16)
        self.receiver = Receiver(integration_key=self.key, port=0, quiet=True).start()
        self._projects = {}
        self.refused_port = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self.receiver.stop()

    def project(self, refused_port=False):
        """The project (made once) for the receiver's push URL, or for a loopback port nothing listens on
        (made again if something listens there now)."""
        name = "refused" if refused_port else "receiver"
        if refused_port and name in self._projects and listening(self.refused_port):
            del self._projects[name]
        if name not in self._projects:
            if refused_port:
                self.refused_port = closed_port()
                url = push_url_for(self.refused_port, self.key)
            else:
                url = self.receiver.push_url
            self._projects[name] = make_project(self.workdir / f"project-{name}", url)
        return self._projects[name]


# --------------------------------------------------------------------------- one ansible-playbook run

@dataclass
class Run:
    """One ansible-playbook run: return code, wall time (s), output, and the -vvvv log."""

    rc: int
    wall: float
    stdout: str
    stderr: str
    log: str
    log_path: Path
    ended: float = 0.0   # time.time() when the process had exited

    @property
    def tail(self):
        """Seconds from the PLAY RECAP (the playbook's work is over) to the exit: the end-of-run delay; None if not logged."""
        match = RECAP_RE.search(self.log)
        if match is None:
            return None
        moment = time.mktime(time.strptime(match.group("stamp"), "%Y-%m-%d %H:%M:%S")) + int(match.group("ms")) / 1000.0
        return self.ended - moment

    def texts(self):
        return (("stdout", self.stdout), ("stderr", self.stderr), ("log", self.log))


def run_playbook(project, playbook, out_dir, name, callback=True, spool=None, timeout=RUN_TIMEOUT, extra_env=None):  # pylint: disable=too-many-arguments
    """Run ``ansible-playbook -vvvv`` in ``project`` with ANSIBLE_LOG_PATH; save its output under ``out_dir``.

    ``extra_env``: more environment variables (callback options, say). A run that outlives ``timeout`` seconds is
    killed with its process group (its rc is then KILLED).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / f"{name}.log"
    if log_path.exists():
        log_path.unlink()
    env = ansible_environment(out_dir / "ansible_home")
    env.update(ANSIBLE_CONFIG=str(Path(project) / "ansible.cfg"), ANSIBLE_LOG_PATH=str(log_path))
    if callback:
        env["ANSIBLE_CALLBACKS_ENABLED"] = CALLBACK  # absent, not empty, when off: empty crashes ansible-core 2.19+
    if spool is not None:
        env["FLASHDUTY_SPOOL_DIR"] = str(spool)
    env.update(extra_env or {})
    cmd = [str(venv_bin() / "ansible-playbook"), "-i", "inventory/hosts.yml", playbook, "--vault-password-file", "vault-password", "-vvvv"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=str(project), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n[fault_matrix] killed after {timeout:.0f} s\n"
    wall = time.monotonic() - started
    ended = time.time()
    (out_dir / f"{name}.stdout").write_text(stdout, encoding="utf-8")
    (out_dir / f"{name}.stderr").write_text(stderr, encoding="utf-8")
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    return Run(proc.returncode, wall, stdout, stderr, log, log_path, ended)


# --------------------------------------------------------------------------- reading the results

def warnings_in(text):
    """Flashduty warnings, one string each (ansible-core 2.16 wraps long warnings over several lines)."""
    found = []
    current = False
    for line in text.splitlines():
        if line.lstrip().startswith("[WARNING]:"):
            found.append(line.split("[WARNING]:", 1)[1].strip())
            current = True
        elif current and line.strip() and not line.lstrip().startswith(("[", "TASK", "PLAY", "ok:", "changed:", "fatal:", "<", "META")):
            found[-1] += " " + line.strip()
        else:
            current = False
    # The sender's warnings ("4 change events could not be delivered to ...") do not all say "Flashduty".
    return [warning for warning in found if "flashduty" in warning.lower() or "change event" in warning.lower()]


def flush_summary(text):
    """The callback's ``-vv`` delivery summary: counts by outcome (cumulative: from its last line), the seconds
    of every flush added up (it flushes at the end of the playbook, and again, with nothing left, at exit),
    the events pending at the first deadline; None if absent."""
    matches = list(SUMMARY_RE.finditer(text))
    if not matches:
        return None
    found = matches[-1]
    counts = Counter()
    for number, what in COUNT_RE.findall(found.group("counts")):
        counts[what.split()[0]] += int(number)
    replayed = re.search(r"\((\d+) from the spool\)", found.group("counts"))
    counts["replayed"] = int(replayed.group(1)) if replayed else 0
    counts["flush"] = sum(float(match.group("flush")) for match in matches)
    counts["pending"] = max(int(match.group("pending") or 0) for match in matches)
    return counts


def spool_files(spool):
    """Every file under the spool directory."""
    spool = Path(spool)
    return sorted(path for path in spool.rglob("*") if path.is_file()) if spool.exists() else []


def spool_events(spool):
    """Events waiting in the spool (files that are not JSON count as 0)."""
    count = 0
    for path in spool_files(spool):
        try:
            count += len(json.loads(path.read_text(encoding="utf-8")).get("records") or [])
        except (ValueError, OSError, AttributeError):
            continue
    return count


def spool_private(spool):
    """Problems with the spool's permissions (directory 0700, files 0600); empty when private or absent."""
    spool = Path(spool)
    problems = []
    if not spool.exists():
        return problems
    mode = stat.S_IMODE(spool.stat().st_mode)
    if mode != 0o700:
        problems.append(f"spool directory mode {mode:o}")
    for path in spool_files(spool):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != 0o600:
            problems.append(f"{path.name} mode {mode:o}")
    return problems


def key_places(key, runs, spool, case_dir):
    """Where the integration key shows: in a run's stdout, stderr or log, in the spool, or in any file of the case."""
    places = []
    for label, run in runs:
        for where, text in run.texts():
            if key in text:
                places.append(f"{label} {where}")
    for path in spool_files(spool):
        if key.encode() in path.read_bytes():
            places.append(f"spool {path.name}")
    for path in sorted(Path(case_dir).rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                if key.encode() in path.read_bytes():
                    places.append(str(path.relative_to(case_dir)))
            except OSError:
                continue
    return sorted(set(places))


def from_playbook(events, playbook):
    return [event for event in events if (event.get("labels") or {}).get("playbook") == playbook]


def duplicates(events):
    """Events accepted more than once (same change_key, change_status and event_time): how many extra copies."""
    counts = Counter((event.get("change_key"), event.get("change_status"), event.get("event_time")) for event in events)
    return sum(count - 1 for count in counts.values() if count > 1)


def order_problems(events):
    """Changes whose Done (or Canceled) arrived before their Processing, in arrival order."""
    first = {}
    for index, event in enumerate(events):
        first.setdefault((event.get("change_key"), event.get("change_status")), index)
    problems = []
    for key in sorted({event.get("change_key") for event in events}):
        start = first.get((key, "Processing"))
        for status in ("Done", "Canceled"):
            end = first.get((key, status))
            if start is not None and end is not None and end < start:
                problems.append(f"{key}: {status} before Processing")
    return problems


# --------------------------------------------------------------------------- one case

@dataclass
class Trial:
    """One repetition of a case: the first run (with the fault) and the recovery run."""

    rc: int
    wall: float
    recovery_rc: int
    warnings: list
    sent: object          # events the callback generated in the first run (its own summary), None if not found
    flush: object         # seconds its end-of-run flush took, None if not found
    spooled: int          # events in the spool after the first run
    received: int         # distinct events of the first run accepted, after recovery
    refused_warned: int   # events of the first run refused for good, each named by a warning with its request_id
    duplicates: int
    order: list
    leaks: list
    spool_problems: list
    replay_times_ok: bool
    left_in_spool: int
    tail: object          # seconds from the first run's PLAY RECAP to its exit, None if not logged
    requests: int         # push requests the receiver saw during the first run (retries included)
    faulted: int          # of which answered with an injected fault
    problems: list = field(default_factory=list)

    @property
    def lost(self):
        return EVENTS_PER_RUN - self.received - self.refused_warned


def set_faults(receiver, case, transient_failures):
    receiver.reset()
    if case.latency:
        receiver.set_latency(case.latency)
    for rule in case.faults:
        rule = dict(rule)
        if case.mode == "transient":
            rule["times"] = transient_failures
        receiver.add_fault(**rule)


def run_trial(ctx, case, index, expected_rc=0):
    """One repetition of ``case``: first run with the fault, recovery run with the endpoint healthy; checked."""
    case_dir = ctx.workdir / "cases" / f"{case.id}-{index}"
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    spool = case_dir / "spool"
    project = ctx.project(refused_port=case.refused_port)
    receiver = ctx.receiver
    set_faults(receiver, case, ctx.transient_failures)  # none for the refused port: it only resets the receiver
    first = run_playbook(project, FIRST_PLAYBOOK, case_dir, "first", spool=spool, extra_env=ctx.callback_env, timeout=ctx.run_timeout)
    requests_first = receiver.requests
    spooled = spool_events(spool)
    spool_problems = spool_private(spool)
    leaks_before = key_places(ctx.key, [], spool, case_dir)  # the spool is consumed by the recovery run: look now
    receiver.clear_faults()
    if case.latency:
        # The receiver still answers (and accepts) what the first run left in flight: the next run comes later.
        receiver.set_latency(0.0)
        time.sleep(case.latency + 0.5)
    recovery_receiver = None
    recovery_started = time.time()
    try:
        if case.refused_port:
            recovery_receiver = Receiver(integration_key=ctx.key, port=ctx.refused_port, quiet=True).start()
        recovery = run_playbook(project, RECOVERY_PLAYBOOK, case_dir, "recovery", spool=spool, extra_env=ctx.callback_env,
                                timeout=ctx.run_timeout)
        accepted = (recovery_receiver or receiver).events
        if case.refused_port:
            accepted = receiver.events + accepted
    finally:
        if recovery_receiver is not None:
            recovery_receiver.stop()
    summary = flush_summary(first.stdout + first.stderr)
    sent = None
    if summary is not None:
        sent = summary["delivered"] - summary["replayed"] + summary["refused"] + summary["spooled"] + summary["lost"]
    warnings = warnings_in(first.stdout) + warnings_in(first.stderr)
    firsts = from_playbook(accepted, FIRST_PLAYBOOK)
    received = len({(event["change_key"], event["change_status"]) for event in firsts})
    refused_ids = [entry["request_id"] for entry in requests_first if entry["status"] and 400 <= entry["status"] < 500
                   and entry["status"] != 429 and (entry["body"] or {}).get("labels", {}).get("playbook") == FIRST_PLAYBOOK]
    refused_warned = sum(1 for request_id in refused_ids if any(request_id in warning for warning in warnings))
    replay_times_ok = all(event.get("event_time", 0) <= recovery_started for event in firsts)
    leaks = sorted(set(leaks_before + key_places(ctx.key, [("first", first), ("recovery", recovery)], spool, case_dir)))
    trial = Trial(rc=first.rc, wall=first.wall, recovery_rc=recovery.rc, warnings=warnings, sent=sent,
                  flush=None if summary is None else summary["flush"], spooled=spooled, received=received,
                  refused_warned=refused_warned, duplicates=duplicates(accepted), order=order_problems(accepted), leaks=leaks,
                  spool_problems=spool_problems, replay_times_ok=replay_times_ok, left_in_spool=spool_events(spool), tail=first.tail,
                  requests=len(requests_first), faulted=sum(1 for entry in requests_first if entry["fault"]))
    check(trial, case, expected_rc, case_dir, ctx.transient_failures)
    return trial


def check(trial, case, expected_rc, case_dir, transient_failures=DEFAULT_TRANSIENT):
    """Fill in ``trial.problems``: every broken guarantee, with where to look."""
    where = f" (see {case_dir})"
    problems = trial.problems
    if trial.rc == KILLED:
        problems.append(f"first run killed: it outlived the run timeout{where}")
    elif trial.rc != expected_rc:
        problems.append(f"first run rc {trial.rc}, without the callback {expected_rc}{where}")
    if trial.recovery_rc != expected_rc:
        problems.append(f"recovery run rc {trial.recovery_rc}{where}")
    if trial.sent is None:
        problems.append(f"no delivery summary in the first run's -vv output{where}")
    elif trial.sent != EVENTS_PER_RUN:
        problems.append(f"the callback generated {trial.sent} events, expected {EVENTS_PER_RUN}{where}")
    if trial.lost > 0:
        problems.append(f"{trial.lost} events of the first run lost after recovery ({trial.received} received, "
                        f"{trial.refused_warned} refused with a warning){where}")
    if trial.refused_warned != case.refused:
        problems.append(f"{trial.refused_warned} events refused with a warning naming their request_id, expected {case.refused}{where}")
    if trial.duplicates and not case.duplicates_expected:
        problems.append(f"{trial.duplicates} duplicate events{where}")
    if trial.order:
        problems.append(f"order broken: {'; '.join(trial.order)}{where}")
    if trial.leaks:
        problems.append(f"integration key found in: {', '.join(trial.leaks)}{where}")
    if trial.spool_problems:
        problems.append(f"spool not private: {', '.join(trial.spool_problems)}{where}")
    if not trial.replay_times_ok:
        problems.append(f"a replayed event does not carry its original event_time{where}")
    if case.mode == "transient" and trial.faulted != transient_failures:
        problems.append(f"{trial.faulted} requests met the fault, expected {transient_failures}: the case proved nothing{where}")
    elif case.faults and not trial.faulted:
        problems.append(f"no request met the fault: the case proved nothing{where}")
    if trial.left_in_spool:
        problems.append(f"{trial.left_in_spool} events still in the spool after the recovery run{where}")
