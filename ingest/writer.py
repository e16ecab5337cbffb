"""The one writer thread of a process: a bounded queue in, group commits out.

Request threads hand over validated rows with `submit()` and wait on the
batch; the writer takes the batches waiting, in order, up to
`commit_max_entries` (a bigger batch alone), writes them in one transaction,
commits, and only then wakes the requests, so an acknowledgement always means
"on disk".

Other work on the head (deleting the deep health check's probe entries) runs
on the same thread between two transactions, through `call()`.
"""
import collections
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone

import orjson

from . import catalog, recovery, schema, segments
from .entries import format_ts
from .failure_log import FailureLog
from .tally import Tally

log = logging.getLogger("sidecar.writer")
# The head's size is looked at again once about this share of segment_max_bytes has been
# written: each os.stat gives up the GIL, and taking it back can cost the writer a request
# thread's switch interval (5 ms); two stats a commit cost about 10% of throughput
# (bench/ingest_threads.py). A small segment_max_bytes still checks every commit.
SIZE_CHECK_SHARE = 32
# The head's catalog row is refreshed without waiting for meta.db's write lock: another thread
# (the error-group tracker's fold, a request's idempotency key) may hold it for tens of ms, and
# every request queued behind the writer would wait as long. A busy catalog is tried again after
# the next commit; after this many intervals without a refresh, the writer waits for it.
CATALOG_WAIT_AFTER_INTERVALS = 10
# A writer without a head (the disk was full or unwritable at start-up) tries recovery again at
# most this often, whether a batch asks for it or not: ingest recovers by itself when space
# returns, and a stream of batches on a full disk logs one failure a second, not one a batch.
HEAD_RETRY_INTERVAL_S = 1.0


class QueueFull(Exception):
    """The writer is behind: the client should retry after a pause."""


class StorageUnavailable(Exception):
    """The head segment cannot be written (disk full, read-only, ...)."""


def utc_now():
    return datetime.now(timezone.utc)


class Batch:
    __slots__ = ("rows", "rows_json", "idempotency_key", "response", "tally", "done", "error", "body_hash")

    def __init__(self, rows, idempotency_key=None, response=None, tally=None, body_hash=None):
        self.rows = rows
        # The rows as the writer's statement takes them (schema.WRITE_BATCH), encoded here on the
        # request thread: the writer thread is the one that limits throughput.
        self.rows_json = orjson.dumps(rows).decode()
        self.idempotency_key = idempotency_key
        self.body_hash = body_hash  # recorded with the key: a retry must send the same body
        self.response = response
        # Counted here, on the request thread, rather than on the writer's (ingest/tally.py).
        self.tally = tally if tally is not None else Tally.of_rows(rows)
        self.done = threading.Event()
        self.error = None


def _joined_rows_json(batches):
    """One JSON array of the rows of `batches`, from each batch's own array."""
    if len(batches) == 1:
        return batches[0].rows_json
    return "[" + ",".join(batch.rows_json[1:-1] for batch in batches if batch.rows) + "]"


class _Call:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn):
        self.fn = fn
        self.done = threading.Event()
        self.result = None
        self.error = None


