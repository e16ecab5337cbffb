"""Segment files: naming, creation, the writer's connection, stats and closing.

A segment is `segments/logs-<UTC date>-<seq>.db`. The process that writes a
segment holds an exclusive flock on `<name>.lock` for as long as it may
write; a segment that is open in the catalog but whose lock is free belongs
to a process that died, and may be adopted or closed by another.

A new segment is built under `<name>.new` and renamed into place once its
schema is committed, so a reader that finds `<name>` finds its tables too.
"""
import fcntl
import os
import re
import sqlite3
import threading
import time

from . import schema

CLOSING_CACHE_KIB = 2048
NEW_SUFFIX = ".new"
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


def held_by_live_process(path):
    """Whether a live process holds the lock of a segment that has no file (yet)."""
    lock = SegmentLock(path)
    if not lock.acquire():
        return True
    lock.release(remove=True)  # only ever asked at start-up, about a name nobody writes
    return False


def remove_unfinished(directory):
    """Remove segments whose creation was cut short (`<name>.new` with no live creator)."""
    for name in os.listdir(directory):
        if name.endswith(NEW_SUFFIX) and not held_by_live_process(os.path.join(directory, name[:-len(NEW_SUFFIX)])):
            _remove_database(os.path.join(directory, name))


def _remove_database(path):
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


# Once the head's WAL holds this much since it last started over, the commit that took it
# there checkpoints (see open_for_writing).
WAL_RESTART_BYTES = 32 * 1024 * 1024


def create(path):
    """Create an empty segment at `path`, schema and all, in one rename."""
    building = path + NEW_SUFFIX
    _remove_database(building)  # left by a creation cut short
    con = sqlite3.connect(building, isolation_level=None)
    try:
        # Built with a rollback journal, so that everything is in the one file renamed below;
        # WAL mode, set last, is a flag in the file's header.
        con.execute("PRAGMA synchronous=FULL")
        con.executescript("BEGIN;" + schema.SEGMENT_TABLES + schema.SEGMENT_INDEXES
                          + "".join(statement + ";" for statement in schema.FTS_TUNING) + "COMMIT;")
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
    os.rename(building, path)
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def open_for_writing(path, synchronous="full", cache_bytes=8 * 1024 * 1024):
    """Open (creating if needed) a segment for the one writer thread."""
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _prepare_for_writing(con, synchronous, cache_bytes)
    except BaseException:  # a full disk fails the schema's writes: no connection left behind
        con.close()
        raise
    return con


