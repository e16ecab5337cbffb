"""Backups and restore against a real S3-compatible server on loopback (moto's server mode)."""
import hashlib
import itertools
import os
import sqlite3
from datetime import datetime, timedelta, timezone

import boto3
import orjson
import pytest
import requests

from ingest import catalog, idempotency
from ingest.entries import format_ts
from ingest.fingerprint import Fingerprinter
from retention import job
from sidecar import backup
from sidecar.backup_store import ChecksumMismatch
from sidecar.settings import SettingsError, load_settings

from conftest import AUTH, TOKEN, catalog_rows, entry, free_port, wait_until
from test_retention_job import build, dated_entry, policy

ADMIN = "admin-token-0123456789abcdef"
ADMIN_AUTH = {"Authorization": "Bearer " + ADMIN}
SECRET = "not-a-real-secret-0123456789"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
_buckets = itertools.count()


class Clock:
    def __init__(self, moment):
        self.moment = moment

    def __call__(self):
        return self.moment


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield "http://{}:{}".format(host, port)
    server.stop()


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1")


@pytest.fixture
def bucket(s3):
    name = "backups-{}".format(next(_buckets))
    s3.create_bucket(Bucket=name)
    return name


def backup_settings(bucket, endpoint, **extra):
    values = {"backup_s3_bucket": bucket, "backup_s3_endpoint_url": endpoint, "backup_s3_region": "us-east-1",
              "backup_s3_access_key_id": "test", "backup_s3_secret_access_key": SECRET,
              "backup_s3_prefix": "sidecar/test"}
    values.update(extra)
    return values


def settings_for(data_dir, bucket, endpoint, **extra):
    return load_settings(dict(backup_settings(bucket, endpoint, **extra), data_dir=data_dir), environ={})


