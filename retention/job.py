"""The retention job: drop whole segments, prune levels inside segments, keep the disk budget.

Cheap first: a closed segment whose every level is past its age is deleted as
a file. Rows of short-lived levels (debug) inside a segment that must stay are
deleted in bounded chunks, and the file is compacted (VACUUM INTO a new file,
renamed over the old one) when that frees more than 25% of it. Over the disk
budget, the oldest closed segments go, even inside their age; the head
segments (being written) never do. Error groups keep their counts.
"""
import glob
import logging
import os
import sqlite3
import time
from datetime import timedelta

import orjson

from ingest import catalog, groups, idempotency, latency, rollups, segments
from ingest.entries import LEVELS, format_ts

log = logging.getLogger("sidecar.retention")
COMPACT_SUFFIX = ".compact"

RETENTION_TABLES = """
CREATE TABLE IF NOT EXISTS retention_runs (
    id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT, dry_run INTEGER NOT NULL,
    segments_dropped INTEGER NOT NULL DEFAULT 0, budget_drops INTEGER NOT NULL DEFAULT 0,
    rows_deleted TEXT, bytes_freed INTEGER NOT NULL DEFAULT 0, duration_ms REAL, report TEXT
);
CREATE TABLE IF NOT EXISTS retention_pruning (segment TEXT PRIMARY KEY, started_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sidecar_events (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, type TEXT NOT NULL, message TEXT NOT NULL, details TEXT
);
"""


def ensure_schema(meta):
    groups.ensure_schema(meta)
    with catalog.immediate(meta):
        for statement in RETENTION_TABLES.split(";"):
            if statement.strip():
                meta.execute(statement)


def segment_path(data_dir, name):
    return os.path.join(segments.segments_dir(data_dir), name)


def remove_files(path):
    freed = 0
    for suffix in ("", "-wal", "-shm", "-journal", ".lock", COMPACT_SUFFIX):
        try:
            freed += os.path.getsize(path + suffix)
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    return freed


def store_bytes(data_dir):
    """Bytes of the whole store: every segment file (with WAL), meta.db and idempotency.db."""
    total = sum(segments.file_bytes(path) for path in glob.glob(os.path.join(segments.segments_dir(data_dir), "*.db")))
    return (total + segments.file_bytes(os.path.join(data_dir, "meta.db"))
            + segments.file_bytes(idempotency.keys_path(data_dir)))


def level_bounds(con):
    """Per level present: (oldest, newest) timestamp, from the (level, ts) index."""
    bounds = {}
    for level in LEVELS:
        low, high = con.execute("SELECT min(ts), max(ts) FROM logs WHERE level = ?", (level,)).fetchone()
        if low is not None:
            bounds[level] = (low, high)
    return bounds


