"""sidecar.boot events: one per server start (not per worker), with the time since the previous boot."""
import json
import os
import signal
import sqlite3
import time
from datetime import datetime, timezone

import psutil

from sidecar import boot


def boots(data_dir):
    path = os.path.join(data_dir, "meta.db")
    if not os.path.exists(path):
        return []
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT ts, message, details FROM sidecar_events WHERE type = 'sidecar.boot' "
                           "ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # the table is not there yet
        rows = []
    con.close()
    return [{"ts": row[0], "message": row[1], **json.loads(row[2])} for row in rows]


def wait_for(predicate, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def started_app(pid):
    """A worker whose app is built has the sidecar's threads (writer, tracker, ...) running."""
    try:
        return psutil.Process(pid).num_threads() >= 5
    except psutil.Error:
        return False


def test_one_boot_per_server_start_with_the_time_since_the_previous(live_server, data_dir):
    server = live_server(workers=2)
    wait_for(lambda: len(server.worker_pids()) == 2 and all(map(started_app, server.worker_pids())))
    [first] = wait_for(lambda: boots(data_dir))
    assert first["pid"] == server.proc.pid and first["worker_pid"] in server.worker_pids()
    assert first["seconds_since_previous_boot"] is None and first["previous_boot_at"] is None
    assert first["store_empty_at_start"] is True and first["version"]
    assert 0 < first["start_to_ready_s"] < 30
    assert first["message"].startswith("boot: first boot recorded in this store (the data directory was empty)")
    # A worker killed and started again by the same master is not a new boot.
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2
             and all(map(started_app, server.worker_pids())))
    time.sleep(0.5)
    assert len(boots(data_dir)) == 1
    server.stop()

    time.sleep(1.1)
    again = live_server()
    second = wait_for(lambda: boots(data_dir)[1:])[0]
    assert second["pid"] == again.proc.pid and second["boot_id"] != first["boot_id"]
    assert second["store_empty_at_start"] is False
    assert second["previous_boot_at"] == first["process_started_at"]
    elapsed = (datetime.fromisoformat(second["process_started_at"].replace("Z", "+00:00"))
               - datetime.fromisoformat(first["process_started_at"].replace("Z", "+00:00"))).total_seconds()
    assert second["seconds_since_previous_boot"] == round(elapsed, 3) and elapsed > 1
    assert "after the previous boot" in second["message"]


def test_record_boot_once_per_boot_id(data_dir):
    from ingest import catalog
    from retention import job
    meta = catalog.connect_meta(data_dir)
    job.ensure_schema(meta)
    now = datetime(2026, 1, 10, 12, 0, 5, tzinfo=timezone.utc)
    info = {"id": "a1", "pid": 10, "started": datetime(2026, 1, 10, 12, 0, 0, tzinfo=timezone.utc).timestamp(),
            "store_empty": False}
    assert boot.record_boot(meta, now, "v1", info) == 1
    assert boot.record_boot(meta, now, "v1", info) is None  # a second worker of the same boot
    later = dict(info, id="b2", started=info["started"] + 3 * 3600 + 120)
    boot.record_boot(meta, now.replace(hour=15, minute=2, second=2), "v2", later)
    [_, second] = [json.loads(row[0]) for row in meta.execute(
        "SELECT details FROM sidecar_events WHERE type = 'sidecar.boot' ORDER BY id")]
    assert second["seconds_since_previous_boot"] == 3 * 3600 + 120 and second["start_to_ready_s"] == 2.0
    assert second["version"] == "v2" and second["previous_boot_at"] == "2026-01-10T12:00:00.000Z"
    message = meta.execute("SELECT message FROM sidecar_events ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert message == "boot: 3 h 2 min after the previous boot, ready 2.0 s after the process started"
    meta.close()


def test_no_boot_without_gunicorn_conf(app, data_dir, monkeypatch):
    monkeypatch.delenv(boot.ENV, raising=False)
    assert boot.current() is None and boots(data_dir) == []
    assert boot.record_for(app.extensions["sidecar"]) is None
