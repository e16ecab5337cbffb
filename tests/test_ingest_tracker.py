"""The tracker holds a bounded amount between folds: hand-overs merged, early folds in an error storm."""
from datetime import timedelta

import pytest

from ingest import groups, tracker
from ingest.entries import format_ts
from ingest.fingerprint import Fingerprinter
from ingest.tally import Tally
from ingest.tracker import GroupTracker, merge_handovers

from conftest import wait_until
from test_ingest_groups import NOW, error, store, write  # noqa: F401 (fixture)

TS = format_ts(NOW - timedelta(minutes=5))


def tally(service, count):
    rows = [(TS, "info", service, "m", None, None, None, None, None, None, None, None, None, format_ts(NOW))] * count
    return Tally.of_rows(rows)


def volume_of(chunk):
    total = Tally()
    for part in chunk[1][2]:
        total.add(part)
    return dict(total.volume.by_level)


def handed(count, errors, service="api"):
    return (count, list(errors), [tally(service, count)])


@pytest.mark.parametrize("chunks, expected", [
    # (first_id, count) of each hand-over -> (first_id, count) of each after merging
    ([(1, 2), (3, 5), (8, 1)], [(1, 8)]),
    ([(1, 2), (4, 5), (9, 1)], [(1, 2), (4, 6)]),       # a gap (another process wrote id 3)
    ([(1, 2), (3, None), (5, 1), (6, 1)], [(1, 2), (3, None), (5, 2)]),  # None: read back from the segment
    ([(5, 3)], [(5, 3)]),
    ([], []),
])
def test_merge_handovers_joins_runs_without_gaps(chunks, expected):
    given = [(first, None if count is None else handed(count, ["e{}".format(first)])) for first, count in chunks]
    merged = merge_handovers(given)
    assert [(first, None if part is None else part[0]) for first, part in merged] == expected
    for first, part in merged:
        if part is not None:
            covered = [f for f, c in chunks if c is not None and first <= f < first + part[0]]
            assert part[1] == ["e{}".format(f) for f in covered]  # error rows in commit order
            assert sum(volume_of((first, part)).values()) == part[0]


def test_merging_leaves_each_batch_tally_as_it_was():
    first, second = handed(2, []), handed(3, [])
    [(_, (count, _, [total]))] = merge_handovers(merge_handovers([(1, first), (3, second)]) + [(6, handed(1, []))])
    assert count == 6 and sum(total.volume.by_level.values()) == 6
    assert sum(first[2][0].volume.by_level.values()) == 2 and sum(second[2][0].volume.by_level.values()) == 3


def volume_total(meta):
    return meta.execute("SELECT coalesce(sum(entries), 0) FROM volume_minute").fetchone()[0]


def tracker_on(writer, meta, data_dir):
    """A tracker the writer hands its commits to, past its first fold (which comes at once)."""
    group_tracker = GroupTracker(data_dir, lambda: NOW, format_ts).start()
    writer.on_commit = group_tracker.notify
    write(writer, [{"service": "api", "message": "first"}], None)
    assert wait_until(lambda: volume_total(meta) == 1)
    return group_tracker


def test_handovers_between_folds_are_merged_and_folded_exactly(store, data_dir, monkeypatch):
    monkeypatch.setattr(tracker, "FOLD_INTERVAL_S", 60)  # no fold on time during the test
    writer, meta = store
    group_tracker = tracker_on(writer, meta, data_dir)
    fingerprinter = Fingerprinter()
    for n in range(40):
        write(writer, [{"service": "api", "message": "m"}] * 3 + [error("boom {}".format(n))], fingerprinter)
    # 40 hand-overs, merged after every 8 (tracker.MERGE_AFTER_HANDOVERS): one merged run and
    # the hand-overs since the last merge.
    assert wait_until(lambda: group_tracker.backlog()["handovers"] <= 1 + 8)
    assert group_tracker.backlog()["error_rows"] == 40
    assert volume_total(meta) == 1
    group_tracker.flush()
    group_tracker.stop()
    assert volume_total(meta) == 161
    assert meta.execute("SELECT sum(count) FROM error_groups").fetchone()[0] == 40
    assert groups.reconcile(meta, data_dir, format_ts(NOW)) == 0  # the watermark is where it should be


def test_an_error_storm_is_folded_before_the_interval(store, data_dir, monkeypatch):
    monkeypatch.setattr(tracker, "FOLD_INTERVAL_S", 60)
    monkeypatch.setattr(tracker, "FOLD_EARLY_AFTER_ERROR_ROWS", 20)
    writer, meta = store
    group_tracker = tracker_on(writer, meta, data_dir)
    fingerprinter = Fingerprinter()
    for n in range(3):
        write(writer, [error("storm {}".format(n))] * 5, fingerprinter)
    assert not wait_until(lambda: volume_total(meta) > 1, timeout=0.3)  # 15 error rows wait
    write(writer, [error("storm more")] * 5, fingerprinter)
    assert wait_until(lambda: volume_total(meta) == 21)  # 20 error rows: folded without a flush
    assert meta.execute("SELECT sum(count) FROM error_groups").fetchone()[0] == 20
    # The fold's rows are let go after its commit, which the count above may see first.
    assert wait_until(lambda: group_tracker.backlog() == {"handovers": 0, "error_rows": 0, "held_bytes": 0})
    group_tracker.stop()


