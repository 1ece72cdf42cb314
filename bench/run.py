"""Benchmark: what the change_events callback costs a playbook, next to the peers (issue 5).

Run with the benchmark's own venv (``make bench``, or ``.venv/bench/bin/python bench/run.py``):

    python bench/run.py                 # the full set, ~15 min on a quiet 2-core machine
    python bench/run.py --quick         # a ~3 min subset (also BENCH_QUICK=1)
    python bench/run.py --only 'splunk' # cases whose id matches a regular expression
    python bench/run.py --list          # the cases and their run counts, nothing run

Everything is generated under ``.build/bench/``: inventories and playbooks, one log per
case, ``results.json`` (every run) and ``results.md`` (the tables of docs/performance.md).

Method (bench/README.md has the long version): real ``ansible-playbook`` runs (through
``bench/_instrument.py``, which times the callback plugins), local connection,
``gather_facts: false``, cheap tasks; each case runs in rounds with the callback-off
baseline of its shape, so "off" and "on" runs alternate; medians are compared. Our callback
talks to ``tools/flashduty_receiver.py`` with added latency or faults; the peers talk to an
any-path HTTP sink with the same latency or black hole (the receiver only delays its push
path). "Refused" is a loopback port nobody listens on.
"""

import argparse
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
BUILD = ROOT / ".build" / "bench"
INSTRUMENT = BENCH_DIR / "_instrument.py"

sys.path.insert(0, str(ROOT / "tools"))
from collection_link import ansible_environment, ensure_collection_link  # noqa: E402  (tools/ is not a package)
from collection_link import COLLECTIONS_DIR as COLLECTIONS  # noqa: E402
from flashduty_receiver import Receiver  # noqa: E402

OURS = "flashcat.flashduty.change_events"
GRAFANA = "community.grafana.grafana_annotations"
SPLUNK = "community.general.splunk"
NOOP = "bench_noop"   # a callback that does nothing: what timing a callback costs (calibration)

# The defaults of the callback options that bound what it may cost (plugins/callback/change_events.py).
FLUSH_TIMEOUT = 5.0
MAX_RATE = 40.0
FLASHDUTY_RATE_LIMIT = 50   # requests per second per account (Flashduty's documented limit)
PEER_TIMEOUT = 10.0         # ansible.module_utils.urls.open_url's default, used by both peers
FORKS = 10
MAX_LOAD = 1.5              # 1-minute load average above which the machine counts as busy


# --------------------------------------------------------------------------- workloads

@dataclass(frozen=True)
class Task:
    module: str
    args: str
    run_once: bool = False


DEBUG = Task("ansible.builtin.debug", "{msg: bench}")
SET_FACT = Task("ansible.builtin.set_fact", "{bench_fact: 1}")
COMMAND_ONCE = Task("ansible.builtin.command", '"true"', run_once=True)


@dataclass(frozen=True)
class Shape:
    """A playbook and its inventory: ``plays`` plays over ``hosts`` hosts running ``tasks``."""

    name: str
    plays: int
    hosts: int
    tasks: tuple

    @property
    def results(self):
        """Task results the callbacks see."""
        per_play = sum(1 if task.run_once else self.hosts for task in self.tasks)
        return self.plays * per_play

    @property
    def label(self):
        return f"{self.plays} play{'s' if self.plays > 1 else ''} x {self.hosts} host{'s' if self.hosts > 1 else ''} x {len(self.tasks)} tasks"

    def changes(self, per_host):
        return self.plays * (self.hosts if per_host else 1)


STANDARD = (DEBUG, SET_FACT, COMMAND_ONCE)
TEN = (DEBUG, SET_FACT) * 5
SHAPES = {
    "s20": Shape("s20", 2, 20, STANDARD),       # 2 plays x 20 hosts
    "s500": Shape("s500", 2, 500, STANDARD),    # 2 plays x 500 hosts
    "c500": Shape("c500", 1, 500, TEN),         # 500 hosts x 10 tasks: CPU per task result, throughput
    "c100": Shape("c100", 1, 100, TEN),         # the quick subset's stand-in for c500
    "small": Shape("small", 2, 2, STANDARD),    # splunk with a slow endpoint
    "tiny": Shape("tiny", 1, 1, (DEBUG,)),      # splunk with a black hole
}


def write_workload(shape):
    """Inventory (groups web/db under prod, local connection) and playbook of a shape; returns their paths."""
    folder = BUILD / "workloads"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"node{index:03d}" for index in range(1, shape.hosts + 1)]
    half = (len(names) + 1) // 2
    inventory = folder / f"{shape.name}.ini"
    inventory.write_text(
        "[web]\n" + "".join(f"{name}\n" for name in names[:half])
        + "\n[db]\n" + "".join(f"{name}\n" for name in names[half:])
        + "\n[prod:children]\nweb\ndb\n"
        + f"\n[all:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n",
        encoding="utf-8")
    plays = []
    for index in range(1, shape.plays + 1):
        tasks = []
        for number, task in enumerate(shape.tasks, 1):
            lines = [f"    - name: step {number}", f"      {task.module}: {task.args}"]
            if task.module.endswith(".command"):
                lines.append("      changed_when: false")
            if task.run_once:
                lines.append("      run_once: true")
            tasks.append("\n".join(lines))
        plays.append(f"- name: bench play {index}\n  hosts: all\n  gather_facts: false\n  tasks:\n" + "\n".join(tasks) + "\n")
    playbook = folder / f"{shape.name}.yml"
    playbook.write_text("---\n" + "\n".join(plays), encoding="utf-8")
    return inventory, playbook