class Run:
    def __init__(self, data_dir, meta, policy, now, dry_run):
        self.data_dir, self.meta, self.policy, self.now, self.dry_run = data_dir, meta, policy, now, dry_run
        self.cutoffs = policy.cutoffs(now)
        self.now_text = format_ts(now)
        self.report = {"started_at": self.now_text, "dry_run": dry_run, "segments_dropped": [],
                       "budget_drops": [], "rows_deleted": {level: 0 for level in LEVELS},
                       "compacted": [], "bytes_freed": 0}

    def closed_segments(self):
        return [dict(row) for row in self.meta.execute(
            "SELECT name, min_ts, max_ts, bytes, created_at FROM segments WHERE closed_at IS NOT NULL "
            "ORDER BY coalesce(max_ts, created_at), day, seq")]

    def drop(self, name, reason):
        path = segment_path(self.data_dir, name)
        if self.dry_run:
            freed = segments.file_bytes(path)
        else:
            freed = remove_files(path)  # the file first: a crash then leaves a catalog row start-up forgets
            groups.forget_segment(self.meta, name)
        self.report["bytes_freed"] += freed
        self.report["budget_drops" if reason == "budget" else "segments_dropped"].append(name)
        return freed

    def by_age(self):
        """Drop expired segments; prune levels past their age in the others."""
        for segment in self.closed_segments():
            path = segment_path(self.data_dir, segment["name"])
            if not os.path.exists(path):
                if not self.dry_run:
                    groups.forget_segment(self.meta, segment["name"])
                continue
            con = sqlite3.connect(path, isolation_level=None, timeout=30)
            try:
                bounds = level_bounds(con)
                if all(high < self.cutoffs[level] for level, (_low, high) in bounds.items()):
                    con.close()
                    self.drop(segment["name"], "age")
                    continue
                expired = [level for level, (low, _high) in bounds.items() if low < self.cutoffs[level]]
                if expired:
                    self.prune(con, segment["name"], expired)
            finally:
                con.close()

    def prune(self, con, name, levels):
        if self.dry_run:
            for level in levels:
                count, = con.execute("SELECT count(*) FROM logs WHERE level = ? AND ts < ?",
                                     (level, self.cutoffs[level])).fetchone()
                self.report["rows_deleted"][level] += count
            return
        with catalog.immediate(self.meta):
            self.meta.execute("INSERT OR REPLACE INTO retention_pruning VALUES (?, ?)", (name, self.now_text))
        size_before = segments.file_bytes(segment_path(self.data_dir, name))
        for level in levels:
            self.report["rows_deleted"][level] += delete_in_chunks(con, level, self.cutoffs[level],
                                                                   self.policy.chunk_rows)
        free_pages, pages = (con.execute("PRAGMA freelist_count").fetchone()[0],
                             con.execute("PRAGMA page_count").fetchone()[0])
        finish_pruning(self.data_dir, self.meta, con, name)
        if pages and free_pages / pages > 0.25 and compact(self.data_dir, self.meta, name, con):
            self.report["compacted"].append(name)
            self.report["bytes_freed"] += size_before - segments.file_bytes(segment_path(self.data_dir, name))

    def by_budget(self):
        budget = self.policy.budget_bytes
        if not budget:
            return
        used = store_bytes(self.data_dir) - (self.report["bytes_freed"] if self.dry_run else 0)
        for segment in self.closed_segments():
            if used <= budget:
                break
            if segment["name"] in self.report["segments_dropped"]:
                continue
            freed = self.drop(segment["name"], "budget")
            used -= freed
            record_event(self.meta, self.now_text, "retention.budget_drop",
                         "dropped segment {} inside its age to keep the disk budget".format(segment["name"]),
                         {"segment": segment["name"], "bytes": freed, "oldest": segment["min_ts"],
                          "newest": segment["max_ts"], "budget_bytes": budget, "dry_run": self.dry_run})
        self.report["used_bytes"] = used
        self.report["over_budget"] = used > budget


def delete_in_chunks(con, level, cutoff, chunk_rows):
    """Delete `level` rows older than `cutoff`, `chunk_rows` per transaction, FTS entries included."""
    deleted = 0
    while True:
        con.execute("BEGIN IMMEDIATE")
        rows = con.execute("SELECT id, message, trace_id FROM logs WHERE level = ? AND ts < ? LIMIT ?",
                           (level, cutoff, chunk_rows)).fetchall()
        if rows:
            con.executemany("INSERT INTO logs_fts(logs_fts, rowid, message, trace_id) VALUES ('delete', ?, ?, ?)",
                            rows)
            con.executemany("DELETE FROM logs WHERE id = ?", [(row[0],) for row in rows])
        con.execute("COMMIT")
        deleted += len(rows)
        if len(rows) < chunk_rows:
            return deleted


def finish_pruning(data_dir, meta, con, name):
    """After rows left a segment: its catalog stats, its groups' stored events, its generation."""
    stats = segments.read_stats(con)
    groups.recount_segment(meta, con, name)
    with catalog.immediate(meta):
        meta.execute("UPDATE segments SET row_count = ?, min_ts = ?, max_ts = ?, bytes = ?, "
                     "generation = generation + 1 WHERE name = ?",
                     (stats["row_count"], stats["min_ts"], stats["max_ts"],
                      segments.file_bytes(segment_path(data_dir, name)), name))
        meta.execute("DELETE FROM retention_pruning WHERE segment = ?", (name,))


