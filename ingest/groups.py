"""Error groups in meta.db, kept exact by tailing the segments.

The segments are the record. A tracker thread reads each segment's new rows
that carry a fingerprint (`id` above the segment's watermark in
`error_sync`) and folds them into `error_groups`, `error_group_users` and
`error_group_hours` (and every row into the rollups of ingest/rollups.py and ingest/latency.py)
in the same meta.db transaction that moves the watermark. So a group's count always equals its stored events: after a
kill -9, start-up catches up from the watermarks (`reconcile`).
"""
import logging
import os
import sqlite3
from collections import defaultdict

import orjson

from . import catalog, segments
from .latency import LATENCY_TABLES, Latency
from .rollups import ROLLUP_TABLES, Volume

log = logging.getLogger("sidecar.groups")
STATUSES = ("unresolved", "resolved", "ignored")

GROUP_TABLES = """
CREATE TABLE IF NOT EXISTS error_groups (
    fingerprint TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    culprit TEXT,
    type TEXT,
    service TEXT NOT NULL,
    level TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    users_affected INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'unresolved',
    status_changed_at TEXT,
    last_release TEXT,
    regressed_at TEXT,
    ignore_until_count INTEGER,
    ignore_until TEXT,
    count_at_ignore INTEGER,
    events_stored INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS error_groups_last_seen ON error_groups(last_seen);
CREATE TABLE IF NOT EXISTS error_group_users (
    fingerprint TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (fingerprint, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS error_group_hours (
    fingerprint TEXT NOT NULL, hour TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (fingerprint, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS error_sync (segment TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS error_stored (
    segment TEXT NOT NULL, fingerprint TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (segment, fingerprint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS templates (
    service TEXT NOT NULL, cluster_id TEXT NOT NULL, template TEXT NOT NULL, size INTEGER NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (service, cluster_id)
);
"""

_NEW_ROWS = ("SELECT id, ts, level, service, message, fingerprint, user_id, release, exception, received_at "
             "FROM logs WHERE id > ? AND id <= ? AND fingerprint IS NOT NULL ORDER BY id LIMIT ?")
READ_BACK_ERROR_ROWS = 2_000  # error rows read back from a segment a fold: about 6 MB with stack traces


def ensure_schema(meta):
    with catalog.immediate(meta):
        for statement in (GROUP_TABLES + ROLLUP_TABLES + LATENCY_TABLES).split(";"):
            if statement.strip():
                meta.execute(statement)


def describe(message, exception_json):
    """(title, culprit, type) of an event, as Sentry shows them."""
    if not exception_json:
        return message.split("\n", 1)[0][:200], None, None
    chain = orjson.loads(exception_json)
    last = chain[-1] if isinstance(chain, list) else chain
    kind = str(last.get("type") or "Error")
    value = str(last.get("value") or "").split("\n", 1)[0]
    frames = [f for f in last.get("stacktrace") or [] if isinstance(f, dict)]
    in_app = [f for f in frames if f.get("in_app")] or frames
    culprit = None
    if in_app:
        top = in_app[-1]
        culprit = "{} in {}".format(top.get("module") or top.get("filename") or "?", top.get("function") or "?")
    return ("{}: {}".format(kind, value) if value else kind)[:200], culprit, kind


def _fold(rows):
    """Per fingerprint: count, first/last seen, users, hours, and the newest event's fields."""
    groups = {}
    for row in rows:
        _id, ts, level, service, message, fingerprint, user_id, release, exception, received_at = row
        group = groups.get(fingerprint)
        if group is None:
            group = groups[fingerprint] = {"count": 0, "first": ts, "last": ts, "users": set(),
                                           "hours": defaultdict(int), "received": received_at}
        group["count"] += 1
        group["first"] = min(group["first"], ts)
        if ts >= group["last"]:
            group["last"] = ts
            group["latest"] = (level, service, message, release, exception)
        group.setdefault("latest", (level, service, message, release, exception))
        group["received"] = max(group["received"], received_at)
        if user_id:
            group["users"].add(user_id)
        group["hours"][ts[:13]] += 1
    return groups


# A fold's writes, one statement each over a JSON array of all its groups: meta.db's write lock
# is held while they run, and a statement per group gave the GIL up and took it back a few
# hundred times a fold. Under load each time could wait out a request thread's switch interval
# (5 ms): the lock was held 80-190 ms a fold, and every request with an Idempotency-Key (the
# client handler sends one) and the writer's catalog refresh waited behind it. The groups of one
# fold have distinct fingerprints, so applying each step to all of them keeps each group's order.
_GROUP_UPSERT = (
    "INSERT INTO error_groups (fingerprint, title, culprit, type, service, level, first_seen, last_seen, "
    "count, status, status_changed_at, last_release) SELECT value ->> 0, value ->> 1, value ->> 2, "
    "value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, value ->> 8, 'unresolved', ?2, "
    "value ->> 9 FROM json_each(?1) WHERE true "
    "ON CONFLICT(fingerprint) DO UPDATE SET count = count + excluded.count, "
    "first_seen = min(first_seen, excluded.first_seen), "
    "title = CASE WHEN excluded.last_seen >= last_seen THEN excluded.title ELSE title END, "
    "culprit = CASE WHEN excluded.last_seen >= last_seen THEN excluded.culprit ELSE culprit END, "
    "level = CASE WHEN excluded.last_seen >= last_seen THEN excluded.level ELSE level END, "
    "last_release = coalesce(CASE WHEN excluded.last_seen >= last_seen THEN excluded.last_release END, last_release), "
    "last_seen = max(last_seen, excluded.last_seen)")
