"""Retention benchmark: the job on a ~1 GiB store of 2 million entries over 10 days.

    .venv/bin/python bench/retention.py                 # 2M entries (a few minutes to build)
    .venv/bin/python bench/retention.py --entries 200000

Builds the store with the real writer (one segment per day, an injected
clock), starts the real gunicorn server on it, measures the p50/p99 latency
of 100-entry ingest batches sent at a steady rate while idle, then runs
`python -m retention run` and measures the same latency during the job.
Target: p99 during the job at most 2 times the idle p99.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

import orjson
import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from bench.common import ROOT, TOKEN, Server, dir_bytes, percentile, print_table  # noqa: E402
from ingest.entries import Limits, format_ts, to_row  # noqa: E402
from ingest.fingerprint import Fingerprinter  # noqa: E402
from ingest.writer import Batch, Writer  # noqa: E402
from sidecar.settings import load_settings  # noqa: E402


class Clock:
    def __init__(self, moment):
        self.moment = moment

    def __call__(self):
        return self.moment


def build_store(data_dir, entries, days, now):
    """`entries` spread over `days` daily segments, the last one today (the head)."""
    clock = Clock(now - timedelta(days=days - 1))
    writer = Writer(data_dir, load_settings({}, environ={}), clock).start()
    fingerprinter, limits = Fingerprinter(), Limits()
    per_day = entries // days
    for day in range(days):
        start = now - timedelta(days=days - 1 - day, hours=12)
        clock.moment = start + timedelta(hours=12)
        received, max_ts = format_ts(clock.moment), format_ts(now + timedelta(days=1))
        batch = []
        for entry in workload.entries(per_day, seed=day, start=start, span_s=12 * 3600):
            batch.append(to_row(entry, received, max_ts, limits, fingerprinter))
            if len(batch) == 10_000:
                writer.submit(Batch(batch)).done.wait()
                batch = []
        if batch:
            writer.submit(Batch(batch)).done.wait()
    writer.wait_closers()
    writer.stop()


def steady_load(url, seconds, rate_per_s, stop=None):
    """100-entry batches at a steady rate; returns latencies in seconds and non-2xx count."""
    bodies = [orjson.dumps(list(workload.entries(100, seed=1000 + i))) for i in range(20)]
    session, latencies, failures = requests.Session(), [], 0
    headers = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}
    deadline, i = time.time() + seconds, 0
    while time.time() < deadline and not (stop and stop.is_set()):
        started = time.perf_counter()
        response = session.post(url + "/api/logs", data=bodies[i % len(bodies)], headers=headers)
        latencies.append(time.perf_counter() - started)
        failures += response.status_code != 200
        i += 1
        time.sleep(max(0.0, 1 / rate_per_s - (time.perf_counter() - started)))
    return latencies, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="ingest requests per second during the measurement")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    now = datetime.now(timezone.utc)
    data_dir = tempfile.mkdtemp(prefix="bench-retention-")
    started = time.perf_counter()
    build_store(data_dir, args.entries, args.days, now)
    built_s, before_bytes = time.perf_counter() - started, dir_bytes(data_dir)
    print("built {:,} entries in {} daily segments, {:.2f} GiB, in {:.0f} s".format(
        args.entries, args.days, before_bytes / 2**30, built_s), file=sys.stderr)
    server = Server(data_dir, retention_interval_s=86400, disk_budget_bytes=0)
    try:
        idle, idle_failures = steady_load(server.url, args.idle_seconds, args.rate)
        stop, during = threading.Event(), {}

        def measure():
            during["latencies"], during["failures"] = steady_load(server.url, 3600, args.rate, stop)

        measurer = threading.Thread(target=measure)
        measurer.start()
        env = dict(os.environ, SIDECAR_DATA_DIR=data_dir, SIDECAR_DISK_BUDGET_BYTES="0")
        job_started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "retention", "run", "--json"], cwd=ROOT, env=env,
                              capture_output=True, check=True)
        job_s = time.perf_counter() - job_started
        stop.set()
        measurer.join()
    finally:
        server.stop()
    report = orjson.loads(done.stdout)
    after_bytes = dir_bytes(data_dir)
    shutil.rmtree(data_dir)
    idle_p99, job_p99 = percentile(idle, 0.99), percentile(during["latencies"], 0.99)
    print("store before: {:.2f} GiB, after: {:.2f} GiB; rows deleted: {}; segments compacted: {}".format(
        before_bytes / 2**30, after_bytes / 2**30,
        ", ".join("{} {:,}".format(level, n) for level, n in report["rows_deleted"].items() if n),
        len(report["compacted"])))
    print_table(["phase", "seconds", "requests", "p50 ms", "p99 ms", "non-2xx", "p99 / idle p99"], [
        ["idle", "{:.0f}".format(args.idle_seconds), len(idle), "{:.1f}".format(percentile(idle, 0.5) * 1000),
         "{:.1f}".format(idle_p99 * 1000), idle_failures, "1.00"],
        ["retention job", "{:.1f}".format(job_s), len(during["latencies"]),
         "{:.1f}".format(percentile(during["latencies"], 0.5) * 1000), "{:.1f}".format(job_p99 * 1000),
         during["failures"], "{:.2f}".format(job_p99 / idle_p99)],
    ])


if __name__ == "__main__":
    main()
