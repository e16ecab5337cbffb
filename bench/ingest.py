"""Ingest benchmark: HTTP ingest through the real gunicorn server against the raw SQLite limit.

    .venv/bin/python bench/ingest.py            # 100k and 1M entries (several minutes)
    .venv/bin/python bench/ingest.py --quick    # 100k only
    .venv/bin/python bench/ingest.py --keys     # an Idempotency-Key a batch, as the client handler
    .venv/bin/python bench/ingest.py --free-text-errors   # errors whose messages no template gathers

Prints one table: events/s and MB/s per run (batch size, client threads,
entries), p50/p99 request latency and the latency floor (clients x batch /
events/s: with that many requests always in flight, the mean latency of any
server at that rate, by Little's law; a p50 near it means the server was the
bottleneck and the latency is mostly queueing), the server's peak RSS, bytes
on disk per event; then the raw limit (orjson + executemany, 1000-row transactions,
every index live, FTS5 fed per transaction) and the ratio of the two.
"""
import argparse
import itertools
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time

import orjson
import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from bench.common import TOKEN, PeakRss, Server, dir_bytes, percentile, print_table  # noqa: E402
from ingest import schema  # noqa: E402


def make_bodies(encoded, batch):
    return [b"[" + b",".join(encoded[i:i + batch]) + b"]" for i in range(0, len(encoded), batch)]


def http_run(encoded, batch, clients, server_settings, keys=False):
    bodies = make_bodies(encoded, batch)
    data_dir = tempfile.mkdtemp(prefix="bench-ingest-")
    server = Server(data_dir, **server_settings)
    rss = PeakRss(server.proc.pid)
    counter, latencies, errors = itertools.count(), [], []
    headers = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}

    def client():
        session = requests.Session()
        while True:
            index = next(counter)
            if index >= len(bodies):
                return
            # As the client handler (sidecar/client.py) sends them: one key a batch.
            extra = {"Idempotency-Key": "bench-{}".format(index)} if keys else {}
            started = time.perf_counter()
            response = session.post(server.url + "/api/logs", data=bodies[index], headers={**headers, **extra})
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(response.text[:200])

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    peak = rss.stop()
    server.stop()
    on_disk = dir_bytes(data_dir)
    shutil.rmtree(data_dir)
    return {"elapsed": elapsed, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "rss": peak, "disk": on_disk, "errors": errors}


# The schema of the ingest issue: the logs table, five live indexes, FTS5 on message.
RAW_SCHEMA = """
CREATE TABLE logs (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, level TEXT NOT NULL, service TEXT NOT NULL,
    message TEXT NOT NULL, fingerprint TEXT, trace_id TEXT, span_id TEXT, user_id TEXT, environment TEXT,
    release TEXT, host TEXT, metadata TEXT, exception TEXT, received_at TEXT NOT NULL);
CREATE INDEX logs_ts ON logs(ts);
CREATE INDEX logs_level_ts ON logs(level, ts);
CREATE INDEX logs_service_ts ON logs(service, ts);
CREATE INDEX logs_trace_id ON logs(trace_id);
CREATE INDEX logs_fingerprint ON logs(fingerprint);
CREATE VIRTUAL TABLE logs_fts USING fts5(message, content='logs', content_rowid='id');
"""
RAW_INSERT = "INSERT INTO logs ({}) VALUES ({})".format(
    ", ".join(schema.LOG_COLUMNS), ", ".join("?" * len(schema.LOG_COLUMNS)))
RAW_FEED_FTS = "INSERT INTO logs_fts(rowid, message) SELECT id, message FROM logs WHERE id > ?"


