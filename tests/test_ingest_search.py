"""Search across real segments: order, cursor paging, filters, time-range skipping, traces, query plans."""
import base64
import functools
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from conftest import AUTH, TOKEN, catalog_rows, segment_files
from ingest import search
from ingest.entries import format_ts
from ingest.search import SearchError

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=timezone.utc)
SERVICES = ("api", "web", "worker")
LEVELS = ("debug", "info", "warn", "error", "critical")
MESSAGES = ("payment failed for order", "cache miss on lookup", "connection refused by upstream",
            "timeout waiting for database", "payment retried after timeout")


def at(delta):
    return format_ts(NOW - delta)


def make_entry(k, ts, **fields):
    base = {"service": SERVICES[k % 3], "level": LEVELS[k % 5], "message": MESSAGES[(k // 2) % 5],
            "user_id": "u{}".format(k % 7), "timestamp": ts,
            "trace_id": "t-shared" if k % 7 == 0 else None if k % 4 == 3 else "trace{}".format(k)}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def store_batches():
    """Three closed segments a day apart, then a head with the newest entries and late arrivals."""
    batches, k = [], 0
    for hours in (72, 48, 24):
        batch = []
        for i in range(30):
            batch.append(make_entry(k, at(timedelta(hours=hours) - timedelta(minutes=i))))
            k += 1
        batches.append(batch)
    batches[1].append(make_entry(k, batches[2][0]["timestamp"], message="tie across segments"))  # same ts as in #3
    head = [make_entry(k + 1 + i, at(timedelta(minutes=30) - timedelta(seconds=30 * i))) for i in range(30)]
    head += [make_entry(200, at(timedelta(hours=72) - timedelta(seconds=330)), message="late payment arrival"),
             make_entry(201, batches[0][3]["timestamp"], message="late tie with the oldest segment"),
             make_entry(202, at(timedelta(minutes=5)), trace_id='q"uote', message="quoted trace"),
             make_entry(203, at(timedelta(minutes=4)), trace_id="--", message="trace without letters")]
    batches[0].append(make_entry(204, at(timedelta(hours=71)), trace_id="--", message="trace without letters"))
    batches.append(head)
    return batches


def build_store(data_dir, batches):
    """One segment per batch (segment_max_bytes=1 rotates before every commit); the last stays the head."""
    from sidecar import create_app
    app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN], "segment_max_bytes": 1,
                      "clock": lambda: NOW})
    client = app.test_client()
    for batch in batches:
        response = client.post("/api/logs", data=orjson.dumps(batch), headers=AUTH, content_type="application/json")
        assert response.status_code == 200 and not response.get_json()["rejected"], response.get_json()
    app.extensions["sidecar"].writer.wait_closers()
    return app


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("search") / "data")
    os.makedirs(data_dir)
    build_store(data_dir, store_batches()).extensions["sidecar"].close()
    return data_dir


def compare(a, b):
    if a["ts"] != b["ts"]:
        return -1 if a["ts"] > b["ts"] else 1
    if a["segment"] != b["segment"]:
        return -1 if a["segment"] < b["segment"] else 1
    return -1 if a["id"] > b["id"] else 1


def stored(data_dir):
    """Every row straight from the files, in the order the search promises: ts DESC, segment, id DESC."""
    rows = []
    for path in segment_files(data_dir):
        con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True)
        con.row_factory = sqlite3.Row
        rows += [dict(row, segment=os.path.basename(path)) for row in con.execute("SELECT * FROM logs")]
        con.close()
    return sorted(rows, key=functools.cmp_to_key(compare))


def keys(rows):
    return [(row["segment"], row["id"]) for row in rows]


def words(text):
    return re.findall(r"[0-9a-z]+", (text or "").lower())


def run(data_dir, **kwargs):
    return search.search(data_dir, now=NOW, **kwargs)


