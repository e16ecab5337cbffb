"""Latency rollups (duration buckets per minute, service and route) folded exactly, by hand-over
and by catch-up, and the percentiles estimated from them."""
from datetime import datetime, timedelta, timezone

import pytest

from ingest import catalog, groups, latency
from ingest.entries import format_ts
from ingest.tracker import GroupTracker

from test_ingest_groups import NOW, store, write  # noqa: F401 (fixture)

TS = format_ts(NOW - timedelta(minutes=5))
LATER = format_ts(NOW - timedelta(minutes=4))
MINUTE, LATER_MINUTE = TS[:16], LATER[:16]


def entries():
    def timed(service, duration, route=None, status=None, ts=TS, **extra):
        metadata = {"duration_ms": duration}
        if route is not None:
            metadata["route"] = route
        if status is not None:
            metadata["status"] = status
        metadata.update(extra)
        return {"service": service, "message": "request", "timestamp": ts, "metadata": metadata}

    return [
        timed("api", 3, "/checkout", 200), timed("api", 3, "/checkout", 200), timed("api", 40, "/checkout", 502),
        timed("api", 0.5),  # no route: ''
        timed("web", 1500, "/home", "404", ts=LATER),
        timed("web", 45000, "/home", ts=LATER),  # the unbounded bucket
        {"service": "web", "message": "top-level fields land in metadata", "timestamp": LATER,
         "duration_ms": 7, "route": "/top"},
        # Not counted: no duration, not a number, not at the top of metadata, negative.
        {"service": "api", "message": "plain", "timestamp": TS},
        {"service": "api", "message": "other metadata", "timestamp": TS, "metadata": {"n": 1}},
        timed("api", "12", "/checkout"), timed("api", True, "/checkout"), timed("api", -1, "/checkout"),
        {"service": "api", "message": "nested", "timestamp": TS, "metadata": {"timing": {"duration_ms": 5}}},
    ]


EXPECTED_BUCKETS = {
    (MINUTE, "api", "/checkout", 2): 2, (MINUTE, "api", "/checkout", 5): 1, (MINUTE, "api", "", 0): 1,
    (LATER_MINUTE, "web", "/home", 10): 1, (LATER_MINUTE, "web", "/home", 14): 1, (LATER_MINUTE, "web", "/top", 3): 1,
}
EXPECTED_TOTALS = {  # count, sum_ms, max_ms, 4xx, 5xx
    (MINUTE, "api", "/checkout"): (3, 46.0, 40.0, 0, 1), (MINUTE, "api", ""): (1, 0.5, 0.5, 0, 0),
    (LATER_MINUTE, "web", "/home"): (2, 46500.0, 45000.0, 1, 0), (LATER_MINUTE, "web", "/top"): (1, 7.0, 7.0, 0, 0),
}


def buckets(meta):
    return {tuple(row[:4]): row[4] for row in meta.execute("SELECT * FROM latency_minute")}


def totals(meta):
    return {tuple(row[:3]): tuple(row[3:]) for row in meta.execute("SELECT * FROM latency_minute_totals")}


def test_catch_up_from_the_segment_counts_every_timed_entry_once(store, data_dir):
    writer, meta = store
    write(writer, entries(), None)
    now_text = format_ts(NOW)
    groups.reconcile(meta, data_dir, now_text)
    groups.reconcile(meta, data_dir, now_text)
    assert buckets(meta) == EXPECTED_BUCKETS
    assert totals(meta) == EXPECTED_TOTALS


