"""Error groups folded from real segment files."""
from datetime import datetime, timedelta, timezone

import pytest

from ingest import catalog, groups
from ingest.entries import Limits, format_ts, to_row
from ingest.fingerprint import Fingerprinter
from ingest.writer import Batch, Writer
from sidecar.settings import load_settings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(data_dir):
    """A writer without a live tracker (as if the process died before folding), and meta.db."""
    writer = Writer(data_dir, load_settings({}, environ={}), lambda: NOW).start()
    meta = catalog.connect_meta(data_dir)
    groups.ensure_schema(meta)
    yield writer, meta
    writer.stop()
    meta.close()


def write(writer, entries, fingerprinter):
    received = format_ts(NOW)
    rows = [to_row(e, received, format_ts(NOW + timedelta(days=7)), Limits(), fingerprinter) for e in entries]
    batch = writer.submit(Batch(rows))
    assert batch.done.wait(10) and batch.error is None
    return rows


def error(message, user=None, ts=None, **fields):
    entry = {"service": "api", "level": "error", "message": message,
             "timestamp": format_ts(ts or NOW - timedelta(minutes=5))}
    if user:
        entry["user_id"] = user
    entry.update(fields)
    return entry


def all_groups(meta):
    return {row["fingerprint"]: dict(row) for row in meta.execute("SELECT * FROM error_groups")}


def test_reconcile_counts_exactly_and_is_idempotent(store, data_dir):
    writer, meta = store
    fp = Fingerprinter()
    rows = write(writer, [error("Timeout calling payments after {} ms".format(n), user="u{}".format(n % 3))
                          for n in range(10)] + [error("Card declined for order {}".format(n)) for n in range(4)]
                 + [{"service": "api", "message": "just info"}], fp)
    now_text = format_ts(NOW)
    assert groups.reconcile(meta, data_dir, now_text) == 14
    assert groups.reconcile(meta, data_dir, now_text) == 0
    found = all_groups(meta)
    assert sorted(group["count"] for group in found.values()) == [4, 10]
    timeout = found[rows[0][4]]
    assert timeout["users_affected"] == 3 and timeout["status"] == "unresolved"
    assert timeout["title"].startswith("Timeout calling payments")
    hours = meta.execute("SELECT hour, count FROM error_group_hours WHERE fingerprint = ?", (rows[0][4],)).fetchall()
    assert [tuple(h) for h in hours] == [("2026-03-01T11", 10)]


def test_exception_groups_have_type_and_culprit(store, data_dir):
    writer, meta = store
    exception = {"type": "KeyError", "value": "'sku'", "stacktrace": [
        {"module": "shop.views", "function": "cart", "in_app": True},
        {"module": "shop.pricing", "function": "price_of", "in_app": True}]}
    write(writer, [error("boom", exception=exception)], Fingerprinter())
    groups.reconcile(meta, data_dir, format_ts(NOW))
    [group] = all_groups(meta).values()
    assert (group["title"], group["type"], group["culprit"]) == ("KeyError: 'sku'", "KeyError", "shop.pricing in price_of")


def test_resolved_group_regresses_on_a_new_event(store, data_dir):
    writer, meta = store
    fp = Fingerprinter()
    [row] = write(writer, [error("Queue consumer crashed")], fp)
    groups.reconcile(meta, data_dir, format_ts(NOW))
    meta.execute("UPDATE error_groups SET status = 'resolved', status_changed_at = ?",
                 (format_ts(NOW - timedelta(minutes=1)),))
    write(writer, [error("Queue consumer crashed")], fp)
    groups.reconcile(meta, data_dir, format_ts(NOW))
    group = all_groups(meta)[row[4]]
    assert group["status"] == "unresolved" and group["regressed_at"] and group["count"] == 2


def test_ignored_until_n_more_events(store, data_dir):
    writer, meta = store
    fp = Fingerprinter()
    [row] = write(writer, [error("Cache miss storm")], fp)
    groups.reconcile(meta, data_dir, format_ts(NOW))
    meta.execute("UPDATE error_groups SET status = 'ignored', ignore_until_count = 3, count_at_ignore = count")
    write(writer, [error("Cache miss storm")] * 2, fp)
    groups.reconcile(meta, data_dir, format_ts(NOW))
    assert all_groups(meta)[row[4]]["status"] == "ignored"
    write(writer, [error("Cache miss storm")], fp)
    groups.reconcile(meta, data_dir, format_ts(NOW))
    assert all_groups(meta)[row[4]]["status"] == "unresolved"


def test_ignored_until_a_date(store, data_dir):
    writer, meta = store
    [row] = write(writer, [error("Nightly job late")], Fingerprinter())
    groups.reconcile(meta, data_dir, format_ts(NOW))
    meta.execute("UPDATE error_groups SET status = 'ignored', ignore_until = ?", (format_ts(NOW + timedelta(hours=1)),))
    groups.wake_expired_ignores(meta, format_ts(NOW))
    assert all_groups(meta)[row[4]]["status"] == "ignored"
    groups.wake_expired_ignores(meta, format_ts(NOW + timedelta(hours=2)))
    assert all_groups(meta)[row[4]]["status"] == "unresolved"
