"""The catalog of segments in `meta.db`, shared by every process.

Writes are short transactions under `BEGIN IMMEDIATE` with a long busy
timeout, so several worker processes never see "database is locked".
"""
import os
import sqlite3
import threading
import time
from contextlib import contextmanager

from . import schema, segments


def connect_meta(data_dir):
    return connect_shared(os.path.join(data_dir, "meta.db"))


def connect_shared(path):
    """A connection to one of the SQLite files every process writes (meta.db, idempotency.db)."""
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    con.execute("PRAGMA busy_timeout=60000")
    _use_wal(con)
    # The segments themselves are the record; these files are rebuilt from them after a crash.
    con.execute("PRAGMA synchronous=NORMAL")
    con.row_factory = sqlite3.Row
    return con


def _use_wal(con, attempts=100):
    # Turning a new meta.db to WAL takes an exclusive lock and SQLite does not wait for it
    # through the busy timeout: several workers starting at once can see "database is locked".
    for attempt in range(attempts):
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


_local = threading.local()


def connect_meta_cached(data_dir):
    """One meta.db connection per thread and data dir, for request threads."""
    return connect_cached(os.path.join(data_dir, "meta.db"))


def connect_cached(path, on_connect=None):
    """One connection to `path` per thread (connect_shared), made by `on_connect(con)` the first time."""
    cache = _local.__dict__.setdefault("connections", {})
    con = cache.get(path)
    if con is None:
        con = connect_shared(path)
        if on_connect is not None:
            on_connect(con)
        cache[path] = con
    return con


def ensure_schema(con):
    with immediate(con):
        for statement in schema.CATALOG_TABLES.split(";"):
            if statement.strip():
                con.execute(statement)
        # Idempotency keys have their own file now (ingest/idempotency.py); they are rebuilt
        # there from the segments, so the table of older versions goes.
        con.execute("DROP TABLE IF EXISTS idempotency_keys")


def is_busy(error):
    """Is this sqlite3 error another connection holding the lock (SQLITE_BUSY)?"""
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY


@contextmanager
def immediate(con):
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def allocate(con, data_dir, day, created_at):
    """Reserve the next never-used segment name for `day`, record it as open, and lock it.

    Returns (name, lock). The lock is taken before the name is committed, so whoever reads the
    row finds it held until the file exists (see sync_with_files).
    """
    directory = segments.segments_dir(data_dir)
    with immediate(con):
        seq, = con.execute("SELECT coalesce(max(seq), 0) FROM segments WHERE day = ?", (day,)).fetchone()
        on_disk = [parsed[1] for parsed in map(segments.parse_name, os.listdir(directory))
                   if parsed and parsed[0] == day]
        seq = max([seq] + on_disk) + 1
        name = segments.segment_name(day, seq)
        lock = segments.SegmentLock(os.path.join(directory, name))
        if not lock.acquire():  # a name is allocated once, so nobody else can hold it
            raise RuntimeError("segment {} is locked by another process".format(name))
        try:
            con.execute("INSERT INTO segments (name, day, seq, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                        (name, day, seq, created_at, created_at))
        except BaseException:
            lock.release(remove=True)
            raise
    return name, lock


def update_stats(con, name, stats, bytes_, now, closed=False):
    with immediate(con):
        con.execute(
            "UPDATE segments SET row_count = ?, min_ts = ?, max_ts = ?, bytes = ?, updated_at = ?"
            + (", closed_at = ?" if closed else "") + " WHERE name = ?",
            (stats["row_count"], stats["min_ts"], stats["max_ts"], bytes_, now)
            + ((now,) if closed else ()) + (name,))


def open_segments(con):
    return [row["name"] for row in con.execute(
        "SELECT name FROM segments WHERE closed_at IS NULL ORDER BY day, seq")]


def sync_with_files(con, data_dir, now):
    """Add segment files missing from the catalog; forget rows whose file is gone."""
    directory = segments.segments_dir(data_dir)
    on_disk = {name for name in os.listdir(directory) if segments.parse_name(name)}
    known = {row["name"] for row in con.execute("SELECT name FROM segments")}
    for name in sorted(on_disk - known):
        day, seq = segments.parse_name(name)
        with immediate(con):
            con.execute("INSERT OR IGNORE INTO segments (name, day, seq, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?)", (name, day, seq, now, now))
    for name in known - on_disk:
        if segments.held_by_live_process(os.path.join(directory, name)):
            continue  # allocated, and its file is being built by a live process (segments.create)
        with immediate(con):
            con.execute("DELETE FROM segments WHERE name = ?", (name,))
    return sorted(on_disk - known)