def test_tracker_hand_over_is_exact_and_agrees_with_catch_up(store, data_dir, monkeypatch):
    writer, meta = store
    read_back = []
    of_segment = latency.Latency.of_segment
    monkeypatch.setattr(latency.Latency, "of_segment",
                        classmethod(lambda cls, *args: read_back.append(args) or of_segment(*args)))
    tracker = GroupTracker(data_dir, lambda: NOW, format_ts).start()
    writer.on_commit = tracker.notify
    write(writer, entries(), None)
    write(writer, entries(), None)
    tracker.flush()
    tracker.stop()
    # The batches were counted before they were written (ingest/tally.py): nothing is read back.
    assert read_back == []
    assert buckets(meta) == {key: 2 * count for key, count in EXPECTED_BUCKETS.items()}
    assert totals(meta) == {key: (2 * n, 2 * total, high, 2 * c4, 2 * c5)
                            for key, (n, total, high, c4, c5) in EXPECTED_TOTALS.items()}
    assert groups.reconcile(meta, data_dir, format_ts(NOW)) == 0
    handed_over = buckets(meta), totals(meta)
    with catalog.immediate(meta):  # forget the fold: catch up from the segment
        meta.execute("DELETE FROM latency_minute")
        meta.execute("DELETE FROM latency_minute_totals")
        meta.execute("DELETE FROM error_sync")
    groups.reconcile(meta, data_dir, format_ts(NOW))
    assert read_back
    assert (buckets(meta), totals(meta)) == handed_over


def test_rows_without_duration_are_not_parsed(monkeypatch):
    parsed = []
    add_entry = latency.Latency.add_entry
    monkeypatch.setattr(latency.Latency, "add_entry", lambda self, *args: parsed.append(args) or add_entry(self, *args))
    row = [TS, "info", "api", "m", None, None, None, None, None, None, None, None, None, TS]
    rows = [tuple(row), tuple(row[:11] + ['{"n":1}'] + row[12:]), tuple(row[:11] + ['{"duration_ms":5}'] + row[12:])]
    assert latency.Latency.of_rows(rows).count == 1
    assert len(parsed) == 1


def observe_all(meta, values, minute=MINUTE, service="api", route="/r"):
    found = latency.Latency()
    for value in values:
        found.observe(minute, service, route, value)
    with catalog.immediate(meta):
        found.apply(meta)


@pytest.fixture
def meta(data_dir):
    con = catalog.connect_meta(data_dir)
    groups.ensure_schema(con)
    yield con
    con.close()


@pytest.mark.parametrize("values, p50, p95, p99", [
    ([], None, None, None),
    ([3], 3.5, 4.85, 4.97),  # one value in (2, 5]: interpolated inside the bucket
    ([1] * 10, 0.5, 0.95, 0.99),  # a bound belongs to the bucket below it (le)
    ([15] * 100, 17.5, 24.25, 24.85),
    ([0.5] * 50 + [150] * 50, 1.0, 235.0, 247.0),  # the median at the top of the first bucket
    ([3] * 90 + [700] * 10, 3.667, 750.0, 950.0),
    ([40000, 50000], 40000.0, 49000.0, 49800.0),  # the unbounded bucket ends at the largest duration
])
def test_percentiles_interpolate_inside_the_bucket(meta, values, p50, p95, p99):
    observe_all(meta, values)
    assert latency.percentiles(meta, MINUTE) == {"count": len(values), "p50": p50, "p95": p95, "p99": p99}


def test_percentiles_filter_by_window_service_and_route(meta):
    observe_all(meta, [3] * 4, MINUTE, "api", "/a")
    observe_all(meta, [15] * 2, MINUTE, "api", "/b")
    observe_all(meta, [150], LATER_MINUTE, "api", "/a")
    observe_all(meta, [700], MINUTE, "web", "/a")
    assert latency.percentiles(meta, MINUTE)["count"] == 8
    assert latency.percentiles(meta, MINUTE, LATER_MINUTE)["count"] == 7  # until is exclusive
    assert latency.percentiles(meta, LATER_MINUTE)["count"] == 1  # since is inclusive
    assert latency.percentiles(meta, MINUTE, service="api")["count"] == 7
    assert latency.percentiles(meta, MINUTE, service="api", route="/a")["count"] == 5
    assert latency.percentiles(meta, MINUTE, service="nope") == {"count": 0, "p50": None, "p95": None, "p99": None}
    assert latency.percentiles(meta, TS, format_ts(NOW), service="web", quantiles=(0.9, 0.999)) == {
        "count": 1, "p90": 950.0, "p99.9": 999.5}


