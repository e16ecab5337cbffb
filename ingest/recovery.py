"""Start-up repair and the head segment's life: adopt, create, close.

Every process runs `recover_and_open_head` once, one process at a time (a
flock on `data/.startup.lock`): the catalog is brought in line with the
files, segments whose writer died are repaired and closed (or adopted as
this process's head), and idempotency keys are rebuilt from the segments.
"""
import fcntl
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import timedelta

from . import catalog, idempotency, segments
from .entries import format_ts

log = logging.getLogger("sidecar.recovery")


class Head:
    """The segment this process writes, with stats kept in memory between catalog updates."""

    def __init__(self, name, path, con, lock, stats):
        self.name, self.path, self.con, self.lock = name, path, con, lock
        self.day = segments.parse_name(name)[0]
        self.row_count = stats["row_count"]
        self.min_ts, self.max_ts = stats["min_ts"], stats["max_ts"]
        self.last_id = segments.max_id(con)
        self.ids_explicit = False  # set by the writer once the newest rows were deleted (see writer.py)

    def note_rows(self, rows):
        timestamps = [row[0] for row in rows]
        low, high = min(timestamps), max(timestamps)
        self.row_count += len(rows)
        self.min_ts = low if self.min_ts is None else min(self.min_ts, low)
        self.max_ts = high if self.max_ts is None else max(self.max_ts, high)

    def stats(self):
        return {"row_count": self.row_count, "min_ts": self.min_ts, "max_ts": self.max_ts}

    def delete(self, ids, service):
        """Delete the entries `ids` of `service` (and their FTS5 rows); return how many there were.
        Only the writer thread may call this: it owns the head."""
        con, found = self.con, []
        try:
            con.execute("BEGIN")
            for entry_id in ids:
                row = con.execute("SELECT id, message, trace_id, ts FROM logs WHERE id = ? AND service = ?",
                                  (entry_id, service)).fetchone()
                if row is not None:
                    found.append(row)
            if found:
                con.executemany("INSERT INTO logs_fts(logs_fts, rowid, message, trace_id) VALUES ('delete', ?, ?, ?)",
                                [row[:3] for row in found])
                con.executemany("DELETE FROM logs WHERE id = ?", [(row[0],) for row in found])
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        if found:
            if segments.max_id(con) < self.last_id:
                self.ids_explicit = True
            self.row_count -= len(found)
            self.min_ts = con.execute("SELECT min(ts) FROM logs").fetchone()[0]
            self.max_ts = con.execute("SELECT max(ts) FROM logs").fetchone()[0]
        return len(found)


@contextmanager
def startup_lock(data_dir):
    fd = os.open(os.path.join(data_dir, ".startup.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_head(data_dir, name, lock, settings):
    path = os.path.join(segments.segments_dir(data_dir), name)
    con = segments.open_for_writing(path, settings["synchronous"], settings["cache_bytes"])
    try:
        return Head(name, path, con, lock, segments.read_stats(con))
    except BaseException:
        con.close()
        raise


def create_head(data_dir, meta, settings, now):
    name, lock = catalog.allocate(meta, data_dir, now.strftime("%Y-%m-%d"), format_ts(now))
    try:
        segments.create(os.path.join(segments.segments_dir(data_dir), name))
    except BaseException:
        # A full disk fails every rotation attempt: none may leave a name without a file behind.
        try:
            with catalog.immediate(meta):
                meta.execute("DELETE FROM segments WHERE name = ?", (name,))
        except sqlite3.Error as error:  # the next start-up forgets it (no file)
            log.warning("forgetting segment %s: %s", name, error)
        lock.release(remove=True)
        raise
    return _open_head(data_dir, name, lock, settings)


def close_segment(data_dir, head, closed_at):
    """Finish a rotated-out head: checkpoint, leave WAL mode, mark it closed."""
    meta = catalog.connect_meta(data_dir)
    try:
        stats, size = head.stats(), None
        try:
            segments.finish(head.con)
        except sqlite3.Error as error:  # a reader may hold the file; it stays valid in WAL mode
            log.warning("finishing %s: %s", head.name, error)
        size = segments.file_bytes(head.path)
        catalog.update_stats(meta, head.name, stats, size, closed_at, closed=True)
    finally:
        head.lock.release(remove=True)
        meta.close()


# A rotated-out head is closed by a thread of its own at this nice value (close_in_background).
CLOSER_NICENESS = 10


# How long a closer waits for the checkpointer to let go of the old head (a checkpoint under
# way); past it, finishing the segment retries leaving WAL mode (segments.finish).
CHECKPOINTER_RELEASE_TIMEOUT_S = 5


def close_in_background(data_dir, head, closed_at, checkpointer_released):
    # Building a closed segment's indexes takes seconds of CPU; at a lower priority it takes
    # the cores the writer and request threads leave idle instead of delaying their requests
    # (the p99 of bench/ingest.py). Linux gives each thread its own nice value.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CLOSER_NICENESS)
    except (AttributeError, OSError):
        pass
    checkpointer_released.wait(CHECKPOINTER_RELEASE_TIMEOUT_S)
    close_segment(data_dir, head, closed_at)


def _close_orphan(data_dir, meta, name, lock, now_text):
    path = os.path.join(segments.segments_dir(data_dir), name)
    stats = segments.repair(path)
    con = sqlite3.connect(path, isolation_level=None)
    try:
        segments.finish(con)
    except sqlite3.Error as error:  # a reader holds it: valid in WAL mode, finished another time
        log.warning("finishing %s: %s", name, error)
    catalog.update_stats(meta, name, stats, segments.file_bytes(path), now_text, closed=True)
    lock.release(remove=True)
    log.info("closed segment %s left open by a stopped process (%d rows)", name, stats["row_count"])


def recover_and_open_head(data_dir, meta, settings, now):
    """Repair what dead processes left, then return this process's head segment.

    On failure (a full disk fails the repairs' writes) nothing is left held: every step is one
    transaction or repeats harmlessly, so the writer calls this again later (writer.py)."""
    now_text, today = format_ts(now), now.strftime("%Y-%m-%d")
    held, head = [], None
    with startup_lock(data_dir):
        try:
            catalog.ensure_schema(meta)
            segments.remove_unfinished(segments.segments_dir(data_dir))
            catalog.sync_with_files(meta, data_dir, now_text)
            for name in catalog.open_segments(meta):
                path = os.path.join(segments.segments_dir(data_dir), name)
                lock = segments.SegmentLock(path)
                if not lock.acquire():
                    continue  # a live process writes it
                held.append(lock)
                adoptable = (head is None and name.startswith("logs-" + today)
                             and segments.file_bytes(path) < settings["segment_max_bytes"])
                if adoptable:
                    head = _open_head(data_dir, name, lock, settings)
                    catalog.update_stats(meta, name, head.stats(), segments.file_bytes(path), now_text)
                else:
                    _close_orphan(data_dir, meta, name, lock, now_text)
            cutoff = format_ts(now - timedelta(seconds=settings["idempotency_ttl_s"]))
            idempotency.reconcile(meta, data_dir, cutoff)
            if head is None:
                head = create_head(data_dir, meta, settings, now)
        except BaseException:
            if head is not None:
                head.con.close()
            for lock in held:
                lock.release()  # a no-op for the orphans already closed
            raise
    return head
