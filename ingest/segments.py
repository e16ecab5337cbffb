"""Segment files: naming, creation, the writer's connection, stats and closing.

A segment is `segments/logs-<UTC date>-<seq>.db`. The process that writes a
segment holds an exclusive flock on `<name>.lock` for as long as it may
write; a segment that is open in the catalog but whose lock is free belongs
to a process that died, and may be adopted or closed by another.
"""
import fcntl
import os
import re
import sqlite3
import threading

from . import schema

NAME_PATTERN = re.compile(r"^logs-(\d{4}-\d{2}-\d{2})-(\d{4,})\.db$")


def segment_name(day, seq):
    return "logs-{}-{:04d}.db".format(day, seq)


def parse_name(name):
    """Return (day, seq) for a segment file name, or None."""
    match = NAME_PATTERN.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def segments_dir(data_dir):
    return os.path.join(data_dir, "segments")


def file_bytes(path):
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(path + suffix)
        except FileNotFoundError:
            pass
    return total


class SegmentLock:
    """An exclusive, non-blocking flock that marks the owner of a segment."""

    def __init__(self, path):
        self.path = path + ".lock"
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self, remove=False):
        if self.fd is None:
            return
        if remove:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def open_for_writing(path, synchronous="full", cache_bytes=16 * 1024 * 1024):
    """Open (creating if needed) a segment for the one writer thread."""
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous={}".format(synchronous.upper()))
    con.execute("PRAGMA cache_size=-{}".format(max(cache_bytes // 1024, 2000)))
    # The Checkpointer thread copies the WAL back, so commits never wait for it.
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("PRAGMA journal_size_limit={}".format(64 * 1024 * 1024))
    con.execute("PRAGMA busy_timeout=30000")
    con.executescript(schema.SEGMENT_TABLES + schema.SEGMENT_INDEXES)
    return con


def read_stats(con):
    """Row count, min and max event time of a segment, from its indexes."""
    count, = con.execute("SELECT count(*) FROM logs").fetchone()
    min_ts, max_ts = con.execute("SELECT min(ts), max(ts) FROM logs").fetchone()
    return {"row_count": count, "min_ts": min_ts, "max_ts": max_ts}


def max_id(con):
    return con.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]


def finish(con):
    """Make a closed segment one self-contained, read-only-friendly file."""
    con.executescript(schema.CLOSED_SEGMENT_INDEXES)
    con.execute("PRAGMA optimize")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # Without a WAL the file can be opened immutable by readers.
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()


def repair(path):
    """Open a segment left behind by a dead process, recover its WAL, return its stats."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA busy_timeout=30000")
        con.executescript(schema.SEGMENT_TABLES + schema.SEGMENT_INDEXES)
        stats = read_stats(con)
    finally:
        con.close()
    return stats


class Checkpointer:
    """Copies a head's WAL back into its file from its own connection and thread.

    A PASSIVE checkpoint never blocks the writer; once it has caught up, the
    writer's next transaction starts the WAL over, so it stays small.
    """

    def __init__(self, wal_trigger_bytes=8 * 1024 * 1024, interval_s=0.25):
        self.wal_trigger_bytes, self.interval_s = wal_trigger_bytes, interval_s
        self._path, self._con = None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sidecar-checkpointer", daemon=True)

    def start(self, path):
        self._path = path
        self._thread.start()
        return self

    def follow(self, path):
        self._path = path

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        current = None
        while not self._stop.wait(self.interval_s):
            path = self._path
            try:
                if path != current:
                    if self._con is not None:
                        self._con.close()
                    self._con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                    self._con.execute("PRAGMA busy_timeout=1000")
                    current = path
                if os.path.getsize(path + "-wal") >= self.wal_trigger_bytes:
                    self._con.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except (OSError, sqlite3.Error):
                current = None  # the head rotated or the disk is full: try again next round
        if self._con is not None:
            self._con.close()