def test_documented_p95_sql_matches_percentiles(meta):
    minute = format_ts(datetime.now(timezone.utc))[:16]
    observe_all(meta, [3] * 90 + [700] * 10, minute, "api", "/a")
    observe_all(meta, [15] * 20, minute, "api", "/b")
    count, p95 = meta.execute(latency.P95_SQL, {"service": "api"}).fetchone()
    expected = latency.percentiles(meta, format_ts(datetime.now(timezone.utc) - timedelta(minutes=15)), service="api")
    assert count == expected["count"] == 120
    assert round(p95, 3) == expected["p95"]


def test_accumulator_adds_to_what_is_there(meta):
    first, second = latency.Accumulator(), latency.Accumulator()
    for accumulator in (first, second):  # two worker processes, the same minute and route
        accumulator.observe(MINUTE, "/api/logs", 3.0, 200)
        accumulator.observe(MINUTE, "/api/logs", 40.0, 503)
    assert first.flush(meta) == 2 and second.flush(meta) == 2 and first.flush(meta) == 0
    assert buckets(meta) == {(MINUTE, "sidecar", "/api/logs", 2): 2, (MINUTE, "sidecar", "/api/logs", 5): 2}
    assert totals(meta) == {(MINUTE, "sidecar", "/api/logs"): (4, 86.0, 40.0, 0, 2)}


def test_accumulator_keeps_its_counts_when_the_flush_fails(meta):
    accumulator = latency.Accumulator()
    accumulator.observe(MINUTE, "/x", 3.0)
    meta.execute("ALTER TABLE latency_minute RENAME TO latency_minute_away")
    with pytest.raises(Exception):
        accumulator.flush(meta)
    meta.execute("ALTER TABLE latency_minute_away RENAME TO latency_minute")
    accumulator.observe(MINUTE, "/x", 3.0)
    assert accumulator.flush(meta) == 2
    assert totals(meta)[(MINUTE, "sidecar", "/x")][0] == 2


def test_prune_and_retention_forget_old_minutes(store, data_dir):
    from retention import job
    from retention.policy import Policy
    from sidecar.settings import level_days, load_settings
    writer, meta = store
    write(writer, entries(), None)
    groups.reconcile(meta, data_dir, format_ts(NOW))
    with catalog.immediate(meta):
        assert latency.prune(meta, LATER_MINUTE) == 3 + 2  # the earlier minute's buckets and totals
    assert {key[0] for key in buckets(meta)} == {LATER_MINUTE}
    policy = Policy.from_settings(load_settings({}, environ={}), level_days)  # longest age: 30 days
    volume_rows = meta.execute("SELECT (SELECT count(*) FROM volume_minute) + (SELECT count(*) FROM ingest_minute)"
                               ).fetchone()[0]
    report = job.run(data_dir, policy, NOW + timedelta(days=31))
    assert report["rollup_rows_deleted"] == volume_rows + 3 + 2
    assert buckets(meta) == {} and totals(meta) == {}


def test_the_docs_show_the_p95_query_as_tested():
    import glob
    import os
    docs = ""
    for path in glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "*.md")):
        with open(path) as handle:
            docs += handle.read()
    assert latency.P95_SQL.strip() in docs


@pytest.mark.parametrize("status, counted", [  # (4xx, 5xx), as the catch-up's SQL counts them
    (404, (1, 0)), (503, (0, 1)), ("503", (0, 1)), ("404", (1, 0)), (200, (0, 0)),
    (True, (0, 0)), (500.0, (0, 0)), ("5O3", (0, 0)), ("", (0, 0)), (700, (0, 0)), (99, (0, 0)), ([500], (0, 0)),
])
def test_only_whole_numbers_and_digit_strings_are_status_classes(status, counted):
    row = ("2026-01-01T00:00:00.000Z", "info", "api")
    (cell,) = latency.Latency().add_decoded([row], [{"duration_ms": 1, "status": status}]).cells.values()
    assert (cell[latency._4XX], cell[latency._5XX]) == counted
