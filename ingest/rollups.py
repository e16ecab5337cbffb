"""Rollups in meta.db: entries per minute by service and level, and per minute received.

Dashboards read these small tables instead of counting rows across segments,
so they stay fast as the store grows. They are folded by the error-group
tracker in the same meta.db transaction that moves a segment's watermark
(`error_sync`), so they count every stored entry exactly once, also after a
crash. Counts are of entries received: retention deleting entries later does
not lower them (like an error group's count).
"""
from collections import Counter

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
# The deep health check's probe entries are deleted right after they are read back: not counted.
PROBE_SERVICE = "sidecar.probe"


class Volume:
    """Counts of a run of rows: by (event minute, service, level) and by received minute."""

    __slots__ = ("by_level", "received")

    def __init__(self, by_level=None, received=None):
        self.by_level = by_level if by_level is not None else Counter()
        self.received = received if received is not None else Counter()

    @classmethod
    def of_rows(cls, rows):
        if any(row[_SERVICE] == PROBE_SERVICE for row in rows):
            rows = [row for row in rows if row[_SERVICE] != PROBE_SERVICE]
        return cls(Counter([(row[_TS][:16], row[_SERVICE], row[_LEVEL]) for row in rows]),
                   Counter([row[_RECEIVED][:16] for row in rows]))

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

    def apply(self, meta):
        """Add these counts to the rollup tables (inside the caller's transaction)."""
        meta.executemany(
            "INSERT INTO volume_minute VALUES (?, ?, ?, ?) ON CONFLICT(minute, service, level) "
            "DO UPDATE SET entries = entries + excluded.entries",
            [(minute, service, level, count) for (minute, service, level), count in self.by_level.items()])
        meta.executemany(
            "INSERT INTO ingest_minute VALUES (?, ?) ON CONFLICT(minute) DO UPDATE SET entries = entries + excluded.entries",
            list(self.received.items()))


def prune(meta, before_minute):
    """Forget the minutes before `before_minute` (text, YYYY-MM-DDTHH:MM); return rows deleted."""
    deleted = meta.execute("DELETE FROM volume_minute WHERE minute < ?", (before_minute,)).rowcount
    return deleted + meta.execute("DELETE FROM ingest_minute WHERE minute < ?", (before_minute,)).rowcount