def objects(s3, bucket):
    return {item["Key"]: item["Size"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", ())}


def manifest(s3, bucket):
    return orjson.loads(s3.get_object(Bucket=bucket, Key="sidecar/test/manifest.json")["Body"].read())


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def errors_store(data_dir, now=NOW):
    """Two closed segments (errors and infos) and today's head, which holds an error too."""
    build(data_dir, {2: [dated_entry("error", now - timedelta(days=2), "Payment gateway timeout {}".format(i % 3))
                         for i in range(30)] + [dated_entry("info", now - timedelta(days=2), "ok")] * 5,
                     1: [dated_entry("critical", now - timedelta(days=1), "Disk full on db-1")] * 4,
                     0: [dated_entry("error", now, "Head only failure")] * 2}, Fingerprinter(), now=now)


def ids_per_segment(data_dir):
    found = {}
    for name in sorted(os.listdir(os.path.join(data_dir, "segments"))):
        if name.endswith(".db"):
            con = sqlite3.connect(os.path.join(data_dir, "segments", name))
            found[name] = [row[0] for row in con.execute("SELECT id FROM logs ORDER BY id")]
            con.close()
    return found


def groups_of(data_dir):
    con = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    con.row_factory = sqlite3.Row
    rows = {row["fingerprint"]: dict(row) for row in con.execute(
        "SELECT fingerprint, title, service, level, first_seen, last_seen, count, status, events_stored "
        "FROM error_groups")}
    con.close()
    return rows


def events(data_dir, kind):
    con = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    rows = [(row[0], orjson.loads(row[1])) for row in con.execute(
        "SELECT message, details FROM sidecar_events WHERE type = ? ORDER BY id", (kind,))]
    con.close()
    return rows


def test_backup_uploads_closed_segments_and_a_meta_snapshot_then_nothing_new(data_dir, s3, s3_endpoint, bucket):
    errors_store(data_dir)
    store = backup.open_store(settings_for(data_dir, bucket, s3_endpoint))
    closed = [row for row in catalog_rows(data_dir) if row["closed_at"]]
    [head] = [row["name"] for row in catalog_rows(data_dir) if not row["closed_at"]]
    report = backup.run(data_dir, store, Clock(NOW))
    assert report["ok"], report
    assert report["uploaded"] == [row["name"] for row in closed] and report["not_backed_up"] == [head]
    stored = objects(s3, bucket)
    for row in closed:
        key = "sidecar/test/segments/{}@g{}".format(row["name"], row["generation"])
        path = os.path.join(data_dir, "segments", row["name"])
        assert stored[key] == os.path.getsize(path)
        assert s3.head_object(Bucket=bucket, Key=key)["Metadata"]["sha256"] == sha256(path)
    assert not any(head in key for key in stored)  # the head is being written: never in a regular backup
    document = manifest(s3, bucket)
    assert document["meta"]["key"] == report["meta_key"] and report["meta_key"] in stored
    assert [entry["name"] for entry in document["segments"]] == [row["name"] for row in closed]
    assert document["not_backed_up"] == [head]
    # The meta.db snapshot is a whole, consistent SQLite file with the catalog and the groups.
    snapshot = os.path.join(data_dir, "..", "snapshot.db")
    s3.download_file(bucket, report["meta_key"], snapshot)
    con = sqlite3.connect(snapshot)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM error_groups").fetchone()[0] == len(groups_of(data_dir))
    con.close()

    later = Clock(NOW + timedelta(minutes=15))
    again = backup.run(data_dir, store, later)
    assert again["ok"] and again["uploaded"] == [] and again["deleted"] == []
    assert {key for key in objects(s3, bucket) if "/segments/" in key} == {
        key for key in stored if "/segments/" in key}
    for minutes in (30, 45, 60, 75):
        backup.run(data_dir, store, Clock(NOW + timedelta(minutes=minutes)))
    assert len([key for key in objects(s3, bucket) if "/meta/" in key]) == 4  # backup_keep_meta_snapshots
    meta = catalog.connect_meta(data_dir)
    runs = meta.execute("SELECT kind, ok, segments_uploaded FROM backup_runs ORDER BY id").fetchall()
    meta.close()
    assert [tuple(run) for run in runs] == [("backup", 1, 2)] + [("backup", 1, 0)] * 5
    assert len(events(data_dir, "backup.completed")) == 6


def test_retention_prune_reuploads_the_new_generation_and_a_dropped_segment_leaves_the_bucket(
        data_dir, s3, s3_endpoint, bucket):
    three_days = NOW - timedelta(days=3)
    build(data_dir, {40: [dated_entry("info", NOW - timedelta(days=40), "old")],
                     3: [dated_entry("debug", three_days, "debug chatter {}".format(i)) for i in range(300)]
                     + [dated_entry("info", three_days, "kept")],
                     0: [dated_entry("info", NOW, "today")]}, now=NOW)
    store = backup.open_store(settings_for(data_dir, bucket, s3_endpoint))
    old, pruned = [row for row in catalog_rows(data_dir) if row["closed_at"]]
    assert backup.run(data_dir, store, Clock(NOW))["uploaded"] == [old["name"], pruned["name"]]
    first_keys = set(objects(s3, bucket))

    retention = job.run(data_dir, policy(), NOW)
    assert retention["segments_dropped"] == [old["name"]] and retention["rows_deleted"]["debug"] == 300
    [after] = [row for row in catalog_rows(data_dir) if row["closed_at"]]
    assert after["name"] == pruned["name"] and after["generation"] > pruned["generation"]

    report = backup.run(data_dir, store, Clock(NOW + timedelta(minutes=15)))
    assert report["ok"] and report["uploaded"] == [pruned["name"]]
    old_key = "sidecar/test/segments/{}@g{}".format(old["name"], old["generation"])
    superseded = "sidecar/test/segments/{}@g{}".format(pruned["name"], pruned["generation"])
    current = "sidecar/test/segments/{}@g{}".format(pruned["name"], after["generation"])
    assert {old_key, superseded} <= first_keys and sorted(report["deleted"]) == sorted([old_key, superseded])
    segments_now = {key for key in objects(s3, bucket) if "/segments/" in key}
    assert segments_now == {current}  # the bucket holds exactly the local retention window
    assert s3.head_object(Bucket=bucket, Key=current)["Metadata"]["sha256"] == sha256(
        os.path.join(data_dir, "segments", pruned["name"]))
    assert [entry["key"] for entry in manifest(s3, bucket)["segments"]] == [current]


def test_restore_into_an_empty_dir_gives_the_same_rows_and_error_groups(data_dir, tmp_path, s3_endpoint, bucket):
    errors_store(data_dir)
    settings = settings_for(data_dir, bucket, s3_endpoint)
    store = backup.open_store(settings)
    assert backup.run(data_dir, store, Clock(NOW))["ok"]
    before_ids, before_groups = ids_per_segment(data_dir), groups_of(data_dir)
    [head] = [row["name"] for row in catalog_rows(data_dir) if not row["closed_at"]]

    target = str(tmp_path / "restored")
    # Keys left by another store answer for batches the restored one does not hold: they go.
    os.makedirs(target)
    stale = idempotency.connect(target)
    stale.execute("INSERT INTO idempotency_keys (key, state, owner_pid, created_at, response) "
                  "VALUES ('stale', 'done', NULL, ?, '{\"accepted\": 1}')",
                  (format_ts(NOW),))
    stale.close()
    report = backup.restore(target, store, Clock(NOW + timedelta(hours=1)))
    assert report["segments_forgotten"] == [head]
    restored = ids_per_segment(target)
    assert restored == {name: ids for name, ids in before_ids.items() if name != head}
    after_groups = groups_of(target)
    assert set(after_groups) == set(before_groups)
    for fingerprint, group in before_groups.items():
        lost = 2 if group["title"] == "Head only failure" else 0  # its events were in the head only
        assert after_groups[fingerprint] == dict(group, events_stored=group["events_stored"] - lost)
    [(message, details)] = events(target, "backup.restored")
    assert head in message and details["segments_restored"] == sorted(restored)
    assert not [name for name in os.listdir(target) if name.startswith(".restore")]

    # A sidecar started on the restored store reconciles it and serves the groups.
    from sidecar import create_app
    app = create_app({"data_dir": target, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN]})
    try:
        client = app.test_client()

        def titles():
            return {group["title"]: group for group in client.get("/api/errors?limit=100",
                                                                  headers=ADMIN_AUTH).get_json()["groups"]}
        assert wait_until(lambda: titles().get("Disk full on db-1", {}).get("count") == 4)  # folded in the background
        titles = titles()
        assert titles["Disk full on db-1"]["count"] == 4 and titles["Head only failure"]["events_stored"] == 0
        stored = client.post("/api/logs", json=entry(1), headers=dict(AUTH, **{"Idempotency-Key": "stale"}))
        assert stored.status_code == 200 and "Idempotent-Replayed" not in stored.headers
        names = [row["name"] for row in catalog_rows(target)]
        assert set(restored) < set(names) and all(row["closed_at"] for row in catalog_rows(target)
                                                   if row["name"] in restored)
        # The restored store carries the backup's store id on: it goes on backing up to the same prefix.
        again = backup.run(target, store, Clock(NOW + timedelta(hours=2)))
        assert again["ok"] and again["uploaded"] == [] and again["deleted"] == []
    finally:
        app.extensions["sidecar"].close()


def test_restore_refuses_a_corrupted_download_and_leaves_the_store_empty(data_dir, tmp_path, s3, s3_endpoint,
                                                                         bucket):
    errors_store(data_dir)
    store = backup.open_store(settings_for(data_dir, bucket, s3_endpoint))
    assert backup.run(data_dir, store, Clock(NOW))["ok"]
    key = manifest(s3, bucket)["segments"][-1]["key"]
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[5000] ^= 0xFF  # one flipped byte somewhere in the file
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))

    target = str(tmp_path / "restored")
    with pytest.raises(ChecksumMismatch):
        backup.restore(target, store, Clock(NOW))
    assert os.listdir(target) == []  # nothing kept: no meta.db, no segment, no staging directory

    # On boot the same failure is one log line and an empty store, never an exception.
    settings = settings_for(target, bucket, s3_endpoint)
    assert backup.restore_on_boot(settings)["error"].startswith("ChecksumMismatch")
    assert not os.path.exists(os.path.join(target, "meta.db"))