def _prepare_for_writing(con, synchronous, cache_bytes):
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous={}".format(synchronous.upper()))
    con.execute("PRAGMA cache_size=-{}".format(max(cache_bytes // 1024, 2000)))
    # The Checkpointer thread copies the WAL back as it fills. While the writer keeps
    # committing it never catches up with the last frames, so the WAL could not start over;
    # SQLite's own checkpoint, run inside the commit that takes the WAL past
    # WAL_RESTART_BYTES, copies the few frames left and the next transaction starts the WAL
    # from its beginning. Inside the commit's one SQLite call it costs no GIL round trip.
    page_bytes, = con.execute("PRAGMA page_size").fetchone()
    con.execute("PRAGMA wal_autocheckpoint={}".format(WAL_RESTART_BYTES // page_bytes))
    con.execute("PRAGMA journal_size_limit={}".format(64 * 1024 * 1024))
    con.execute("PRAGMA busy_timeout=30000")
    con.executescript(schema.SEGMENT_TABLES + schema.SEGMENT_INDEXES)
    add_missing_column(con, "batches", "body_hash", "TEXT")  # a head created by an earlier version
    con.executescript(schema.WRITE_BATCH_OBJECTS)
    for statement in schema.FTS_TUNING:
        con.execute(statement)


def column_names(con, table):
    return {row[1] for row in con.execute("PRAGMA table_info({})".format(table))}


def add_missing_column(con, table, column, declaration):
    """Add `column` to a `table` made by an earlier version, which lacks it."""
    if column not in column_names(con, table):
        con.execute("ALTER TABLE {} ADD COLUMN {} {}".format(table, column, declaration))


def read_stats(con):
    """Row count, min and max event time of a segment, from its indexes."""
    count, = con.execute("SELECT count(*) FROM logs").fetchone()
    min_ts, max_ts = con.execute("SELECT min(ts), max(ts) FROM logs").fetchone()
    return {"row_count": count, "min_ts": min_ts, "max_ts": max_ts}


def max_id(con):
    # A bare max(id) is answered from the end of the B-tree; wrapped in coalesce() it scans the table.
    return con.execute("SELECT max(id) FROM logs").fetchone()[0] or 0


def finish(con, attempts=20):
    """Make a closed segment one self-contained, read-only-friendly file."""
    # The writer's page cache is no use for the sorted index builds below, and the new head's
    # writer is filling its own: give it back, and let the sorter spill to temporary files
    # rather than hold the segment's keys in memory (the server's RSS, bench/ingest.py).
    con.execute("PRAGMA cache_size=-{}".format(CLOSING_CACHE_KIB))
    con.execute("PRAGMA shrink_memory")
    con.executescript(schema.CLOSED_SEGMENT_INDEXES)
    con.execute("PRAGMA optimize")
    try:
        # Without a WAL the file can be opened immutable by readers; leaving WAL
        # mode needs every other connection gone, so a reader gets some time.
        for attempt in range(attempts):
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete":
                return
            time.sleep(0.1 * (attempt + 1))
        raise sqlite3.OperationalError("segment still held open by a reader; it stays in WAL mode")
    finally:
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


# The checkpointer thread copies the WAL back once the writer has committed this much of
# rows (their JSON; about 5 MiB of WAL with the indexes and FTS5, 4-5 commits of 1000
# entries). Polled only every 250 ms, it left up to 15 commits' frames (18 MB) to the commit
# that takes the WAL past WAL_RESTART_BYTES, which copies them inside the commit: that
# commit took 45-75 ms instead of 15, a stall every 27 commits that all 4 requests in flight
# waited out. After every commit instead, its syncs slowed every commit by 2-3 ms
# (bench/ingest.py, docs/benchmarks.md, 2026-12-05, later).
COPY_AFTER_ROW_BYTES = 2 * 1024 * 1024


class Checkpointer:
    """Copies a head's WAL back into its file from its own connection and thread.

    A PASSIVE checkpoint never blocks the writer; once it has caught up, the
    writer's next transaction starts the WAL over, so it stays small.

    Besides every `interval_s`, a round starts as soon as the writer has committed
    `copy_after_row_bytes` of rows (`committed()`): the commit that takes the WAL past
    WAL_RESTART_BYTES then finds a few commits' frames left to copy, not up to 250 ms
    of them (see COPY_AFTER_ROW_BYTES).
    """

    def __init__(self, wal_trigger_bytes=8 * 1024 * 1024, interval_s=0.25,
                 copy_after_row_bytes=COPY_AFTER_ROW_BYTES):
        self.wal_trigger_bytes, self.interval_s = wal_trigger_bytes, interval_s
        self.copy_after_row_bytes = copy_after_row_bytes
        self._path, self._con = None, None
        self._cond = threading.Condition()
        self._releases = []  # Events of follow() calls, set once the file they left is closed here
        self._stopping = False
        self._rows_bytes_to_copy = 0  # rows committed since this thread's last round
        self._thread = threading.Thread(target=self._run, name="sidecar-checkpointer", daemon=True)

    def start(self, path):
        self._path = path
        self._thread.start()
        return self

    def follow(self, path):
        """Switch to a new head. Returns an Event set once the old one is no longer held open
        here (closing a segment needs it to have no other connection).

        The caller (the writer) does not wait for it: a checkpoint of the old head under way
        takes up to a few hundred ms (its WAL copied back and synced), and the requests
        queued behind the rotation would wait as long. The closer thread waits instead.
        """
        released = threading.Event()
        with self._cond:
            self._path = path
            self._releases.append(released)
            self._cond.notify()
        return released

    def committed(self, rows_bytes):
        """The writer has committed `rows_bytes` of rows: start a round once enough are waiting."""
        with self._cond:
            self._rows_bytes_to_copy += rows_bytes
            if self._rows_bytes_to_copy >= self.copy_after_row_bytes:
                self._cond.notify()

    def stop(self):
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(10)

    def _round_due(self):
        return self._releases or self._stopping or self._rows_bytes_to_copy >= self.copy_after_row_bytes

    def _run(self):
        current = None
        while True:
            with self._cond:
                self._cond.wait_for(self._round_due, self.interval_s)
                path, stopping = self._path, self._stopping
                releases, self._releases = self._releases, []
                self._rows_bytes_to_copy = 0
            if path != current or stopping:
                if self._con is not None:
                    self._con.close()
                    self._con = None
                current = None
            for released in releases:
                released.set()
            if stopping:
                return
            try:
                if current is None:
                    self._con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                    self._con.execute("PRAGMA busy_timeout=1000")
                    current = path
                if os.path.getsize(path + "-wal") >= self.wal_trigger_bytes:
                    self._con.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except (OSError, sqlite3.Error):
                pass  # no WAL yet, or a full disk: try again next round
