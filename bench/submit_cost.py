"""The cost of EventSender.submit() on the callback's thread, and of submit() + flush(), for 2,000 events.

Run from the repository root, after ``make collections-link``:

    PYTHONPATH=.build/collections .venv/newest/bin/python bench/submit_cost.py [repetitions]

Two local receivers: one answers at once (the sending threads are busy while the caller submits, and compete
for the GIL), one answers 2 s late (the threads are idle: submit() alone). Medians and minimums of the
repetitions: the machine's noise is large, compare minimums.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from flashduty_receiver import Receiver  # noqa: E402  (tools/ is not a package)

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import build_event, endpoint_for  # noqa: E402
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._sender import EventSender  # noqa: E402

COUNT = 2000
EVENTS = [build_event("Processing" if number < COUNT // 2 else "Done", "change-%d" % (number % 100), "play %d" % number,
                      labels={"n": number}, event_time=1700000000 + number)[0] for number in range(COUNT)]


def one_run(receiver, flush):
    """(caller CPU ms, caller wall ms) of the submits, and the wall seconds of submit + flush (or None)."""
    sender = EventSender(client_options=dict(timeout=5, retries=1), max_rate=None, concurrency=8)
    endpoint = endpoint_for(receiver.push_url)
    cpu, wall = time.thread_time(), time.perf_counter()
    for event in EVENTS:
        sender.submit(endpoint, event)
    cpu, submitted = (time.thread_time() - cpu) * 1e3, time.perf_counter()
    total = None
    if flush:
        report = sender.flush(60)
        total = time.perf_counter() - wall
        assert report.delivered == COUNT, report
    sender.close()
    return cpu, (submitted - wall) * 1e3, total


def spread(rows, index):
    values = [row[index] for row in rows]
    return statistics.median(values), min(values)


def main(repetitions):
    with Receiver("k" * 32, quiet=True) as busy, Receiver("k" * 32, quiet=True, latency=2.0) as idle:
        full = [one_run(busy, True) for _dummy in range(repetitions)]
        alone = [one_run(idle, False) for _dummy in range(repetitions)]
    print("submit + flush, answers at once: submit CPU %.1f ms (min %.1f), submit wall %.1f ms (min %.1f), "
          "submit + flush wall %.2f s (min %.2f)" % (spread(full, 0) + spread(full, 1) + spread(full, 2)))
    cpu, cpu_min = spread(alone, 0)
    print("submit alone, threads idle: CPU %.1f ms (min %.1f) = %.1f us per event, wall %.1f ms (min %.1f)"
          % ((cpu, cpu_min, cpu * 1000 / COUNT) + spread(alone, 1)))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
