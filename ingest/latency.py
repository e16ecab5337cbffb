"""Latency rollups in meta.db: request durations per minute, service and route, in fixed buckets.

Entries whose metadata carries a numeric `duration_ms` (optionally `route` and
`status`) are counted into histogram buckets, so p50/p95/p99 and counts are
available over any window without scanning the segments. They are folded by
the error-group tracker (ingest/groups.py) exactly like the volume rollups of
ingest/rollups.py: in the meta.db transaction that moves a segment's
watermark, from the rows the writer hands over or, when those do not line up,
read back from the segment; so every stored entry counts exactly once, also
after a crash.

The sidecar's own requests are rolled up the same way under the service
`sidecar` (route = the Flask URL rule): each process counts them in memory
(`Accumulator`) and adds them to meta.db every few seconds.

Tables:

- `latency_minute(minute, service, route, bucket, count)`: one row per
  non-empty bucket; `bucket` is an index into `LATENCY_BUCKETS_MS`, whose
  value is the bucket's upper bound (inclusive, like Prometheus' `le`), the
  lower bound being the previous one (0 for bucket 0). `latency_buckets(bucket,
  le_ms)` holds the same bounds for SQL (`le_ms` NULL for the last, unbounded one).
- `latency_minute_totals(minute, service, route, count, sum_ms, max_ms,
  status_4xx, status_5xx)`: per minute, service and route.

`minute` is the entry's timestamp cut to the minute (`YYYY-MM-DDTHH:MM`),
`route` is `metadata.route` (at most 200 characters) or '' without one.
"""
import math
import operator
import sqlite3
import threading
from bisect import bisect_left

import orjson

from . import catalog

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, math.inf)
MAX_ROUTE_CHARS = 200
_BUCKETS = len(LATENCY_BUCKETS_MS)
# A cell: the bucket counts, then count, sum, max, 4xx, 5xx.
_COUNT, _SUM, _MAX, _4XX, _5XX = range(_BUCKETS, _BUCKETS + 5)
# Row positions of schema.LOG_COLUMNS.
_TS, _SERVICE, _METADATA = 0, 2, 11
_MARK = '"duration_ms"'

LATENCY_TABLES = """
CREATE TABLE IF NOT EXISTS latency_minute (
    minute TEXT NOT NULL, service TEXT NOT NULL, route TEXT NOT NULL, bucket INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (minute, service, route, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latency_minute_totals (
    minute TEXT NOT NULL, service TEXT NOT NULL, route TEXT NOT NULL,
    count INTEGER NOT NULL, sum_ms REAL NOT NULL, max_ms REAL NOT NULL,
    status_4xx INTEGER NOT NULL, status_5xx INTEGER NOT NULL,
    PRIMARY KEY (minute, service, route)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latency_buckets (bucket INTEGER PRIMARY KEY, le_ms REAL);
INSERT OR IGNORE INTO latency_buckets VALUES {};
""".format(", ".join("({}, {})".format(i, "NULL" if math.isinf(le) else le) for i, le in enumerate(LATENCY_BUCKETS_MS)))

# The p95 of one service over the last 15 minutes, interpolated inside its bucket like
# `percentiles()` (NULL when it falls in the unbounded bucket). Shown in docs/monitoring.md.
P95_SQL = """
WITH per_bucket AS (
  SELECT bucket, sum(count) AS n FROM latency_minute
  WHERE service = :service AND minute >= strftime('%Y-%m-%dT%H:%M', 'now', '-15 minutes')
  GROUP BY bucket
), running AS (
  SELECT bucket, n, sum(n) OVER (ORDER BY bucket) AS upto, sum(n) OVER () AS total FROM per_bucket
)
SELECT total AS count,
       coalesce((SELECT le_ms FROM latency_buckets WHERE bucket = running.bucket - 1), 0)
         + (le_ms - coalesce((SELECT le_ms FROM latency_buckets WHERE bucket = running.bucket - 1), 0))
         * (0.95 * total - (upto - n)) / n AS p95_ms
FROM running JOIN latency_buckets USING (bucket)
WHERE upto >= 0.95 * total ORDER BY bucket LIMIT 1
"""


