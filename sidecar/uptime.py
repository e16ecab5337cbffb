"""Uptime monitors: the runner, results, incidents and rollups in meta.db.

The monitors come from `SIDECAR_MONITORS_FILE` (sidecar/uptime_config.py).
Every worker process has a runner thread, but only the one holding an
exclusive flock on `<data_dir>/.uptime.lock` checks; it holds the lock for as
long as it lives, and the others try again every few seconds, so when the
holder dies (the kernel drops its lock) another process takes over within
`LOCK_POLL_S`. With no monitors configured no thread is started.

The holder checks each monitor on its own schedule (`interval_s`, or
`retry_interval_s` after a failed check) on a small thread pool
(`SIDECAR_UPTIME_CHECK_THREADS`); a monitor is never checked twice at once.
Results are written by the runner thread alone, one short transaction each:

- `uptime_results(monitor, ts, status, response_ms, http_status, error,
  cert_days_left)`: `status` is `up` or `down` for the check, `maintenance`
  inside a maintenance window (whatever the check found);
- `uptime_hourly`: counts per monitor and UTC hour, folded in the same
  transaction, so uptime over 30 days reads at most 720 rows per monitor;
- `uptime_incidents(id, monitor, started_at, ended_at, cause)`: a monitor goes
  down after `retries` consecutive failed checks (outside maintenance; the
  incident starts at the first of them) and up at its first successful check
  (inside maintenance too);
- `uptime_state`: each monitor's run of failed checks, so a process that takes
  over carries on where the last one stopped.

Nothing here is on the ingest path: the checks run on their own threads and
the writes are small transactions in meta.db.
"""
import concurrent.futures
import fcntl
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timedelta

from ingest import catalog
from ingest.entries import format_ts

from . import uptime_checks
from .uptime_config import load_monitors

log = logging.getLogger("sidecar.uptime")
LOCK_FILE = ".uptime.lock"
LOCK_POLL_S = 5.0           # how often a process without the lock tries to take it
PRUNE_INTERVAL_S = 3600
PRUNE_CHUNK_ROWS = 5000
FIRST_CHECKS_SPREAD_S = 2.0  # the first checks after taking the lock are spread over this long

SCHEMA = """
CREATE TABLE IF NOT EXISTS uptime_results (
    monitor TEXT NOT NULL, ts TEXT NOT NULL, status TEXT NOT NULL, response_ms REAL, http_status INTEGER,
    error TEXT, cert_days_left REAL
);
CREATE INDEX IF NOT EXISTS uptime_results_monitor_ts ON uptime_results(monitor, ts);
CREATE INDEX IF NOT EXISTS uptime_results_ts ON uptime_results(ts);
CREATE TABLE IF NOT EXISTS uptime_incidents (
    id INTEGER PRIMARY KEY, monitor TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, cause TEXT
);
CREATE INDEX IF NOT EXISTS uptime_incidents_monitor ON uptime_incidents(monitor, started_at);
CREATE INDEX IF NOT EXISTS uptime_incidents_open ON uptime_incidents(monitor) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS uptime_hourly (
    monitor TEXT NOT NULL, hour TEXT NOT NULL, up INTEGER NOT NULL, down INTEGER NOT NULL,
    maintenance INTEGER NOT NULL, response_ms_sum REAL NOT NULL, response_count INTEGER NOT NULL,
    PRIMARY KEY (monitor, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uptime_state (
    monitor TEXT PRIMARY KEY, failures INTEGER NOT NULL, failing_since TEXT, checked_at TEXT
) WITHOUT ROWID
"""


def ensure_schema(meta):
    with catalog.immediate(meta):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                meta.execute(statement)


def open_incidents(meta):
    """{monitor: row} of the incidents not ended; {} before the tables exist."""
    try:
        rows = meta.execute("SELECT id, monitor, started_at, cause FROM uptime_incidents "
                            "WHERE ended_at IS NULL ORDER BY started_at").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {row["monitor"]: row for row in rows}


def latest_cert_days(meta, monitor, now):
    """Days left on the monitor's certificate, from its newest result that knows them, moved on to
    `now`; None when no result has them."""
    try:
        row = meta.execute("SELECT ts, cert_days_left FROM uptime_results WHERE monitor = ? AND "
                           "cert_days_left IS NOT NULL ORDER BY ts DESC LIMIT 1", (monitor,)).fetchone()
    except sqlite3.OperationalError:
        return None
    if row is None:
        return None
    then = datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))
    return round(row["cert_days_left"] - (now - then).total_seconds() / 86400, 2)


