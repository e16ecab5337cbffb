"""Run the retention job every `retention_interval_s`, in exactly one process at a time.

Every worker process has a scheduler thread; a non-blocking flock on
`data/.retention.lock` picks the one that runs, and the last run's start time
in meta.db keeps the interval across processes and restarts.
"""
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import timedelta

from ingest import catalog
from ingest.locks import flock_held
from ingest.entries import format_ts

from . import job

log = logging.getLogger("sidecar.retention")


@contextmanager
def run_lock(data_dir, wait=False):
    """Yield True when this process holds the retention lock."""
    with flock_held(os.path.join(data_dir, ".retention.lock"), wait) as held:
        yield held


def last_started(meta):
    row = meta.execute("SELECT max(started_at) FROM retention_runs WHERE dry_run = 0").fetchone()
    return row[0] if row else None


class Scheduler:
    def __init__(self, data_dir, policy, interval_s, clock, on_report=None):
        self.data_dir, self.policy, self.interval_s, self.clock = data_dir, policy, interval_s, clock
        self.on_report = on_report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sidecar-retention", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(60)

    def _loop(self):
        # Check often enough to honour short intervals, rarely enough to cost nothing.
        while not self._stop.wait(min(self.interval_s, 30)):
            try:
                self.run_if_due()
            except (sqlite3.Error, OSError) as error:
                log.error("retention run failed: %s", error)

    def run_if_due(self):
        with run_lock(self.data_dir) as held:
            if not held:
                return None
            now = self.clock()
            meta = catalog.connect_meta(self.data_dir)
            try:
                job.ensure_schema(meta)
                last = last_started(meta)
            finally:
                meta.close()
            if last is not None and last > format_ts(now - timedelta(seconds=self.interval_s)):
                return None
            report = job.run(self.data_dir, self.policy, now)
            if self.on_report:
                self.on_report(report)
            return report
