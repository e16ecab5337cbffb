"""The writer and the segment store on real files, with an injected clock."""
import os
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from ingest import catalog, schema, segments
from ingest.entries import Limits, format_ts, to_row
from ingest.writer import Batch, QueueFull, StorageUnavailable, Writer
from sidecar.settings import load_settings

from conftest import catalog_rows, segment_files, stored_rows, wait_until


class Clock:
    def __init__(self, moment):
        self.moment = moment

    def __call__(self):
        return self.moment


def make_rows(count, clock, start=0):
    received = format_ts(clock())
    max_ts = format_ts(clock() + timedelta(days=7))
    return [to_row({"service": "api", "message": "m{}".format(start + i), "trace_id": "t{}".format(i % 3)},
                   received, max_ts, Limits()) for i in range(count)]


def write(writer, rows, key=None):
    batch = writer.submit(Batch(rows, key, '{"accepted": %d, "rejected": []}' % len(rows)))
    assert batch.done.wait(10)
    assert batch.error is None
    return batch


@pytest.fixture
def clock():
    return Clock(datetime(2026, 3, 1, 23, 59, 0, tzinfo=timezone.utc))


@pytest.fixture
def make_writer(data_dir, clock):
    writers = []

    def make(**overrides):
        writer = Writer(data_dir, load_settings(overrides, environ={}), clock).start()
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.stop()


def test_rows_are_committed_and_catalogued(make_writer, data_dir, clock):
    writer = make_writer()
    write(writer, make_rows(5, clock))
    writer.stop()
    assert [row["message"] for row in stored_rows(data_dir)] == ["m0", "m1", "m2", "m3", "m4"]
    [segment] = catalog_rows(data_dir)
    assert segment["name"] == "logs-2026-03-01-0001.db" and segment["row_count"] == 5
    assert segment["closed_at"] is None and segment["min_ts"] == segment["max_ts"] == "2026-03-01T23:59:00.000Z"


def test_full_text_and_trace_search_work_in_the_head(make_writer, data_dir, clock):
    writer = make_writer()
    write(writer, make_rows(6, clock))
    con = sqlite3.connect(segment_files(data_dir)[0])
    assert con.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'm4'").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'trace_id:t1'").fetchone()[0] == 2


def test_rotation_at_utc_midnight(make_writer, data_dir, clock):
    writer = make_writer()
    write(writer, make_rows(2, clock))
    clock.moment += timedelta(minutes=2)  # 2026-03-02 00:01
    write(writer, make_rows(3, clock, start=2))
    writer.wait_closers()
    first, second = catalog_rows(data_dir)
    assert first["name"] == "logs-2026-03-01-0001.db" and first["closed_at"] and first["row_count"] == 2
    assert second["name"] == "logs-2026-03-02-0001.db" and second["closed_at"] is None
    closed = sqlite3.connect(os.path.join(data_dir, "segments", first["name"]))
    assert closed.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    indexes = {row[1] for row in closed.execute("PRAGMA index_list(logs)")}
    assert "logs_trace_id" in indexes  # built once, when the segment closed


def test_rotation_by_size_never_reuses_a_name(make_writer, data_dir, clock):
    writer = make_writer(segment_max_bytes=20_000)
    for i in range(8):
        write(writer, make_rows(100, clock, start=i * 100))
    writer.stop()
    rows = catalog_rows(data_dir)
    names = [row["name"] for row in rows]
    assert len(names) >= 3 and len(set(names)) == len(names)
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    assert sum(row["row_count"] for row in rows) == 800 == len(stored_rows(data_dir))
    assert all(row["closed_at"] for row in rows[:-1])


