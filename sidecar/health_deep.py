"""The checks of GET /api/health/deep: each one run now, each turned healthy, degraded or unhealthy.

- probe: one `debug` entry of service `sidecar.probe` goes through the real
  pipeline (`to_row`, the writer's queue, a group commit), is read back from
  the head segment over a read-only connection, then deleted by the writer
  thread, which owns the head (`Writer.delete_entries`), and checked gone.
- integrity: `PRAGMA quick_check` on the head (read-only connection).
- query: the newest entries of the last hour across segments (`ingest.search`).
- writer: queue depth against SIDECAR_QUEUE_MAX_ENTRIES, the last commit's duration.
- memory, disk: RSS against SIDECAR_MEMORY_LIMIT_BYTES; the file system and the retention budget.
- datasette: `select 1` through the mounted Datasette, in-process over WSGI.
- every configured dependency, checked now (sidecar/dependencies.py), in `services.external_apis`.

No message names a file path, URL or DSN.
"""
import concurrent.futures
import shutil
import sqlite3
import threading
import time
import uuid
from datetime import timedelta

import orjson

from ingest import search as log_search
from ingest.entries import format_ts, to_row
from ingest.rollups import PROBE_SERVICE  # not counted in the rollups
from ingest.writer import Batch, QueueFull, StorageUnavailable

from . import health_api

PROBE_TIMEOUT_S = 10  # at most; SIDECAR_REQUEST_TIMEOUT_S when smaller
PROBE_DEGRADED_MS = 1000  # probe written and committed
COMMIT_DEGRADED_MS = 1000  # the writer's last commit
QUEUE_DEGRADED_PERCENT, QUEUE_UNHEALTHY_PERCENT = 50.0, 90.0
QUERY_DEGRADED_MS, QUERY_UNHEALTHY_MS = 1000, 5000
QUERY_LIMIT = 50
DATASETTE_DEGRADED_MS = 1000
MiB = 1024 * 1024


def _ms(seconds):
    return round(seconds * 1000, 1)


def _check(status, latency_ms, message, **extra):
    result = {"status": status, "latency_ms": latency_ms, "message": message}
    result.update(extra)
    return result


def _head(sidecar):
    head = sidecar.writer.head
    return (head.name, head.path) if head is not None else (None, None)


def _read_only(path):
    return log_search.connect_segment(path)


# -- probe -------------------------------------------------------------------------

def _find_probe(sidecar, names, row):
    """(segment, id) of the probe row in one of the segments `names`, read over read-only connections."""
    ts, message = row[0], row[3]
    for name in names:
        con = _read_only(log_search.segment_path(sidecar.data_dir, name))
        try:
            found = con.execute("SELECT id, level, metadata FROM logs WHERE service = ? AND ts = ? AND message = ?",
                                (PROBE_SERVICE, ts, message)).fetchone()
        finally:
            con.close()
        if found is not None and found[1] == "debug" and found[2] == row[11]:
            return name, found[0]
    return None, None


def _remove_later(sidecar, batch, names):
    """The probe was not committed in time: delete it once it is, so it never stays behind."""
    def wait_and_remove():
        if not batch.done.wait(120) or batch.error is not None:
            return
        try:
            segment, entry_id = _find_probe(sidecar, names + [_head(sidecar)[0]], batch.rows[0])
            if segment is not None:
                sidecar.writer.delete_entries(segment, [entry_id], PROBE_SERVICE)
        except Exception:  # the sidecar is stopping, or the head cannot be read: retention removes it
            pass
    threading.Thread(target=wait_and_remove, name="sidecar-probe-cleanup", daemon=True).start()