_STORED_UPSERT = (
    "INSERT INTO error_stored SELECT ?2, value ->> 0, value ->> 1 FROM json_each(?1) WHERE true "
    "ON CONFLICT(segment, fingerprint) DO UPDATE SET count = count + excluded.count")
_EVENTS_STORED = (
    "UPDATE error_groups SET events_stored = events_stored + g.count "
    "FROM (SELECT value ->> 0 AS fingerprint, value ->> 1 AS count FROM json_each(?1)) AS g "
    "WHERE error_groups.fingerprint = g.fingerprint")
_USERS = "INSERT OR IGNORE INTO error_group_users SELECT value ->> 0, value ->> 1 FROM json_each(?1)"
_HOURS = (
    "INSERT INTO error_group_hours SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1) WHERE true "
    "ON CONFLICT(fingerprint, hour) DO UPDATE SET count = count + excluded.count")
_USERS_AFFECTED = (
    "UPDATE error_groups SET users_affected = (SELECT count(*) FROM error_group_users AS u "
    "WHERE u.fingerprint = error_groups.fingerprint) WHERE fingerprint IN (SELECT value FROM json_each(?1))")
# Workflow: a resolved group that gets an event received after its resolution has regressed;
# an ignored group wakes up after its N more events.
_REGRESSED = (
    "UPDATE error_groups SET status = 'unresolved', status_changed_at = ?2, regressed_at = ?2, "
    "ignore_until_count = NULL, ignore_until = NULL "
    "FROM (SELECT value ->> 0 AS fingerprint, value ->> 1 AS received FROM json_each(?1)) AS g "
    "WHERE error_groups.fingerprint = g.fingerprint AND status = 'resolved' AND status_changed_at <= g.received")
_IGNORE_OVER = (
    "UPDATE error_groups SET status = 'unresolved', status_changed_at = ?2, ignore_until_count = NULL, "
    "ignore_until = NULL WHERE fingerprint IN (SELECT value FROM json_each(?1)) AND status = 'ignored' "
    "AND ignore_until_count IS NOT NULL AND count - count_at_ignore >= ignore_until_count")


def _group_writes(segment, groups, now_text):
    """The statements that fold `groups` (from _fold) into meta.db: [(sql, params)], built
    before the transaction so that it only runs them."""
    upserts, stored, users, hours = [], [], [], []
    for fingerprint, group in groups.items():
        level, service, message, release, exception = group["latest"]
        title, culprit, kind = describe(message, exception)
        upserts.append((fingerprint, title, culprit, kind, service, level, group["first"], group["last"],
                        group["count"], release))
        stored.append((fingerprint, group["count"]))
        users.extend((fingerprint, user) for user in group["users"])
        hours.extend((fingerprint, hour, count) for hour, count in group["hours"].items())
    if not upserts:
        return []
    with_users = sorted({fingerprint for fingerprint, _ in users})
    received = [(fingerprint, group["received"]) for fingerprint, group in groups.items()]
    writes = [(_GROUP_UPSERT, upserts, now_text), (_STORED_UPSERT, stored, segment), (_EVENTS_STORED, stored),
              (_USERS, users), (_HOURS, hours), (_USERS_AFFECTED, with_users), (_REGRESSED, received, now_text),
              (_IGNORE_OVER, list(groups), now_text)]
    return [(sql, (orjson.dumps(values).decode(), *extra)) for sql, values, *extra in writes if values]


def fold_range(meta, name, low, high, rows, now_text, volume, latency=None):
    """Fold `rows` (the error rows with low < id <= high) and the `volume` (and `latency`) of all rows
    in that range, unless another process already did."""
    writes = _group_writes(name, _fold(rows), now_text) + volume.writes() + (latency.writes() if latency else [])
    with catalog.immediate(meta):
        current = meta.execute("SELECT last_id FROM error_sync WHERE segment = ?", (name,)).fetchone()
        if (current[0] if current else 0) != low:
            return 0
        for sql, params in writes:
            meta.execute(sql, params)
        meta.execute("INSERT OR REPLACE INTO error_sync VALUES (?, ?)", (name, high))
    return len(rows)


def watermark(meta, name):
    row = meta.execute("SELECT last_id FROM error_sync WHERE segment = ?", (name,)).fetchone()
    return row[0] if row else 0


def sync_segment(meta, data_dir, name, now_text, chunk_rows=None):
    """Fold the rows of `name` above its watermark into the groups; return how many error rows
    were folded."""
    return fold_backlog(meta, data_dir, name, now_text, chunk_rows)[0]