NOOP_PLUGIN = '''"""A callback that does nothing, written by bench/run.py: what timing a callback costs."""

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "bench_noop"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook):
        pass

    def v2_playbook_on_play_start(self, play):
        pass

    def v2_playbook_on_task_start(self, task, is_conditional):
        pass

    def v2_playbook_on_handler_task_start(self, task):
        pass

    def v2_runner_on_ok(self, result, **kwargs):
        pass

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        pass

    def v2_runner_on_skipped(self, result, **kwargs):
        pass

    def v2_runner_on_unreachable(self, result, **kwargs):
        pass

    def v2_playbook_on_stats(self, stats):
        pass
'''


def noop_plugin_dir():
    folder = BUILD / "callbacks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_noop.py").write_text(NOOP_PLUGIN, encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- endpoints

class Sink:
    """The peers' endpoint: answers 200 to any method and path after ``latency`` seconds, or holds
    the connection without an answer (``blackhole``) until stop(). Counts requests."""

    def __init__(self, latency=0.0, blackhole=False):
        self.latency = latency
        self.blackhole = blackhole
        self.requests = 0
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with sink._lock:
                    sink.requests += 1
                self.close_connection = True
                if sink.blackhole:
                    sink.stop_event.wait()
                    return
                if sink.latency and sink.stop_event.wait(sink.latency):
                    return
                body = b'{"id": 1, "message": "ok", "text": "Success", "code": 0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 256

            def handle_error(self, request, client_address):
                pass  # clients that gave up on a black hole

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"bench-sink-{self.port}", daemon=True)
        self._thread.start()

    def stop(self):
        self.stop_event.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2)