def probe_check(sidecar):
    token = uuid.uuid4().hex
    now = sidecar.clock()
    row = to_row({"service": PROBE_SERVICE, "level": "debug", "message": "deep health probe " + token,
                  "metadata": {"probe": token}},
                 format_ts(now), format_ts(now + timedelta(seconds=sidecar.limits.max_future_s)), sidecar.limits)
    batch = Batch([row])
    timeout_s = min(PROBE_TIMEOUT_S, sidecar.settings["request_timeout_s"])
    names = [_head(sidecar)[0]]
    started = time.perf_counter()
    try:
        sidecar.writer.submit(batch)
    except QueueFull:
        return _check("unhealthy", None, "the writer queue is full: the probe was refused (ingest answers 429)")
    except StorageUnavailable:
        return _check("unhealthy", None, "the writer is stopping")
    if not batch.done.wait(timeout_s):
        _remove_later(sidecar, batch, names)
        return _check("unhealthy", None, "the probe was not committed within {} s".format(timeout_s))
    write_ms = _ms(time.perf_counter() - started)
    if batch.error is not None:
        return _check("unhealthy", write_ms, "the probe could not be written: the head segment cannot be "
                      "written (disk full or read-only?)")
    after = _head(sidecar)[0]
    if after not in names:  # the head rotated meanwhile: the probe is in one of the two
        names.append(after)
    read_started = time.perf_counter()
    try:
        segment, entry_id = _find_probe(sidecar, names, row)
    except (sqlite3.Error, OSError) as error:
        return _check("unhealthy", write_ms, "reading the probe back failed: {}".format(error))
    read_ms = _ms(time.perf_counter() - read_started)
    if segment is None:
        return _check("unhealthy", write_ms, "the committed probe was not found in the head segment",
                      write_ms=write_ms, read_ms=read_ms)
    remove_started = time.perf_counter()
    try:
        removed = sidecar.writer.delete_entries(segment, [entry_id], PROBE_SERVICE, timeout=timeout_s)
    except (sqlite3.Error, OSError, TimeoutError, StorageUnavailable) as error:
        return _check("unhealthy", write_ms, "removing the probe failed: {}".format(type(error).__name__),
                      write_ms=write_ms, read_ms=read_ms)
    remove_ms = _ms(time.perf_counter() - remove_started)
    timings = {"write_ms": write_ms, "read_ms": read_ms, "remove_ms": remove_ms}
    if removed is None:
        return _check("degraded", write_ms, "written and read back; the head rotated before the probe could be "
                      "removed, so it stays in a closed segment until retention deletes debug entries", **timings)
    if _find_probe(sidecar, [segment], row)[0] is not None:
        return _check("unhealthy", write_ms, "the probe is still there after its removal", **timings)
    status = "degraded" if write_ms >= PROBE_DEGRADED_MS else "healthy"
    message = "written, committed, read back and removed; commit round trip {} ms".format(write_ms)
    if status != "healthy":
        message += " (over {} ms)".format(PROBE_DEGRADED_MS)
    return _check(status, write_ms, message, **timings)


# -- the head segment, the query path, the writer --------------------------------------

def integrity_check(sidecar):
    name, path = _head(sidecar)
    if path is None:
        return _check("unhealthy", None, "no head segment is open")
    started = time.perf_counter()
    try:
        con = _read_only(path)
        try:
            lines = [row[0] for row in con.execute("PRAGMA quick_check")]
        finally:
            con.close()
    except sqlite3.Error as error:
        return _check("unhealthy", None, "quick_check could not run: {}".format(error))
    latency_ms = _ms(time.perf_counter() - started)
    if lines == ["ok"]:
        return _check("healthy", latency_ms, "quick_check ok on the head segment")
    return _check("unhealthy", latency_ms, "quick_check found {} problem(s) in the head segment: {}".format(
        len(lines), "; ".join(lines[:3])[:300]))


def query_check(sidecar):
    started = time.perf_counter()
    try:
        result = log_search.search(sidecar.data_dir, since="1h", limit=QUERY_LIMIT, now=sidecar.clock())
    except (sqlite3.Error, OSError, log_search.SearchError) as error:
        return _check("unhealthy", None, "the search failed: {}".format(type(error).__name__))
    latency_ms = _ms(time.perf_counter() - started)
    status = "unhealthy" if latency_ms >= QUERY_UNHEALTHY_MS else "degraded" if latency_ms >= QUERY_DEGRADED_MS \
        else "healthy"
    if result["segments_unreadable"]:
        status = health_api.worst([status, "degraded"])
    message = "newest {} entries of the last hour in {} ms ({} segment(s) searched, {} unreadable)".format(
        QUERY_LIMIT, latency_ms, result["segments_searched"], result["segments_unreadable"])
    return _check(status, latency_ms, message, hits=len(result["hits"]))


def writer_check(sidecar):
    writer = sidecar.writer
    limit = sidecar.settings["queue_max_entries"]
    queued = writer.queued_entries
    percent = round(100.0 * queued / limit, 1)
    commit_ms = None if writer.last_commit_ms is None else round(writer.last_commit_ms, 1)
    statuses = ["unhealthy" if percent >= QUEUE_UNHEALTHY_PERCENT else
                "degraded" if percent >= QUEUE_DEGRADED_PERCENT else "healthy"]
    if commit_ms is not None and commit_ms >= COMMIT_DEGRADED_MS:
        statuses.append("degraded")
    message = "{} entries queued ({}% of {}), last commit {} ms".format(queued, percent, limit, commit_ms)
    if writer.unavailable_reason:
        statuses.append("unhealthy")
        message = "the head segment cannot be written; ingest answers 503 until it can. " + message
    return {"status": health_api.worst(statuses), "queued_entries": queued, "queue_limit": limit,
            "percent": percent, "last_commit_ms": commit_ms, "message": message}