def prune(meta, now, days):
    """Forget results, hourly counts and ended incidents older than `days`; returns results deleted."""
    cutoff = format_ts(now - timedelta(days=days))
    deleted = 0
    while True:
        with catalog.immediate(meta):
            count = meta.execute("DELETE FROM uptime_results WHERE rowid IN (SELECT rowid FROM uptime_results "
                                 "WHERE ts < ? LIMIT ?)", (cutoff, PRUNE_CHUNK_ROWS)).rowcount
        deleted += count
        if count < PRUNE_CHUNK_ROWS:
            break
    with catalog.immediate(meta):
        meta.execute("DELETE FROM uptime_hourly WHERE hour < ?", (cutoff[:13],))
        meta.execute("DELETE FROM uptime_incidents WHERE ended_at IS NOT NULL AND ended_at < ?", (cutoff,))
    return deleted


class UptimeRunner:
    def __init__(self, sidecar, config=None):
        settings = sidecar.settings
        self.sidecar = sidecar
        self.config = load_monitors(settings) if config is None else config  # a bad file stops the start
        self.threads = settings["uptime_check_threads"]
        self.retention_days = settings["uptime_retention_days"]
        self.cert_interval_s = settings["uptime_cert_check_interval_s"]
        self.holding = False  # whether this process runs the monitors now
        self.status_cache = None  # (time.monotonic(), report, now): sidecar/status_api.py's
        self._certs = {}      # monitor name -> (notAfter or None, time.monotonic() of the handshake)
        self._certs_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._pruned_at = None

    @property
    def monitors(self):
        """name -> Monitor, in the file's order."""
        return self.config.by_name

    @property
    def clock(self):
        return self.sidecar.clock

    def start(self):
        meta = catalog.connect_meta(self.sidecar.data_dir)
        try:
            ensure_schema(meta)
        finally:
            meta.close()
        if self.config.monitors:
            self._thread = threading.Thread(target=self._loop, name="sidecar-uptime", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(30)

    # -- one process at a time ------------------------------------------------------------

    def _try_lock(self):
        fd = os.open(os.path.join(self.sidecar.data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _loop(self):
        while not self._stop.is_set():
            try:
                fd = self._try_lock()
            except OSError as error:
                log.error("uptime lock failed: %s", error)
                fd = None
            if fd is not None:
                try:
                    self.holding = True
                    self._run()
                except Exception as error:  # let another process (or this one, later) take over
                    log.error("uptime runner failed: %s: %s", type(error).__name__, error,
                              exc_info=not isinstance(error, (sqlite3.Error, OSError)))
                finally:
                    self.holding = False
                    os.close(fd)  # releases the flock
            self._stop.wait(LOCK_POLL_S)

    def _run(self):
        monitors = self.config.monitors
        meta = catalog.connect_meta(self.sidecar.data_dir)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(monitors))),
                                                     thread_name_prefix="sidecar-uptime-check")
        try:
            self.reconcile(meta)
            log.info("uptime monitors run in this process (%d monitors)", len(monitors))
            began = time.monotonic()
            due = {monitor.name: began + index * FIRST_CHECKS_SPREAD_S / len(monitors)
                   for index, monitor in enumerate(monitors)}
            running = {}  # future -> (monitor, started on time.monotonic(), moment of the check)
            while not self._stop.is_set():
                now = time.monotonic()
                busy = {monitor.name for monitor, _, _ in running.values()}
                for monitor in monitors:
                    if monitor.name not in busy and due[monitor.name] <= now:
                        moment = self.clock()
                        running[pool.submit(self._check, monitor, moment)] = (monitor, now, moment)
                        busy.add(monitor.name)
                waits = [due[name] - now for name in due if name not in busy]
                timeout = max(0.0, min(waits + [0.5]))  # wake at least twice a second to notice stop()
                if running:
                    done, _ = concurrent.futures.wait(running, timeout=timeout,
                                                      return_when=concurrent.futures.FIRST_COMPLETED)
                else:
                    self._stop.wait(timeout)
                    done = ()
                for future in done:
                    monitor, started, moment = running.pop(future)
                    outcome, cert_days = future.result()
                    row = self.record(meta, monitor, moment, outcome, cert_days)
                    failed = row["status"] == "down"
                    due[monitor.name] = started + (monitor.retry_interval_s if failed else monitor.interval_s)
                self._prune_if_due(meta)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            meta.close()

    def _prune_if_due(self, meta):
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_INTERVAL_S:
            return
        self._pruned_at = now
        deleted = prune(meta, self.clock(), self.retention_days)
        if deleted:
            log.info("uptime: %d results older than %d days deleted", deleted, self.retention_days)

    def reconcile(self, meta):
        """End the open incidents of monitors no longer configured (removed or disabled)."""
        names = list(self.monitors)
        with catalog.immediate(meta):
            meta.execute("UPDATE uptime_incidents SET ended_at = ? WHERE ended_at IS NULL AND monitor NOT IN ({})"
                         .format(", ".join("?" * len(names))), [format_ts(self.clock())] + names)

    # -- checks -----------------------------------------------------------------------------

    def _check(self, monitor, moment):
        """(Outcome, certificate days left or None); runs on the pool, never raises."""
        outcome = uptime_checks.check(monitor)
        cert_days = None
        if monitor.https:
            try:
                cert_days = self._cert_days(monitor, moment)
            except Exception:  # never fail a check for its certificate
                cert_days = None
        return outcome, cert_days

    def _cert_days(self, monitor, moment):
        with self._certs_lock:
            cached = self._certs.get(monitor.name)
        now = time.monotonic()
        if cached is None or cached[0] is None or now - cached[1] >= self.cert_interval_s:
            host, port = uptime_checks.url_endpoint(monitor.url)
            try:
                expiry = uptime_checks.fetch_not_after(host, port, monitor.timeout_ms / 1000)
            except (OSError, ValueError, IndexError):
                expiry = None
            cached = (expiry, now)
            with self._certs_lock:
                self._certs[monitor.name] = cached
        return uptime_checks.days_left(cached[0], moment) if cached[0] is not None else None

    def check_once(self, names=None):
        """Check every monitor (or those named) now, in parallel, and record the results: for tests
        and tools. Not to be mixed with a runner thread holding the lock on the same data dir."""
        monitors = [monitor for monitor in self.config.monitors if names is None or monitor.name in names]
        if not monitors:
            return []
        moment = self.clock()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(monitors)))) as pool:
            checked = list(pool.map(lambda monitor: self._check(monitor, moment), monitors))
        meta = catalog.connect_meta(self.sidecar.data_dir)
        try:
            return [self.record(meta, monitor, moment, outcome, cert_days)
                    for monitor, (outcome, cert_days) in zip(monitors, checked)]
        finally:
            meta.close()

    # -- results and incidents ------------------------------------------------------------------

    def record(self, meta, monitor, moment, outcome, cert_days=None):
        """Store one check's result, fold it into the hourly counts, and open or end an incident.
        Returns the result as a dict with `transition`: "down", "up" or None."""
        ts = format_ts(moment)
        maintenance = self.config.in_maintenance(monitor, moment)
        status = "maintenance" if maintenance else "up" if outcome.ok else "down"
        transition = None
        with catalog.immediate(meta):
            state = meta.execute("SELECT failures, failing_since FROM uptime_state WHERE monitor = ?",
                                 (monitor.name,)).fetchone()
            failures, failing_since = (state["failures"], state["failing_since"]) if state else (0, None)
            incident = meta.execute("SELECT id, started_at FROM uptime_incidents WHERE monitor = ? AND "
                                    "ended_at IS NULL ORDER BY started_at DESC LIMIT 1", (monitor.name,)).fetchone()
            meta.execute("INSERT INTO uptime_results (monitor, ts, status, response_ms, http_status, error, "
                         "cert_days_left) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (monitor.name, ts, status, outcome.response_ms, outcome.http_status, outcome.error,
                          cert_days))
            meta.execute(
                "INSERT INTO uptime_hourly (monitor, hour, up, down, maintenance, response_ms_sum, response_count) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (monitor, hour) DO UPDATE SET up = up + excluded.up, "
                "down = down + excluded.down, maintenance = maintenance + excluded.maintenance, "
                "response_ms_sum = response_ms_sum + excluded.response_ms_sum, "
                "response_count = response_count + excluded.response_count",
                (monitor.name, ts[:13], int(status == "up"), int(status == "down"), int(status == "maintenance"),
                 outcome.response_ms or 0.0, int(outcome.response_ms is not None)))
            if outcome.ok:
                failures, failing_since = 0, None
                if incident is not None:
                    meta.execute("UPDATE uptime_incidents SET ended_at = ? WHERE id = ?", (ts, incident["id"]))
                    transition = "up"
            elif maintenance:
                failures, failing_since = 0, None  # failures inside a window do not count
            else:
                failures, failing_since = failures + 1, failing_since or ts
                if incident is None and failures >= monitor.retries:
                    meta.execute("INSERT INTO uptime_incidents (monitor, started_at, ended_at, cause) "
                                 "VALUES (?, ?, NULL, ?)", (monitor.name, failing_since, outcome.error))
                    transition = "down"
            meta.execute("INSERT OR REPLACE INTO uptime_state (monitor, failures, failing_since, checked_at) "
                         "VALUES (?, ?, ?, ?)", (monitor.name, failures, failing_since, ts))
        if transition == "down":
            log.warning("uptime monitor %s (%s) is down: %s", monitor.name, monitor.target(), outcome.error)
        elif transition == "up":
            log.info("uptime monitor %s (%s) is up again", monitor.name, monitor.target())
        return {"monitor": monitor.name, "ts": ts, "status": status, "response_ms": outcome.response_ms,
                "http_status": outcome.http_status, "error": outcome.error, "cert_days_left": cert_days,
                "transition": transition}
