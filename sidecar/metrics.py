"""Prometheus metrics of the sidecar (served by sidecar/metrics_api.py at /metrics).

Under gunicorn every worker process counts its own requests: gunicorn.conf.py
points PROMETHEUS_MULTIPROC_DIR at a fresh directory in the master, before
any worker imports prometheus_client, so the counters below live in
memory-mapped files that the scraping worker sums up (and a dead worker's
counts stay). Without it (the Flask test client, one process) they live in
`REGISTRY` here. Importing this module imports prometheus_client: only do
it in a worker (create_app), never at import time of the `sidecar` package,
which gunicorn.conf.py imports in the master.

What the store holds (segments, error groups, health) is read from meta.db
by the process that answers the scrape (`StoreCollector`), not per worker.

The sidecar's own request durations also go to the latency rollups in
meta.db (service `sidecar`, ingest/latency.py): counted in memory per
process and added to meta.db every SIDECAR_METRICS_FLUSH_INTERVAL_S.
"""
import collections
import functools
import logging
import sqlite3
import threading
import time

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest, multiprocess, values)
from prometheus_client.core import GaugeMetricFamily

from ingest import catalog, groups, latency
from ingest.entries import format_ts
from retention.job import store_bytes

log = logging.getLogger("sidecar.metrics")
# prometheus_client chose its value class when first imported: multiprocess files or memory.
MULTIPROCESS = values.ValueClass is not values.MutexValue
REGISTRY = CollectorRegistry()  # the metrics below; read directly only when not MULTIPROCESS
disable_created_metrics()  # no `_created` series (multiprocess mode has none either)

# Rejection reasons: a short code per kind of EntryError message, plus whole-batch failures.
_REASON_PREFIXES = (
    ("an entry must be", "not_an_object"),
    ("service ", "missing_service"),
    ("message ", "missing_message"),
    ("level ", "invalid_level"),
    ("timestamp ", "invalid_timestamp"),
    ("metadata is nested", "metadata_too_deep"),
    ("metadata ", "invalid_metadata"),
    ("exception", "invalid_exception"),
    ("fingerprint ", "invalid_fingerprint"),
    ("user_id ", "invalid_field"),
    ("trace_id ", "invalid_field"),  # OTLP: an id of the wrong length or not hex
    ("span_id ", "invalid_field"),
)
BATCH_REASONS = ("queue_full", "storage_unavailable", "commit_timeout")
REASONS = tuple(dict.fromkeys([reason for _, reason in _REASON_PREFIXES]
                              + ["timestamp_future", "invalid_field", "other"] + list(BATCH_REASONS)))
UNMATCHED_ROUTE = "(unmatched)"
_SECONDS = tuple(bound / 1000 for bound in latency.LATENCY_BUCKETS_MS)

ENTRIES_ACCEPTED = Counter(
    "sidecar_entries_accepted", "Entries stored and acknowledged with a 2xx (ingest API, Sentry and OTLP endpoints).",
    registry=REGISTRY)
ENTRIES_REJECTED = Counter(
    "sidecar_entries_rejected", "Entries not stored, by reason: the entry failed validation, or its batch "
    "was refused (queue_full: 429, storage_unavailable / commit_timeout: 503).", ["reason"], registry=REGISTRY)
REQUESTS = Counter("sidecar_requests", "HTTP requests answered, by route (URL rule) and status.",
                   ["route", "status"], registry=REGISTRY)
REQUEST_DURATION = Histogram("sidecar_request_duration_seconds", "Time to answer an HTTP request, by route.",
                             ["route"], buckets=_SECONDS, registry=REGISTRY)
QUEUE = Gauge("sidecar_writer_queue_entries", "Entries waiting for the writer (summed over live worker processes).",
              multiprocess_mode="livesum", registry=REGISTRY)
COMMIT_DURATION = Histogram("sidecar_commit_duration_seconds", "Time of one writer transaction (group commit), "
                            "rotation and hand-over to the error-group tracker included.",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                     float("inf")), registry=REGISTRY)
for _reason in REASONS:  # every reason shows from the start, at 0
    ENTRIES_REJECTED.labels(_reason)


def rejection_reason(message):
    """The short, bounded code of an EntryError message."""
    if message.startswith("timestamp ") and message.endswith(" in the future"):
        return "timestamp_future"
    for prefix, reason in _REASON_PREFIXES:
        if message.startswith(prefix):
            return reason
    if " must be a string" in message:
        return "invalid_field"
    return "other"


def _never_fails(method):
    """Counting must never fail what it counts (a stored batch answered 500, a commit reported failed)."""
    @functools.wraps(method)
    def counting(self, *args):
        try:
            method(self, *args)
        except Exception as error:  # noqa: BLE001 (logged, at most once a minute)
            now = time.monotonic()
            if now - self._last_error_logged >= 60:
                self._last_error_logged = now
                log.error("counting metrics failed: %r", error)
    return counting