def disk_check(sidecar):
    from .storage_api import storage_report
    disk = health_api.disk_health(sidecar.data_dir)
    free = shutil.disk_usage(sidecar.data_dir).free
    report = storage_report(sidecar)
    budget = {"used": report["total_bytes"], "limit": report["budget_bytes"],
              "percent": report["budget_used_percent"], "state": report["budget_state"],
              "days_until_full": report["days_until_budget_full"]}
    statuses = [disk["status"]]
    message = "file system {}% used, {} MiB free".format(disk["percent"], free // MiB)
    if report["budget_bytes"]:
        message += "; store {}% of its retention budget".format(report["budget_used_percent"])
        if report["budget_state"] != "ok":
            # Retention keeps the store under the budget by dropping the oldest closed segments, even
            # inside their age: worth a look, not a failure of the sidecar.
            statuses.append("degraded")
            message += " ({}: the oldest segments are dropped to stay under it)".format(report["budget_state"])
    result = dict(disk, status=health_api.worst(statuses), free_bytes=free, budget=budget, message=message)
    return result


def memory_check(sidecar):
    result = health_api.memory_health(sidecar.settings["memory_limit_bytes"])
    result["message"] = "RSS {} MiB of {} MiB ({}%)".format(result["used"] // MiB, result["limit"] // MiB,
                                                             result["percent"])
    return result


def datasette_check(mount, token):
    from werkzeug.test import EnvironBuilder, run_wsgi_app
    load_started = time.perf_counter()
    try:
        mount.ensure_loaded()  # the first use imports and builds Datasette: timed apart
    except Exception as error:
        return _check("unhealthy", None, "Datasette could not be loaded: {}".format(type(error).__name__))
    load_ms = _ms(time.perf_counter() - load_started)
    builder = EnvironBuilder(path="/datasette/meta.json", query_string={"sql": "select 1 as ok", "_shape": "array"},
                             headers={"Authorization": "Bearer " + token} if token else None)
    environ = builder.get_environ()
    builder.close()
    started = time.perf_counter()
    try:
        app_iter, status, _headers = run_wsgi_app(mount, environ, buffered=True)
        try:
            body = b"".join(app_iter)
        finally:
            if hasattr(app_iter, "close"):
                app_iter.close()
    except Exception as error:
        return _check("unhealthy", None, "Datasette failed: {}".format(type(error).__name__), load_ms=load_ms)
    latency_ms = _ms(time.perf_counter() - started)
    code = int(status.split(" ", 1)[0])
    try:
        answer = orjson.loads(body) if code == 200 else None
    except orjson.JSONDecodeError:
        answer = None
    if answer != [{"ok": 1}]:
        return _check("unhealthy", latency_ms, "select 1 through Datasette answered {}".format(code), load_ms=load_ms)
    state = "degraded" if latency_ms >= DATASETTE_DEGRADED_MS else "healthy"
    return _check(state, latency_ms, "select 1 through Datasette in {} ms".format(latency_ms), load_ms=load_ms)


# -- the report -------------------------------------------------------------------------

def _guarded(fn, *args):
    try:
        return fn(*args)
    except Exception as error:  # one broken check must not hide the others
        return _check("unhealthy", None, "the check failed: {}".format(type(error).__name__))


def deep_report(sidecar, mount, token):
    """The body of /api/health/deep: /api/health's shape with the dependencies checked now, plus `checks`."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-deep-dependencies")
    dependencies = pool.submit(sidecar.dependencies.check_all)
    try:
        checks = {
            "probe": _guarded(probe_check, sidecar),
            "integrity": _guarded(integrity_check, sidecar),
            "query": _guarded(query_check, sidecar),
            "writer": _guarded(writer_check, sidecar),
            "memory": _guarded(memory_check, sidecar),
            "disk": _guarded(disk_check, sidecar),
            "datasette": _guarded(datasette_check, mount, token),
        }
        external = dependencies.result()
    finally:
        pool.shutdown(wait=False)
    body, _cached_status = health_api.health_report(sidecar)
    body["services"]["external_apis"] = external
    statuses = [body["services"][name]["status"] for name in ("database", "memory", "disk")]
    statuses += [result["status"] for result in external]
    statuses += [check["status"] for check in checks.values()]
    body["status"] = health_api.worst(statuses)
    body["checks"] = checks
    return body