def raw_run(encoded):
    """The raw limit: orjson parse, a tuple per row, executemany, one file."""
    directory = tempfile.mkdtemp(prefix="bench-raw-")
    con = sqlite3.connect(os.path.join(directory, "raw.db"), isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(RAW_SCHEMA)
    last_id = 0
    started = time.perf_counter()
    for start in range(0, len(encoded), 1000):
        rows = []
        for line in encoded[start:start + 1000]:
            e = orjson.loads(line)
            metadata = e.get("metadata")
            rows.append((e["timestamp"], e["level"], e["service"], e["message"], None, e.get("trace_id"),
                         e.get("span_id"), e.get("user_id"), e.get("environment"), e.get("release"),
                         e.get("host"), orjson.dumps(metadata).decode() if metadata else None, None,
                         e["timestamp"]))
        con.execute("BEGIN")
        con.executemany(RAW_INSERT, rows)
        con.execute(RAW_FEED_FTS, (last_id,))
        con.execute("COMMIT")
        last_id += len(rows)
    elapsed = time.perf_counter() - started
    con.close()
    on_disk = dir_bytes(directory)
    shutil.rmtree(directory)
    return {"elapsed": elapsed, "disk": on_disk}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k entries only")
    parser.add_argument("--sizes", default=None, help="comma-separated entry counts")
    parser.add_argument("--batches", default="100,1000")
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--server", action="append", default=[], metavar="NAME=VALUE",
                        help="a sidecar setting for the server, e.g. --server workers=2 (repeatable)")
    parser.add_argument("--errors", action="store_true",
                        help="every entry an error with a 20-frame stack trace (an error storm)")
    parser.add_argument("--free-text-errors", action="store_true",
                        help="a tail of free-text words on each error's message (thousands of templates)")
    parser.add_argument("--keys", action="store_true",
                        help="an Idempotency-Key on every batch, as the client handler sends")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("100000" if args.quick else "100000,1000000")).split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    client_counts = [int(c) for c in args.clients.split(",")]
    server_settings = dict(item.split("=", 1) for item in args.server)
    print("SQLite {}, Python {}, {} cores, server settings: {}{}{}".format(
        sqlite3.sqlite_version, sys.version.split()[0], os.cpu_count(), server_settings or "defaults",
        ", an Idempotency-Key a batch" if args.keys else "",
        ", free-text error messages" if args.free_text_errors else ""))
    rows = []
    for size in sizes:
        generated = workload.entries(size, seed=7)
        if args.free_text_errors:
            generated = workload.free_text_errors(generated)
        encoded = [orjson.dumps(e) for e in (workload.error_storm(generated) if args.errors else generated)]
        mean_bytes = sum(map(len, encoded)) / size
        megabytes = sum(map(len, encoded)) / 1e6
        raw = raw_run(encoded)
        raw_rate = size / raw["elapsed"]
        rows.append(["raw limit", "1000", "1", size, "{:,.0f}".format(raw_rate),
                     "{:.1f}".format(megabytes / raw["elapsed"]), "-", "-", "-", "-",
                     "{:.0f}".format(raw["disk"] / size), "1.00", 0])
        for batch, clients in itertools.product(batches, client_counts):
            result = http_run(encoded, batch, clients, server_settings, args.keys)
            rate = size / result["elapsed"]
            rows.append(["http", batch, clients, size, "{:,.0f}".format(rate),
                         "{:.1f}".format(megabytes / result["elapsed"]),
                         "{:.1f}".format(result["p50"] * 1000), "{:.1f}".format(result["p99"] * 1000),
                         "{:.1f}".format(clients * batch / rate * 1000),
                         "{:.0f}".format(result["rss"] / 1e6), "{:.0f}".format(result["disk"] / size),
                         "{:.2f}".format(rate / raw_rate), len(result["errors"])])
            if result["errors"]:
                print("errors, first:", result["errors"][0], file=sys.stderr)
        print("{:,} entries, {:.0f} bytes an entry as JSON".format(size, mean_bytes), file=sys.stderr)
    print_table(["writer", "batch", "clients", "entries", "events/s", "MB/s", "p50 ms", "p99 ms",
                 "floor ms", "server RSS MB", "disk B/event", "ratio to raw", "non-2xx"], rows)


if __name__ == "__main__":
    main()
