"""Fault matrix: what each delivery fault costs a playbook, and proof that no change event is lost (issue 4).

Run with either test venv (standard library only; the receiver and the machinery shared with the
tests, the project, the cases and the checks, come from ``tools/fault_matrix.py``; this script repeats
the cases, measures baselines and prints the tables)::

    .venv/newest/bin/python bench/faults.py                  # every case, 3 repetitions (~8 min on 2 cores)
    .venv/oldest/bin/python bench/faults.py --repeat 1       # one repetition of each case (~1.5 min)
    python bench/faults.py --only 'blackhole|refused'        # cases whose id matches a regular expression
    python bench/faults.py --list                            # the cases, nothing run

For each fault kind, real ``ansible-playbook`` runs (2 plays x 5 local hosts, ``gather_facts: false``,
two cheap tasks, the callback enabled with ``ANSIBLE_CALLBACKS_ENABLED``, the push URL vaulted in
``group_vars/all`` and a vault password file, default callback options except a private
``FLASHDUTY_SPOOL_DIR`` per case and repetition) talk to ``tools/flashduty_receiver.py``:

- transient faults (HTTP 500/502/503/504, 429 without and with ``Retry-After: 1``, connection reset,
  connection closed without an answer, a header block cut short): the first ``--transient`` requests fail,
  then the endpoint recovers;
- whole-run outages (connection refused, black hole, an answer whose headers or body trickle in one byte
  every 0.5 s, a chunked answer that never ends): every request of the first run fails;
- permanent refusals (400 for one event, 401 for every event): not retried, one warning each.

After the first run a RECOVERY run (same project, same spool, endpoint healthy) plays ``recovery.yml``
(the same plays, another file name, so its events are told apart by their ``playbook`` label). Then:
events the callback generated (its own ``-vv`` summary; 4 per run: Processing + Done for each play),
events of the first run the receiver accepted, duplicates (same change_key, change_status and event_time
accepted twice), order (Processing before Done for each change), and the integration key searched
for in stdout, stderr, the ``ANSIBLE_LOG_PATH`` log (every run is at ``-vvvv``), the spool and every
other file of the case. Wall times are compared with callback-off runs of the same project, before and
after the cases (medians).

Everything is generated under ``.build/faults/`` (``--workdir``): one directory per case with the
project, the spool and the output of every run, plus ``results.md`` and ``results.json``.
Exit status 1 when a case loses an event (after recovery; an event refused with a warning is not
lost), delivers one twice, breaks the order, leaks the key, leaves the spool readable by others,
or changes the playbook's return code; 2 for a usage or set-up error.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from collection_link import ansible_environment, ensure_collection_link  # noqa: E402  (tools/ is not a package)
from fault_matrix import (  # noqa: E402
    CASES, DEFAULT_FLUSH_TIMEOUT, DEFAULT_TRANSIENT, FIRST_PLAYBOOK, Case, Context, run_playbook, run_trial, venv_bin,
)

DEFAULT_WORKDIR = ROOT / ".build" / "faults"


def baseline(project, out_dir, name):
    """The same project with the callback off."""
    return run_playbook(project, FIRST_PLAYBOOK, out_dir, name, callback=False)


# --------------------------------------------------------------------------- one case, repeated


@dataclass
class CaseResult:
    case: Case
    trials: list
    baseline: object = None       # median wall time of the callback-off runs, None when not measured
    baseline_tail: object = None  # their median end-of-run delay (PLAY RECAP to exit)

    @property
    def problems(self):
        return [problem for trial in self.trials for problem in trial.problems]

    @property
    def ok(self):
        return not self.problems

    @property
    def wall(self):
        return statistics.median(trial.wall for trial in self.trials)

    @property
    def added(self):
        return None if self.baseline is None else self.wall - self.baseline

    @property
    def tail(self):
        tails = [trial.tail for trial in self.trials if trial.tail is not None]
        return statistics.median(tails) if tails else None

    @property
    def added_tail(self):
        return None if self.tail is None or self.baseline_tail is None else self.tail - self.baseline_tail


def run_case(ctx, case, repeat=1, expected_rc=0, baseline_wall=None):
    """``repeat`` trials of ``case``; a CaseResult."""
    trials = [run_trial(ctx, case, index + 1, expected_rc=expected_rc) for index in range(repeat)]
    return CaseResult(case, trials, baseline_wall)


# --------------------------------------------------------------------------- report

def _span(values, fmt="{}"):
    values = sorted(set(values))
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return fmt.format(values[0]) + "-" + fmt.format(values[-1])


def table(results):
    """The markdown table: one row per case, trials summed."""
    lines = ["| fault | first run rc | added wall time (s) | warnings shown | sent/received after recovery | duplicates | order ok | key leaked |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        trials = result.trials
        sent = sum(trial.sent or 0 for trial in trials)
        received = sum(trial.received for trial in trials)
        refused = sum(trial.refused_warned for trial in trials)
        delivery = f"{sent}/{received}" + (f" (+{refused} refused, warned)" if refused else "")
        dups = sum(trial.duplicates for trial in trials)
        dups = f"{dups} (at least once)" if dups and result.case.duplicates_expected else f"{dups}"
        added = "-" if result.added is None else f"{result.added:+.2f}"
        leaks = sorted({place for trial in trials for place in trial.leaks})
        lines.append(f"| {result.case.label} | {_span([trial.rc for trial in trials])} | {added} | "
                     f"{_span([len(trial.warnings) for trial in trials])} | {delivery} | {dups} | "
                     f"{'yes' if not any(trial.order for trial in trials) else 'NO'} | {'no' if not leaks else 'YES: ' + ', '.join(leaks)} |")
    return "\n".join(lines)


def details(results):
    """A second table: what the timing and the spool looked like."""
    lines = ["| fault | runs | median wall (s) | added end-of-run delay (s) | callback flush (s) | requests (faulted) per first run "
             "| spooled after first run | result |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        trials = result.trials
        flushes = [trial.flush for trial in trials if trial.flush is not None]
        tail = "-" if result.added_tail is None else f"{result.added_tail:+.2f}"
        lines.append(f"| {result.case.label} | {len(trials)} | {result.wall:.2f} | {tail} | {_span(flushes, '{:.1f}')} | "
                     f"{_span([trial.requests for trial in trials])} ({_span([trial.faulted for trial in trials])}) | "
                     f"{_span([trial.spooled for trial in trials])} | {'ok' if result.ok else 'FAILED'} |")
    return "\n".join(lines)


def machine(home):
    """The machine and versions, for the report."""
    version = subprocess.run([str(venv_bin() / "ansible-playbook"), "--version"], capture_output=True, text=True, check=False,
                             env=ansible_environment(home)).stdout.splitlines()
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    core = re.search(r"core ([^\]\s]+)", version[0] if version else "")
    return dict(ansible_core=core.group(1) if core else "?", python=platform.python_version(),
                system=f"{platform.system()} {platform.release()}", cpus=os.cpu_count(), cpu=cpu or platform.machine(),
                load=" ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "?")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each case (default 3); wall times are their median")
    parser.add_argument("--baseline", type=int, default=None, help="callback-off runs before and after the cases (default: --repeat)")
    parser.add_argument("--only", help="run only the cases whose id matches this regular expression")
    parser.add_argument("--transient", type=int, default=DEFAULT_TRANSIENT,
                        help=f"requests that fail before a transient fault clears (default {DEFAULT_TRANSIENT})")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help=f"where to generate everything (default {DEFAULT_WORKDIR})")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.transient < 1 or (args.baseline is not None and args.baseline < 0):
        parser.error("--repeat and --transient must be at least 1, --baseline at least 0")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cases = [case for case in CASES if (re.search(args.only, case.id) if args.only else case.default)]
    if args.list or not cases:
        for case in CASES:
            print(f"{case.id:18} {case.mode:10} {case.label}{'' if case.default else '  (only with --only)'}")
        return 0 if cases else 2
    if not (venv_bin() / "ansible-playbook").exists():
        print(f"bench/faults.py: no ansible-playbook next to {sys.executable}: run it with .venv/newest/bin/python", file=sys.stderr)
        return 2
    ensure_collection_link()
    workdir = Path(args.workdir).resolve()
    for name in ("cases", "baseline", "project-receiver", "project-refused", "version_home"):  # only what this script makes
        shutil.rmtree(workdir / name, ignore_errors=True)
    rounds = args.repeat if args.baseline is None else args.baseline
    info = machine(workdir / "version_home")
    started = time.monotonic()
    print(f"fault matrix: {len(cases)} cases x {args.repeat} runs (+ recovery runs), baseline {rounds} + {rounds} runs; "
          f"ansible-core {info['ansible_core']}, Python {info['python']}; output in {workdir}", flush=True)
    results = []
    with Context(workdir, transient_failures=args.transient) as ctx:
        project = ctx.project()
        walls = []
        tails = []
        rcs = set()
        for index in range(rounds):
            run = baseline(project, workdir / "baseline", f"before-{index + 1}")
            walls.append(run.wall)
            tails.append(run.tail)
            rcs.add(run.rc)
        for case in cases:
            result = run_case(ctx, case, repeat=args.repeat, expected_rc=min(rcs) if rcs else 0)
            results.append(result)
            state = "ok" if result.ok else "FAILED: " + "; ".join(result.problems)
            print(f"  {case.id:18} {len(result.trials)} runs, median {result.wall:5.2f} s  {state}", flush=True)
        for index in range(rounds):
            run = baseline(project, workdir / "baseline", f"after-{index + 1}")
            walls.append(run.wall)
            tails.append(run.tail)
            rcs.add(run.rc)
    base = statistics.median(walls) if walls else None
    tails = [tail for tail in tails if tail is not None]
    base_tail = statistics.median(tails) if tails else None
    for result in results:
        result.baseline = base
        result.baseline_tail = base_tail
    if len(rcs) > 1:
        print(f"warning: the callback-off runs ended with different return codes {sorted(rcs)}", file=sys.stderr)
    elapsed = time.monotonic() - started
    outages = [result.added_tail for result in results if result.case.mode == "outage" and result.added_tail is not None]
    header = [
        f"Measured {time.strftime('%Y-%m-%d')} on {info['cpus']} x {info['cpu']}, {info['system']}; ansible-core {info['ansible_core']}, "
        f"Python {info['python']}; load average at the end {info['load']}.",
        f"Baseline (callback off): median {base:.2f} s over {len(walls)} runs; from PLAY RECAP to exit {base_tail:.2f} s."
        if base is not None and base_tail is not None else "No baseline runs.",
        f"Each case: {args.repeat} first run(s) with the fault, each followed by a recovery run; transient faults clear after "
        f"{args.transient} failed requests; default callback options (flush_timeout 5 s, retries 3, timeout 10 s).",
    ]
    if outages:
        header.append(f"Longest end-of-run delay a dead endpoint added (median over runs): {max(outages):.2f} s "
                      f"(flush_timeout {DEFAULT_FLUSH_TIMEOUT:.0f} s).")
    report = "\n\n".join(["\n".join(header), table(results), details(results)])
    print()
    print(report)
    print(f"\n{len(results)} cases in {elapsed:.0f} s")
    (workdir / "results.md").write_text(report + "\n", encoding="utf-8")
    (workdir / "results.json").write_text(json.dumps(dict(machine=info, baseline=walls, results=[dict(
        case=result.case.id, label=result.case.label, mode=result.case.mode, added=result.added, added_tail=result.added_tail, ok=result.ok,
        problems=result.problems, trials=[dict(vars(trial), lost=trial.lost) for trial in result.trials]) for result in results]),
        indent=1, default=str) + "\n", encoding="utf-8")
    failed = [result for result in results if not result.ok]
    for result in failed:
        print(f"FAILED {result.case.id}: " + "; ".join(result.problems), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