def compact(data_dir, meta, name, con):
    """Rewrite the segment without its free pages; readers holding the old file keep it.

    Only a segment out of WAL mode: a new file renamed next to an old -wal would
    be read with the old file's frames. Returns whether it compacted.
    """
    path = segment_path(data_dir, name)
    if con.execute("PRAGMA journal_mode").fetchone()[0] != "delete" or os.path.exists(path + "-wal"):
        log.warning("not compacting %s: it is still in WAL mode", name)
        return False
    remove_files_only(path + COMPACT_SUFFIX)
    con.execute("VACUUM INTO ?", (path + COMPACT_SUFFIX,))
    os.replace(path + COMPACT_SUFFIX, path)
    with catalog.immediate(meta):
        meta.execute("UPDATE segments SET bytes = ?, generation = generation + 1 WHERE name = ?",
                     (segments.file_bytes(path), name))
    return True


def remove_files_only(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def record_event(meta, ts, kind, message, details):
    with catalog.immediate(meta):
        meta.execute("INSERT INTO sidecar_events (ts, type, message, details) VALUES (?, ?, ?, ?)",
                     (ts, kind, message, orjson.dumps(details).decode()))
    log.warning("%s: %s", kind, message)


def recover_interrupted(data_dir, meta):
    """A run killed mid-way: recount the segments it was pruning, remove half-written copies."""
    for row in meta.execute("SELECT segment FROM retention_pruning").fetchall():
        path = segment_path(data_dir, row[0])
        if os.path.exists(path):
            con = sqlite3.connect(path, isolation_level=None, timeout=30)
            try:
                finish_pruning(data_dir, meta, con, row[0])
            finally:
                con.close()
        else:
            with catalog.immediate(meta):
                meta.execute("DELETE FROM retention_pruning WHERE segment = ?", (row[0],))
    for leftover in glob.glob(os.path.join(segments.segments_dir(data_dir), "*" + COMPACT_SUFFIX)):
        remove_files_only(leftover)


def prune_rollups(meta, policy, now):
    """Rollup minutes outlive entries (counts of what was received) until the longest age of any level."""
    groups.ensure_schema(meta)
    with catalog.immediate(meta):
        before = format_ts(now - timedelta(days=max(policy.ages_days.values())))[:16]
        return rollups.prune(meta, before) + latency.prune(meta, before)


def run(data_dir, policy, now, dry_run=False):
    """One retention run; returns its report (also recorded in meta.db unless dry_run)."""
    started = time.perf_counter()
    meta = catalog.connect_meta(data_dir)
    try:
        catalog.ensure_schema(meta)
        ensure_schema(meta)
        catalog.sync_with_files(meta, data_dir, format_ts(now))
        if not dry_run:
            recover_interrupted(data_dir, meta)
        job = Run(data_dir, meta, policy, now, dry_run)
        job.by_age()
        job.by_budget()
        report = job.report
        report["rollup_rows_deleted"] = 0 if dry_run else prune_rollups(meta, policy, now)
        report["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
        report["store_bytes"] = store_bytes(data_dir)
        percent, state = policy.budget_state(report["store_bytes"])
        report["budget_percent"], report["budget_state"] = (None if percent is None else round(percent, 1)), state
        if not dry_run:
            with catalog.immediate(meta):
                meta.execute(
                    "INSERT INTO retention_runs (started_at, finished_at, dry_run, segments_dropped, budget_drops, "
                    "rows_deleted, bytes_freed, duration_ms, report) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)",
                    (report["started_at"], format_ts(now), len(report["segments_dropped"]),
                     len(report["budget_drops"]), orjson.dumps(report["rows_deleted"]).decode(),
                     report["bytes_freed"], report["duration_ms"], orjson.dumps(report).decode()))
        return report
    finally:
        meta.close()
