"""The error-group tracker: the thread that folds each commit into meta.db, off the writer's path.

The writer hands over what it committed (`GroupTracker.notify`), so a fold
reads nothing back; when the hand-over does not line up with the watermark
(another process, a restart), the rows are read from the segment instead
(ingest/groups.py).

What is held between folds is bounded, not a second's worth of commits:

- a hand-over is the commit's error rows and its tallies (ingest/tally.py).
  A tally holds a cell per minute, service and route, so the tallies of
  successive commits repeat much the same cells: after `MERGE_AFTER_HANDOVERS`
  hand-overs the tracker sums them into one, without holding the lock the
  writer appends under. Held for a whole second, at about 70 commits a second,
  they had taken 14-17 MB of the server's RSS (bench/ingest.py,
  docs/benchmarks.md, 2026-12-03, Xeon);
- error rows cannot be merged (each is folded into its group), and each holds
  its message and stack trace: a fold starts early once
  `FOLD_EARLY_AFTER_ERROR_ROWS` of them wait, as in an error storm (every
  entry an error with a 20-frame stack trace: peak RSS 319 MB before, 191 MB
  with both bounds; 2,000 rows fold in tens of ms, so throughput is unchanged);
- when the folds fall behind all the same (every new group costs rows in
  four tables of meta.db: a storm of distinct stack traces folded about 5,000
  a second at first, and a few hundred once 400,000 groups were stored),
  the writer hands over no rows once `MAX_HELD_ERROR_BYTES` are held: they wait
  on disk, and the fold reads them back a chunk at a time (groups.fold_backlog).
  Without it the backlog grew with the storm (30,000 rows held, 373-495 MB
  peak RSS in a 300,000-entry storm; about 225 MB with it: docs/benchmarks.md,
  2026-12-04).
"""
import logging
import sqlite3
import threading
import time

from . import catalog
from .failure_log import FailureLog
from .groups import error_rows, fold_backlog, fold_range, wake_expired_ignores, watermark
from .tally import Tally

log = logging.getLogger("sidecar.groups")
FOLD_INTERVAL_S = 1.0  # groups and rollups lag commits by at most this (plus one fold)
MERGE_AFTER_HANDOVERS = 8
FOLD_EARLY_AFTER_ERROR_ROWS = 2_000
MAX_HELD_ERROR_BYTES = 16 * 1024 * 1024
ROW_OVERHEAD_BYTES = 400  # an error row's tuple and short strings, beside its message and exception


def held_bytes(errors):
    """About what a hand-over's error rows (groups.error_rows) hold in memory."""
    return sum(len(row[4]) + len(row[8] or "") + ROW_OVERHEAD_BYTES for row in errors)


def merge_handovers(chunks):
    """[(first_id, handed)] in commit order, with each run of hand-overs that continue one
    another (ids without a gap) as one: (first_id, (count, error rows, [tally])).

    `handed` is (count, error rows, [tally per batch]), or None for "read it back"; a None or
    a gap ends a run. A run's tallies are summed into a new one: no batch's own is changed.
    """
    merged, run = [], None  # run: the error rows and tally of the merged run being built
    for first_id, handed in chunks:
        last = merged[-1] if merged else None
        if handed is None or last is None or last[1] is None or last[0] + last[1][0] != first_id:
            merged.append((first_id, handed))
            run = None
            continue
        count, errors, tallies = last[1]
        if run is None:
            run = (list(errors), Tally())
            for tally in tallies:
                run[1].add(tally)
        run[0].extend(handed[1])
        for tally in handed[2]:
            run[1].add(tally)
        merged[-1] = (last[0], (count + handed[0], run[0], [run[1]]))
    return merged


