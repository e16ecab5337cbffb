"""The writer's one statement alone, on one segment file, with FTS5 settings side by side.

    .venv/bin/python bench/segment_write.py                       # 500k entries, 2,000-row commits
    .venv/bin/python bench/segment_write.py --entries 300000 --commit-rows 1000

No HTTP, no GIL contention: rows made by `to_row` from the seeded workload of
bench/ingest.py are encoded as JSON arrays and written with schema.WRITE_BATCH
(the statement the writer runs for each commit), one variant of the FTS5
table after another, each on a fresh file. Prints the writer thread's CPU an
entry, the commit latency (p50, p99, max), the file size, and the mean time of
a rare-word and a trace lookup through logs_fts at the end.
"""
import argparse
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from bench.common import percentile, print_table  # noqa: E402
from ingest import schema  # noqa: E402
from ingest.entries import Limits, to_row  # noqa: E402

FTS_DEFAULT = "content='logs', content_rowid='id', columnsize=0"
VARIANTS = [
    # name, FTS5 options, tuning statements, feed FTS5
    ("FTS5 defaults", "content='logs', content_rowid='id'", (), True),
    ("columnsize=0", FTS_DEFAULT, (), True),
    ("columnsize=0, automerge=16", FTS_DEFAULT, ("INSERT INTO logs_fts(logs_fts, rank) VALUES ('automerge', 16)",),
     True),
    ("+ crisismerge=64", FTS_DEFAULT, ("INSERT INTO logs_fts(logs_fts, rank) VALUES ('automerge', 16)",
                                       schema.FTS_TUNING[1]), True),
    ("the schema: automerge=32, crisismerge=64", FTS_DEFAULT, schema.FTS_TUNING, True),
    ("no FTS5 feed (reference)", FTS_DEFAULT, (), False),
]


def make_batches(count, commit_rows):
    rows = [to_row(entry, "2026-01-01T00:00:00.000Z", "2099-01-01T00:00:00.000Z", Limits())
            for entry in workload.entries(count)]
    return rows, [orjson.dumps(rows[i:i + commit_rows]).decode() for i in range(0, count, commit_rows)]


def batch_sizes(count, batches):
    size = -(-count // batches)
    return [min(size, count - i * size) for i in range(batches)]


def open_variant(path, fts_options, tuning, feed):
    tables = schema.SEGMENT_TABLES.replace(FTS_DEFAULT, fts_options)
    objects = schema.WRITE_BATCH_OBJECTS
    if not feed:
        objects = objects.replace(schema.FEED_FTS.replace("?", "NEW.after_id"), "SELECT 1")
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("PRAGMA cache_size=-8192")
    con.executescript(tables + schema.SEGMENT_INDEXES + objects)
    for statement in tuning:
        con.execute(statement)
    return con


def lookups(con, rows):
    rng = random.Random(1)
    words = ['"{}"'.format(rng.choice(row[3].split()).strip('"')) for row in rows[::max(1, len(rows) // 40)]]
    traces = ['trace_id : "{}"'.format(row[5]) for row in rows[::max(1, len(rows) // 40)] if row[5]]
    started = time.perf_counter()
    for query in words + traces:
        con.execute("SELECT rowid FROM logs_fts WHERE logs_fts MATCH ? LIMIT 2000", (query,)).fetchall()
    return (time.perf_counter() - started) / len(words + traces) * 1000


def run(variant, rows, batches):
    name, fts_options, tuning, feed = variant
    directory = tempfile.mkdtemp(prefix="bench-segment-")
    path = os.path.join(directory, "segment.db")
    con = open_variant(path, fts_options, tuning, feed)
    cpu, latencies, last_id = 0.0, [], 0
    for batch, batch_rows in zip(batches, batch_sizes(len(rows), len(batches))):
        cpu_start, wall_start = time.thread_time(), time.perf_counter()
        con.execute(schema.WRITE_BATCH, (batch, None, last_id, None))
        cpu += time.thread_time() - cpu_start
        latencies.append((time.perf_counter() - wall_start) * 1000)
        last_id += batch_rows
        if os.path.getsize(path + "-wal") > 64 * 1024 * 1024:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    lookup_ms = lookups(con, rows) if feed else None
    size = os.path.getsize(path)
    con.close()
    shutil.rmtree(directory)
    return [name, "{:.2f}".format(cpu / len(rows) * 1e6), "{:.1f}".format(percentile(latencies, 0.5)),
            "{:.1f}".format(percentile(latencies, 0.99)), "{:.1f}".format(max(latencies)),
            "{:.0f}".format(size / 1e6), "-" if lookup_ms is None else "{:.2f}".format(lookup_ms)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--commit-rows", type=int, default=2000)
    args = parser.parse_args()
    rows, batches = make_batches(args.entries, args.commit_rows)
    print("SQLite {}, {:,} entries, commits of {:,} rows".format(sqlite3.sqlite_version, args.entries,
                                                                  args.commit_rows))
    table = [run(variant, rows, batches) for variant in VARIANTS]
    print_table(["FTS5", "writer CPU µs/entry", "commit p50 ms", "p99 ms", "max ms", "file MB",
                 "lookup ms"], table)


if __name__ == "__main__":
    main()
