"""Uptime monitors under the real gunicorn with two workers: exactly one process checks, and
another takes over when it is killed."""
import os
import signal
import sqlite3
import time

import requests

from uptime_helpers import Site


def results(data_dir):
    con = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    try:
        return con.execute("SELECT ts, status FROM uptime_results WHERE monitor = 'web' ORDER BY ts").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def lock_holder(data_dir):
    """The pid holding the flock on .uptime.lock, from /proc/locks."""
    inode = os.stat(os.path.join(data_dir, ".uptime.lock")).st_ino
    with open("/proc/locks") as handle:
        for line in handle:  # "1: FLOCK  ADVISORY  WRITE 12345 08:01:123456 0 EOF"
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].split(":")[-1] == str(inode):
                return int(parts[4])
    return None


def wait_for(predicate, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_one_worker_checks_and_another_takes_over(live_server, data_dir, tmp_path):
    site = Site()
    try:
        path = tmp_path / "monitors.yaml"
        path.write_text("monitors:\n  - {{name: web, url: '{}', interval_s: 1}}\n".format(site.url("/ok")))
        server = live_server(workers=2, monitors_file=str(path))
        wait_for(lambda: len(results(data_dir)) >= 4)
        stamps = [row[0] for row in results(data_dir)]
        assert len(stamps) == len(set(stamps))
        # One process, one schedule: about a second apart, never two checks in the same second.
        assert len({stamp[:19] for stamp in stamps}) == len(stamps)
        holder = wait_for(lambda: lock_holder(data_dir))
        assert holder in server.worker_pids()
        os.kill(holder, signal.SIGKILL)
        killed_at = len(results(data_dir))
        wait_for(lambda: len(results(data_dir)) >= killed_at + 3)
        new_holder = wait_for(lambda: lock_holder(data_dir))
        assert new_holder != holder and new_holder in server.worker_pids()
        assert {row[1] for row in results(data_dir)} == {"up"}
        body = requests.get(server.url + "/api/status", timeout=10).json()
        assert body["status"] == "all_up" and body["monitors"][0]["state"] == "up"
    finally:
        site.close()
