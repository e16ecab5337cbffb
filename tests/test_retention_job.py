"""The retention job on real segment files, with an injected clock."""
import filecmp
import os
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from ingest import catalog, groups
from ingest.entries import Limits, format_ts, to_row
from ingest.fingerprint import Fingerprinter
from ingest.writer import Batch, Writer
from retention import job
from retention.policy import Policy
from sidecar.settings import level_days, load_settings

from conftest import catalog_rows, stored_rows

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, moment):
        self.moment = moment

    def __call__(self):
        return self.moment


def policy(**overrides):
    settings = load_settings(overrides, environ={})
    return Policy.from_settings(settings, level_days)


def build(data_dir, days, fingerprinter=None, now=NOW):
    """days: {days_ago: [entry, ...]}; each day's entries land in that day's segment; today's stays the head."""
    clock = Clock(now - timedelta(days=max(days)))
    writer = Writer(data_dir, load_settings({}, environ={}), clock).start()
    for ago in sorted(days, reverse=True):
        clock.moment = now - timedelta(days=ago)
        received = format_ts(clock.moment)
        rows = [to_row(e, received, format_ts(now + timedelta(days=1)), Limits(), fingerprinter) for e in days[ago]]
        for start in range(0, len(rows), 10_000):
            batch = writer.submit(Batch(rows[start:start + 10_000]))
            assert batch.done.wait(30) and batch.error is None
    writer.wait_closers()
    writer.stop()
    meta = catalog.connect_meta(data_dir)
    job.ensure_schema(meta)
    groups.reconcile(meta, data_dir, format_ts(now))
    meta.close()


def dated_entry(level, ts, message="m"):
    return {"service": "api", "level": level, "message": message, "timestamp": format_ts(ts)}


def messages(data_dir):
    return sorted(row["message"] for row in stored_rows(data_dir, "message"))


def test_boundaries_are_exact(data_dir):
    cutoff = NOW - timedelta(days=7)
    build(data_dir, {8: [dated_entry("info", cutoff, "exactly at its age"),
                         dated_entry("info", cutoff - timedelta(milliseconds=1), "one ms past"),
                         dated_entry("warn", cutoff - timedelta(days=1), "warn keeps 14 days")],
                     0: [dated_entry("info", NOW, "today")]})
    report = job.run(data_dir, policy(), NOW)
    assert messages(data_dir) == ["exactly at its age", "today", "warn keeps 14 days"]
    assert report["rows_deleted"]["info"] == 1 and report["segments_dropped"] == []


def test_expired_segment_is_deleted_as_a_file(data_dir):
    build(data_dir, {40: [dated_entry("error", NOW - timedelta(days=40))], 20: [dated_entry("error", NOW - timedelta(days=20))],
                     0: [dated_entry("info", NOW)]})
    names = [row["name"] for row in catalog_rows(data_dir)]
    report = job.run(data_dir, policy(), NOW)
    assert report["segments_dropped"] == [names[0]] and report["bytes_freed"] > 0
    assert not os.path.exists(os.path.join(data_dir, "segments", names[0]))
    assert [row["name"] for row in catalog_rows(data_dir)] == names[1:]


def test_levels_are_pruned_inside_a_segment_and_fts_stays_consistent(data_dir):
    three_days = NOW - timedelta(days=3)
    build(data_dir, {3: [dated_entry("debug", three_days, "debug noise {}".format(i)) for i in range(400)]
                     + [dated_entry("info", three_days, "info kept")], 0: [dated_entry("debug", NOW, "fresh debug")]})
    before = catalog_rows(data_dir)[0]
    report = job.run(data_dir, policy(), NOW)
    assert report["rows_deleted"]["debug"] == 400
    assert messages(data_dir) == ["fresh debug", "info kept"]
    path = os.path.join(data_dir, "segments", before["name"])
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'noise'").fetchone()[0] == 0
    con.execute("INSERT INTO logs_fts(logs_fts) VALUES ('integrity-check')")
    after = catalog_rows(data_dir)[0]
    assert after["row_count"] == 1 and after["generation"] > before["generation"]
    assert report["compacted"] == [before["name"]] and after["bytes"] < before["bytes"]


