"""GET /api/health: cheap (no scans, no network), no auth, no secrets or paths.
GET /api/health/deep (admin token): every check run now (sidecar/health_deep.py)."""
import os
import shutil
import sqlite3
import time
from importlib import metadata

from flask import Blueprint, current_app

from ingest.entries import format_ts

from .auth import bearer_token
from .errors import json_response

bp = Blueprint("health", __name__)
RANK = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def _version():
    try:
        return metadata.version("log-sidecar")
    except metadata.PackageNotFoundError:
        # Render sets RENDER_GIT_COMMIT: the deployed commit, which `python -m sidecar check
        # --expect-version` can wait for after a push.
        return os.environ.get("SIDECAR_VERSION") or os.environ.get("RENDER_GIT_COMMIT") or "dev"


def _by_percent(percent, degraded=80.0, unhealthy=95.0):
    if percent >= unhealthy:
        return "unhealthy"
    return "degraded" if percent >= degraded else "healthy"


def rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def database_health(sidecar):
    started = time.perf_counter()
    try:
        con = sqlite3.connect("file:{}?mode=ro".format(os.path.join(sidecar.data_dir, "meta.db")),
                              uri=True, timeout=1)
        con.execute("SELECT count(*) FROM segments WHERE closed_at IS NULL").fetchone()
        con.close()
    except sqlite3.Error as error:
        return {"status": "unhealthy", "latency_ms": None, "message": "catalog unreadable: {}".format(error)}
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    writer = sidecar.writer
    if writer.unavailable_reason:
        return {"status": "unhealthy", "latency_ms": latency_ms,
                "message": "the head segment cannot be written; ingest answers 503 until it can"}
    fill = 100.0 * writer.queued_entries / sidecar.settings["queue_max_entries"]
    status = _by_percent(fill, 50.0, 90.0)
    return {"status": status, "latency_ms": latency_ms,
            "message": "writer queue {:.0f}% full, last commit {} ms".format(
                fill, None if writer.last_commit_ms is None else round(writer.last_commit_ms, 1))}


def memory_health(limit):
    used = rss_bytes()
    percent = round(100.0 * used / limit, 1)
    return {"status": _by_percent(percent, 80.0, 95.0), "used": used, "limit": limit, "percent": percent}


def disk_health(data_dir):
    usage = shutil.disk_usage(data_dir)
    percent = round(100.0 * usage.used / usage.total, 1)
    return {"status": _by_percent(percent, 90.0, 98.0), "used": usage.used, "limit": usage.total,
            "percent": percent}


def worst(statuses):
    return max(statuses, key=RANK.__getitem__, default="healthy")


def external_apis_status(results):
    """The dependencies' share of the overall status: at most degraded. A dependency of the app being
    down must not make a host restart the sidecar, nor take it out of rotation (/api/health/deep,
    which operators and deploy checks call, does count it unhealthy)."""
    return min(worst(result["status"] for result in results), "degraded", key=RANK.__getitem__)


def health_report(sidecar):
    """(body, overall status) of /api/health: no scan, no network call (dependencies from the cache)."""
    services = {
        "database": database_health(sidecar),
        "external_apis": sidecar.dependencies.results(),
        "memory": memory_health(sidecar.settings["memory_limit_bytes"]),
        "disk": disk_health(sidecar.data_dir),
    }
    status = worst([services["database"]["status"], services["memory"]["status"], services["disk"]["status"],
                    external_apis_status(services["external_apis"])])
    body = {"status": status, "timestamp": format_ts(sidecar.clock()), "services": services,
            "version": _version(), "environment": sidecar.settings["environment"]}
    return body, status


@bp.get("/api/health")
def health():
    body, status = health_report(current_app.extensions["sidecar"])
    return json_response(body, 503 if status == "unhealthy" else 200)


@bp.get("/api/health/deep")
def health_deep():
    from . import health_deep as deep
    sidecar = current_app.extensions["sidecar"]
    sidecar.admin_tokens.require(bearer_token())
    body = deep.deep_report(sidecar, current_app.extensions["datasette"], bearer_token())
    return json_response(body, 503 if body["status"] == "unhealthy" else 200,
                         headers={"Cache-Control": "no-store"})
