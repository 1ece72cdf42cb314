"""Run ``ansible-playbook`` in this process and time the callback plugins; used by ``bench/run.py``.

Usage: ``python bench/_instrument.py REPORT.json [ansible-playbook arguments...]``

This is what the ``ansible-playbook`` entry script does (``ansible.cli.playbook.main``),
plus bookkeeping that costs the same with every callback configuration:

- every method of every callback plugin except the stdout one is wrapped to add up its
  calls, main-thread CPU (``time.thread_time``) and wall time;
- the moment ``v2_playbook_on_stats`` is dispatched (the playbook's work is over: what
  follows is the callbacks' end-of-run work and the interpreter's exit);
- the CPU of the threads the flashcat.flashduty sender starts (names ``flashduty-*``);
- the wall time and CPU of ``TaskQueueManager.load_callbacks`` (plugin import and set-up).

REPORT.json is written by the last ``atexit`` handler, after the plugins' own ones.
"""

import atexit
import json
import os
import resource
import sys
import threading
import time

THREAD_PREFIX = "flashduty-"

_report_path = sys.argv[1]
_data = {
    "started_at": time.time(),
    "stats_at": None,
    "exit_at": None,
    "load_callbacks": {"cpu": 0.0, "wall": 0.0},
    "callbacks": {},   # plugin -> method -> [calls, cpu, wall]
    "threads": {},     # thread name -> cpu seconds
    "rusage_self": None,
}
_thread_tids = {}      # native thread id -> name, for threads still alive at exit
_thread_done = {}      # native thread id -> (name, cpu) for threads that ended


def _thread_cpu_from_proc(tid):
    """CPU seconds of one of this process's threads, from /proc (None when it is gone)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as handle:
            return int(handle.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


_original_run = threading.Thread.run


def _run(self):
    if not self.name.startswith(THREAD_PREFIX):
        return _original_run(self)
    tid = threading.get_native_id()
    _thread_tids[tid] = self.name
    try:
        return _original_run(self)
    finally:
        _thread_done[tid] = (self.name, time.thread_time())


threading.Thread.run = _run


def _timed(method, slot):
    def wrapper(*args, **kwargs):
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            slot[0] += 1
            slot[1] += time.thread_time() - cpu
            slot[2] += time.perf_counter() - wall

    return wrapper


def _instrument_plugins(tqm):
    for plugin in tqm._callback_plugins[1:]:  # [0] is the stdout callback
        name = getattr(plugin, "CALLBACK_NAME", None) or getattr(plugin, "_load_name", type(plugin).__name__)
        methods = getattr(plugin, "_implemented_callback_methods", None)
        if methods is None:
            methods = [attr for attr in dir(plugin) if attr.startswith("v2_")]
        table = _data["callbacks"].setdefault(name, {})
        for method_name in list(methods):
            slot = table.setdefault(method_name, [0, 0.0, 0.0])
            setattr(plugin, method_name, _timed(getattr(plugin, method_name), slot))


def _patch_task_queue_manager():
    from ansible.executor.task_queue_manager import TaskQueueManager

    original_load = TaskQueueManager.load_callbacks
    original_send = TaskQueueManager.send_callback

    def load_callbacks(self):
        first = not self._callback_plugins
        cpu, wall = time.thread_time(), time.perf_counter()
        result = original_load(self)
        if first:
            _data["load_callbacks"]["cpu"] += time.thread_time() - cpu
            _data["load_callbacks"]["wall"] += time.perf_counter() - wall
            _instrument_plugins(self)
        return result

    def send_callback(self, method_name, *args, **kwargs):
        if method_name == "v2_playbook_on_stats" and _data["stats_at"] is None:
            _data["stats_at"] = time.time()
        return original_send(self, method_name, *args, **kwargs)

    TaskQueueManager.load_callbacks = load_callbacks
    TaskQueueManager.send_callback = send_callback


def _write_report():
    if _data["exit_at"] is not None:
        return  # a forked worker inherits this handler but leaves with os._exit; never twice anyway
    _data["exit_at"] = time.time()
    threads = {}
    for tid, name in _thread_tids.items():
        done = _thread_done.get(tid)
        cpu = done[1] if done is not None else _thread_cpu_from_proc(tid)
        if cpu is not None:
            threads[name] = threads.get(name, 0.0) + cpu
    _data["threads"] = threads
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _data["rusage_self"] = usage.ru_utime + usage.ru_stime
    tmp = f"{_report_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(_data, handle)
    os.replace(tmp, _report_path)


_main_pid = os.getpid()


def _at_exit():
    if os.getpid() == _main_pid:
        _write_report()


# Registered first, so it runs last: after the callbacks' own atexit handlers (flush, spool).
atexit.register(_at_exit)

if __name__ == "__main__":
    from ansible.cli.playbook import main  # first: ansible.cli sets things up that the rest of ansible expects

    _patch_task_queue_manager()
    sys.argv = ["ansible-playbook"] + sys.argv[2:]
    sys.exit(main())