class Writer:
    def __init__(self, data_dir, settings, clock=utc_now, on_commit=None):
        self.data_dir = data_dir
        self.on_commit = on_commit  # called with (head name, first id, rows, tallies) after every commit
        self.observe_commit = None  # called with (seconds, entries, queued entries) after every commit (metrics)
        self.settings = settings
        self.clock = clock
        self._pending = collections.deque()
        self._pending_entries = 0
        self._calls = collections.deque()  # _Call: work run on the writer thread between transactions
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = None
        self.head = None  # recovery.Head
        self.meta = None
        self._meta_nowait = None  # the same meta.db without a busy timeout: periodic catalog refreshes
        self.unavailable_reason = None
        self.last_commit_ms = None
        self.committed_entries = 0
        self._catalog_dirty = False
        self._catalog_updated = 0.0
        self._closers = []
        self._unchecked_bytes = 0  # written since the file sizes were last looked at
        self._head_full = False  # the head has passed segment_max_bytes: rotate before the next write
        self._checkpointer = None
        self._head_tried = None  # time.monotonic() of the last attempt to open a head
        self._head_failures = FailureLog(log)

    # -- life cycle -------------------------------------------------------
    def start(self):
        os.makedirs(segments.segments_dir(self.data_dir), exist_ok=True)
        self.meta = catalog.connect_meta(self.data_dir)
        self._meta_nowait = catalog.connect_meta(self.data_dir)
        self._meta_nowait.execute("PRAGMA busy_timeout=0")
        # A process must start on a full disk too: gunicorn gives up on the whole server when a
        # worker fails to boot, and reads and health have to keep answering.
        self._open_head()
        self._thread = threading.Thread(target=self._run, name="sidecar-writer", daemon=True)
        self._thread.start()
        return self

    def _open_head(self):
        """Recover what dead processes left and take a head; on a full or unwritable disk stay
        without one (ingest answers 503) and return False. Runs at start and then on the writer
        thread only."""
        self._head_tried = time.monotonic()
        try:
            head = recovery.recover_and_open_head(self.data_dir, self.meta, self.settings, self.clock())
        except (sqlite3.Error, OSError) as error:
            self.unavailable_reason = "no head segment could be opened: {}".format(error)
            self._head_failures.failed("%s; ingest answers 503, tried again every %g s",
                                       self.unavailable_reason, HEAD_RETRY_INTERVAL_S)
            return False
        self._catalog_updated = time.monotonic()  # recovery has just written the head's row
        self._keep_ids_past_watermark(head)
        self._head_full = segments.file_bytes(head.path) >= self.settings["segment_max_bytes"]
        if self._checkpointer is None:
            self._checkpointer = segments.Checkpointer().start(head.path)
        else:
            self._checkpointer.follow(head.path)
        self.head = head
        self._head_failures.succeeded("ingest is back: head segment %s opened", head.name)
        self.unavailable_reason = None
        return True

    def _head_or_unavailable(self):
        if self.head is None:
            if time.monotonic() - self._head_tried < HEAD_RETRY_INTERVAL_S or not self._open_head():
                raise StorageUnavailable(self.unavailable_reason)
        return self.head

    def stop(self, timeout=30):
        """Commit what is queued, then release the head (it stays open for the next start)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout)
        for closer in self._closers:
            closer.join(timeout)
        if self._checkpointer:
            self._checkpointer.stop()
        if self.head:
            self._update_catalog(force=True)
            self.head.con.close()
            self.head.lock.release()
            self.head = None
        for con in (self.meta, self._meta_nowait):
            if con:
                con.close()

    # -- request side ------------------------------------------------------
    @property
    def queued_entries(self):
        return self._pending_entries

    def call(self, fn, timeout=30):
        """Run `fn(head)` on the writer thread between two transactions and return what it returns.

        `head` is the recovery.Head being written; `fn` may use `head.con` (no transaction is
        open) and must be short: ingest waits for it. Raises what `fn` raised, StorageUnavailable
        when the writer is stopping, TimeoutError when it did not run within `timeout`.
        """
        item = _Call(fn)
        with self._cond:
            if self._stopping or self._thread is None:
                raise StorageUnavailable("the sidecar is shutting down")
            self._calls.append(item)
            self._cond.notify()
        if not item.done.wait(timeout):
            raise TimeoutError("the writer did not run the call within {} s".format(timeout))
        if item.error is not None:
            raise item.error
        return item.result

    def delete_entries(self, segment, ids, service, timeout=30):
        """Delete the entries `ids` of `service` from `segment` if it is still this writer's head.

        Returns how many were deleted, or None when the head has rotated since (the entries then
        stay in the closed segment). Runs on the writer thread, which owns the head.
        """
        ids = [int(entry_id) for entry_id in ids]

        def delete(head):
            if head.name != segment:
                return None
            deleted = head.delete(ids, service)
            self._catalog_dirty = self._catalog_dirty or deleted > 0
            return deleted

        return self.call(delete, timeout)

    def submit(self, batch):
        with self._cond:
            if self._stopping:
                raise StorageUnavailable("the sidecar is shutting down")
            if self._pending_entries + len(batch.rows) > self.settings["queue_max_entries"]:
                raise QueueFull()
            self._pending.append(batch)
            self._pending_entries += len(batch.rows)
            self._cond.notify()
        return batch

    # -- writer thread -----------------------------------------------------
    def _take(self):
        # A commit of about 1000 entries has paid off its fixed costs (the sync, taking the GIL
        # back, an FTS5 segment). Adding more batches only makes their requests wait for each
        # other's rows, and the requests answered together come back together: commits then
        # grow to every batch in flight and the p99 with them (bench/ingest.py, docs/benchmarks.md).
        limit = self.settings["commit_max_entries"]
        interval = self.settings["catalog_update_interval_ms"] / 1000
        with self._cond:
            while not self._pending and not self._stopping:
                if self._calls:
                    return []
                self._cond.wait(interval)
                if not self._pending:
                    return []
            taken, count = [], 0
            while self._pending and (not taken or count + len(self._pending[0].rows) <= limit):
                batch = self._pending.popleft()
                taken.append(batch)
                count += len(batch.rows)
            self._pending_entries -= count
            return taken

    def _run(self):
        while True:
            batches = self._take()
            if batches:
                self._write_and_wake(batches)
            self._run_calls()
            if self.head is None and time.monotonic() - self._head_tried >= HEAD_RETRY_INTERVAL_S:
                self._open_head()
            if not batches:
                with self._cond:
                    if self._stopping and not self._pending and not self._calls:
                        return
            self._update_catalog()

    def _run_calls(self):
        while True:
            with self._cond:
                if not self._calls:
                    return
                item = self._calls.popleft()
            try:
                item.result = item.fn(self._head_or_unavailable())
            except BaseException as error:  # handed to the caller, raised there
                item.error = error
            item.done.set()

    def _write_and_wake(self, batches):
        try:
            self._write(batches)
            self.unavailable_reason = None
        except StorageUnavailable as failure:  # no head: already logged
            for batch in batches:
                batch.error = failure
        except (sqlite3.Error, OSError) as error:
            self.unavailable_reason = str(error)
            log.error("write failed: %s", error)
            failure = StorageUnavailable(str(error))
            for batch in batches:
                batch.error = failure
        for batch in batches:
            batch.done.set()
        if self.unavailable_reason is None:  # written
            self._checkpointer.committed(sum(len(batch.rows_json) for batch in batches))
            self._check_size()  # after the wake-up: the requests are answered first

    def _check_size(self):
        """Every 1/32 of segment_max_bytes written: is the head full (rotate before the next write)?"""
        if self._unchecked_bytes < self.settings["segment_max_bytes"] / SIZE_CHECK_SHARE:
            return
        self._unchecked_bytes = 0
        try:
            self._head_full = segments.file_bytes(self.head.path) >= self.settings["segment_max_bytes"]
        except OSError as error:  # the rows are committed; the next write will tell
            log.error("looking at the head's size failed: %s", error)

    def _write(self, batches):
        started = time.perf_counter()
        self._head_or_unavailable()
        self._rotate_if_needed()
        head = self.head
        rows = [row for batch in batches for row in batch.rows]
        con = head.con
        rows_json = _joined_rows_json(batches)
        keyed = [(b.idempotency_key, b.rows[0][13], b.response, b.body_hash) for b in batches if b.idempotency_key]
        # After the newest rows were deleted, ids are given explicitly from last_id + 1: SQLite
        # would hand out max(id) + 1 again, and an id that the FTS feed, the error-group
        # watermark or a link has already seen must never name another entry.
        try:
            con.execute(schema.WRITE_BATCH, (rows_json, head.last_id + 1 if head.ids_explicit else None,
                                             head.last_id, orjson.dumps(keyed).decode() if keyed else None))
        except BaseException:
            if con.in_transaction:  # a failed statement rolls itself back; this is a safety net
                con.execute("ROLLBACK")
            raise
        self._unchecked_bytes += len(rows_json)
        first_id = head.last_id + 1
        head.last_id += len(rows)  # rowids are max+1 (or given from last_id + 1 after a deletion)
        if rows:
            head.ids_explicit = False  # the newest id is in the table again
        head.note_rows(rows)
        if self.on_commit is not None:
            self.on_commit(head.name, first_id, rows, [batch.tally for batch in batches])
        self.committed_entries += len(rows)
        self._catalog_dirty = True
        self.last_commit_ms = (time.perf_counter() - started) * 1000
        if self.observe_commit is not None:
            self.observe_commit(self.last_commit_ms / 1000, len(rows), self._pending_entries)

    def _keep_ids_past_watermark(self, head):
        """Never hand out an id the error-group tracker has already folded (the newest rows of the
        head may have been deleted before this process started)."""
        try:
            row = self.meta.execute("SELECT last_id FROM error_sync WHERE segment = ?", (head.name,)).fetchone()
        except sqlite3.OperationalError:  # a new store: no error_sync table yet
            return
        if row is not None and row[0] > head.last_id:
            head.last_id = row[0]
            head.ids_explicit = True

    # -- rotation and catalog ----------------------------------------------
    def _rotate_if_needed(self):
        now = self.clock()
        head = self.head
        if head.day == now.strftime("%Y-%m-%d") and not self._head_full:
            return
        new_head = recovery.create_head(self.data_dir, self.meta, self.settings, now)
        self._update_catalog(force=True)
        self.head = new_head
        self._head_full = False
        checkpointer_released = self._checkpointer.follow(new_head.path)
        closer = threading.Thread(target=recovery.close_in_background, name="sidecar-closer",
                                  args=(self.data_dir, head, format_ts(now), checkpointer_released))
        closer.start()
        self._closers = [c for c in self._closers if c.is_alive()] + [closer]

    def _update_catalog(self, force=False):
        interval = self.settings["catalog_update_interval_ms"] / 1000
        since_update = time.monotonic() - self._catalog_updated
        if not self._catalog_dirty or self.head is None or (not force and since_update < interval):
            return
        wait = force or since_update >= interval * CATALOG_WAIT_AFTER_INTERVALS
        head = self.head
        try:
            catalog.update_stats(self.meta if wait else self._meta_nowait, head.name, head.stats(),
                                 segments.file_bytes(head.path), format_ts(self.clock()))
            self._catalog_dirty = False
            self._catalog_updated = time.monotonic()
        except sqlite3.OperationalError as error:
            if wait or not catalog.is_busy(error):
                log.error("catalog update failed: %s", error)
        except sqlite3.Error as error:
            log.error("catalog update failed: %s", error)

    def wait_closers(self, timeout=30):
        for closer in self._closers:
            closer.join(timeout)