# Bucket i holds durations d with bound[i-1] < d <= bound[i], as bisect_left does.
_BUCKET_SQL = " + ".join("(d > {})".format(bound) for bound in LATENCY_BUCKETS_MS if not math.isinf(bound))
_SEGMENT_SQL = """
SELECT minute, service, route, bucket, count(*), total(d), max(d), count(CASE WHEN status_class = 4 THEN 1 END),
       count(CASE WHEN status_class = 5 THEN 1 END)
FROM (
  SELECT substr(ts, 1, 16) AS minute, service,
         CASE WHEN route_type = 'text' THEN substr(route, 1, {max_route}) ELSE '' END AS route,
         d, {bucket} AS bucket,
         CASE WHEN status_type = 'integer' AND status BETWEEN 100 AND 599 THEN status / 100
              WHEN status_type = 'text' AND status <> '' AND status NOT GLOB '*[^0-9]*'
                   AND CAST(status AS INTEGER) BETWEEN 100 AND 599 THEN CAST(status AS INTEGER) / 100
         END AS status_class
  FROM (
    SELECT ts, service, json_extract(metadata, '$.duration_ms') AS d,
           json_type(metadata, '$.duration_ms') AS d_type,
           json_extract(metadata, '$.route') AS route, json_type(metadata, '$.route') AS route_type,
           json_extract(metadata, '$.status') AS status, json_type(metadata, '$.status') AS status_type
    FROM logs WHERE id > ? AND id <= ? AND instr(metadata, '"duration_ms"') > 0 AND json_valid(metadata)
      AND json_type(metadata) = 'object'
  ) WHERE d_type IN ('integer', 'real') AND d >= 0
) GROUP BY minute, service, route, bucket
""".format(max_route=MAX_ROUTE_CHARS, bucket=_BUCKET_SQL)


def _status_number(status):
    """The number of a status that is not an int: a string of digits, else 0 (not counted)."""
    return int(status) if type(status) is str and status.isdigit() else 0


def _status_class(status):
    number = status if type(status) is int else _status_number(status)
    return number // 100 if 100 <= number < 600 else None

_BUCKETS_UPSERT = (
    "INSERT INTO latency_minute SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 "
    "FROM json_each(?) WHERE true ON CONFLICT(minute, service, route, bucket) "
    "DO UPDATE SET count = count + excluded.count")
_TOTALS_UPSERT = (
    "INSERT INTO latency_minute_totals SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, "
    "value ->> 4, value ->> 5, value ->> 6, value ->> 7 FROM json_each(?) WHERE true "
    "ON CONFLICT(minute, service, route) DO UPDATE SET count = count + excluded.count, "
    "sum_ms = sum_ms + excluded.sum_ms, max_ms = max(max_ms, excluded.max_ms), "
    "status_4xx = status_4xx + excluded.status_4xx, status_5xx = status_5xx + excluded.status_5xx")


