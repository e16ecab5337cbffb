"""Search benchmark: search, trace, dashboard and Datasette latency on 5 million entries over 7 daily segments.

    .venv/bin/python bench/search.py                                   # 5M entries (builds for several minutes)
    .venv/bin/python bench/search.py --entries 300000                  # a quick run in a temporary store
    .venv/bin/python bench/search.py --data-dir /tmp/bench-search-store  # builds there once, then reuses it

Builds the store with the ingest library directly (the real writer, one
segment per UTC day through an injected clock, the last day today and still
the head; rows made by `to_row` with fingerprinting), with a few entries
carrying a rare word and a note of some trace_ids (in the oldest closed
segment and in the head). Error groups and rollups are folded into meta.db
as the live tracker would have. Then starts the real gunicorn server on the
store and measures over HTTP, after a warm-up, p50 and p95 of:

- `GET /api/logs/search?q=<rare word>&limit=100` (target p95 <= 150 ms) and
  a common word (no target);
- `GET /api/logs/search?trace_id=<id>&limit=100` and the trace view
  `GET /api/traces/<id>`, for a trace in the oldest closed segment and one in
  the head (target <= 50 ms);
- each chart query of the Overview dashboard through
  `/datasette/meta.json?sql=...&_shape=array` (target <= 200 ms);
- Datasette pages: the index, the dashboard page, segments' logs tables,
  error groups, canned queries (top groups; a segment's slowest requests),
  a full-text search on a segment's logs (target <= 300 ms); and, as
  diagnostics, a logs table with `?_nosuggest=1` and a search with the FTS
  table named in the URL (`?_fts_table=logs_fts`).

Unless `--no-direct`, it also times the same searches straight on the
segment files with sqlite3 (warm connections), as a floor for the search API.

A store is dated when it is built: re-measured on a later UTC day, its last
segment is no longer today's and the server closes it at start-up (and the
dashboard's 6-hour charts are empty); rebuild it for figures comparable
with the first run.
"""
import argparse
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from bench.common import Server, dir_bytes, percentile, print_table  # noqa: E402
from ingest import catalog, groups  # noqa: E402
from ingest.entries import Limits, format_ts, to_row  # noqa: E402
from ingest.fingerprint import Fingerprinter  # noqa: E402
from ingest.writer import Batch, Writer  # noqa: E402
from sidecar.datasette_config import overview_dashboard  # noqa: E402
from sidecar.settings import load_settings  # noqa: E402

ADMIN = "bench-admin-token-0123456789abcdef"
MANIFEST = "bench-search.json"
RARE_TERM = "zanzibarquokka"
COMMON_TERM = "payment"  # one of workload.WORDS: in about 6% of messages
DAYS = 7
BATCH = 10_000
SEGMENT_MAX_BYTES = 8 * 2**30  # one segment per UTC day, whatever its size
TARGETS_MS = {"search": 150, "trace": 50, "chart": 200, "page": 300}


class Clock:
    def __init__(self, moment):
        self.moment = moment

    def __call__(self):
        return self.moment