def test_rotation_by_size_looks_at_the_size_every_32nd_of_the_limit(make_writer, data_dir, clock):
    # About 2 MB of rows against a 1 MB limit: the size is looked at after each ~32 KB of rows
    # written, so every closed segment ends at most one check interval and one commit past it.
    limit = 1_000_000
    writer = make_writer(segment_max_bytes=limit)
    big = "x" * 900
    for i in range(40):
        rows = make_rows(50, clock, start=i * 50)
        write(writer, [row[:3] + (row[3] + big,) + row[4:] for row in rows])
    writer.wait_closers()
    writer.stop()
    rows = catalog_rows(data_dir)
    assert len(rows) >= 2 and all(row["closed_at"] for row in rows[:-1])
    assert sum(row["row_count"] for row in rows) == 2000
    commit_bytes = 50 * 2000  # well above what one commit of these rows takes on disk
    assert all(row["bytes"] <= limit + limit / 32 + commit_bytes for row in rows[:-1])


def test_group_commit_takes_every_waiting_batch(make_writer, data_dir, clock):
    writer = make_writer()
    head = sqlite3.connect(writer.head.path, timeout=0)
    head.execute("BEGIN IMMEDIATE")  # hold the write lock so batches pile up
    batches = [writer.submit(Batch(make_rows(10, clock, start=i * 10) if i != 2 else [])) for i in range(6)]
    head.execute("ROLLBACK")
    for batch in batches:
        assert batch.done.wait(40) and batch.error is None
    # The batches after the first were written by one statement, from their JSON arrays joined.
    assert [row["message"] for row in stored_rows(data_dir)] == ["m{}".format(i) for i in range(60) if i // 10 != 2]


@pytest.mark.parametrize("text", [
    'quotes " and \\ backslashes', "new\nline\ttab", "ünïcödé ✓ 😀 \u2028", "", '{"looks": ["like", "json"]}',
    "[1, 2]", "null", " padded ",
])
def test_every_column_is_stored_as_given(make_writer, data_dir, clock, text):
    # The writer's statement reads the long columns from each row and the short ones from a copy
    # of the row without them (schema.WRITE_BATCH_OBJECTS): every column must come back exact.
    writer = make_writer()
    row = tuple(text if column not in ("ts", "received_at") else format_ts(clock())
                for column in schema.LOG_COLUMNS)
    nulls = tuple(None if column not in ("ts", "level", "service", "message", "received_at") else value
                  for column, value in zip(schema.LOG_COLUMNS, row))
    write(writer, [row, nulls])
    stored = [tuple(stored[column] for column in schema.LOG_COLUMNS) for stored in stored_rows(data_dir)]
    assert stored == [row, nulls]


def test_full_text_index_settings_and_integrity(make_writer, data_dir, clock):
    writer = make_writer()
    for i in range(40):  # 40 commits: 40 small FTS5 segments for automerge to fold
        write(writer, make_rows(10, clock, start=i * 10))
    assert writer.delete_entries(writer.head.name, [3, 4], "api") == 2
    con = sqlite3.connect(writer.head.path)
    config = dict(con.execute("SELECT k, v FROM logs_fts_config"))
    assert config["automerge"] == 32 and config["crisismerge"] == 64
    assert "columnsize=0" in con.execute("SELECT sql FROM sqlite_master WHERE name = 'logs_fts'").fetchone()[0]
    con.execute("INSERT INTO logs_fts(logs_fts, rank) VALUES ('integrity-check', 1)")  # raises if the index is off
    assert con.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'm150 OR m3'").fetchone() == (1,)


def test_queue_full(make_writer, clock):
    writer = make_writer(queue_max_entries=20, max_batch_entries=10, commit_max_entries=10)
    head = sqlite3.connect(writer.head.path, timeout=0)
    head.execute("BEGIN IMMEDIATE")
    writer.submit(Batch(make_rows(10, clock)))
    waiting = []
    try:
        with pytest.raises(QueueFull):
            for _ in range(4):
                waiting.append(writer.submit(Batch(make_rows(10, clock))))
    finally:
        head.execute("ROLLBACK")
    assert len(waiting) >= 1
    for batch in waiting:
        assert batch.done.wait(40) and batch.error is None


def test_waiting_batches_share_a_commit_up_to_commit_max_entries(make_writer, data_dir, clock):
    writer = make_writer(commit_max_entries=5, max_batch_entries=10)
    commits = []
    writer.observe_commit = lambda seconds, entries, queued: commits.append(entries)
    head = sqlite3.connect(writer.head.path, timeout=0)
    head.execute("BEGIN IMMEDIATE")  # the writer waits on its first batch while the others queue
    try:
        first = writer.submit(Batch(make_rows(1, clock)))
        deadline = time.monotonic() + 10
        while writer.queued_entries and time.monotonic() < deadline:  # taken: the writer is in its commit
            time.sleep(0.01)
        batches = [writer.submit(Batch(make_rows(size, clock, start=10 * i))) for i, size in enumerate([3, 2, 4, 10, 1])]
    finally:
        head.execute("ROLLBACK")
    for batch in [first] + batches:
        assert batch.done.wait(40) and batch.error is None
    # In order: 3 + 2 fill a commit, 4 + 10 would pass 5, the 10-entry batch goes alone.
    assert commits == [1, 5, 4, 10, 1]
    assert len(stored_rows(data_dir)) == 21


def test_restart_adopts_its_head_and_closes_other_orphans(data_dir, clock):
    settings = load_settings({}, environ={})
    first = Writer(data_dir, settings, clock).start()
    write(first, make_rows(4, clock))
    second = Writer(data_dir, settings, clock).start()  # a second process gets its own head
    write(second, make_rows(2, clock))
    assert first.head.name != second.head.name
    # Both "die": locks released without closing anything.
    for writer in (first, second):
        writer._checkpointer.stop()
        writer.head.con.close()
        writer.head.lock.release()
    meta = catalog.connect_meta(data_dir)
    meta.execute("UPDATE segments SET row_count = 0")  # a stale catalog
    meta.close()
    third = Writer(data_dir, settings, clock).start()
    try:
        rows = {row["name"]: row for row in catalog_rows(data_dir)}
        assert third.head.name == first.head.name  # today's orphan is adopted
        assert rows[first.head.name]["row_count"] == 4 and rows[first.head.name]["closed_at"] is None
        assert rows[second.head.name]["row_count"] == 2 and rows[second.head.name]["closed_at"]
    finally:
        third.stop()


def test_catalog_is_rebuilt_from_files(make_writer, data_dir, clock):
    writer = make_writer()
    write(writer, make_rows(3, clock))
    writer.stop()
    os.remove(os.path.join(data_dir, "meta.db"))
    for suffix in ("-wal", "-shm"):
        if os.path.exists(os.path.join(data_dir, "meta.db" + suffix)):
            os.remove(os.path.join(data_dir, "meta.db" + suffix))
    writer = make_writer()
    [segment] = catalog_rows(data_dir)
    assert segment["row_count"] == 3 and writer.head.name == segment["name"]


def test_a_deleted_segment_leaves_the_catalog(make_writer, data_dir, clock):
    writer = make_writer(segment_max_bytes=20_000)
    for i in range(4):
        write(writer, make_rows(100, clock, start=i * 100))
    writer.stop()
    oldest = catalog_rows(data_dir)[0]["name"]
    os.remove(os.path.join(data_dir, "segments", oldest))
    make_writer()
    assert oldest not in [row["name"] for row in catalog_rows(data_dir)]


def test_a_segment_file_never_shows_without_its_tables(make_writer, data_dir, clock):
    # A reader (Datasette, search, a backup) that finds a segment file must find its schema.
    writer = make_writer(segment_max_bytes=20_000)
    directory = os.path.join(data_dir, "segments")
    seen, bare, stop = set(), [], threading.Event()

    def watch():
        while not stop.is_set():
            for name in os.listdir(directory):
                if name.endswith(".db") and name not in seen:
                    con = sqlite3.connect("file:{}?mode=ro".format(os.path.join(directory, name)), uri=True)
                    if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'logs'").fetchone():
                        seen.add(name)
                    else:
                        bare.append(name)
                    con.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(30):
            write(writer, make_rows(100, clock, start=i * 100))
    finally:
        stop.set()
        watcher.join()
    assert len(catalog_rows(data_dir)) >= 10 and bare == []


def test_a_segment_cut_short_while_being_created_is_forgotten(make_writer, data_dir, clock):
    make_writer().stop()
    meta = catalog.connect_meta(data_dir)
    name, lock = catalog.allocate(meta, data_dir, "2026-03-01", format_ts(clock()))
    meta.close()
    unfinished = os.path.join(data_dir, "segments", name + ".new")
    with open(unfinished, "wb") as handle:
        handle.write(b"SQLite format 3\x00")  # the process died while building the file
    lock.release()
    writer = make_writer()
    assert not os.path.exists(unfinished)
    assert name not in [row["name"] for row in catalog_rows(data_dir)][:-1]
    write(writer, make_rows(2, clock))
    assert len(stored_rows(data_dir)) == 2


def test_a_name_a_live_process_is_creating_stays_in_the_catalog(make_writer, data_dir, clock):
    make_writer().stop()
    meta = catalog.connect_meta(data_dir)
    name, lock = catalog.allocate(meta, data_dir, "2026-03-01", format_ts(clock()))  # no file yet
    meta.close()
    try:
        make_writer()  # another process starting up meanwhile
        assert name in [row["name"] for row in catalog_rows(data_dir)]
    finally:
        lock.release()


def test_a_failed_rotation_leaves_no_name_behind(make_writer, data_dir, clock):
    writer = make_writer(segment_max_bytes=20_000)
    for i in range(3):
        write(writer, make_rows(100, clock, start=i * 100))
    names = [row["name"] for row in catalog_rows(data_dir)]
    day, seq = names[-1][5:15], int(names[-1][16:20])
    # Something in the way of the next segment's file, as a full disk would be.
    blocker = os.path.join(data_dir, "segments", "logs-{}-{:04d}.db.new".format(day, seq + 1))
    os.mkdir(blocker)
    failures = 0
    for i in range(3, 6):
        batch = writer.submit(Batch(make_rows(100, clock, start=i * 100)))
        assert batch.done.wait(10)
        failures += batch.error is not None
    assert failures >= 1 and writer.unavailable_reason
    assert [row["name"] for row in catalog_rows(data_dir)] == names
    os.rmdir(blocker)
    write(writer, make_rows(100, clock, start=600))
    assert writer.unavailable_reason is None
    assert [row["name"] for row in catalog_rows(data_dir)][:len(names)] == names
    assert len(stored_rows(data_dir)) == 400 + 100 * (3 - failures)


def test_a_writer_that_cannot_open_a_head_starts_and_opens_one_later(make_writer, data_dir, clock):
    os.makedirs(os.path.join(data_dir, "segments"))
    # Something in the way of the first segment's lock file, as a full disk would be of its writes.
    blocker = os.path.join(data_dir, "segments", "logs-2026-03-01-0001.db.lock")
    os.mkdir(blocker)
    writer = make_writer()
    assert writer.head is None and "no head segment could be opened" in writer.unavailable_reason
    batch = writer.submit(Batch(make_rows(2, clock)))
    assert batch.done.wait(10) and isinstance(batch.error, StorageUnavailable)
    with pytest.raises(StorageUnavailable):
        writer.delete_entries("logs-2026-03-01-0001.db", [1], "api")
    assert catalog_rows(data_dir) == [] and segment_files(data_dir) == []  # nothing half made
    os.rmdir(blocker)
    assert wait_until(lambda: writer.head is not None, timeout=5)  # by itself, with no batch asking
    assert writer.unavailable_reason is None
    write(writer, make_rows(3, clock))
    assert [row["message"] for row in stored_rows(data_dir)] == ["m0", "m1", "m2"]


def test_write_failure_is_reported_and_recovers(make_writer, data_dir, clock):
    writer = make_writer()
    write(writer, make_rows(2, clock))
    writer.head.con.execute("PRAGMA query_only=1")  # the head refuses writes, as a read-only disk would
    batch = writer.submit(Batch(make_rows(2, clock)))
    assert batch.done.wait(10) and batch.error is not None
    assert writer.unavailable_reason
    writer.head.con.execute("PRAGMA query_only=0")
    write(writer, make_rows(2, clock, start=10))
    assert writer.unavailable_reason is None
    assert len(stored_rows(data_dir)) == 4


@pytest.fixture
def small_wal_restart(monkeypatch):
    # The head's WAL normally starts over past 32 MiB; at 64 KiB a few small commits take it there.
    from ingest import segments
    monkeypatch.setattr(segments, "WAL_RESTART_BYTES", 64 * 1024)


def wal_and_file_bytes(writer):
    path = writer.head.path
    return os.path.getsize(path + "-wal"), os.path.getsize(path)


def test_the_wal_starts_over_while_the_writer_keeps_writing(make_writer, data_dir, clock, small_wal_restart):
    writer = make_writer()
    for i in range(40):  # about 1.8 MB of segment, one commit after another
        write(writer, make_rows(200, clock, start=i * 200))
    wal_bytes, file_bytes = wal_and_file_bytes(writer)
    # The commit that takes the WAL past the limit checkpoints it, and the next one writes the
    # WAL from its start: the file holds everything, the WAL only the last few commits.
    assert file_bytes > 1_500_000
    assert wal_bytes < file_bytes / 4, (wal_bytes, file_bytes)
    assert len(stored_rows(data_dir)) == 8000


def test_a_reader_holding_the_wal_fails_no_write(make_writer, data_dir, clock, small_wal_restart):
    writer = make_writer()
    write(writer, make_rows(200, clock))
    reader = sqlite3.connect(writer.head.path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM logs").fetchone() == (200,)  # a query holding its snapshot
    for i in range(1, 21):  # the checkpoint cannot copy the frames the reader may need: no error
        write(writer, make_rows(200, clock, start=i * 200))
    held_wal_bytes, _ = wal_and_file_bytes(writer)
    assert reader.execute("SELECT count(*) FROM logs").fetchone() == (200,)
    reader.execute("COMMIT")
    reader.close()
    for i in range(21, 31):  # the reader is gone: the WAL starts over again ...
        write(writer, make_rows(200, clock, start=i * 200))
    wal_bytes_after, _ = wal_and_file_bytes(writer)
    assert wal_bytes_after < held_wal_bytes + 300_000  # at most one more commit on top
    for i in range(31, 61):  # ... and stops growing: it is written again from its start
        write(writer, make_rows(200, clock, start=i * 200))
    assert wal_and_file_bytes(writer)[0] == wal_bytes_after
    assert writer.unavailable_reason is None
    assert len(stored_rows(data_dir)) == 61 * 200


def catalog_row_count(data_dir):
    return catalog_rows(data_dir)[0]["row_count"]


@pytest.fixture
def meta_write_lock(data_dir):
    """Another connection holding meta.db's write lock (as the error-group tracker's fold does)."""
    con = sqlite3.connect(os.path.join(data_dir, "meta.db"), isolation_level=None)
    yield con
    if con.in_transaction:
        con.execute("ROLLBACK")
    con.close()


def test_commits_never_wait_for_a_busy_catalog(make_writer, data_dir, clock, meta_write_lock):
    writer = make_writer(catalog_update_interval_ms=200)
    meta_write_lock.execute("BEGIN IMMEDIATE")
    time.sleep(0.25)  # the head's catalog row is due for a refresh
    for start in range(0, 30, 10):
        write(writer, make_rows(10, clock, start))  # each one waits up to 10 s, not the busy timeout (60 s)
    assert catalog_row_count(data_dir) == 0  # refreshes were skipped, not queued behind the lock
    meta_write_lock.execute("ROLLBACK")
    assert wait_until(lambda: catalog_row_count(data_dir) == 30)


def test_a_catalog_busy_for_ten_intervals_is_waited_for(make_writer, data_dir, clock, meta_write_lock):
    writer = make_writer(catalog_update_interval_ms=20)
    meta_write_lock.execute("BEGIN IMMEDIATE")
    write(writer, make_rows(10, clock))
    time.sleep(0.3)  # more than 10 intervals without a refresh: the writer now waits for the lock
    batch = writer.submit(Batch(make_rows(5, clock, 10), None, "{}"))
    assert not batch.done.wait(0.5)
    meta_write_lock.execute("ROLLBACK")
    assert batch.done.wait(10) and batch.error is None
    assert wait_until(lambda: catalog_row_count(data_dir) == 15)


@pytest.fixture
def checkpointer_stuck(monkeypatch):
    """Holds the checkpointer thread inside its round (as a long checkpoint of the old head
    would) until the test sets the returned `release` Event."""
    inside, release = threading.Event(), threading.Event()
    getsize = os.path.getsize

    def held_getsize(path):
        if threading.current_thread().name == "sidecar-checkpointer":
            inside.set()
            release.wait(30)
        return getsize(path)

    monkeypatch.setattr(os.path, "getsize", held_getsize)
    assert inside.wait(10)
    yield release
    release.set()


def test_a_rotation_does_not_wait_for_the_checkpointer(make_writer, data_dir, clock, request):
    writer = make_writer()
    write(writer, make_rows(2, clock))
    release = request.getfixturevalue("checkpointer_stuck")
    clock.moment += timedelta(minutes=2)  # 2026-03-02 00:01: the next write rotates
    batch = writer.submit(Batch(make_rows(3, clock, 2), None, "{}"))
    # Answered while the checkpointer still holds the old head (it used to wait up to 5 s for it).
    assert batch.done.wait(4) and batch.error is None
    first, second = catalog_rows(data_dir)
    assert second["name"] == "logs-2026-03-02-0001.db"
    assert first["closed_at"] is None  # its closer waits for the checkpointer to let go
    release.set()
    writer.wait_closers()
    first, _ = catalog_rows(data_dir)
    closed = sqlite3.connect(os.path.join(data_dir, "segments", first["name"]))
    assert first["closed_at"] and closed.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    closed.close()


def test_the_checkpointer_copies_the_wal_back_once_enough_rows_are_committed(tmp_path):
    path = str(tmp_path / "logs-2026-03-01-0001.db")
    segments.create(path)
    con = segments.open_for_writing(path)
    con.execute("PRAGMA wal_autocheckpoint=0")  # only the checkpointer thread copies frames back
    con.executemany("INSERT INTO logs (ts, level, service, message, received_at) VALUES ('t', 'info', 's', ?, 't')",
                    [("message {}".format(i) * 20,) for i in range(2000)])
    empty_file_bytes = os.path.getsize(path)
    # Its interval is an hour: only the writer's committed() can start a round.
    checkpointer = segments.Checkpointer(wal_trigger_bytes=0, interval_s=3600, copy_after_row_bytes=1000)
    checkpointer.start(path)
    try:
        checkpointer.committed(600)
        time.sleep(0.3)
        assert os.path.getsize(path) == empty_file_bytes  # not enough rows yet
        checkpointer.committed(600)
        assert wait_until(lambda: os.path.getsize(path) > empty_file_bytes + 100_000)
    finally:
        checkpointer.stop()
        con.close()
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM logs").fetchone() == (2000,)
    check.close()