class Latency:
    """Latency counts of a run of entries, by (minute, service, route)."""

    __slots__ = ("cells",)

    def __init__(self):
        self.cells = {}  # (minute, service, route) -> [bucket counts..., count, sum, max, 4xx, 5xx]

    def __bool__(self):
        return bool(self.cells)

    @property
    def count(self):
        return sum(cell[_COUNT] for cell in self.cells.values())

    def observe(self, minute, service, route, duration_ms, status=None):
        key = (minute, service, route)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0] * _BUCKETS + [0, 0.0, 0.0, 0, 0]
        cell[bisect_left(LATENCY_BUCKETS_MS, duration_ms)] += 1
        cell[_COUNT] += 1
        cell[_SUM] += duration_ms
        if duration_ms > cell[_MAX]:
            cell[_MAX] = duration_ms
        status_class = _status_class(status)
        if status_class == 5:
            cell[_5XX] += 1
        elif status_class == 4:
            cell[_4XX] += 1

    def add_entry(self, ts, service, metadata_text):
        """Count one stored entry if its metadata (JSON text) has a numeric, finite, non-negative duration_ms."""
        try:
            metadata = orjson.loads(metadata_text)
        except orjson.JSONDecodeError:
            return
        self.add_decoded([(ts, None, service)], [metadata])  # a row as far as _TS and _SERVICE go

    def add_decoded(self, rows, metadatas):
        """Count each row tuple whose metadata dict (or None: the dict it was encoded from) has a
        numeric, finite, non-negative duration_ms; `route` is cut to MAX_ROUTE_CHARS.

        One loop without calls: it runs on the request threads for every entry of a batch
        (ingest/tally.py), under the GIL.
        """
        cells, bounds, inf = self.cells, LATENCY_BUCKETS_MS, math.inf
        for row, metadata in zip(rows, metadatas):
            if metadata is None:
                continue
            duration = metadata.get("duration_ms")
            kind = type(duration)
            if (kind is not int and kind is not float) or not 0 <= duration < inf:
                continue
            route = metadata.get("route")
            key = (row[_TS][:16], row[_SERVICE], route[:MAX_ROUTE_CHARS] if type(route) is str else "")
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = [0] * _BUCKETS + [0, 0.0, 0.0, 0, 0]
            duration = float(duration)
            cell[bisect_left(bounds, duration)] += 1
            cell[_COUNT] += 1
            cell[_SUM] += duration
            if duration > cell[_MAX]:
                cell[_MAX] = duration
            status = metadata.get("status")
            if status is None:
                continue
            if type(status) is not int:  # the common case, a number, without a call
                status = _status_number(status)
            if 500 <= status < 600:
                cell[_5XX] += 1
            elif 400 <= status < 500:
                cell[_4XX] += 1
        return self

    def add_rows(self, rows):
        """Count the row tuples a writer committed (schema.LOG_COLUMNS order); only rows whose
        metadata text mentions duration_ms are parsed."""
        for row in rows:
            text = row[_METADATA]
            if text is not None and _MARK in text:
                self.add_entry(row[_TS], row[_SERVICE], text)
        return self

    @classmethod
    def of_rows(cls, rows):
        return cls().add_rows(rows)

    @classmethod
    def of_segment(cls, con, low, high):
        """The counts of rows low < id <= high, read from a segment.

        Aggregated inside SQLite (json_extract, bucket, GROUP BY) without the GIL: the
        tracker folds every commit this way, so request threads are not slowed by
        parsing metadata in Python. Same rules as add_entry (tests compare them).
        """
        latency = cls()
        for minute, service, route, bucket, count, total, largest, client_errors, server_errors in con.execute(
                _SEGMENT_SQL, (low, high)):
            key = (minute, service, route)
            cell = latency.cells.get(key)
            if cell is None:
                cell = latency.cells[key] = [0] * _BUCKETS + [0, 0.0, 0.0, 0, 0]
            cell[bucket] += count
            cell[_COUNT] += count
            cell[_SUM] += total
            cell[_MAX] = max(cell[_MAX], largest)
            cell[_4XX] += client_errors
            cell[_5XX] += server_errors
        return latency

    def add(self, other):
        # Every commit's tally is added on the tracker's thread, under the GIL: the cells are
        # summed by map() in C (all of a cell adds up, but its max).
        cells = self.cells
        for key, theirs in other.cells.items():
            cell = cells.get(key)
            if cell is None:
                cells[key] = list(theirs)
                continue
            summed = list(map(operator.add, cell, theirs))
            summed[_MAX] = max(cell[_MAX], theirs[_MAX])
            cells[key] = summed
        return self

    def writes(self):
        """The statements that add these counts to the latency tables: [(sql, params)], one each
        over a JSON array, built before the caller's transaction (see groups.fold_range)."""
        buckets = [key + (bucket, count) for key, cell in self.cells.items()
                   for bucket, count in enumerate(cell[:_BUCKETS]) if count]
        totals = [key + tuple(cell[_BUCKETS:]) for key, cell in self.cells.items()]
        return [(_BUCKETS_UPSERT, (orjson.dumps(buckets).decode(),)),
                (_TOTALS_UPSERT, (orjson.dumps(totals).decode(),))]

    def apply(self, meta):
        """Add these counts (inside the caller's transaction)."""
        for sql, params in self.writes():
            meta.execute(sql, params)