class GroupTracker:
    """The thread that folds each commit's error rows and tallies into meta.db."""

    def __init__(self, data_dir, clock, format_ts):
        self.data_dir, self.clock, self.format_ts = data_dir, clock, format_ts
        self._pending = {}  # segment -> [(first_id, handed)] in commit order (merge_handovers)
        self._handovers = 0  # since the last merge
        self._error_rows = 0  # waiting for the next fold
        self._pending_bytes = self._folding_bytes = 0  # held_bytes of the error rows waiting, and in the fold
        self._read_back_due = False  # a segment has more to read back: fold again at once
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._flush_requested = False
        self._thread = threading.Thread(target=self._run, name="sidecar-groups", daemon=True)
        self._last_wake_check = None
        self._fold_failures = FailureLog(log)

    def start(self, catch_up=()):
        """Start folding; the segments `catch_up` (groups.prepare) are read back first."""
        for name in catch_up:
            self.read_back(name)
        self._thread.start()
        return self

    def read_back(self, name):
        """Fold what is on disk above `name`'s watermark at the next fold, which comes at once."""
        with self._cond:
            self._pending.setdefault(name, []).append((None, None))
            self._read_back_due = True
            self._cond.notify()

    def notify(self, name, first_id=None, rows=None, tallies=None):
        """Rows `rows` were committed to `name` from id `first_id` on, counted by `tallies`
        (ingest/tally.py, one per batch); without rows, the segment is read back at the next fold.
        Runs on the writer's thread: it only appends."""
        errors = None if rows is None else error_rows(first_id, rows)
        size = 0 if errors is None else held_bytes(errors)
        with self._cond:
            if errors is not None and self._pending_bytes + self._folding_bytes + size > MAX_HELD_ERROR_BYTES:
                # The folds fall behind (each new group writes rows in four tables): the rows wait
                # on disk instead, and the fold reads them back a few thousand at a time.
                errors = None
            handed = None if errors is None else (len(rows), errors, tallies)
            self._pending.setdefault(name, []).append((first_id, handed))
            self._handovers += 1
            if handed is not None:
                self._error_rows += len(errors)
                self._pending_bytes += size
            self._cond.notify()

    def backlog(self):
        """What waits for the next fold: hand-overs (after merging) and error rows."""
        with self._cond:
            return {"handovers": sum(map(len, self._pending.values())), "error_rows": self._error_rows,
                    "held_bytes": self._pending_bytes + self._folding_bytes}

    def stop(self):
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(30)

    def flush(self, timeout=10):
        """Fold what was handed over now, without waiting for the interval, and wait for it and
        for any backlog being read back, at most `timeout` seconds (tests)."""
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _fold_segment(self, meta, name, chunks, now_text):
        low = watermark(meta, name)
        chunks = merge_handovers(chunks)
        if len(chunks) == 1 and chunks[0][1] is not None and chunks[0][0] == low + 1:
            count, errors, tallies = chunks[0][1]
            total = Tally()
            for tally in tallies:
                total.add(tally)
            fold_range(meta, name, low, low + count, errors, now_text, total.volume, total.latency)
        else:
            # A chunk a fold: a long backlog is folded over several, so stop() never waits for it all.
            _, more = fold_backlog(meta, self.data_dir, name, now_text, max_chunks=1)
            if more:
                self.read_back(name)

    def _run(self):
        meta = catalog.connect_meta(self.data_dir)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping, 60)
                pending, self._pending = self._pending, {}
                self._handovers = self._error_rows = 0
                self._folding_bytes, self._pending_bytes = self._pending_bytes, 0
                self._read_back_due = False
                self._busy = bool(pending)
                stopping = self._stopping
            now_text = self.format_ts(self.clock())
            failed = False
            for name in sorted(pending):
                try:
                    self._fold_segment(meta, name, pending[name], now_text)
                except sqlite3.Error as error:
                    self._fold_failures.failed("folding %s into error groups: %s; tried again every second", name, error)
                    failed = True
                    self.notify(name)  # read it back from the segment next round (not at once)
            if pending and not failed:
                self._fold_failures.succeeded("folding into error groups works again")
            if now_text[:16] != self._last_wake_check:
                self._last_wake_check = now_text[:16]
                try:
                    wake_expired_ignores(meta, now_text)
                except sqlite3.Error as error:
                    log.error("waking ignored groups: %s", error)
            del pending  # before the next wait: what it holds is no longer counted
            with self._cond:
                self._busy = False
                self._folding_bytes = 0
                self._cond.notify_all()
            if stopping:
                meta.close()
                return
            # Fold about once a second: each fold takes meta.db's write lock (which requests with
            # an Idempotency-Key wait for) and writes every minute's cells again, so under heavy
            # ingest many commits share one (bench/ingest.py: 4 folds a second cost about 10%).
            self._wait_for_next_fold(1 if failed else FOLD_INTERVAL_S)

    def _fold_due(self):
        return (self._stopping or self._flush_requested or self._read_back_due
                or self._error_rows >= FOLD_EARLY_AFTER_ERROR_ROWS)

    def _wait_for_next_fold(self, interval_s):
        """Wait `interval_s` (less when a fold is due early), merging the hand-overs meanwhile."""
        deadline = time.monotonic() + interval_s
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._fold_due() or self._handovers >= MERGE_AFTER_HANDOVERS,
                                    max(0.0, deadline - time.monotonic()))
                if self._fold_due() or time.monotonic() >= deadline:
                    self._flush_requested = False
                    return
                self._handovers = 0
                taken = [(chunks, chunks[:]) for chunks in self._pending.values() if len(chunks) > 1]
            # Merged without the lock; the writer only appends, so the first len(run) stay put.
            for chunks, run in taken:
                merged = merge_handovers(run)
                with self._cond:
                    chunks[:len(run)] = merged