def pages(data_dir, cursor=None, **kwargs):
    found = []
    for _ in range(500):
        result = run(data_dir, cursor=cursor, **kwargs)
        found.append(result["hits"])
        cursor = result["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("paging does not end")


def test_newest_first_across_overlapping_segments(store):
    expected = stored(store)
    result = run(store, limit=1000)
    assert keys(result["hits"]) == keys(expected) and result["next_cursor"] is None
    assert len({hit["segment"] for hit in result["hits"]}) == 4
    # Late arrivals in the head interleave with the oldest segment's entries, and equal ts tie on segment name.
    late = [hit for hit in result["hits"] if hit["message"].startswith("late")]
    assert {hit["segment"] for hit in late} == {catalog_rows(store)[-1]["name"]}
    hit = result["hits"][0]
    assert hit["database"] == hit["segment"][:-3] and isinstance(hit["metadata"], (dict, type(None)))
    assert set(search.COLUMNS) <= set(hit)


FILTERS = [
    ({}, lambda r: True),
    ({"level": "error"}, lambda r: r["level"] == "error"),
    ({"level": "error,critical"}, lambda r: r["level"] in ("error", "critical")),
    ({"level": ["WARNING", "fatal"]}, lambda r: r["level"] in ("warn", "critical")),
    ({"service": "api"}, lambda r: r["service"] == "api"),
    ({"service": "api, worker"}, lambda r: r["service"] in ("api", "worker")),
    ({"level": "info", "service": "web"}, lambda r: r["level"] == "info" and r["service"] == "web"),
    ({"level": "error", "service": "web,api"}, lambda r: r["level"] == "error" and r["service"] != "worker"),
    ({"user_id": "u3"}, lambda r: r["user_id"] == "u3"),
    ({"trace_id": "t-shared"}, lambda r: r["trace_id"] == "t-shared"),
    ({"trace_id": "t-shared", "level": "info,critical"},
     lambda r: r["trace_id"] == "t-shared" and r["level"] in ("info", "critical")),
    ({"trace_id": 'q"uote'}, lambda r: r["trace_id"] == 'q"uote'),
    ({"trace_id": "--"}, lambda r: r["trace_id"] == "--"),
    ({"since": "2024-05-09T00:00:00Z"}, lambda r: r["ts"] >= "2024-05-09T00:00:00.000Z"),
    ({"since": "50h", "until": "47h"}, lambda r: at(timedelta(hours=50)) <= r["ts"] <= at(timedelta(hours=47))),
    ({"until": "2024-05-08"}, lambda r: r["ts"] <= "2024-05-08T00:00:00.000Z"),
    ({"since": "2024-05-08T14:10:00+02:00", "until": "2024-05-08T12:15:00Z"},
     lambda r: "2024-05-08T12:10:00.000Z" <= r["ts"] <= "2024-05-08T12:15:00.000Z"),
    ({"q": "payment"}, lambda r: "payment" in words(r["message"])),
    ({"q": '"payment failed"'}, lambda r: "payment failed" in r["message"]),
    ({"q": "pay*"}, lambda r: any(word.startswith("pay") for word in words(r["message"]))),
    ({"q": "timeout OR refused"}, lambda r: {"timeout", "refused"} & set(words(r["message"]))),
    ({"q": "message:payment NOT failed"}, lambda r: "payment" in words(r["message"])
     and "failed" not in words(r["message"])),
    ({"q": "shared"}, lambda r: "shared" in words(r["trace_id"])),  # q also searches the trace_id column
    ({"q": "timeout", "level": "warn,error"}, lambda r: "timeout" in words(r["message"])
     and r["level"] in ("warn", "error")),
    ({"q": "payment", "trace_id": "t-shared"}, lambda r: "payment" in words(r["message"])
     and r["trace_id"] == "t-shared"),
    ({"q": "payment", "user_id": "u1", "since": "3d"}, lambda r: "payment" in words(r["message"])
     and r["user_id"] == "u1" and r["ts"] >= at(timedelta(days=3))),
]


@pytest.mark.parametrize("kwargs, predicate", FILTERS, ids=[str(f[0]) for f in FILTERS])
def test_filters_and_pages_cover_every_match_once(store, kwargs, predicate):
    expected = keys(row for row in stored(store) if predicate(row))
    assert expected, "a filter that matches nothing tests little"
    assert keys(run(store, limit=1000, **kwargs)["hits"]) == expected
    found = pages(store, limit=7, **kwargs)
    assert all(len(page) == 7 for page in found[:-1]) and len(found[-1]) <= 7
    assert [key for page in found for key in keys(page)] == expected


@pytest.mark.parametrize("limit", [1, 3, 50])
def test_cursor_paging_visits_every_entry_exactly_once(store, limit):
    found = [key for page in pages(store, limit=limit) for key in keys(page)]
    assert found == keys(stored(store)) and len(set(found)) == len(found)


def test_catalog_time_ranges_skip_segments(store):
    closed = [row for row in catalog_rows(store) if row["closed_at"] is not None]
    assert len(closed) == 4  # the first, empty head and three with entries

    # The second segment reaches 24 h ago too (its tie entry): skipped are the empty one and the oldest.
    recent = run(store, since="30h", limit=1000)
    assert (recent["segments_searched"], recent["segments_skipped"]) == (3, 2)
    assert keys(recent["hits"]) == keys(row for row in stored(store) if row["ts"] >= at(timedelta(hours=30)))

    # The head's catalog range may lag: it is searched even when its range says no.
    old = run(store, until="2024-01-01", limit=1000)
    assert (old["segments_searched"], old["segments_skipped"], old["hits"]) == (1, 4, [])

    # Enough hits from the head: the closed segments, all older, are never opened.
    newest = run(store, limit=5)
    assert (newest["segments_searched"], newest["segments_skipped"]) == (1, 4)
    assert keys(newest["hits"]) == keys(stored(store)[:5])

    # A cursor deep in the past rules out the segments that start after it.
    deep = stored(store)[-10]
    cursor = search.encode_cursor(deep)
    tail = run(store, cursor=cursor, limit=1000)
    assert keys(tail["hits"]) == keys(stored(store)[-9:])
    assert tail["segments_searched"] <= 3 and tail["segments_skipped"] >= 2


def test_trace_across_segments_including_the_head(store):
    result = search.trace(store, "t-shared")
    entries = result["entries"]
    expected = [row for row in reversed(stored(store)) if row["trace_id"] == "t-shared"]
    assert keys(entries) == keys(expected)
    assert [entry["ts"] for entry in entries] == sorted(entry["ts"] for entry in entries)
    head = [row["name"] for row in catalog_rows(store) if row["closed_at"] is None]
    assert len({entry["segment"] for entry in entries}) == 4 and head[0] in {entry["segment"] for entry in entries}
    assert result["truncated"] is False and result["segments_unreadable"] == 0
    assert search.trace(store, 'q"uote')["entries"][0]["message"] == "quoted trace"
    assert len(search.trace(store, "--")["entries"]) == 2
    assert search.trace(store, "no-such-trace")["entries"] == []
    shortened = search.trace(store, "t-shared", limit=2)
    assert keys(shortened["entries"]) == keys(expected[:2]) and shortened["truncated"] is True


def test_entries_arriving_later_never_shift_served_pages(data_dir):
    app = build_store(data_dir, store_batches()[:2])
    try:
        first = run(data_dir, limit=10)
        last_served = first["hits"][-1]
        late = [make_entry(300, at(timedelta(minutes=1)), message="newer than every page"),
                make_entry(301, at(timedelta(hours=100)), message="older than every page"),
                make_entry(302, last_served["ts"], message="same ts as the cursor")]
        response = app.test_client().post("/api/logs", data=orjson.dumps(late), headers=AUTH,
                                          content_type="application/json")
        assert response.status_code == 200
        rest = [hit for page in pages(data_dir, limit=10, cursor=first["next_cursor"]) for hit in page]
        everything = stored(data_dir)
        position = keys(everything).index((last_served["segment"], last_served["id"]))
        assert keys(rest) == keys(everything[position + 1:])
        assert not set(keys(rest)) & set(keys(first["hits"]))
        messages = {hit["message"] for hit in rest}
        assert "older than every page" in messages and "newer than every page" not in messages
        # The new head sorts after the cursor's segment, so an equal ts there comes after the cursor.
        assert "same ts as the cursor" in messages
    finally:
        app.extensions["sidecar"].close()


def hot_journal(path):
    """What a retention run killed mid-transaction leaves: a hot rollback journal beside the file."""
    child = ("import os, signal, sqlite3\n"
             "con = sqlite3.connect({!r}, isolation_level=None)\n"
             "con.execute('PRAGMA cache_size=1')\n"
             "con.execute('BEGIN')\n"
             "con.execute('DELETE FROM logs')\n"
             "os.kill(os.getpid(), signal.SIGKILL)\n").format(path)
    subprocess.run([sys.executable, "-c", child], timeout=30)
    assert os.path.exists(path + "-journal")


def test_unreadable_segments_are_skipped_and_counted(store, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(store, copy)
    closed = [row["name"] for row in catalog_rows(copy) if row["closed_at"] is not None and row["row_count"]]
    os.remove(os.path.join(copy, "segments", closed[0]))  # deleted by retention after the catalog was read
    hot_journal(os.path.join(copy, "segments", closed[1]))
    result = run(copy, limit=1000)
    assert result["segments_unreadable"] == 2
    readable = [row for row in stored(store) if row["segment"] not in closed[:2]]
    assert keys(result["hits"]) == keys(readable)
    traced = search.trace(copy, "t-shared")
    assert traced["segments_unreadable"] == 2 and traced["entries"]


BAD_INPUT = [
    ({"q": "user@example.com"}, "invalid_query", "double quotes"),
    ({"q": "payment-service"}, "invalid_query", "column name"),
    ({"q": "user:42"}, "invalid_query", "column name"),
    ({"q": '"unclosed'}, "invalid_query", "not closed"),
    ({"q": "a AND"}, "invalid_query", "upper case"),
    ({"q": "*"}, "invalid_query", "pay*"),
    ({"q": "x" * 3000}, "invalid_query", "longer than"),
    ({"since": "yesterday"}, "invalid_time", "RFC 3339"),
    ({"until": "2024-13-01"}, "invalid_time", "15m"),
    ({"since": "999999999w"}, "invalid_time", "not a time"),
    ({"since": "2024-05-02", "until": "2024-05-01"}, "invalid_time", "swap"),
    ({"level": "loud"}, "invalid_level", "debug, info, warn, error, critical"),
    ({"level": "error,loud"}, "invalid_level", "loud"),
    ({"limit": 0}, "invalid_limit", "from 1 to 1000"),
    ({"limit": "ten"}, "invalid_limit", "whole number"),
    ({"limit": 1001}, "invalid_limit", "1 to 1000"),
    ({"limit": 11, "max_limit": 10}, "invalid_limit", "1 to 10"),
    ({"cursor": "not a cursor"}, "invalid_cursor", "next_cursor"),
    ({"cursor": base64.urlsafe_b64encode(b'{"ts": 1}').decode()}, "invalid_cursor", "unchanged"),
    ({"cursor": base64.urlsafe_b64encode(b'["2024", "x.db", "7"]').decode()}, "invalid_cursor", "unchanged"),
]


@pytest.mark.parametrize("kwargs, code, hint", BAD_INPUT, ids=[b[1] + ":" + str(b[0])[:40] for b in BAD_INPUT])
def test_bad_input_says_what_to_fix(store, kwargs, code, hint):
    with pytest.raises(SearchError) as raised:
        run(store, **kwargs)
    assert raised.value.code == code and hint in raised.value.message


def test_fts_errors_suggest_a_quoted_query(store):
    with pytest.raises(SearchError) as raised:
        run(store, q="payment-service failed")
    suggestion = raised.value.details["suggestion"]
    assert suggestion == '"payment-service" "failed"'
    assert raised.value.details["sqlite_error"] == "no such column: service"
    run(store, q=suggestion)  # valid as suggested


@pytest.mark.parametrize("text, expected", [
    ("30s", "2024-05-10T11:59:30.000Z"), ("15m", "2024-05-10T11:45:00.000Z"), ("2h", "2024-05-10T10:00:00.000Z"),
    ("7d", "2024-05-03T12:00:00.000Z"), ("1w", "2024-05-03T12:00:00.000Z"), (" 2 H ", "2024-05-10T10:00:00.000Z"),
    ("now", "2024-05-10T12:00:00.000Z"), ("2024-05-01", "2024-05-01T00:00:00.000Z"),
    ("2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00.000Z"),
    ("2024-05-01T12:00:00.123456Z", "2024-05-01T12:00:00.123Z"),
    ("2024-05-01 12:00", "2024-05-01T12:00:00.000Z"), ("", None),
])
def test_times(text, expected):
    assert search.parse_time(text, NOW) == expected


def plan_of(data_dir, name, fts_join_threshold=None, **kwargs):
    con = search.connect_segment(os.path.join(data_dir, "segments", name))
    try:
        query = search.parse_query(now=NOW, **kwargs)
        plan, sql, params = search.segment_query(con, name, query, query.limit + 1,
                                                 fts_join_threshold=fts_join_threshold)
        return plan, [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        con.close()


PLANS = [
    # segment, kwargs, plan, what drives it
    ("closed", {}, "index", "SCAN logs USING INDEX logs_ts"),
    ("closed", {"level": "error"}, "index", "SEARCH logs USING INDEX logs_level_ts (level=?)"),
    ("closed", {"level": "error,critical", "since": "2d"}, "index",
     "SEARCH logs USING INDEX logs_level_ts (level=? AND ts>?)"),
    ("closed", {"service": "api"}, "index", "SEARCH logs USING INDEX logs_service_ts (service=?)"),
    ("closed", {"level": "info", "service": "api"}, "index", "SEARCH logs USING INDEX logs_service_ts (service=?)"),
    ("closed", {"level": "error", "service": "api"}, "index", "SEARCH logs USING INDEX logs_level_ts (level=?)"),
    ("closed", {"since": "2d", "until": "1d"}, "index", "SEARCH logs USING INDEX logs_ts (ts>? AND ts<?)"),
    ("closed", {"trace_id": "t-shared"}, "trace_index", "SEARCH logs USING INDEX logs_trace_id (trace_id=?)"),
    ("closed", {"trace_id": "t-shared", "q": "payment"}, "trace_index",
     "SEARCH logs USING INDEX logs_trace_id (trace_id=?)"),
    ("head", {"trace_id": "t-shared"}, "fts", "SCAN logs_fts VIRTUAL TABLE INDEX 0:M2"),
    ("closed", {"q": "payment"}, "fts", "SCAN logs_fts VIRTUAL TABLE INDEX 0:M2"),
    ("head", {"q": "payment", "level": "error"}, "fts", "SCAN logs_fts VIRTUAL TABLE INDEX 0:M2"),
    ("closed", {"q": "payment", "fts_join_threshold": 1}, "index", "SCAN logs USING INDEX logs_ts"),
    ("head", {"q": "payment", "level": "error", "fts_join_threshold": 1}, "index",
     "SEARCH logs USING INDEX logs_level_ts (level=?)"),
]


@pytest.mark.parametrize("segment, kwargs, plan, driver", PLANS, ids=[p[0] + str(p[1]) for p in PLANS])
def test_query_plans_use_an_index(store, segment, kwargs, plan, driver):
    rows = catalog_rows(store)
    name = [row["name"] for row in rows if (row["closed_at"] is None) == (segment == "head") and row["row_count"]][-1]
    found, lines = plan_of(store, name, **kwargs)
    assert found == plan and lines[0] == driver, lines
    # Never a whole-table scan: each access to logs goes through an index or the rowid.
    assert not [line for line in lines if re.fullmatch(r"(SCAN|SEARCH) logs", line)], lines
    if plan == "fts":
        assert "SEARCH logs USING INTEGER PRIMARY KEY (rowid=?)" in lines