def test_budget_drops_oldest_closed_segments_first_never_the_head(data_dir):
    build(data_dir, {ago: [dated_entry("error", NOW - timedelta(days=ago), "x" * 2000) for _ in range(100)]
                     for ago in (3, 2, 1, 0)})
    names = [row["name"] for row in catalog_rows(data_dir)]
    budget = job.store_bytes(data_dir) - 1
    report = job.run(data_dir, policy(disk_budget_bytes=budget), NOW)
    assert report["budget_drops"] == [names[0]] and not report["over_budget"]
    tiny = job.run(data_dir, policy(disk_budget_bytes=1000), NOW)
    assert tiny["budget_drops"] == names[1:3] and tiny["over_budget"]
    assert [row["name"] for row in catalog_rows(data_dir)] == [names[3]]  # the head stays
    meta = catalog.connect_meta(data_dir)
    events = meta.execute("SELECT type, details FROM sidecar_events ORDER BY id").fetchall()
    assert [event[0] for event in events] == ["retention.budget_drop"] * 3


def test_store_bytes_counts_every_file_of_the_store(data_dir):
    os.makedirs(os.path.join(data_dir, "segments"))
    for name, size in (("segments/logs-2026-12-01-1.db", 1000), ("segments/logs-2026-12-01-1.db-wal", 200),
                       ("meta.db", 300), ("meta.db-wal", 40), ("idempotency.db", 50), ("idempotency.db-wal", 6),
                       ("dev-token", 7000)):  # not the store
        with open(os.path.join(data_dir, name), "wb") as handle:
            handle.write(b"x" * size)
    assert job.store_bytes(data_dir) == 1596


def test_groups_outlive_their_events(data_dir):
    fp = Fingerprinter()
    build(data_dir, {40: [dated_entry("error", NOW - timedelta(days=40), "Payment gateway down")] * 3,
                     0: [dated_entry("info", NOW)]}, fp)
    job.run(data_dir, policy(), NOW)
    meta = catalog.connect_meta(data_dir)
    [group] = meta.execute("SELECT count, events_stored, first_seen FROM error_groups").fetchall()
    assert (group[0], group[1]) == (3, 0) and group[2]


def test_dry_run_changes_nothing(data_dir, tmp_path):
    build(data_dir, {40: [dated_entry("error", NOW - timedelta(days=40))],
                     3: [dated_entry("debug", NOW - timedelta(days=3))] * 50 + [dated_entry("info", NOW - timedelta(days=3))],
                     0: [dated_entry("info", NOW)]})
    copy = str(tmp_path / "copy")
    shutil.copytree(data_dir, copy)
    report = job.run(data_dir, policy(disk_budget_bytes=1000), NOW, dry_run=True)
    assert report["segments_dropped"] and report["rows_deleted"]["debug"] == 50 and report["budget_drops"]
    comparison = filecmp.dircmp(os.path.join(data_dir, "segments"), os.path.join(copy, "segments"))
    assert comparison.left_only == comparison.right_only == [] and comparison.diff_files == []
    assert catalog_rows(data_dir) == catalog_rows(copy)


def test_interrupted_pruning_is_finished_by_the_next_run(data_dir):
    three_days = NOW - timedelta(days=3)
    build(data_dir, {3: [dated_entry("debug", three_days)] * 10 + [dated_entry("error", three_days, "kept error")],
                     0: [dated_entry("info", NOW)]})
    name = catalog_rows(data_dir)[0]["name"]
    meta = catalog.connect_meta(data_dir)
    meta.execute("INSERT INTO retention_pruning VALUES (?, ?)", (name, format_ts(NOW)))  # as a killed run leaves it
    con = sqlite3.connect(os.path.join(data_dir, "segments", name), isolation_level=None)
    job.delete_in_chunks(con, "debug", format_ts(NOW), 4)
    con.close()
    open(os.path.join(data_dir, "segments", name + job.COMPACT_SUFFIX), "wb").close()
    job.run(data_dir, policy(), NOW)
    assert catalog_rows(data_dir)[0]["row_count"] == 1
    assert meta.execute("SELECT count(*) FROM retention_pruning").fetchone()[0] == 0
    assert not os.path.exists(os.path.join(data_dir, "segments", name + job.COMPACT_SUFFIX))


@pytest.mark.parametrize("value, message", [
    (["debug=0"], "at least 1 day"), (["loud=3"], "level=days"), (["debug"], "level=days")])
def test_bad_level_ages(value, message):
    from sidecar.settings import SettingsError
    with pytest.raises(SettingsError, match=message):
        load_settings({"retention_level_days": value}, environ={})
