"""`Idempotency-Key`: a batch retried with the same key is acknowledged again and stored once.

The segment's `batches` table, written in the same transaction as the rows,
is the record; `idempotency_keys` in `data/idempotency.db` is the index every
process shares, with a `pending` claim so that two workers never store one key
twice. After a crash, or a restore, `reconcile` rebuilds the index from the
segments.

The index has its own file, not a table of meta.db: a claim and its answer
each take the write lock of the file they are in, and meta.db's is held by
every fold of the error groups (ingest/tracker.py), for seconds when a storm
of new groups is folded. The client handler sends a key with every batch, and
its requests waited behind those folds (bench/ingest.py --errors --keys,
docs/benchmarks.md, 2026-12-04 evening).
"""
import hashlib
import logging
import os
import sqlite3
import time
from datetime import timedelta

from . import catalog, segments
from .entries import format_ts
from .locks import pid_alive

log = logging.getLogger("sidecar.idempotency")
MAX_KEY_LENGTH = 255
KEYS_FILE = "idempotency.db"
KEYS_TABLE = """CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    owner_pid INTEGER,
    created_at TEXT NOT NULL,
    response TEXT,
    body_hash TEXT
)"""


def keys_path(data_dir):
    return os.path.join(data_dir, KEYS_FILE)


def body_hash(body):
    """What tells a retry of a batch from another batch sent with the same key: a hash of the
    body as decompressed (a client compressing again may well send other gzip bytes)."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def _ensure_table(con):
    con.execute(KEYS_TABLE)
    segments.add_missing_column(con, "idempotency_keys", "body_hash", "TEXT")  # a file of an earlier version


def connect(data_dir):
    """A connection of its own to the keys' file (the table made if missing)."""
    con = catalog.connect_shared(keys_path(data_dir))
    _ensure_table(con)
    return con


def remove_keys_file(data_dir):
    """Forget every key (a restore installs another store's segments); rebuilt at the next start."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(keys_path(data_dir) + suffix)
        except FileNotFoundError:
            pass


def _pid_alive(pid):
    return pid_alive(pid)


def reconcile(meta, data_dir, cutoff):
    """Rebuild recent keys from the segments (`meta` names them) and drop claims of dead processes."""
    keys = connect(data_dir)
    try:
        _reconcile(keys, meta, data_dir, cutoff)
    finally:
        keys.close()


def _reconcile(keys, meta, data_dir, cutoff):
    recent = [row["name"] for row in meta.execute(
        "SELECT name FROM segments WHERE max_ts IS NULL OR max_ts >= ? OR created_at >= ? "
        "OR closed_at IS NULL", (cutoff, cutoff))]
    for name in recent:
        path = os.path.join(segments.segments_dir(data_dir), name)
        try:
            rows = _recent_batches(path, cutoff)
        except sqlite3.Error:
            continue
        with catalog.immediate(keys):
            keys.executemany("INSERT OR REPLACE INTO idempotency_keys (key, state, owner_pid, created_at, response, "
                             "body_hash) VALUES (?, 'done', NULL, ?, ?, ?)", rows)
    with catalog.immediate(keys):
        pending = keys.execute("SELECT key, owner_pid FROM idempotency_keys WHERE state = 'pending'").fetchall()
        dead = [(row["key"],) for row in pending if row["owner_pid"] is None or not _pid_alive(row["owner_pid"])
                or row["owner_pid"] == os.getpid()]
        keys.executemany("DELETE FROM idempotency_keys WHERE key = ?", dead)
        keys.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (cutoff,))


def _recent_batches(path, cutoff):
    con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True)
    try:
        # NULL for a segment of an earlier version, closed before the column existed.
        body_hash_column = "body_hash" if "body_hash" in segments.column_names(con, "batches") else "NULL"
        return con.execute("SELECT idempotency_key, received_at, response, {} FROM batches WHERE received_at >= ?"
                           .format(body_hash_column), (cutoff,)).fetchall()
    finally:
        con.close()


class IdempotencyStore:
    """Claims and answers keys; one connection to the keys' file per request thread."""

    def __init__(self, data_dir, ttl_s, clock):
        self.data_dir, self.ttl_s, self.clock = data_dir, ttl_s, clock
        self._last_purge = 0.0

    def _keys(self):
        return catalog.connect_cached(keys_path(self.data_dir), _ensure_table)

    def claim(self, key, body_hash=None):
        """Return ("replay", response) for a finished key, ("mismatch", None) for a finished key
        whose batch had another body, ("busy", None) while another request holds it, or
        ("claimed", None) when this request may store the batch.
        Raises sqlite3.Error when the claim cannot be written (disk full): nothing is stored."""
        now = self.clock()
        cutoff = format_ts(now - timedelta(seconds=self.ttl_s))
        keys = self._keys()
        with catalog.immediate(keys):
            row = keys.execute("SELECT state, owner_pid, created_at, response, body_hash FROM idempotency_keys "
                               "WHERE key = ?", (key,)).fetchone()
            if row is not None and row["created_at"] >= cutoff:
                if row["state"] == "done":
                    if row["body_hash"] is not None and body_hash is not None and row["body_hash"] != body_hash:
                        return "mismatch", None
                    return "replay", row["response"]
                if _pid_alive(row["owner_pid"]):
                    return "busy", None
            keys.execute("INSERT OR REPLACE INTO idempotency_keys (key, state, owner_pid, created_at, response, "
                         "body_hash) VALUES (?, 'pending', ?, ?, NULL, ?)", (key, os.getpid(), format_ts(now), body_hash))
        return "claimed", None

    def complete(self, key, response):
        """Record the answer of a stored batch. Best effort: the batch is committed with its key in
        the segment's `batches` table, which the next start rebuilds the index from; until then a
        retry with this key would be answered 409 (still in flight)."""
        try:
            keys = self._keys()
            with catalog.immediate(keys):
                keys.execute("UPDATE idempotency_keys SET state = 'done', response = ? WHERE key = ?",
                             (response, key))
            self._purge_expired(keys)
        except sqlite3.Error as error:
            log.error("recording the answer of an idempotency key failed: %s", error)

    def release(self, key):
        """Free the key of a batch that was not stored (best effort, as complete)."""
        try:
            keys = self._keys()
            with catalog.immediate(keys):
                keys.execute("DELETE FROM idempotency_keys WHERE key = ? AND state = 'pending'", (key,))
        except sqlite3.Error as error:
            log.error("releasing an idempotency key failed: %s", error)

    def _purge_expired(self, keys):
        if time.monotonic() - self._last_purge < 60:
            return
        self._last_purge = time.monotonic()
        cutoff = format_ts(self.clock() - timedelta(seconds=self.ttl_s))
        with catalog.immediate(keys):
            keys.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (cutoff,))