def test_wrong_credentials_are_a_recorded_failure_and_ingest_goes_on(data_dir, s3_endpoint, bucket, capsys):
    from sidecar import create_app
    config = dict(backup_settings(bucket, s3_endpoint, backup_s3_access_key_id="AKIAWRONGWRONGWRONG"),
                  data_dir=data_dir, ingest_tokens=[TOKEN], admin_tokens=[ADMIN])
    # Make the loopback S3 check signatures: an unknown access key is refused.
    requests.post(s3_endpoint + "/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        app = create_app(config)  # the restore on boot fails too: the sidecar starts empty
        try:
            client = app.test_client()
            assert client.post("/api/logs", json=[entry(i) for i in range(10)], headers=AUTH).status_code == 200
            report = app.extensions["sidecar"].backup.run_now()
            assert not report["ok"] and "InvalidAccessKeyId" in report["error"]
            assert client.post("/api/logs", json=[entry(i) for i in range(10)], headers=AUTH).status_code == 200
            assert client.get("/api/health").status_code == 200
        finally:
            app.extensions["sidecar"].close()
    finally:
        requests.post(s3_endpoint + "/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
    failures = events(data_dir, "backup.failed")  # the run above, and the last one at the stop
    assert len(failures) == 2 and all("InvalidAccessKeyId" in message for message, _ in failures)
    message, details = failures[0]
    assert details["destination"].startswith("s3://" + bucket)
    con = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    assert con.execute("SELECT kind, ok FROM backup_runs").fetchall() == [("backup", 0)] * 2
    con.close()
    output = capsys.readouterr()
    assert "restore from the backup failed" in output.out
    assert SECRET not in output.out + output.err + message + orjson.dumps(details).decode()


def test_unreachable_endpoint_is_a_recorded_failure_and_a_bounded_empty_boot(data_dir, tmp_path, bucket):
    closed_port = free_port()
    settings = settings_for(data_dir, bucket, "http://127.0.0.1:{}".format(closed_port))
    assert backup.restore_on_boot(settings)["error"].startswith("EndpointConnectionError")
    assert not os.path.exists(os.path.join(data_dir, "meta.db"))
    build(data_dir, {1: [dated_entry("info", NOW - timedelta(days=1))], 0: [dated_entry("info", NOW)]}, now=NOW)
    report = backup.run(data_dir, backup.open_store(settings, attempts=1), Clock(NOW))
    assert not report["ok"] and "Could not connect" in report["error"]
    assert len(events(data_dir, "backup.failed")) == 1


def test_a_wiped_store_never_overwrites_the_backup_of_another(data_dir, tmp_path, s3, s3_endpoint, bucket):
    errors_store(data_dir)
    store = backup.open_store(settings_for(data_dir, bucket, s3_endpoint))
    assert backup.run(data_dir, store, Clock(NOW))["ok"]
    kept = objects(s3, bucket)
    other = str(tmp_path / "other")  # as after a failed restore: a new, empty store writing
    os.makedirs(other)
    build(other, {0: [dated_entry("info", NOW)]}, now=NOW)
    report = backup.run(other, store, Clock(NOW))
    assert not report["ok"] and "ForeignBackup" in report["error"]
    assert objects(s3, bucket) == kept
    replaced = backup.run(other, store, Clock(NOW), force=True)
    assert replaced["ok"] and not [key for key in objects(s3, bucket) if "/segments/" in key]


def test_cli_run_include_head_list_and_restore_to(data_dir, tmp_path, monkeypatch, capsys, s3_endpoint, bucket):
    from sidecar.__main__ import main
    errors_store(data_dir)
    for name, value in dict(backup_settings(bucket, s3_endpoint), data_dir=data_dir).items():
        monkeypatch.setenv("SIDECAR_" + name.upper(), str(value))
    [head] = [row["name"] for row in catalog_rows(data_dir) if not row["closed_at"]]
    assert main(["backup", "run", "--include-head"]) == 0
    out = capsys.readouterr().out
    assert "segments uploaded:" in out and "head snapshots:     " + head in out
    assert main(["backup", "list"]) == 0
    listing = capsys.readouterr().out
    assert head + "  head snapshot" in listing and "local run:" in listing and SECRET not in listing
    target = str(tmp_path / "restored")
    assert main(["backup", "restore", "--to", target]) == 0
    assert "not in the backup (lost): nothing" in capsys.readouterr().out
    assert ids_per_segment(target) == ids_per_segment(data_dir)  # with the head snapshot, nothing is lost
    assert main(["backup", "restore", "--to", target]) == 1  # never over an existing store
    assert "already holds a store" in capsys.readouterr().err


def test_settings_are_checked(data_dir):
    with pytest.raises(SettingsError, match="ENDPOINT_URL"):
        backup.check_settings(settings_for(data_dir, "b", "r2.example.com"))
    with pytest.raises(SettingsError, match="SECRET_ACCESS_KEY"):
        backup.check_settings(settings_for(data_dir, "b", "http://x", backup_s3_secret_access_key=""))
    assert backup.prepare(type("S", (), {"settings": load_settings({"data_dir": data_dir}, environ={})})) is None


def test_live_gunicorn_on_an_empty_disk_restores_before_it_serves(data_dir, tmp_path, s3_endpoint, bucket,
                                                                    live_server):
    origin = str(tmp_path / "origin")
    os.makedirs(origin)
    now = datetime.now(timezone.utc)
    errors_store(origin, now)
    store = backup.open_store(settings_for(origin, bucket, s3_endpoint))
    assert backup.run(origin, store, Clock(now))["ok"]
    expected = {name: ids for name, ids in ids_per_segment(origin).items()
                if name in [row["name"] for row in catalog_rows(origin) if row["closed_at"]]}

    server = live_server(workers=2, admin_tokens=ADMIN, **backup_settings(bucket, s3_endpoint))
    output = server.output()
    assert output.count("backup.restore_started") == 1 and output.count('"event":"backup.restored"') == 1
    restored = ids_per_segment(data_dir)
    assert {name: restored[name] for name in expected} == expected
    groups = requests.get(server.url + "/api/errors?limit=100", headers=ADMIN_AUTH, timeout=10).json()["groups"]
    titles = {group["title"]: group["count"] for group in groups}
    assert titles["Disk full on db-1"] == 4 and titles["Head only failure"] == 2
    hits = requests.get(server.url + "/api/logs/search", params={"q": "gateway", "limit": 100}, headers=ADMIN_AUTH,
                        timeout=10)
    assert hits.status_code == 200 and len(hits.json()["hits"]) == 30
    assert server.post([entry(i) for i in range(5)]).status_code == 200
    assert len(events(data_dir, "backup.restored")) == 1


def test_a_closed_segment_left_in_wal_mode_is_backed_up_with_its_wal(data_dir, tmp_path, s3_endpoint, bucket):
    build(data_dir, {1: [dated_entry("info", NOW - timedelta(days=1), "in the file")], 0: [dated_entry("info", NOW)]},
          now=NOW)
    [closed] = [row["name"] for row in catalog_rows(data_dir) if row["closed_at"]]
    # As when the close met a reader: the segment stays in WAL mode, with frames not yet checkpointed.
    holder = sqlite3.connect(os.path.join(data_dir, "segments", closed), isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("INSERT INTO logs (ts, level, service, message, received_at) VALUES (?, 'info', 'api', "
                   "'only in the WAL', ?)", (format_ts(NOW - timedelta(days=1)),) * 2)
    try:
        store = backup.open_store(settings_for(data_dir, bucket, s3_endpoint))
        assert backup.run(data_dir, store, Clock(NOW))["uploaded"] == [closed]
    finally:
        holder.close()
    target = str(tmp_path / "restored")
    backup.restore(target, store, Clock(NOW))
    con = sqlite3.connect(os.path.join(target, "segments", closed))
    assert sorted(row[0] for row in con.execute("SELECT message FROM logs")) == ["in the file", "only in the WAL"]
    con.close()


def test_scheduler_runs_once_per_interval_and_one_process_at_a_time(data_dir, s3_endpoint, bucket):
    build(data_dir, {1: [dated_entry("info", NOW - timedelta(days=1))], 0: [dated_entry("info", NOW)]}, now=NOW)
    clock = Clock(NOW)
    scheduler = backup.BackupScheduler(data_dir, settings_for(data_dir, bucket, s3_endpoint), clock)
    assert scheduler.run_if_due()["ok"]
    assert scheduler.run_if_due() is None  # not due yet
    clock.moment += timedelta(seconds=900)
    with backup._flock(data_dir, ".backup.lock"):  # another process is running a backup
        assert scheduler.run_if_due() is None
    from retention.schedule import run_lock
    with run_lock(data_dir):  # retention is changing closed segments
        assert scheduler.run_if_due() is None
    assert scheduler.run_if_due()["ok"]


def test_an_isolated_restore_that_hangs_is_killed_and_the_store_stays_empty(data_dir, bucket, monkeypatch, capsys):
    import socket
    import time
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        monkeypatch.setattr(backup, "CHILD_GRACE_S", 0)
        settings = settings_for(data_dir, bucket, "http://127.0.0.1:{}".format(silent.getsockname()[1]),
                                backup_restore_timeout_s=1)
        started = time.monotonic()
        result = backup.restore_on_boot(settings, isolate=True)
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    assert not result["ok"] and result["error"].startswith("Deadline")
    assert "restore from the backup failed" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(data_dir, "meta.db"))
    assert not [name for name in os.listdir(data_dir) if name.startswith(".restore-")]
    assert backup.restore_on_boot(settings, isolate=True) is None  # once per process tree


def test_a_graceful_stop_backs_the_heads_up_and_they_stay_while_they_are_written(data_dir, tmp_path, s3,
                                                                                   s3_endpoint, bucket):
    from sidecar import create_app
    errors_store(data_dir)
    [head] = [row["name"] for row in catalog_rows(data_dir) if not row["closed_at"]]
    config = dict(backup_settings(bucket, s3_endpoint), data_dir=data_dir, ingest_tokens=[TOKEN],
                  admin_tokens=[ADMIN])
    app = create_app(config)
    client = app.test_client()
    assert client.post("/api/logs", json=[dict(entry(i), level="error", message="Late failure")
                                          for i in range(3)], headers=AUTH).status_code == 200
    app.extensions["sidecar"].tracker.flush()
    app.extensions["sidecar"].close()  # SIGTERM in gunicorn: a last run, with the heads
    document = manifest(s3, bucket)
    assert [entry["name"] for entry in document["heads"]] == [head] and document["not_backed_up"] == []

    target = str(tmp_path / "restored")  # the disk is wiped after the stop: nothing committed is lost
    store = backup.open_store(settings_for(target, bucket, s3_endpoint))
    assert backup.restore(target, store, Clock(NOW))["segments_forgotten"] == []
    assert ids_per_segment(target) == ids_per_segment(data_dir)
    assert groups_of(target) == groups_of(data_dir)

    restarted = create_app(dict(config, data_dir=target))  # the restored head is adopted and written on
    try:
        assert restarted.test_client().post("/api/logs", json=entry(1), headers=AUTH).status_code == 200
        assert head in [row["name"] for row in catalog_rows(target) if not row["closed_at"]]
        report = restarted.extensions["sidecar"].backup.run_now()  # a regular run keeps the head's snapshot
        assert report["ok"] and report["head_snapshots_kept"] == [head] and report["not_backed_up"] == []
        assert manifest(s3, bucket)["heads"] == document["heads"]
    finally:
        restarted.extensions["sidecar"].close()
    [newer] = manifest(s3, bucket)["heads"]
    assert newer["key"] != document["heads"][0]["key"]
    assert [key for key in objects(s3, bucket) if "/heads/" in key] == [newer["key"]]
