"""SQL schema of a segment file and of the catalog in meta.db.

Kept in one place so the writer, the crash repair and the benchmark's raw
limit all build exactly the same tables.
"""

LOG_COLUMNS = (
    "ts", "level", "service", "message", "fingerprint", "trace_id", "span_id",
    "user_id", "environment", "release", "host", "metadata", "exception",
    "received_at",
)

SEGMENT_TABLES = """
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    level TEXT NOT NULL,
    service TEXT NOT NULL,
    message TEXT NOT NULL,
    fingerprint TEXT,
    trace_id TEXT,
    span_id TEXT,
    user_id TEXT,
    environment TEXT,
    release TEXT,
    host TEXT,
    metadata TEXT,
    exception TEXT,
    received_at TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5(
    message, trace_id, content='logs', content_rowid='id', columnsize=0
);
CREATE TABLE IF NOT EXISTS batches (
    idempotency_key TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    response TEXT NOT NULL,
    body_hash TEXT  -- ingest/idempotency.py body_hash(); NULL in segments written before it existed
);
"""

# FTS5 tuning, kept in the file (logs_fts_config). Each commit adds a small FTS5 segment and
# automerge folds them together; merging 32 at a time instead of 4 rewrites each posting
# fewer times. At 32, 1000-row commits make level-1 segments of 32k rows, and a 256 MiB head
# (about 420k rows) never reaches the next level: at 16 it did, after 256k rows, and the
# commits that carried that merge made the head's second half slower (commit p90 48 ms
# against 24 at 32; bench/segment_write.py). A level that reaches `crisismerge` segments is
# merged at once, inside the commit that tips it, so it stays above automerge (64; at 64 =
# automerge, commits of 110-190 ms). With columnsize=0 no per-row size record is written
# (only bm25() would read it; nothing here ranks).
FTS_TUNING = (
    "INSERT INTO logs_fts(logs_fts, rank) VALUES ('automerge', 32)",
    "INSERT INTO logs_fts(logs_fts, rank) VALUES ('crisismerge', 64)",
)

# Indexes kept live in the head segment. Time-ordered keys insert near the
# end of their B-tree and cost little; the fingerprint index is partial
# (most entries have none) and has few distinct keys.
SEGMENT_INDEXES = """
CREATE INDEX IF NOT EXISTS logs_ts ON logs(ts);
CREATE INDEX IF NOT EXISTS logs_level_ts ON logs(level, ts);
CREATE INDEX IF NOT EXISTS logs_service_ts ON logs(service, ts);
CREATE INDEX IF NOT EXISTS logs_fingerprint ON logs(fingerprint) WHERE fingerprint IS NOT NULL;
"""

# A random key (trace_id) dirties a random index page per row: in the head
# it is found through the FTS5 column instead, and the B-tree is built once,
# sorted, when the segment closes.
CLOSED_SEGMENT_INDEXES = """
CREATE INDEX IF NOT EXISTS logs_trace_id ON logs(trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS logs_duration ON logs(CAST(json_extract(metadata, '$.duration_ms') AS REAL))
    WHERE json_extract(metadata, '$.duration_ms') IS NOT NULL;
"""
# logs_duration: the slowest requests of a closed segment (Datasette's slowest_requests query)
# without reading every row's metadata.

# A whole commit of the writer is one statement, run in autocommit mode:
# `INSERT INTO write_batch VALUES (rows, first_id, after_id, keys)` inserts the rows (a JSON
# array of row arrays, columns as in LOG_COLUMNS), feeds FTS5 the rows above `after_id`,
# records the idempotency keys (a JSON array of [key, received_at, response, body hash], or NULL) and
# commits, all inside one sqlite3_step. The rows get ids from `first_id` on when it is given
# (after the newest rows were deleted), otherwise SQLite's max(id) + 1.
# Why: the whole write runs without the GIL (executemany gives it up and takes it back for
# every row), and the writer thread takes the GIL back once a commit instead of once a
# statement: each time it may wait out a busy request thread's switch interval (5 ms).
# External-content FTS5 fed once per transaction: a trigger per row costs twice.
# The view and trigger are TEMP: the segment file's schema does not change.
FEED_FTS = "INSERT INTO logs_fts(rowid, message, trace_id) SELECT id, message, trace_id FROM logs WHERE id > ?"
# Reading the columns out of the JSON is half of the statement's CPU. SQLite 3.40 caches a
# parsed JSON text per call site only, so each `value ->> i` parses its row again: 14 parses
# of ~450 bytes a row. The long columns are read from the row, the short ones from one copy
# of the row without them (json_remove), about 4 parses of the row and 11 of a third of it:
# 2-3 µs an entry (~20%) less writer CPU (bench/segment_write.py). `LIMIT -1 OFFSET 0` keeps
# the inner SELECT a co-routine that computes each row's pieces once; flattened into the
# outer one, json_remove would run once per short column.
LONG_COLUMNS = ("message", "metadata", "exception")
SHORT_COLUMNS = tuple(column for column in LOG_COLUMNS if column not in LONG_COLUMNS)
_SPLIT_ROW = "json_remove(value, {}) AS short, {}".format(
    ", ".join("'$[{}]'".format(index) for index in sorted(map(LOG_COLUMNS.index, LONG_COLUMNS), reverse=True)),
    ", ".join("value ->> {} AS {}".format(LOG_COLUMNS.index(column), column) for column in LONG_COLUMNS))
WRITE_BATCH_OBJECTS = """
CREATE TEMP VIEW IF NOT EXISTS write_batch(rows_json, first_id, after_id, keys_json) AS
    SELECT NULL, NULL, NULL, NULL;
CREATE TEMP TRIGGER IF NOT EXISTS write_batch_insert INSTEAD OF INSERT ON write_batch BEGIN
    INSERT INTO logs (id, {columns}) SELECT NEW.first_id + key, {values}
        FROM (SELECT key, {split_row} FROM json_each(NEW.rows_json) LIMIT -1 OFFSET 0);
    {feed_fts};
    INSERT OR REPLACE INTO batches (idempotency_key, received_at, response, body_hash)
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(NEW.keys_json);
END;
""".format(columns=", ".join(SHORT_COLUMNS + LONG_COLUMNS),
           values=", ".join(["short ->> {}".format(i) for i in range(len(SHORT_COLUMNS))] + list(LONG_COLUMNS)),
           split_row=_SPLIT_ROW, feed_fts=FEED_FTS.replace("?", "NEW.after_id"))
WRITE_BATCH = "INSERT INTO write_batch VALUES (?, ?, ?, ?)"

CATALOG_TABLES = """
CREATE TABLE IF NOT EXISTS segments (
    name TEXT PRIMARY KEY,
    day TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    closed_at TEXT,
    min_ts TEXT,
    max_ts TEXT,
    row_count INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT,
    generation INTEGER NOT NULL DEFAULT 0  -- bumped whenever a closed segment's file changes (retention)
);
"""
