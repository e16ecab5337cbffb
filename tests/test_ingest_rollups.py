"""Rollups (entries per minute by service and level) folded exactly, by hand-over and by catch-up."""
from datetime import timedelta

from ingest import groups
from ingest.entries import format_ts
from ingest.tracker import GroupTracker

from test_ingest_groups import NOW, store, write  # noqa: F401 (fixture)

MINUTE = format_ts(NOW - timedelta(minutes=5))[:16]


def entries():
    ts = format_ts(NOW - timedelta(minutes=5))
    later = format_ts(NOW - timedelta(minutes=4))
    return ([{"service": "api", "level": "info", "message": "a", "timestamp": ts}] * 3
            + [{"service": "api", "level": "error", "message": "b", "timestamp": ts}]
            + [{"service": "web", "level": "warn", "message": "c", "timestamp": later}] * 2)


def volume(meta):
    return {tuple(row[:3]): row[3] for row in meta.execute("SELECT minute, service, level, entries FROM volume_minute")}


def test_catch_up_from_the_segment_counts_every_row_once(store, data_dir):
    writer, meta = store
    write(writer, entries(), None)
    now_text = format_ts(NOW)
    groups.reconcile(meta, data_dir, now_text)
    groups.reconcile(meta, data_dir, now_text)
    later = format_ts(NOW - timedelta(minutes=4))[:16]
    assert volume(meta) == {(MINUTE, "api", "info"): 3, (MINUTE, "api", "error"): 1, (later, "web", "warn"): 2}
    assert [tuple(row) for row in meta.execute("SELECT minute, entries FROM ingest_minute")] == [(format_ts(NOW)[:16], 6)]


def test_tracker_hand_over_and_catch_up_agree(store, data_dir):
    writer, meta = store
    tracker = GroupTracker(data_dir, lambda: NOW, format_ts).start()
    writer.on_commit = tracker.notify
    write(writer, entries(), None)
    write(writer, entries(), None)
    tracker.flush()
    tracker.stop()
    assert volume(meta)[(MINUTE, "api", "info")] == 6
    assert sum(volume(meta).values()) == 12
    assert groups.reconcile(meta, data_dir, format_ts(NOW)) == 0
    assert sum(volume(meta).values()) == 12


def test_retention_forgets_rollup_minutes_past_the_longest_age(store, data_dir):
    from retention import job
    from retention.policy import Policy
    from sidecar.settings import level_days, load_settings
    writer, meta = store
    write(writer, entries(), None)
    groups.reconcile(meta, data_dir, format_ts(NOW))
    policy = Policy.from_settings(load_settings({}, environ={}), level_days)  # longest age: 30 days
    assert job.run(data_dir, policy, NOW + timedelta(days=29))["rollup_rows_deleted"] == 0
    assert job.run(data_dir, policy, NOW + timedelta(days=31))["rollup_rows_deleted"] == 4
    assert volume(meta) == {}