def fold_backlog(meta, data_dir, name, now_text, chunk_rows=None, max_chunks=None):
    """Fold the rows of `name` above its watermark, reading the error rows back `chunk_rows` at a
    time, a transaction each (an error storm's backlog is never held in memory at once), and at
    most `max_chunks` chunks. Return (error rows folded, whether rows are left to fold)."""
    path = os.path.join(segments.segments_dir(data_dir), name)
    try:
        con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True, timeout=30)
    except sqlite3.Error:
        return 0, False
    folded, chunks = 0, 0
    try:
        low, high = watermark(meta, name), None
        while True:
            try:
                if high is None:
                    high = segments.max_id(con)
                if high <= low:
                    return folded, False
                if max_chunks is not None and chunks >= max_chunks:
                    return folded, True
                upto, rows, volume, latency = _read_back(con, low, high, chunk_rows or READ_BACK_ERROR_ROWS)
            except sqlite3.Error as error:
                log.warning("reading %s for error groups: %s", name, error)
                return folded, False
            folded += fold_range(meta, name, low, upto, rows, now_text, volume, latency)
            chunks += 1
            moved_to = watermark(meta, name)  # upto, or further when another process folded it
            if moved_to <= low:
                return folded, False
            low = moved_to
    finally:
        con.close()


def _read_back(con, low, high, chunk_rows):
    """(upto, error rows, volume, latency) of the rows low < id <= upto of a segment, upto <= high
    chosen so that at most `chunk_rows` error rows are read."""
    rows = con.execute(_NEW_ROWS, (low, high, chunk_rows)).fetchall()
    upto = rows[-1][0] if len(rows) == chunk_rows else high
    return upto, rows, Volume.of_segment(con, low, upto), Latency.of_segment(con, low, upto)


def error_rows(first_id, rows):
    """The committed rows a writer hands over, in the shape of _NEW_ROWS, errors only."""
    return [(first_id + offset, row[0], row[1], row[2], row[3], row[4], row[7], row[9], row[12], row[13])
            for offset, row in enumerate(rows) if row[4] is not None]


def _set_stored(meta, segment, counts):
    """Make error_stored of `segment` equal `counts` and move events_stored by the difference."""
    old = {row[0]: row[1] for row in meta.execute(
        "SELECT fingerprint, count FROM error_stored WHERE segment = ?", (segment,))}
    for fingerprint in old.keys() | counts.keys():
        delta = counts.get(fingerprint, 0) - old.get(fingerprint, 0)
        if delta:
            meta.execute("UPDATE error_groups SET events_stored = events_stored + ? WHERE fingerprint = ?",
                         (delta, fingerprint))
    meta.execute("DELETE FROM error_stored WHERE segment = ?", (segment,))
    meta.executemany("INSERT INTO error_stored VALUES (?, ?, ?)",
                     [(segment, fingerprint, count) for fingerprint, count in counts.items() if count])


def recount_segment(meta, con, segment):
    """After rows were deleted from a segment: its stored events per group, from the file."""
    last_id, = meta.execute("SELECT coalesce(max(last_id), 0) FROM error_sync WHERE segment = ?",
                            (segment,)).fetchone()
    counts = dict(con.execute("SELECT fingerprint, count(*) FROM logs WHERE fingerprint IS NOT NULL AND id <= ? "
                              "GROUP BY fingerprint", (last_id,)).fetchall())
    with catalog.immediate(meta):
        _set_stored(meta, segment, counts)


def forget_segment(meta, segment):
    """A segment file is gone: its events no longer count as stored; group counts stay."""
    with catalog.immediate(meta):
        _set_stored(meta, segment, {})
        meta.execute("DELETE FROM error_sync WHERE segment = ?", (segment,))
        meta.execute("DELETE FROM segments WHERE name = ?", (segment,))


def wake_expired_ignores(meta, now_text):
    with catalog.immediate(meta):
        meta.execute("UPDATE error_groups SET status = 'unresolved', status_changed_at = ?1, ignore_until = NULL, "
                     "ignore_until_count = NULL WHERE status = 'ignored' AND ignore_until IS NOT NULL "
                     "AND ignore_until <= ?1", (now_text,))


def prepare(meta):
    """At start-up: the tables, and no counts left of segments that are gone. Return the
    segments' names, oldest first: what a crash left unfolded in them is folded by the tracker
    (ingest/tracker.py), in the background, so a long backlog does not hold up the start."""
    ensure_schema(meta)
    gone = [row[0] for row in meta.execute(
        "SELECT segment FROM error_sync WHERE segment NOT IN (SELECT name FROM segments) UNION "
        "SELECT segment FROM error_stored WHERE segment NOT IN (SELECT name FROM segments)")]
    for segment in gone:
        forget_segment(meta, segment)
    return [row[0] for row in meta.execute("SELECT name FROM segments ORDER BY day, seq")]


def reconcile(meta, data_dir, now_text):
    """Fold whatever a crash left unfolded, in every segment, now (tests and tools)."""
    return sum(sync_segment(meta, data_dir, name, now_text) for name in prepare(meta))