def busy_cpu_seconds():
    """CPU seconds all processes of the machine have used since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10])  # already counted in user and nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def closed_port():
    """A loopback port with nothing listening on it (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    """One configuration: who reports (None: nobody), how, to what endpoint, on which shape."""

    shape: str
    reporter: str = None          # OURS, GRAFANA, SPLUNK, NOOP or None (the baseline)
    per_host: bool = False
    endpoint: object = 0.0        # latency in seconds, "refused" or "blackhole"
    rounds: int = 3
    quick_rounds: int = 0

    @property
    def id(self):
        if self.reporter is None:
            return f"{self.shape}/off"
        if self.reporter == NOOP:
            return f"{self.shape}/noop"
        who = {OURS: "ours-host" if self.per_host else "ours-play", GRAFANA: "grafana", SPLUNK: "splunk"}[self.reporter]
        where = self.endpoint if isinstance(self.endpoint, str) else f"{self.endpoint:g}s"
        return f"{self.shape}/{who}/{where}"

    @property
    def latency(self):
        return self.endpoint if not isinstance(self.endpoint, str) else None


def cases():
    """Every case, in the order they run within a round."""
    out = []

    def add(shape, rounds, quick, reporter=None, per_host=False, endpoint=0.0):
        out.append(Case(shape, reporter, per_host, endpoint, rounds, quick))

    # 2 plays x 20 hosts: latencies, both modes, the peers that stay short.
    add("s20", 4, 3)
    add("s20", 4, 2, NOOP)
    for latency, quick in ((0.0, 0), (0.2, 3), (1.0, 2)):
        add("s20", 4, quick, OURS, False, latency)
    for latency, quick in ((0.0, 0), (0.2, 3), (1.0, 0)):
        add("s20", 4, quick, OURS, True, latency)
    for latency, quick in ((0.0, 0), (0.2, 0), (1.0, 2)):
        add("s20", 4, quick, GRAFANA, False, latency)
    add("s20", 4, 0, SPLUNK, False, 0.0)
    # Dead endpoints, same shape (fewer rounds: their cost is bounded by timeouts more than by noise).
    add("s20", 3, 0, OURS, False, "refused")
    add("s20", 2, 1, OURS, False, "blackhole")
    add("s20", 3, 1, OURS, True, "refused")
    add("s20", 2, 0, OURS, True, "blackhole")
    add("s20", 2, 0, GRAFANA, False, "refused")
    add("s20", 1, 1, GRAFANA, False, "blackhole")
    add("s20", 2, 0, SPLUNK, False, "refused")
    # splunk makes one synchronous request per task result: fewer results for its slow cases.
    add("small", 2, 1)
    add("small", 2, 0, SPLUNK, False, 0.2)
    add("small", 2, 1, SPLUNK, False, 1.0)
    add("tiny", 2, 1)
    add("tiny", 1, 1, SPLUNK, False, "blackhole")
    # 2 plays x 500 hosts: per-play mode, and the per-host target (0.2 s).
    add("s500", 2, 0)
    add("s500", 2, 0, OURS, False, 0.2)
    add("s500", 2, 0, OURS, True, 0.2)
    # 500 hosts x 10 tasks: controller CPU per task result; per-host mode at 50 ms for the throughput.
    add("c500", 1, 0)
    add("c500", 1, 0, OURS, False, 0.05)
    add("c500", 1, 0, OURS, True, 0.05)
    add("c100", 0, 1)
    add("c100", 0, 1, OURS, False, 0.05)
    add("c100", 0, 1, OURS, True, 0.05)
    return out


# --------------------------------------------------------------------------- running


def base_environment(collections=COLLECTIONS):
    """The clean ansible-* environment (tools/collection_link.py), without the peers' own GRAFANA_*/SPLUNK_* settings."""
    env = ansible_environment(BUILD / "ansible_home", collections, drop_prefixes=("GRAFANA_", "SPLUNK_"))
    env["ANSIBLE_FORKS"] = str(FORKS)
    return env


class Bench:
    def __init__(self, quick, collections=COLLECTIONS):
        self.quick = quick
        self.workloads = {}
        self.receiver = None
        self.sinks = {}
        self.runs = []
        self.key = secrets.token_hex(16)
        self.env = base_environment(collections)
        self.counter = 0

    # ---- endpoints for one run

    def _endpoint(self, case):
        """``(env additions, stop callable or None, probe)``; probe() -> dict of what the endpoint saw."""
        if case.reporter is None:
            return {}, None, dict
        if case.reporter == NOOP:
            return dict(ANSIBLE_CALLBACK_PLUGINS=str(noop_plugin_dir()), ANSIBLE_CALLBACKS_ENABLED=NOOP), None, dict
        if case.reporter == OURS:
            return self._our_endpoint(case)
        if case.endpoint == "refused":
            base, stop, probe = f"http://127.0.0.1:{closed_port()}", None, dict
        else:
            sink = Sink(latency=case.latency or 0.0, blackhole=case.endpoint == "blackhole")
            base, stop = f"http://127.0.0.1:{sink.port}", sink.stop

            def probe():
                return {"requests": sink.requests}
        if case.reporter == GRAFANA:
            env = dict(ANSIBLE_CALLBACKS_ENABLED=GRAFANA, GRAFANA_URL=f"{base}/api/annotations", GRAFANA_API_KEY="bench")
        else:
            env = dict(ANSIBLE_CALLBACKS_ENABLED=SPLUNK, SPLUNK_URL=f"{base}/services/collector/event", SPLUNK_AUTHTOKEN="bench")
        return env, stop, probe

    def _our_endpoint(self, case):
        receiver = None
        stop = None
        if case.endpoint == "refused":
            url = f"http://127.0.0.1:{closed_port()}/event/push/change/standard?integration_key={self.key}"
        elif case.endpoint == "blackhole":
            receiver = Receiver(integration_key=self.key, port=0, quiet=True).start()
            receiver.add_fault("blackhole", times=None)
            url, stop = receiver.push_url, receiver.stop
        else:
            receiver = self.receiver
            receiver.reset()
            receiver.set_latency(case.latency)
            url = receiver.push_url
        self.counter += 1
        spool = BUILD / "spool" / f"run{self.counter}"
        shutil.rmtree(spool, ignore_errors=True)
        env = dict(ANSIBLE_CALLBACKS_ENABLED=OURS, FLASHDUTY_PUSH_URL=url, FLASHDUTY_SPOOL_DIR=str(spool),
                   FLASHDUTY_PER_HOST="true" if case.per_host else "false")

        def probe():
            seen = {"spooled": count_spooled(spool)}
            if receiver is not None:
                seen["requests"] = len(receiver.requests)
                if case.latency is not None:
                    seen["records"] = receiver.records
            return seen

        return env, stop, probe

    def run_once(self, case, round_index):
        shape = SHAPES[case.shape]
        if shape.name not in self.workloads:
            self.workloads[shape.name] = write_workload(shape)
        inventory, playbook = self.workloads[shape.name]
        extra, stop, probe = self._endpoint(case)
        env = dict(self.env, **extra)
        logs = BUILD / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / (case.id.replace("/", "_") + ".log")
        report = BUILD / "report.json"
        if report.exists():
            report.unlink()
        load = os.getloadavg()[0]
        busy_before, own_before = busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
        command = [sys.executable, str(INSTRUMENT), str(report), "-i", str(inventory), str(playbook)]
        try:
            with open(log, "wb") as output:
                started_wall = time.time()
                started = time.monotonic()
                proc = subprocess.Popen(command, env=env, cwd=str(BUILD), stdin=subprocess.DEVNULL, stdout=output,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    _pid, status, usage = os.wait4(proc.pid, 0)
                except BaseException:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise
                wall = time.monotonic() - started
                ended = time.time()
                busy_after, own_after = busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
                proc.returncode = os.waitstatus_to_exitcode(status)
            seen = probe()
        finally:
            if stop is not None:
                stop()
        data = json.loads(report.read_text(encoding="utf-8")) if report.exists() else {}
        run = {
            "case": case.id, "round": round_index, "rc": proc.returncode, "wall": wall, "load": load,
            "cpu_tree": usage.ru_utime + usage.ru_stime, "started_at": started_wall, "ended_at": ended,
            # CPUs kept busy by everything else on the machine during the run (other users' jobs), on average.
            "others": other_cpus(busy_before, busy_after, usage, own_before, own_after, wall),
            "stats_at": data.get("stats_at"), "exit_at": data.get("exit_at"),
            "tail": (ended - data["stats_at"]) if data.get("stats_at") else None,
            "load_callbacks": data.get("load_callbacks", {}), "cpu_controller": data.get("rusage_self"),
            "callback": summarize_callbacks(data.get("callbacks", {}).get(case.reporter, {})) if case.reporter else None,
            "threads_cpu": sum(data.get("threads", {}).values()),
            "results": shape.results,
        }
        records = seen.pop("records", None)
        run.update(seen)
        if records is not None:
            run.update(delivery_stats(records, run["stats_at"], run["ended_at"]))
        if proc.returncode != 0:
            run["error"] = f"ansible-playbook exited {proc.returncode}, see {log.relative_to(ROOT)}"
        self.runs.append(run)
        return run


def other_cpus(busy_before, busy_after, usage, own_before, own_after, wall):
    if busy_before is None or busy_after is None or wall <= 0:
        return None
    ours = usage.ru_utime + usage.ru_stime
    ours += (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    return max(0.0, (busy_after - busy_before - ours) / wall)


def count_spooled(spool):
    """Events waiting in a spool directory (file names carry their count)."""
    total = 0
    if spool.is_dir():
        for entry in spool.iterdir():
            parts = entry.name.split(".")
            if len(parts) >= 4 and parts[3].startswith("json") and parts[2].isdigit():
                total += int(parts[2])
    return total


def summarize_callbacks(methods):
    """Calls, CPU and wall time of one plugin's methods; the end-of-run (stats) separately."""
    out = {"calls": 0, "cpu": 0.0, "wall": 0.0, "stats_wall": 0.0, "stats_cpu": 0.0, "results_cpu": 0.0, "results_calls": 0}
    for name, (calls, cpu, wall) in methods.items():
        out["calls"] += calls
        out["cpu"] += cpu
        out["wall"] += wall
        if name == "v2_playbook_on_stats":
            out["stats_wall"] += wall
            out["stats_cpu"] += cpu
        if name.startswith("v2_runner_on_"):
            out["results_cpu"] += cpu
            out["results_calls"] += calls
    return out


def delivery_stats(records, stats_at, ended_at):
    """What the receiver got: count, when, the fastest 1-second window, events after the playbook's end."""
    times = sorted(record["received_at"] for record in records)
    out = {"delivered": len(times), "after_stats": 0, "max_1s": 0, "rate": None}
    if not times:
        return out
    if stats_at:
        out["after_stats"] = sum(1 for moment in times if moment >= stats_at)
    start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1.0:
            start += 1
        out["max_1s"] = max(out["max_1s"], end - start + 1)
    # Sustained rate over the longest stretch where events were back to back (gaps under 0.5 s).
    best = (0, 0.0)
    first = 0
    for index in range(1, len(times) + 1):
        if index == len(times) or times[index] - times[index - 1] > 0.5:
            count = index - first
            span = times[index - 1] - times[first]
            if count >= 20 and span > 0 and count > best[0]:
                best = (count, span)
            first = index
    if best[0]:
        out["rate"] = (best[0] - 1) / best[1]
    return out


# --------------------------------------------------------------------------- the tables

def median(values):
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=2, signed=False):
    if value is None:
        return "-"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "\u2212") if text.startswith("-") else text


def endpoint_text(case):
    if case.endpoint == "refused":
        return "refused (closed port)"
    if case.endpoint == "blackhole":
        return "black hole"
    return f"answers after {case.latency:g} s"


def reporter_text(case):
    if case.reporter == OURS:
        return "**ours**, per-host" if case.per_host else "**ours**, per-play"
    if case.reporter == GRAFANA:
        return "grafana_annotations"
    if case.reporter == SPLUNK:
        return "splunk"
    if case.reporter == NOOP:
        return "no-op callback (calibration)"
    return "off (baseline)"


def target_for(case, shape, row):
    """``(text, met)`` for the issue's targets, or (None, None); met is "info" for rows the issue sets no target for."""
    if case.reporter != OURS or row.get("attributed") is None:
        return None, None
    added = row["attributed"]
    if case.endpoint in ("refused", "blackhole"):
        return f"\u2264 flush timeout {FLUSH_TIMEOUT:g} s", added <= FLUSH_TIMEOUT
    rtt = case.latency
    if not case.per_host:
        limit = rtt + 0.3
        return f"\u2264 RTT + 0.3 = {limit:g} s", added <= limit
    queued = row.get("queued")
    if queued is None:
        return None, None
    limit = queued / MAX_RATE + rtt
    required = shape.hosts >= 500 and abs(rtt - 0.2) < 1e-9
    return f"\u2264 {queued} queued / {MAX_RATE:g} per s + RTT = {limit:.2f} s", (added <= limit) if required else "info"


def calibration(runs):
    """Wall and CPU seconds that timing one callback method call costs: the no-op callback's, per call
    (the same, ~20-25 us, on every shape measured here; the s20 no-op runs stand for all shapes)."""
    values = []
    for run in runs:
        callback = run.get("callback")
        if run["case"].endswith("/noop") and callback and callback["calls"]:
            values.append((callback["wall"] / callback["calls"], callback["cpu"] / callback["calls"]))
    if not values:
        return 0.0, 0.0
    return median(wall for wall, _cpu in values), median(cpu for _wall, cpu in values)


def build_rows(runs):
    by_case = {}
    for run in runs:
        by_case.setdefault(run["case"], []).append(run)
    all_cases = {f"{name}/noop": Case(name, NOOP) for name in SHAPES}
    all_cases.update((case.id, case) for case in cases())
    floor = calibration(runs)
    rows = []
    for case_id, case_runs in by_case.items():
        case = all_cases[case_id]
        shape = SHAPES[case.shape]
        base = by_case.get(f"{case.shape}/off", [])
        floor_wall, floor_cpu = floor if case.reporter != NOOP else (0.0, 0.0)
        row = {"case": case, "shape": shape, "n": len(case_runs), "errors": [run["error"] for run in case_runs if run.get("error")]}
        row["wall"] = median(run["wall"] for run in case_runs)
        row["base_wall"] = median(run["wall"] for run in base)
        row["added"] = None if row["wall"] is None or row["base_wall"] is None or case.reporter is None else row["wall"] - row["base_wall"]
        row["spread"] = (max(run["wall"] for run in case_runs) - min(run["wall"] for run in case_runs)) if len(case_runs) > 1 else None
        row["tail"] = median(run["tail"] for run in case_runs)
        base_tail = median(run["tail"] for run in base)
        row["tail_added"] = None if row["tail"] is None or base_tail is None or case.reporter is None else row["tail"] - base_tail
        row["cpu_tree"] = median(run["cpu_tree"] for run in case_runs)
        row["base_cpu_tree"] = median(run["cpu_tree"] for run in base)
        row["load"] = max(run["load"] for run in case_runs)
        row["others"] = max((run.get("others") or 0.0 for run in case_runs), default=0.0)
        callbacks = [run["callback"] for run in case_runs if run.get("callback")]
        if callbacks:
            # Net of what timing each method call costs (the no-op callback's per-call figures for the shape).
            row["cb_wall_in_run"] = median(max(0.0, cb["wall"] - cb["stats_wall"] - floor_wall * cb["calls"]) for cb in callbacks)
            row["cb_cpu"] = median(max(0.0, cb["cpu"] - floor_cpu * cb["calls"]) + run["threads_cpu"]
                                   for cb, run in zip(callbacks, case_runs))
            row["floor_wall"] = floor_wall
        load_walls = [run["load_callbacks"].get("wall") for run in case_runs]
        base_loads = [run["load_callbacks"].get("wall") for run in base]
        row["load_added"] = None
        if case.reporter and median(load_walls) is not None and median(base_loads) is not None:
            row["load_added"] = median(load_walls) - median(base_loads)
            row["load_cpu_added"] = max(0.0, median(run["load_callbacks"].get("cpu") for run in case_runs)
                                        - median(run["load_callbacks"].get("cpu") for run in base))
        if case.reporter == OURS:
            expected = 2 * shape.changes(case.per_host)
            row["expected"] = expected
            row["delivered"] = median(run.get("delivered") for run in case_runs)
            row["spooled"] = median(run.get("spooled") for run in case_runs)
            if case.latency is not None:
                row["queued"] = int(median(run.get("after_stats", 0) + run.get("spooled", 0) for run in case_runs))
                row["max_1s"] = max(run.get("max_1s", 0) for run in case_runs)
                rates = [run.get("rate") for run in case_runs if run.get("rate")]
                row["rate"] = median(rates) if rates else None
        if case.reporter in (GRAFANA, SPLUNK):
            row["requests"] = median(run.get("requests") for run in case_runs)
        row["attributed"] = None
        if case.reporter and row["tail_added"] is not None and row.get("cb_wall_in_run") is not None:
            row["attributed"] = row["tail_added"] + row["cb_wall_in_run"] + max(0.0, row["load_added"] or 0.0)
        row["target"], row["met"] = target_for(case, shape, row)
        rows.append(row)
    return rows


def render(rows, meta):
    out = []
    w = out.append
    sessions = meta.get("sessions", 1)
    when = f"Run {meta['date']}" if sessions == 1 else f"Runs of {sessions} sessions ({meta['date']}; each shape from one session)"
    w(f"{when}, {'quick subset' if meta['quick'] else 'full set'}, {meta['total_runs']} playbook runs in "
      f"{meta['elapsed'] / 60:.1f} min; 1-min load average before the runs: {meta['load_start']:.2f}, "
      f"highest before a run: {meta['load_max']:.2f} (this includes the benchmark's own runs). CPUs kept busy by other "
      f"processes during the runs: median {fmt(meta['others'])}, highest {fmt(meta['others_max'])}.")
    w("")
    w(f"Machine: {meta['machine']}. Python {meta['python']}, ansible-core {meta['ansible_core']}, "
      f"ansible {meta['ansible']} (community.general {meta['community.general']}, community.grafana {meta['community.grafana']}), "
      f"flashcat.flashduty {meta['flashduty']}. forks={FORKS}, local connection, gather_facts: false.")
    w("")
    shapes_seen = []
    for row in rows:
        if row["shape"].name not in shapes_seen:
            shapes_seen.append(row["shape"].name)
    w("### Wall time")
    w("")
    w("Added = median wall time of the case minus the median of the callback-off runs of the same shape, "
      "run in alternation with it (this difference carries the machine's run-to-run noise). End wait = the same "
      "difference for the time from the end of the playbook (`v2_playbook_on_stats`) to the exit of ansible-playbook. "
      "In-run = wall time spent inside the callback's methods before that end (main thread), net of what timing "
      "a method costs (the no-op callback's per-call time). Attributed = end wait + in-run + loading the plugin: "
      "the time the callback itself holds the playbook up, which the targets are checked against. "
      "Others' CPUs = the most CPUs other processes of the machine kept busy, on average over one of the case's runs "
      "(2 CPUs in all): above ~0.3 the run shared the machine.")
    w("")
    w("| shape (task results) | reporter | endpoint | runs | median wall s | added s | end wait s | in-run s | "
      "attributed s | events delivered / spooled | target | met | others' CPUs |")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|")
    for name in shapes_seen:
        shape = SHAPES[name]
        for row in (r for r in rows if r["shape"].name == name):
            case = row["case"]
            events = "-"
            if case.reporter == OURS:
                events = f"{fmt(row.get('delivered'), 0)} / {fmt(row.get('spooled'), 0)} of {row['expected']}"
            elif case.reporter in (GRAFANA, SPLUNK):
                events = f"{fmt(row.get('requests'), 0)} requests"
            met = {None: "", True: "yes", False: "**no**", "info": "(no target)"}[row["met"]]
            where = endpoint_text(case) if case.reporter not in (None, NOOP) else "-"
            w(f"| {shape.label} ({shape.results}) | {reporter_text(case)} | {where} | "
              f"{row['n']} | {fmt(row['wall'])} | {fmt(row['added'], signed=True)} | {fmt(row.get('tail_added'), signed=True)} | "
              f"{fmt(row.get('cb_wall_in_run'), 3)} | {fmt(row.get('attributed'), signed=True)} | {events} | {row['target'] or ''} | "
              f"{met} | {fmt(row['others'], 1)} |")
    w("")
    peer_rows = [row for row in rows if row["case"].reporter == SPLUNK and row["added"] is not None]
    if peer_rows:
        w("### splunk, per task result (extrapolated)")
        w("")
        w("splunk posts one event per task result, synchronously, with `open_url`'s 10 s timeout. Added time per "
          "task result, and what that makes for the 2 plays x 20 hosts shape above and for the issue's reference "
          "shape (2 plays x 20 hosts x 3 tasks = 120 results):")
        w("")
        w("| endpoint | measured on | added s | per task result s | 82 results (s20) s | 120 results s |")
        w("|---|---|---:|---:|---:|---:|")
        for row in peer_rows:
            per = row["added"] / row["shape"].results
            w(f"| {endpoint_text(row['case'])} | {row['shape'].label} ({row['shape'].results}) | {fmt(row['added'], signed=True)} | "
              f"{fmt(per, 3)} | {fmt(per * SHAPES['s20'].results, 1)} | {fmt(per * 120, 1)} |")
        w("")
    cpu_rows = [row for row in rows if row["case"].reporter in (OURS, NOOP) and row["shape"].hosts >= 100 and row["base_cpu_tree"]]
    if cpu_rows:
        w("### Controller CPU per task result")
        w("")
        w("CPU = user + system time of the whole ansible-playbook process tree (`wait4` rusage), median of the runs; "
          "added = case minus baseline, per task result and as a share of the baseline's CPU (one run each: this "
          "difference carries the machine's run-to-run noise, a few %). Direct = CPU measured inside the process: "
          "loading the plugin, its methods on the main thread (net of what timing a call costs, from the no-op "
          "callback) and its sender threads; the verdict uses it. The no-op callback's row shows what enabling any "
          "callback costs in that difference.")
        w("")
        w("| shape (task results) | mode | endpoint | runs | baseline CPU s | CPU s | added per result ms | added % | "
          "direct per result ms | direct % | target | met |")
        w("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for row in cpu_rows:
            shape = row["shape"]
            added = row["cpu_tree"] - row["base_cpu_tree"]
            share = 100 * added / row["base_cpu_tree"]
            direct = (row.get("cb_cpu") or 0.0) + (row.get("load_cpu_added") or 0.0)
            direct_share = 100 * direct / row["base_cpu_tree"]
            met = "yes" if direct_share < 1.0 else "**no**"
            mode, where = ("per-host" if row["case"].per_host else "per-play"), endpoint_text(row["case"])
            if row["case"].reporter == NOOP:
                mode, where, met = "no-op callback", "-", ""
            w(f"| {shape.label} ({shape.results}) | {mode} | {where} | "
              f"{row['n']} | {fmt(row['base_cpu_tree'], 1)} | {fmt(row['cpu_tree'], 1)} | {fmt(1000 * added / shape.results, 3, signed=True)} | "
              f"{fmt(share, 2, signed=True)} % | {fmt(1000 * direct / shape.results, 3)} | {fmt(direct_share, 2)} % | "
              f"{'< 1 %' if met else ''} | {met} |")
        w("")
    rate_rows = [row for row in rows if row["case"].reporter == OURS and row["case"].per_host and row.get("max_1s")]
    if rate_rows:
        w("### Throughput, per-host mode")
        w("")
        w(f"Events the receiver got (times from its `received_at`); sustained rate over the longest back-to-back stretch; "
          f"most in any 1-second window, against Flashduty's {FLASHDUTY_RATE_LIMIT} requests/s (the callback's `max_rate` "
          f"default is {MAX_RATE:g}/s).")
        w("")
        w("| shape | endpoint | events delivered | sustained events/s | max in any 1 s | limit | under it |")
        w("|---|---|---:|---:|---:|---:|---|")
        for row in rate_rows:
            w(f"| {row['shape'].label} | {endpoint_text(row['case'])} | {fmt(row.get('delivered'), 0)} | {fmt(row.get('rate'), 1)} | "
              f"{row['max_1s']} | {FLASHDUTY_RATE_LIMIT} | {'yes' if row['max_1s'] < FLASHDUTY_RATE_LIMIT else '**no**'} |")
        w("")
    errors = [error for row in rows for error in row["errors"]]
    if errors:
        w("### Errors")
        w("")
        for error in errors:
            w(f"- {error}")
        w("")
    return "\n".join(out)


# --------------------------------------------------------------------------- main

def render_saved(paths):
    """The tables of saved results; each shape's runs from the last file that has the shape."""
    by_shape = {}
    metas = []
    for path in paths:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        metas.append(saved["meta"])
        shapes = {run["case"].split("/")[0] for run in saved["runs"]}
        for shape in shapes:
            by_shape[shape] = [run for run in saved["runs"] if run["case"].split("/")[0] == shape]
    runs = [run for shape_runs in by_shape.values() for run in shape_runs]
    meta = dict(metas[-1])
    if len(metas) > 1:
        meta["date"] = ", ".join(sorted({entry["date"] for entry in metas}))
        meta["elapsed"] = sum(entry["elapsed"] for entry in metas)
        meta["sessions"] = len(metas)
    meta["total_runs"] = len(runs)
    meta["load_max"] = max((run["load"] for run in runs), default=0.0)
    others = [run.get("others") for run in runs if run.get("others") is not None]
    meta["others"] = median(others) if others else None
    meta["others_max"] = max(others) if others else None
    meta["load_start"] = min(entry["load_start"] for entry in metas)
    order = {case.shape: index for index, case in reversed(list(enumerate(cases())))}
    runs.sort(key=lambda run: order.get(run["case"].split("/")[0], len(order)))
    return render(build_rows(runs), meta)


def machine_description():
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text(encoding="utf-8").split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs ({model}){memory}, Linux {platform.release()}"


def versions():
    from importlib.metadata import PackageNotFoundError, version

    meta = {}
    for package in ("ansible-core", "ansible"):
        try:
            meta[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            meta[package.replace("-", "_")] = "not installed"
    site = Path(sys.executable).parent.parent / "lib"
    for collection in ("community.general", "community.grafana"):
        namespace, name = collection.split(".")
        found = list(site.glob(f"python*/site-packages/ansible_collections/{namespace}/{name}/MANIFEST.json"))
        meta[collection] = json.loads(found[0].read_text(encoding="utf-8"))["collection_info"]["version"] if found else "missing"
    galaxy = (ROOT / "galaxy.yml").read_text(encoding="utf-8")
    match = re.search(r"^version:\s*['\"]?([^'\"\s]+)", galaxy, re.MULTILINE)
    meta["flashduty"] = match.group(1) if match else "?"
    meta["python"] = platform.python_version()
    return meta


def wait_for_quiet(max_load, wait):
    """Wait up to ``wait`` seconds for the 1-minute load average to fall under ``max_load``; return it."""
    deadline = time.monotonic() + wait
    load = os.getloadavg()[0]
    while load > max_load and time.monotonic() < deadline:
        print(f"bench: load average {load:.2f} > {max_load}: waiting for a quieter machine "
              f"({deadline - time.monotonic():.0f} s left)", flush=True)
        time.sleep(min(15.0, max(1.0, deadline - time.monotonic())))
        load = os.getloadavg()[0]
    if load > max_load:
        print(f"bench: WARNING: going on with load average {load:.2f}: the numbers are noisier than on a quiet machine", flush=True)
    return load


def check_peers():
    missing = []
    site = Path(sys.executable).parent.parent / "lib"
    for path in ("community/grafana/plugins/callback/grafana_annotations.py", "community/general/plugins/callback/splunk.py"):
        if not list(site.glob(f"python*/site-packages/ansible_collections/{path}")):
            missing.append(path)
    if missing:
        sys.exit(f"bench: the peers are missing from this venv ({', '.join(missing)}): run it with .venv/bench/bin/python "
                 f"(make bench), which installs bench/requirements.txt")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1",
                        help="the ~3 min subset (default when BENCH_QUICK=1)")
    parser.add_argument("--only", help="run only the cases whose id matches this regular expression (and their baselines)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds of every case")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--max-load", type=float, default=float(os.environ.get("BENCH_MAX_LOAD", MAX_LOAD)),
                        help="1-minute load average counted as busy (default %(default)s)")
    parser.add_argument("--wait", type=float, default=float(os.environ.get("BENCH_WAIT", 60)),
                        help="seconds to wait at the start for the load to fall under --max-load (default %(default)s)")
    parser.add_argument("--output", default=str(BUILD), help="where results.json and results.md go (default %(default)s)")
    parser.add_argument("--render", metavar="RESULTS_JSON", nargs="+",
                        help="print the tables of results.json files again, nothing run; with several, each shape's runs "
                             "come from the last file that has that shape (reruns of some shapes on a quieter machine)")
    parser.add_argument("--collections", default=str(COLLECTIONS),
                        help="ANSIBLE_COLLECTIONS_PATH holding flashcat.flashduty, e.g. a copy with a candidate fix (default %(default)s)")
    args = parser.parse_args(argv)

    if args.render:
        print(render_saved(args.render))
        return 0
    selected = []
    for case in cases():
        rounds = case.quick_rounds if args.quick else case.rounds
        if rounds and args.rounds:
            rounds = args.rounds
        if rounds:
            selected.append((case, rounds))
    if args.only:
        pattern = re.compile(args.only)
        wanted = [(case, rounds) for case, rounds in selected if pattern.search(case.id)]
        shapes = {case.shape for case, _rounds in wanted}
        selected = [(case, rounds) for case, rounds in selected
                    if (case, rounds) in wanted or (case.reporter is None and case.shape in shapes)]
    if args.list:
        for case, rounds in selected:
            print(f"{case.id:32} x{rounds}")
        return 0
    check_peers()
    collections = Path(args.collections).resolve()
    if collections == COLLECTIONS.resolve():
        ensure_collection_link()
    BUILD.mkdir(parents=True, exist_ok=True)
    load_start = wait_for_quiet(args.max_load, args.wait)
    bench = Bench(args.quick, collections)
    bench.receiver = Receiver(integration_key=bench.key, port=0, quiet=True).start()
    started = time.monotonic()
    total = sum(rounds for _case, rounds in selected)
    done = 0
    try:
        for round_index in range(max(rounds for _case, rounds in selected)):
            for case, rounds in selected:
                if round_index >= rounds:
                    continue
                run = bench.run_once(case, round_index)
                done += 1
                extra = ""
                if run.get("delivered") is not None:
                    extra = f"  delivered={run['delivered']} spooled={run.get('spooled')} max1s={run.get('max_1s')}"
                elif run.get("requests") is not None:
                    extra = f"  requests={run['requests']}"
                tail = f"{run['tail']:.2f}" if run["tail"] is not None else "-"
                print(f"[{done:3}/{total}] {time.monotonic() - started:6.0f}s  {case.id:28} round {round_index + 1}  "
                      f"wall {run['wall']:7.2f}s  end {tail}s  cpu {run['cpu_tree']:6.1f}s  load {run['load']:.2f}  others {run['others'] or 0:.2f}"
                      f"{'  rc=' + str(run['rc']) if run['rc'] else ''}{extra}", flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted; the tables cover the runs done so far", flush=True)
    finally:
        bench.receiver.stop()
    elapsed = time.monotonic() - started
    meta = dict(versions(), machine=machine_description(), quick=args.quick, date=time.strftime("%Y-%m-%d %H:%M %Z"),
                elapsed=elapsed, total_runs=len(bench.runs), load_start=load_start,
                load_max=max((run["load"] for run in bench.runs), default=load_start),
                others=median(run["others"] for run in bench.runs),
                others_max=max((run["others"] or 0 for run in bench.runs), default=0.0))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = build_rows(bench.runs)
    table = render(rows, meta)
    (output / "results.json").write_text(json.dumps({"meta": meta, "runs": bench.runs}, indent=1), encoding="utf-8")
    (output / "results.md").write_text(table + "\n", encoding="utf-8")
    print()
    print(table)
    print(f"\nbench: {len(bench.runs)} runs in {elapsed / 60:.1f} min; tables in {output / 'results.md'}")
    failed = [row for row in rows if row["errors"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
