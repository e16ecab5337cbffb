"""Boots: one `sidecar.boot` row in meta.db's `sidecar_events` per server start, so a free
instance's sleep and wake cycles show in Datasette (canned query `boots`).

The gunicorn master marks its start (`mark_server_start`, gunicorn.conf.py's `on_starting`):
a random boot id, its pid, the time its process started and whether `meta.db` existed, in an
environment variable its workers inherit. The first worker whose store is ready records the row
(`record_boot`, at the end of `Sidecar.start`); the other workers, and workers the same master
restarts later, find the row of their boot id and write nothing. This module never opens
`meta.db` in the master: the restore of a backup into an empty data directory (gunicorn.conf.py,
right after the mark) must find it empty, no SQLite connection may cross a fork, and a row written
by a worker lands in the store it actually opened (after a restore, next to the previous boots).
Without gunicorn.conf.py (tests, `create_app()` alone) there is no boot to record.

Standard library only: the master imports this module.
"""
import json
import os
import secrets
import sqlite3
import time
from datetime import datetime, timezone

ENV = "_SIDECAR_BOOT"  # set by the master for its workers; not a setting
EVENT = "sidecar.boot"


def process_started_at(pid="self"):
    """When process `pid` started (epoch seconds, ~10 ms precision), from /proc; None elsewhere."""
    try:
        with open("/proc/{}/stat".format(pid)) as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as handle:
            uptime_s = float(handle.read().split()[0])
        return time.time() - (uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def mark_server_start(data_dir):
    """In the gunicorn master, before any worker: what the workers need to record this boot."""
    info = {"id": secrets.token_hex(8), "pid": os.getpid(),
            "started": process_started_at() or time.time(),
            "store_empty": not os.path.exists(os.path.join(data_dir, "meta.db"))}
    os.environ[ENV] = json.dumps(info)
    return info


def current():
    """This server's boot (dict: id, pid, started, store_empty), or None without gunicorn.conf.py."""
    try:
        info = json.loads(os.environ.get(ENV) or "null")
    except ValueError:
        return None
    return info if isinstance(info, dict) and info.get("id") else None


def server_started_at():
    """Epoch seconds of the server's start: the master's under gunicorn.conf.py, else this process's."""
    info = current()
    return info["started"] if info else process_started_at()


def _parse_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ts(moment):
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (moment.year, moment.month, moment.day, moment.hour,
                                                  moment.minute, moment.second, moment.microsecond // 1000)


def human_duration(seconds):
    seconds = int(round(seconds))
    if seconds < 120:
        return "{} s".format(seconds)
    if seconds < 7200:
        return "{} min".format(seconds // 60)
    if seconds < 172800:
        return "{} h {} min".format(seconds // 3600, seconds % 3600 // 60)
    return "{} days {} h".format(seconds // 86400, seconds % 86400 // 3600)


def record_boot(meta, now, version, info=None, worker_pid=None):
    """Record this server's boot once (whichever worker comes first); return the row id, or None
    when it is already recorded or there is no boot to record."""
    info = info or current()
    if info is None:
        return None
    meta.execute("BEGIN IMMEDIATE")
    try:
        last = meta.execute("SELECT ts, details FROM sidecar_events WHERE type = ? ORDER BY id DESC LIMIT 1",
                            (EVENT,)).fetchone()
        try:
            last_details = json.loads(last[1]) if last and last[1] else {}
        except ValueError:
            last_details = {}
        if last_details.get("boot_id") == info["id"]:
            meta.execute("ROLLBACK")
            return None
        started = datetime.fromtimestamp(info["started"], timezone.utc)
        since = None
        if last is not None:
            previous = last_details.get("process_started_at") or last[0]
            since = round((_parse_ts(_ts(started)) - _parse_ts(previous)).total_seconds(), 3)  # as stored: ms
        details = {"boot_id": info["id"], "pid": info["pid"], "worker_pid": worker_pid or os.getpid(),
                   "version": version, "process_started_at": _ts(started),
                   "start_to_ready_s": round(now.timestamp() - info["started"], 3),
                   "seconds_since_previous_boot": since,
                   "previous_boot_at": (last_details.get("process_started_at") or last[0]) if last else None,
                   "store_empty_at_start": bool(info.get("store_empty"))}
        message = "boot: {}{}, ready {:.1f} s after the process started".format(
            "first boot recorded in this store" if since is None
            else "{} after the previous boot".format(human_duration(since)),
            " (the data directory was empty)" if details["store_empty_at_start"] else "",
            details["start_to_ready_s"])
        cursor = meta.execute("INSERT INTO sidecar_events (ts, type, message, details) VALUES (?, ?, ?, ?)",
                              (_ts(now), EVENT, message, json.dumps(details)))
        meta.execute("COMMIT")
        return cursor.lastrowid
    except BaseException:
        if meta.in_transaction:
            meta.execute("ROLLBACK")
        raise


def record_for(sidecar):
    """`record_boot` for a started Sidecar, on a connection of its own; never fails the start."""
    if current() is None:
        return None
    from ingest import catalog
    from . import jsonlog
    from .health_api import _version
    try:
        meta = catalog.connect_meta(sidecar.data_dir)
        try:
            return record_boot(meta, sidecar.clock(), _version())
        finally:
            meta.close()
    except sqlite3.Error as error:
        jsonlog.emit("error", "could not record the boot in meta.db", event="sidecar.boot_failed",
                     error=type(error).__name__)
        return None
