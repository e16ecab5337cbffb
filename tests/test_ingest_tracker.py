"""The tracker holds a bounded amount between folds: hand-overs merged, early folds in an error storm."""
import time
from datetime import timedelta

import pytest

from ingest import groups, tracker
from ingest.entries import format_ts
from ingest.fingerprint import Fingerprinter
from ingest.tally import Tally
from ingest.tracker import GroupTracker, merge_handovers

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


def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def volume_total(meta):
    return meta.execute("SELECT coalesce(sum(entries), 0) FROM volume_minute").fetchone()[0]


def test_handovers_between_folds_are_merged_and_folded_exactly(store, data_dir, monkeypatch):
    monkeypatch.setattr(tracker, "FOLD_INTERVAL_S", 60)  # no fold on time during the test
    writer, meta = store
    group_tracker = GroupTracker(data_dir, lambda: NOW, format_ts).start()
    writer.on_commit = group_tracker.notify
    write(writer, [{"service": "api", "message": "first"}], None)
    assert wait_until(lambda: volume_total(meta) == 1)  # the first hand-over is folded at once
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
    group_tracker = GroupTracker(data_dir, lambda: NOW, format_ts).start()
    writer.on_commit = group_tracker.notify
    write(writer, [{"service": "api", "message": "first"}], None)
    assert wait_until(lambda: volume_total(meta) == 1)
    fingerprinter = Fingerprinter()
    for n in range(3):
        write(writer, [error("storm {}".format(n))] * 5, fingerprinter)
    assert not wait_until(lambda: volume_total(meta) > 1, timeout=0.3)  # 15 error rows wait
    write(writer, [error("storm more")] * 5, fingerprinter)
    assert wait_until(lambda: volume_total(meta) == 21)  # 20 error rows: folded without a flush
    assert meta.execute("SELECT sum(count) FROM error_groups").fetchone()[0] == 20
    assert group_tracker.backlog() == {"handovers": 0, "error_rows": 0}
    group_tracker.stop()
