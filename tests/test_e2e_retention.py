"""Retention against a live store: the CLI killed mid-run, and ingest while it prunes."""
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import orjson
import requests

from ingest import catalog
from ingest.fingerprint import Fingerprinter

from conftest import ROOT, TOKEN, catalog_rows, entry, stored_rows
from test_retention_job import build, dated_entry as dated

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def big_old_store(data_dir, debug_rows=60_000):
    three_days = NOW - timedelta(days=3)
    build(data_dir, {3: [dated("debug", three_days, "debug chatter {}".format(i)) for i in range(debug_rows)]
                     + [dated("error", three_days, "Ledger sync failed for account {}".format(i)) for i in range(300)],
                     0: [dated("info", NOW, "today")]}, Fingerprinter(), now=NOW)


def retention_cli(data_dir, *args, **settings):
    env = dict(os.environ, SIDECAR_DATA_DIR=data_dir, **{"SIDECAR_" + k.upper(): str(v) for k, v in settings.items()})
    return subprocess.Popen([sys.executable, "-m", "retention", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_consistent(data_dir):
    """Catalog and group bookkeeping match the files."""
    meta = catalog.connect_meta(data_dir)
    for segment in catalog_rows(data_dir):
        con = sqlite3.connect(os.path.join(data_dir, "segments", segment["name"]))
        assert segment["row_count"] == con.execute("SELECT count(*) FROM logs").fetchone()[0]
        actual = dict(con.execute("SELECT fingerprint, count(*) FROM logs WHERE fingerprint IS NOT NULL "
                                  "GROUP BY fingerprint").fetchall())
        recorded = dict(meta.execute("SELECT fingerprint, count FROM error_stored WHERE segment = ?",
                                     (segment["name"],)).fetchall())
        assert actual == recorded
        con.execute("INSERT INTO logs_fts(logs_fts) VALUES ('integrity-check')")
        con.close()
    meta.close()


def test_kill_9_mid_run_then_the_next_run_completes(data_dir):
    big_old_store(data_dir)
    process = retention_cli(data_dir, retention_chunk_rows=200)

    def debug_left():
        # Read-write connections: a run killed mid-transaction leaves a hot rollback journal,
        # which a read-only reader cannot roll back (the next run or a restart does).
        total = 0
        for segment in catalog_rows(data_dir):
            con = sqlite3.connect(os.path.join(data_dir, "segments", segment["name"]), timeout=30)
            total += con.execute("SELECT count(*) FROM logs WHERE level = 'debug'").fetchone()[0]
            con.close()
        return total
    deadline = time.time() + 60
    while debug_left() == 60_000 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert 0 < debug_left() < 60_000, "the kill should land mid-run"
    finished = retention_cli(data_dir, "--json")
    out, err = finished.communicate(timeout=120)
    assert finished.returncode == 0, err
    assert debug_left() == 0
    report = orjson.loads(out)
    assert report["rows_deleted"]["debug"] > 0
    assert_consistent(data_dir)
    errors = collections.Counter(row["level"] for row in stored_rows(data_dir, "level"))
    assert errors["error"] == 300 and errors["info"] == 1


def test_ingest_during_pruning_loses_nothing(live_server, data_dir):
    big_old_store(data_dir)
    server = live_server()
    acked, statuses, stop = [], [], threading.Event()

    def send():
        session = requests.Session()
        n = 0
        while not stop.is_set():
            batch = [entry(i, message="live {}".format(i)) for i in range(n, n + 50)]
            n += 50
            response = session.post(server.url + "/api/logs", json=batch, timeout=30,
                                    headers={"Authorization": "Bearer " + TOKEN})
            statuses.append(response.status_code)
            if response.status_code == 200:
                acked.extend(e["message"] for e in batch)

    sender = threading.Thread(target=send)
    sender.start()
    process = retention_cli(data_dir, "--json", retention_chunk_rows=500)
    out, err = process.communicate(timeout=120)
    stop.set()
    sender.join(30)
    assert process.returncode == 0, err
    assert orjson.loads(out)["rows_deleted"]["debug"] == 60_000
    assert statuses and set(statuses) == {200}
    stored = {row["message"] for row in stored_rows(data_dir, "message")}
    assert set(acked) <= stored


def test_cli_dry_run_and_bad_input(data_dir):
    big_old_store(data_dir, debug_rows=100)
    before = catalog_rows(data_dir)
    dry = retention_cli(data_dir, "--dry-run")
    out, _ = dry.communicate(timeout=60)
    assert dry.returncode == 0 and b"dry run" in out and b"100 debug" in out
    assert catalog_rows(data_dir) == before
    real = retention_cli(data_dir)  # the human-readable report
    out, _ = real.communicate(timeout=60)
    assert real.returncode == 0 and b"rows deleted:               100 debug" in out
    assert catalog_rows(data_dir)[0]["row_count"] == before[0]["row_count"] - 100
    bad = retention_cli(data_dir, "--now", "someday")
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and b"is not RFC 3339" in err


def test_storage_report(live_server, data_dir):
    build(data_dir, {1: [dated("info", NOW - timedelta(days=1))] * 10, 0: [dated("info", NOW)]}, now=NOW)
    server = live_server(disk_budget_bytes=10_000_000)
    token = open(os.path.join(data_dir, "dev-admin-token")).read().strip()
    response = requests.get(server.url + "/api/storage", headers={"Authorization": "Bearer " + token}, timeout=10)
    report = response.json()
    assert response.status_code == 200 and report["segment_count"] >= 2
    assert report["total_bytes"] >= sum(s["bytes"] for s in report["segments"])
    assert 0 < report["budget_used_percent"] < 100 and report["budget_state"] == "ok"
    assert report["oldest_entry"] <= (NOW - timedelta(days=1)).isoformat()[:10] + "T99"
    assert report["days_until_budget_full"] > 0
    assert requests.get(server.url + "/api/storage", headers={"Authorization": "Bearer " + TOKEN},
                        timeout=10).status_code == 401
