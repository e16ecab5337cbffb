"""Rollups in meta.db: entries per minute by service and level, and per minute received.

Dashboards read these small tables instead of counting rows across segments,
so they stay fast as the store grows. They are folded by the error-group
tracker in the same meta.db transaction that moves a segment's watermark
(`error_sync`), so they count every stored entry exactly once, also after a
crash. Counts are of entries received: retention deleting entries later does
not lower them (like an error group's count).
"""
from collections import Counter
from itertools import repeat
from operator import getitem, itemgetter

import orjson

ROLLUP_TABLES = """
CREATE TABLE IF NOT EXISTS volume_minute (
    minute TEXT NOT NULL, service TEXT NOT NULL, level TEXT NOT NULL, entries INTEGER NOT NULL,
    PRIMARY KEY (minute, service, level)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ingest_minute (
    minute TEXT PRIMARY KEY, entries INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Row positions of schema.LOG_COLUMNS.
_TS, _LEVEL, _SERVICE, _RECEIVED = 0, 1, 2, 13
_MINUTE = slice(0, 16)  # "YYYY-MM-DDTHH:MM" of a stored timestamp
# The deep health check's probe entries are deleted right after they are read back: not counted.
PROBE_SERVICE = "sidecar.probe"

_VOLUME_UPSERT = (
    "INSERT INTO volume_minute SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?) WHERE true "
    "ON CONFLICT(minute, service, level) DO UPDATE SET entries = entries + excluded.entries")
_INGEST_UPSERT = (
    "INSERT INTO ingest_minute SELECT value ->> 0, value ->> 1 FROM json_each(?) WHERE true "
    "ON CONFLICT(minute) DO UPDATE SET entries = entries + excluded.entries")


class Volume:
    """Counts of a run of rows: by (event minute, service, level) and by received minute."""

    __slots__ = ("by_level", "received")

    def __init__(self, by_level=None, received=None):
        self.by_level = by_level if by_level is not None else Counter()
        self.received = received if received is not None else Counter()

    @classmethod
    def of_rows(cls, rows):
        # Counted on the request threads for every entry, under the GIL: the columns are taken
        # and cut by map() and counted by Counter, all in C, without a Python loop per row.
        services = list(map(itemgetter(_SERVICE), rows))
        if PROBE_SERVICE in services:
            rows = [row for row in rows if row[_SERVICE] != PROBE_SERVICE]
            services = list(map(itemgetter(_SERVICE), rows))
        minutes = map(getitem, map(itemgetter(_TS), rows), repeat(_MINUTE))
        by_level = Counter(zip(minutes, services, map(itemgetter(_LEVEL), rows)))
        received = Counter()
        for stamp, count in Counter(map(itemgetter(_RECEIVED), rows)).items():  # a batch has one or few
            received[stamp[:16]] += count
        return cls(by_level, received)

    @classmethod
    def of_segment(cls, con, low, high):
        """The counts of rows low < id <= high, read from a segment."""
        by_level = Counter({(minute, service, level): count for minute, service, level, count in con.execute(
            "SELECT substr(ts, 1, 16), service, level, count(*) FROM logs WHERE id > ? AND id <= ? "
            "AND service != ? GROUP BY 1, 2, 3", (low, high, PROBE_SERVICE))})
        received = Counter(dict(con.execute(
            "SELECT substr(received_at, 1, 16), count(*) FROM logs WHERE id > ? AND id <= ? AND service != ? "
            "GROUP BY 1", (low, high, PROBE_SERVICE)).fetchall()))
        return cls(by_level, received)

    def add(self, other):
        self.by_level.update(other.by_level)
        self.received.update(other.received)
        return self

    def writes(self):
        """The statements that add these counts to the rollup tables: [(sql, params)], one each
        over a JSON array, built before the caller's transaction (see groups.fold_range)."""
        return [(_VOLUME_UPSERT, (orjson.dumps([key + (count,) for key, count in self.by_level.items()]).decode(),)),
                (_INGEST_UPSERT, (orjson.dumps(list(self.received.items())).decode(),))]


def prune(meta, before_minute):
    """Forget the minutes before `before_minute` (text, YYYY-MM-DDTHH:MM); return rows deleted."""
    deleted = meta.execute("DELETE FROM volume_minute WHERE minute < ?", (before_minute,)).rowcount
    return deleted + meta.execute("DELETE FROM ingest_minute WHERE minute < ?", (before_minute,)).rowcount