class Recorder:
    """A Sidecar's link to the metrics: counts from the request and writer threads, and the
    thread that adds the sidecar's own request latencies to meta.db."""

    def __init__(self, sidecar):
        self.sidecar = sidecar
        self.request_latency = latency.Accumulator("sidecar")
        self._interval = sidecar.settings["metrics_flush_interval_s"]
        self._stopping = threading.Event()
        self._flush_lock = threading.Lock()
        self._meta = None
        self._thread = None
        self._last_error_logged = -60.0

    # -- counting (hot paths: a few dict lookups and locks, once per request or commit) --
    @_never_fails
    def accepted(self, entries):
        ENTRIES_ACCEPTED.inc(entries)

    @_never_fails
    def rejected(self, rejections):
        """`rejections`: the [{"index", "error"}] of validate_entries."""
        for reason, count in collections.Counter(rejection_reason(item["error"]) for item in rejections).items():
            ENTRIES_REJECTED.labels(reason).inc(count)

    @_never_fails
    def rejected_batch(self, reason, entries):
        ENTRIES_REJECTED.labels(reason).inc(entries)

    @_never_fails
    def request(self, route, status, seconds):
        REQUESTS.labels(route, str(status)).inc()
        REQUEST_DURATION.labels(route).observe(seconds)
        self.request_latency.observe(format_ts(self.sidecar.clock())[:16], route, seconds * 1000, status)

    @_never_fails
    def commit(self, seconds, entries, queued):
        COMMIT_DURATION.observe(seconds)
        QUEUE.set(queued)

    # -- the flush thread ------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="sidecar-metrics", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stopping.wait(self._interval):
            QUEUE.set(self.sidecar.writer.queued_entries)  # also while the writer is stuck
            try:
                self.flush()
            except sqlite3.Error as error:
                log.error("adding request latencies to meta.db: %s", error)

    def flush(self):
        """Add the request latencies counted since the last flush to meta.db."""
        if not self.request_latency.pending:
            return 0
        with self._flush_lock:
            if self._meta is None:
                self._meta = catalog.connect_meta(self.sidecar.data_dir)
            return self.request_latency.flush(self._meta)

    def stop(self):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.flush()
        except sqlite3.Error as error:
            log.error("adding request latencies to meta.db: %s", error)
        with self._flush_lock:
            if self._meta is not None:
                self._meta.close()
                self._meta = None


def health_status(sidecar):
    """0 healthy, 1 degraded, 2 unhealthy, as /api/health reports it (no scan, no network call)."""
    from . import health_api
    return health_api.RANK[health_api.health_report(sidecar)[1]]


class StoreCollector:
    """Gauges read from meta.db (and the health checks) when scraped."""

    def __init__(self, sidecar):
        self.sidecar = sidecar

    def collect(self):
        sidecar = self.sidecar
        meta = catalog.connect_meta_cached(sidecar.data_dir)
        count = GaugeMetricFamily("sidecar_segments", "Segment files in the catalog, by state (head: being "
                                  "written by a worker, closed: read-only).", labels=["state"])
        size = GaugeMetricFamily("sidecar_segment_bytes", "Bytes of the segment files, by state (the heads' "
                                 "sizes as of the writers' last catalog update, at most a second old).",
                                 labels=["state"])
        rows = GaugeMetricFamily("sidecar_segment_entries", "Entries in the segment files, by state.",
                                 labels=["state"])
        by_state = {"head": (0, 0, 0), "closed": (0, 0, 0)}
        for state, segments, total_bytes, entries in meta.execute(
                "SELECT CASE WHEN closed_at IS NULL THEN 'head' ELSE 'closed' END, count(*), "
                "coalesce(sum(bytes), 0), coalesce(sum(row_count), 0) FROM segments GROUP BY 1"):
            by_state[state] = (segments, total_bytes, entries)
        for state, (segments, total_bytes, entries) in by_state.items():
            count.add_metric([state], segments)
            size.add_metric([state], total_bytes)
            rows.add_metric([state], entries)
        yield count
        yield size
        yield rows
        yield GaugeMetricFamily("sidecar_store_bytes", "Bytes of the whole store (segments with their WAL, and "
                                "meta.db), as the retention budget counts them.", value=store_bytes(sidecar.data_dir))
        yield GaugeMetricFamily("sidecar_disk_budget_bytes", "SIDECAR_DISK_BUDGET_BYTES (0: no budget).",
                                value=sidecar.settings["disk_budget_bytes"])
        error_groups = GaugeMetricFamily("sidecar_error_groups", "Error groups, by status.", labels=["status"])
        found = dict(meta.execute("SELECT status, count(*) FROM error_groups GROUP BY status").fetchall())
        for status in groups.STATUSES:
            error_groups.add_metric([status], found.get(status, 0))
        yield error_groups
        yield GaugeMetricFamily("sidecar_health_status", "Overall health as /api/health reports it: 0 healthy, "
                                "1 degraded, 2 unhealthy (checked by the process that answered the scrape).",
                                value=health_status(sidecar))


class _Collectors:
    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def render(sidecar):
    """The Prometheus text exposition of every metric."""
    QUEUE.set(sidecar.writer.queued_entries)
    own = multiprocess.MultiProcessCollector(None) if MULTIPROCESS else REGISTRY
    return generate_latest(_Collectors(own, StoreCollector(sidecar)))