def groups_and_volume(meta):
    counts = sorted(row[0] for row in meta.execute("SELECT count FROM error_groups"))
    return counts, volume_total(meta)


@pytest.fixture
def folds(monkeypatch):
    """The number of error rows of each fold (groups.fold_range), as it happens."""
    sizes, real_fold_range = [], groups.fold_range

    def fold_range(meta, name, low, high, rows, *args):
        sizes.append(len(rows))
        return real_fold_range(meta, name, low, high, rows, *args)
    monkeypatch.setattr(groups, "fold_range", fold_range)
    return sizes


def test_a_backlog_is_read_back_a_chunk_at_a_time_and_folded_exactly(store, data_dir, folds):
    writer, meta = store
    fingerprinter = Fingerprinter()
    for n in range(5):
        write(writer, [error("timeout {}".format(n))] * 5 + [{"service": "api", "message": "info"}] * 3
              + [error("declined {}".format(n), exception={"type": "CardError", "value": "no"})] * 2, fingerprinter)
    [segment] = [row[0] for row in meta.execute("SELECT name FROM segments")]
    assert groups.sync_segment(meta, data_dir, segment, format_ts(NOW), chunk_rows=8) == 35
    assert folds == [8, 8, 8, 8, 3]  # never more than 8 error rows read back at once
    assert groups_and_volume(meta) == ([10, 25], 50)
    assert groups.sync_segment(meta, data_dir, segment, format_ts(NOW), chunk_rows=8) == 0


def test_past_the_memory_bound_the_rows_wait_on_disk(store, data_dir, monkeypatch):
    # The folds fall behind (FOLD_INTERVAL_S: none on time): past MAX_HELD_ERROR_BYTES the
    # writer hands over no rows, and the fold reads them back from the segment.
    monkeypatch.setattr(tracker, "FOLD_INTERVAL_S", 60)
    monkeypatch.setattr(tracker, "MAX_HELD_ERROR_BYTES", 3 * (len("boom 00") + tracker.ROW_OVERHEAD_BYTES))
    writer, meta = store
    group_tracker = tracker_on(writer, meta, data_dir)
    fingerprinter = Fingerprinter()
    for n in range(10):
        write(writer, [{"service": "api", "message": "m"}, error("boom {:02}".format(n))], fingerprinter)
        assert group_tracker.backlog()["held_bytes"] <= tracker.MAX_HELD_ERROR_BYTES
    assert group_tracker.backlog()["error_rows"] == 3  # the first three; the others are on disk only
    group_tracker.flush()
    group_tracker.stop()
    assert groups_and_volume(meta) == ([10], 21)
    assert groups.reconcile(meta, data_dir, format_ts(NOW)) == 0


def write_backlog(writer, batches):
    fingerprinter = Fingerprinter()
    for n in range(batches):
        write(writer, [error("timeout {}".format(n))] * 3 + [{"service": "api", "message": "info"}], fingerprinter)


def test_a_backlog_left_at_start_is_folded_a_chunk_a_fold(store, data_dir, monkeypatch, folds):
    writer, meta = store
    write_backlog(writer, 10)  # 30 error rows nobody folded (the process died)
    monkeypatch.setattr(groups, "READ_BACK_ERROR_ROWS", 4)
    group_tracker = GroupTracker(data_dir, lambda: NOW, format_ts).start(catch_up=groups.prepare(meta))
    group_tracker.flush()
    group_tracker.stop()
    assert folds == [4] * 7 + [2]
    assert groups_and_volume(meta) == ([30], 40)


def test_stopping_during_a_backlog_leaves_the_rest_to_the_next_start(store, data_dir, monkeypatch):
    writer, meta = store
    write_backlog(writer, 10)
    monkeypatch.setattr(groups, "READ_BACK_ERROR_ROWS", 1)
    GroupTracker(data_dir, lambda: NOW, format_ts).start(catch_up=groups.prepare(meta)).stop()
    counts, _ = groups_and_volume(meta)
    assert sum(counts) < 30  # stop() did not wait for the whole backlog
    group_tracker = GroupTracker(data_dir, lambda: NOW, format_ts).start(catch_up=groups.prepare(meta))
    group_tracker.flush()
    group_tracker.stop()
    assert groups_and_volume(meta) == ([30], 40)  # the rest, and nothing twice