def parse_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- building the store ------------------------------------------------------------------
def day_entries(day, count, start, span_s, rare_per_day, rare_term):
    """The day's workload entries, `rare_per_day` of them carrying `rare_term` in their message."""
    rare_at = {(k + 1) * count // (rare_per_day + 1) for k in range(rare_per_day)}
    for i, entry in enumerate(workload.entries(count, seed=1000 + day, start=start, span_s=span_s)):
        if i in rare_at:
            entry["message"] = "Inventory sync flagged a {} in batch {} of {}".format(
                rare_term, i, entry["service"])
        yield entry


def build_store(data_dir, entries, now, rare_per_day, rare_term, log):
    """`entries` over DAYS daily segments ending today (UTC); returns the manifest of what to look for."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    settings = load_settings({"segment_max_bytes": SEGMENT_MAX_BYTES}, environ={})
    clock = Clock(midnight - timedelta(days=DAYS - 1))
    writer = Writer(data_dir, settings, clock).start()
    fingerprinter, limits = Fingerprinter(), Limits()
    max_ts = format_ts(now + timedelta(days=1))
    traces, rare_total = [], 0
    for day in range(DAYS):
        start = midnight - timedelta(days=DAYS - 1 - day)
        last = day == DAYS - 1
        span_s = max((now - start).total_seconds() - 1, 1) if last else 86400 - 0.001
        count = entries // DAYS + (entries % DAYS if last else 0)
        # The first trace of 3 entries or more that starts after half the day: noted, its entries counted
        # (a trace's entries are neighbours in the workload).
        watch, watched, previous = count // 2, None, None
        pending = []
        for i, entry in enumerate(day_entries(day, count, start, span_s, rare_per_day, rare_term)):
            trace_id = entry.get("trace_id")
            if i >= watch and trace_id != previous and (watched is None or watched["entries"] < 3) and trace_id:
                watched = {"trace_id": trace_id, "entries": 0, "day": start.strftime("%Y-%m-%d")}
            previous = trace_id
            if watched is not None and entry.get("trace_id") == watched["trace_id"]:
                watched["entries"] += 1
            rare_total += rare_term in entry["message"]
            pending.append(entry)
            if len(pending) == BATCH or i == count - 1:
                # Each entry received as it was written (so the ingest-rate rollup is per minute);
                # the writer's clock at the batch's last entry decides the day of its segment.
                clock.moment = parse_ts(pending[-1]["timestamp"])
                rows = [to_row(e, e["timestamp"], max_ts, limits, fingerprinter) for e in pending]
                batch = writer.submit(Batch(rows))
                batch.done.wait()
                if batch.error is not None:
                    raise batch.error
                pending = []
        if watched is not None:
            watched["segment"] = writer.head.name
            traces.append(watched)
        log("day {} ({}): {:,} entries in {}".format(day + 1, start.strftime("%Y-%m-%d"), count, writer.head.name))
    head = writer.head.name
    writer.wait_closers(timeout=3600)  # closed segments get their trace_id index here
    writer.stop()
    folded = time.perf_counter()
    meta = catalog.connect_meta(data_dir)
    try:
        # What the live tracker does while ingesting: error groups and rollups, and the miners' templates.
        groups.reconcile(meta, data_dir, format_ts(now))
        fingerprinter.save(meta, format_ts(now))
    finally:
        meta.close()
    log("error groups and rollups folded in {:.0f} s".format(time.perf_counter() - folded))
    return {"entries": entries, "built_at": format_ts(now), "head": head, "rare_term": rare_term,
            "rare_total": rare_total, "common_term": COMMON_TERM,
            "traces": {"closed": traces[0], "head": traces[-1]}}


def store_segments(data_dir):
    con = sqlite3.connect("file:{}?mode=ro".format(os.path.join(data_dir, "meta.db")), uri=True)
    try:
        return [dict(zip(("name", "closed_at", "row_count", "bytes", "min_ts", "max_ts"), row)) for row in con.execute(
            "SELECT name, closed_at, row_count, bytes, min_ts, max_ts FROM segments ORDER BY day, seq")]
    finally:
        con.close()


# -- measuring -----------------------------------------------------------------------------
def timed(call, repeat, warmup):
    for _ in range(warmup):
        result = call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
    return times, result


def http_case(session, url, params, repeat, warmup, describe):
    """Time GET url; stop at the warm-up when it does not answer 200."""
    def call():
        return session.get(url, params=params, timeout=300)

    first = call()
    if first.status_code != 200:
        return [], "HTTP {}: {}".format(first.status_code, first.text[:60].replace("\n", " ")), first.status_code
    times, response = timed(call, repeat, max(warmup - 1, 0))
    if response.status_code != 200:
        return times, "HTTP {}".format(response.status_code), response.status_code
    return times, describe(response), 200


def search_result(expected):
    def describe(response):
        try:
            body = response.json()
            hits = body["hits"]
        except (ValueError, KeyError, TypeError):
            return "not {hits, next_cursor} JSON"
        text = "{} hits".format(len(hits))
        if expected is not None and len(hits) != expected:
            text += " (expected {})".format(expected)
        if body.get("next_cursor"):
            text += ", next_cursor"
        if "segments_searched" in body:
            text += ", {} segments searched, {} skipped, took_ms {}".format(
                body["segments_searched"], body.get("segments_skipped"), body.get("took_ms"))
        return text
    return describe


def trace_result(expected):
    def describe(response):
        try:
            entries = response.json()["entries"]
        except (ValueError, KeyError, TypeError):
            return "not {entries: [...]} JSON"
        return "{} entries".format(len(entries)) + ("" if len(entries) == expected else " (expected {})".format(
            expected))
    return describe


def rows_result(response):
    try:
        return "{} rows".format(len(response.json()))
    except ValueError:
        return "not JSON"


def page_result(response):
    return "{:.0f} KB HTML".format(len(response.content) / 1000)


def table_check(session, url, params):
    """What a table page showed, from its .json twin: rows, count, and whether ?_search was applied."""
    try:
        body = session.get(url + ".json", params=params, timeout=300).json()
    except (requests.RequestException, ValueError):
        return ""
    sql = (body.get("query") or {}).get("sql", "")
    text = ", {} rows of {}, {}".format(len(body.get("rows", [])), body.get("filtered_table_rows_count"),
                                       "newest first" if " desc" in sql else "oldest first (no sort_desc)")
    if params and "_search" in params:
        text += ", search applied" if " match " in sql else ", _search IGNORED (no fts_table)"
    return text


def chart_queries():
    """The Overview dashboard's chart (and filter) queries, optional [[ ... ]] filter blocks removed."""
    dashboard = overview_dashboard(load_settings({"disk_budget_bytes": 0}, environ={}), "/datasette/")
    queries = [("filter " + name, spec["query"]) for name, spec in dashboard.get("filters", {}).items()
               if spec.get("query")]
    queries += [("chart " + name, spec["query"]) for name, spec in dashboard["charts"].items() if spec.get("query")]
    return [(name, re.sub(r"\[\[.*?\]\]", "", query, flags=re.S)) for name, query in queries]


def direct_cases(data_dir, manifest, segment_rows):
    """The searches straight on the files (warm connections kept), a floor for the API."""
    connections = []
    for segment in reversed(segment_rows):  # newest first
        path = os.path.join(data_dir, "segments", segment["name"])
        mode = "immutable=1" if segment["closed_at"] else "mode=ro"
        connections.append((segment["closed_at"] is not None,
                            sqlite3.connect("file:{}?{}".format(path, mode), uri=True, check_same_thread=False)))

    def newest(term, limit=100):
        hits = []
        for _, con in connections:
            hits += con.execute(
                "SELECT l.id, l.ts, l.level, l.service, l.message, l.trace_id FROM (SELECT rowid FROM logs_fts "
                "WHERE logs_fts MATCH ? ORDER BY rowid DESC LIMIT ?) f JOIN logs l ON l.id = f.rowid "
                "ORDER BY l.id DESC", (term, limit - len(hits))).fetchall()
            if len(hits) >= limit:
                break
        return hits

    def trace(trace_id):
        hits = []
        for closed, con in connections:
            if closed:  # the B-tree built at close
                hits += con.execute("SELECT id, ts, level, service, message FROM logs WHERE trace_id = ?",
                                    (trace_id,)).fetchall()
            else:  # the head has no trace_id index: its FTS5 column
                hits += con.execute(
                    "SELECT id, ts, level, service, message FROM logs WHERE id IN (SELECT rowid FROM logs_fts "
                    "WHERE logs_fts MATCH ?) AND trace_id = ?", ('trace_id:"{}"'.format(trace_id), trace_id)).fetchall()
        return sorted(hits, key=lambda hit: hit[1])

    traces = manifest["traces"]
    return [
        ("direct: rare term, newest 100", "search", lambda: newest(manifest["rare_term"]),
         min(100, manifest["rare_total"])),
        ("direct: common term, newest 100", None, lambda: newest(manifest["common_term"]), 100),
        ("direct: trace (oldest closed segment)", "trace", lambda: trace(traces["closed"]["trace_id"]),
         traces["closed"]["entries"]),
        ("direct: trace (head)", "trace", lambda: trace(traces["head"]["trace_id"]), traces["head"]["entries"]),
    ], connections


def verdict(times, target, status):
    if status != 200:
        return "HTTP {}".format(status)
    if target is None:
        return "-"
    return "ok" if percentile(times, 0.95) <= target else "over"


def row(what, times, kind, note, status=200):
    target = TARGETS_MS.get(kind)
    fmt = "{:.1f}".format
    return [what, fmt(percentile(times, 0.5)) if times else "-", fmt(percentile(times, 0.95)) if times else "-",
            "<= {}".format(target) if target else "-", verdict(times, target, status), note]


def measure(data_dir, manifest, args, log):
    segment_rows = store_segments(data_dir)
    started = time.perf_counter()
    # segment_max_bytes as at build time: a head bigger than the server's limit is closed at start-up.
    server = Server(data_dir, admin_tokens=ADMIN, disk_budget_bytes=0, retention_days=30,
                    retention_level_days="debug=30,warn=30,error=30,critical=30", retention_interval_s=86400,
                    segment_max_bytes=SEGMENT_MAX_BYTES)
    log("server up in {:.1f} s".format(time.perf_counter() - started))
    rows = []
    try:
        session = requests.Session()
        session.headers["Authorization"] = "Bearer " + ADMIN
        started = time.perf_counter()
        first = session.get(server.url + "/datasette/", timeout=300)
        log("first Datasette request (loads it): HTTP {} in {:.0f} ms".format(
            first.status_code, (time.perf_counter() - started) * 1000))
        segment_rows = store_segments(data_dir)  # after start-up: the head may have changed
        heads = [s["name"] for s in segment_rows if s["closed_at"] is None]
        closed = [s["name"] for s in segment_rows if s["closed_at"] is not None]
        if manifest["head"] not in heads:
            log("warning: the store's last segment {} is no longer the head (built {}; heads now {})".format(
                manifest["head"], manifest["built_at"], heads))
        head_db = (heads or [manifest["head"]])[-1][:-3]
        oldest_db = (closed or [segment_rows[0]["name"]])[0][:-3]

        def case(what, kind, path, params, describe, check_table=False):
            times, note, status = http_case(session, server.url + path, params, args.repeat, args.warmup, describe)
            if check_table and status == 200:
                note += table_check(session, server.url + path, params)
            rows.append(row(what, times, kind, note, status))
            log("  " + "  ".join(str(c) for c in rows[-1]))

        search, traces = "/api/logs/search", manifest["traces"]
        rare = manifest["rare_term"]
        case("search: rare term, newest 100", "search", search, {"q": rare, "limit": 100},
             search_result(min(100, manifest["rare_total"])))
        case("search: common term, newest 100", None, search, {"q": manifest["common_term"], "limit": 100},
             search_result(100))
        case("search: trace_id in oldest closed segment", "trace", search,
             {"trace_id": traces["closed"]["trace_id"], "limit": 100}, search_result(traces["closed"]["entries"]))
        case("search: trace_id in head", "trace", search,
             {"trace_id": traces["head"]["trace_id"], "limit": 100}, search_result(traces["head"]["entries"]))
        for where in ("closed", "head"):
            noted = traces[where]
            case("trace view /api/traces/<id> ({})".format("oldest closed" if where == "closed" else "head"),
                 "trace", "/api/traces/" + noted["trace_id"], None, trace_result(noted["entries"]))
        for name, query in chart_queries():
            case("overview " + name, "chart", "/datasette/meta.json", {"sql": query, "_shape": "array"}, rows_result)
        pages = [
            ("index /datasette/", "/datasette/", None, False),
            ("dashboard page (HTML only)", "/datasette/-/dashboards/overview", None, False),
            ("head logs table", "/datasette/{}/logs".format(head_db), None, True),
            ("oldest logs table", "/datasette/{}/logs".format(oldest_db), None, True),
            ("meta/error_groups table", "/datasette/meta/error_groups", None, True),
            ("meta/top_groups_by_count query", "/datasette/meta/top_groups_by_count", None, False),
            ("_search rare term, oldest logs", "/datasette/{}/logs".format(oldest_db), {"_search": rare}, True),
            ("_search rare term, head logs", "/datasette/{}/logs".format(head_db), {"_search": rare}, True),
            ("slowest_requests query, oldest", "/datasette/{}/slowest_requests".format(oldest_db), None, False),
            # Diagnostics: the same pages without suggested facets, and with the FTS table named in the URL.
            ("oldest logs table ?_nosuggest=1", "/datasette/{}/logs".format(oldest_db), {"_nosuggest": "1"}, True),
            ("_search, oldest, ?_fts_table=logs_fts", "/datasette/{}/logs".format(oldest_db),
             {"_search": rare, "_fts_table": "logs_fts"}, True),
            ("_search, head, ?_fts_table=logs_fts", "/datasette/{}/logs".format(head_db),
             {"_search": rare, "_fts_table": "logs_fts"}, True),
        ]
        log("  datasette: head {}, oldest {}".format(head_db, oldest_db))
        for what, path, params, check in pages:
            case("datasette " + what, "page", path, params, page_result, check)
    finally:
        server.stop()
    if args.direct:
        cases, connections = direct_cases(data_dir, manifest, store_segments(data_dir))
        for what, kind, call, expected in cases:
            times, hits = timed(call, args.repeat, args.warmup)
            note = "{} hits".format(len(hits)) + ("" if len(hits) == expected else " (expected {})".format(expected))
            rows.append(row(what, times, kind, note))
        for _, con in connections:
            con.close()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=5_000_000)
    parser.add_argument("--data-dir", help="build the store here, or reuse the one built here before "
                                           "(default: a temporary directory, removed at the end)")
    parser.add_argument("--rare-per-day", type=int, default=3, help="entries carrying the rare word, per day")
    parser.add_argument("--repeat", type=int, default=40, help="timed requests per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per case first")
    parser.add_argument("--no-direct", dest="direct", action="store_false",
                        help="skip timing the searches straight on the files")
    args = parser.parse_args()

    def log(text):
        print(text, file=sys.stderr, flush=True)

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench-search-")
    manifest_path = os.path.join(data_dir, MANIFEST)
    print("SQLite {}, Python {}, {} cores".format(sqlite3.sqlite_version, sys.version.split()[0], os.cpu_count()))
    try:
        if os.path.exists(manifest_path):
            with open(manifest_path) as handle:
                manifest = json.load(handle)
            print("reusing the store in {} ({:,} entries, built {})".format(
                data_dir, manifest["entries"], manifest["built_at"]))
        else:
            if os.path.isdir(data_dir) and os.listdir(data_dir):
                parser.error("{} is not empty and holds no {}: not a store this benchmark built".format(
                    data_dir, MANIFEST))
            os.makedirs(data_dir, exist_ok=True)
            started = time.perf_counter()
            manifest = build_store(data_dir, args.entries, datetime.now(timezone.utc), args.rare_per_day,
                                   RARE_TERM, log)
            manifest["build_s"] = round(time.perf_counter() - started, 1)
            with open(manifest_path, "w") as handle:
                json.dump(manifest, handle, indent=1)
            print("built {:,} entries in {} in {:.0f} s".format(args.entries, data_dir, manifest["build_s"]))
        segment_rows = store_segments(data_dir)
        print("store: {:,} entries, {} segments, {:,} bytes ({:.2f} GiB) on disk; rare term {!r} in {} entries; "
              "traces {} ({} entries, {}) and {} ({} entries, {})".format(
                  sum(s["row_count"] for s in segment_rows), len(segment_rows), dir_bytes(data_dir),
                  dir_bytes(data_dir) / 2**30, manifest["rare_term"], manifest["rare_total"],
                  manifest["traces"]["closed"]["trace_id"], manifest["traces"]["closed"]["entries"],
                  manifest["traces"]["closed"]["segment"], manifest["traces"]["head"]["trace_id"],
                  manifest["traces"]["head"]["entries"], manifest["traces"]["head"]["segment"]))
        print_table(["segment", "state", "entries", "MiB", "min ts", "max ts"], [
            [s["name"], "closed" if s["closed_at"] else "head", "{:,}".format(s["row_count"]),
             "{:.0f}".format(s["bytes"] / 2**20), s["min_ts"], s["max_ts"]] for s in segment_rows])
        print()
        rows = measure(data_dir, manifest, args, log)
        print("{} timed requests per case after {} warm-up".format(args.repeat, args.warmup))
        print_table(["what", "p50 ms", "p95 ms", "target ms", "verdict", "result"], rows)
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
