"""`Idempotency-Key`: a batch retried with the same key is acknowledged again and stored once.

The segment's `batches` table, written in the same transaction as the rows,
is the record; `meta.db`'s `idempotency_keys` is the index every process
shares, with a `pending` claim so that two workers never store one key twice.
After a crash `reconcile` rebuilds the index from the segments.
"""
import os
import sqlite3
import time
from datetime import timedelta

from . import catalog, segments
from .entries import format_ts
from .locks import pid_alive

MAX_KEY_LENGTH = 255


def _pid_alive(pid):
    return pid_alive(pid)


def reconcile(meta, data_dir, cutoff):
    """Rebuild recent keys from the segments and drop claims of dead processes."""
    recent = [row["name"] for row in meta.execute(
        "SELECT name FROM segments WHERE max_ts IS NULL OR max_ts >= ? OR created_at >= ? "
        "OR closed_at IS NULL", (cutoff, cutoff))]
    for name in recent:
        path = os.path.join(segments.segments_dir(data_dir), name)
        try:
            con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True)
            rows = con.execute("SELECT idempotency_key, received_at, response FROM batches "
                               "WHERE received_at >= ?", (cutoff,)).fetchall()
            con.close()
        except sqlite3.Error:
            continue
        with catalog.immediate(meta):
            meta.executemany("INSERT OR REPLACE INTO idempotency_keys (key, state, owner_pid, created_at, response) "
                             "VALUES (?, 'done', NULL, ?, ?)", rows)
    with catalog.immediate(meta):
        pending = meta.execute("SELECT key, owner_pid FROM idempotency_keys WHERE state = 'pending'").fetchall()
        dead = [(row["key"],) for row in pending if row["owner_pid"] is None or not _pid_alive(row["owner_pid"])
                or row["owner_pid"] == os.getpid()]
        meta.executemany("DELETE FROM idempotency_keys WHERE key = ?", dead)
        meta.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (cutoff,))


class IdempotencyStore:
    """Claims and answers keys; one meta.db connection per request thread."""

    def __init__(self, data_dir, ttl_s, clock):
        self.data_dir, self.ttl_s, self.clock = data_dir, ttl_s, clock
        self._last_purge = 0.0

    def _meta(self):
        return catalog.connect_meta_cached(self.data_dir)

    def claim(self, key):
        """Return ("replay", response) for a finished key, ("busy", None) while another
        request holds it, or ("claimed", None) when this request may store the batch."""
        now = self.clock()
        cutoff = format_ts(now - timedelta(seconds=self.ttl_s))
        meta = self._meta()
        with catalog.immediate(meta):
            row = meta.execute("SELECT state, owner_pid, created_at, response FROM idempotency_keys "
                               "WHERE key = ?", (key,)).fetchone()
            if row is not None and row["created_at"] >= cutoff:
                if row["state"] == "done":
                    return "replay", row["response"]
                if _pid_alive(row["owner_pid"]):
                    return "busy", None
            meta.execute("INSERT OR REPLACE INTO idempotency_keys (key, state, owner_pid, created_at, response) "
                         "VALUES (?, 'pending', ?, ?, NULL)", (key, os.getpid(), format_ts(now)))
        return "claimed", None

    def complete(self, key, response):
        meta = self._meta()
        with catalog.immediate(meta):
            meta.execute("UPDATE idempotency_keys SET state = 'done', response = ? WHERE key = ?",
                         (response, key))
        self._purge_expired(meta)

    def release(self, key):
        meta = self._meta()
        with catalog.immediate(meta):
            meta.execute("DELETE FROM idempotency_keys WHERE key = ? AND state = 'pending'", (key,))

    def _purge_expired(self, meta):
        if time.monotonic() - self._last_purge < 60:
            return
        self._last_purge = time.monotonic()
        cutoff = format_ts(self.clock() - timedelta(seconds=self.ttl_s))
        with catalog.immediate(meta):
            meta.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (cutoff,))