class Accumulator:
    """Latencies observed in memory by one process (the sidecar's own requests).

    `observe` is called from request threads; `flush` adds what was observed
    since the last flush to meta.db (upserts that add, so every worker process
    can flush its own counts) and keeps it for the next flush if that fails.
    """

    def __init__(self, service="sidecar"):
        self.service = service
        self._lock = threading.Lock()
        self._pending = Latency()

    def observe(self, minute, route, duration_ms, status=None):
        with self._lock:
            self._pending.observe(minute, self.service, route, duration_ms, status)

    @property
    def pending(self):
        return bool(self._pending)

    def flush(self, meta):
        """Add the pending counts to meta.db; return how many durations were added."""
        with self._lock:
            pending, self._pending = self._pending, Latency()
        if not pending:
            return 0
        try:
            with catalog.immediate(meta):
                pending.apply(meta)
        except sqlite3.Error:
            with self._lock:
                self._pending = pending.add(self._pending)
            raise
        return pending.count


def _interpolate(counts, total, quantile, max_ms):
    rank = quantile * total
    below = 0
    for bucket, count in enumerate(counts):
        if count and below + count >= rank:
            lower = LATENCY_BUCKETS_MS[bucket - 1] if bucket else 0.0
            upper = LATENCY_BUCKETS_MS[bucket]
            if math.isinf(upper):  # the unbounded bucket: up to the largest duration seen
                upper = max(max_ms or lower, lower)
            return round(lower + (upper - lower) * (rank - below) / count, 3)
        below += count
    return None


def quantile_key(quantile):
    return "p{:g}".format(quantile * 100)


def percentiles(meta, since_minute, until_minute=None, service=None, route=None, quantiles=(0.5, 0.95, 0.99)):
    """Count and quantiles (ms) of the durations in minutes since_minute <= minute < until_minute.

    Minutes are text `YYYY-MM-DDTHH:MM` (longer timestamps work too: they are
    compared as text); `until_minute` None means up to now; `service` and
    `route` None mean all. Each quantile is estimated by linear interpolation
    inside its bucket (in the last, unbounded bucket: up to the largest
    duration seen). Returns {"count": n, "p50": ms, "p95": ms, "p99": ms}
    (keys after `quantiles`), with None values when n is 0.
    """
    where, params = ["minute >= ?"], [since_minute[:16]]
    if until_minute is not None:
        where.append("minute < ?")
        params.append(until_minute[:16])
    if service is not None:
        where.append("service = ?")
        params.append(service)
    if route is not None:
        where.append("route = ?")
        params.append(route)
    condition = " AND ".join(where)
    counts = [0] * _BUCKETS
    for bucket, count in meta.execute(
            "SELECT bucket, sum(count) FROM latency_minute WHERE {} GROUP BY bucket".format(condition), params):
        if 0 <= bucket < _BUCKETS:
            counts[bucket] = count
    total = sum(counts)
    max_ms = None
    if counts[-1]:
        max_ms, = meta.execute("SELECT max(max_ms) FROM latency_minute_totals WHERE {}".format(condition),
                               params).fetchone()
    result = {"count": total}
    for quantile in quantiles:
        result[quantile_key(quantile)] = _interpolate(counts, total, quantile, max_ms) if total else None
    return result


def prune(meta, before_minute):
    """Forget the minutes before `before_minute` (text, YYYY-MM-DDTHH:MM); return rows deleted."""
    deleted = meta.execute("DELETE FROM latency_minute WHERE minute < ?", (before_minute,)).rowcount
    return deleted + meta.execute("DELETE FROM latency_minute_totals WHERE minute < ?", (before_minute,)).rowcount
