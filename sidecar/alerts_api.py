"""GET /api/alerts and POST /api/alerts/test (admin token). Channels are shown redacted only."""
from flask import Blueprint, current_app, request
import orjson

from ingest import catalog
from ingest.entries import format_ts

from .alert_delivery import redact_url
from .auth import bearer_token
from .errors import ApiError, json_response

bp = Blueprint("alerts", __name__)


def _sidecar():
    sidecar = current_app.extensions["sidecar"]
    sidecar.admin_tokens.require(bearer_token())
    return sidecar


def _alert(row, deliveries):
    alert = dict(row)
    alert["details"] = orjson.loads(alert["details"]) if alert["details"] else {}
    alert["deliveries"] = deliveries.get(row["id"], [])
    return alert


@bp.get("/api/alerts")
def list_alerts():
    sidecar = _sidecar()
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 500:
        raise ApiError(400, "invalid_parameter", "limit must be a whole number from 1 to 500")
    meta = catalog.connect_meta_cached(sidecar.data_dir)
    open_rows = meta.execute("SELECT * FROM alerts WHERE resolved_at IS NULL ORDER BY started_at DESC").fetchall()
    recent = meta.execute("SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    ids = sorted({row["id"] for row in open_rows} | {row["id"] for row in recent})
    deliveries = {}
    if ids:
        for row in meta.execute(
                "SELECT alert_id, kind, channel, attempt, status, error, at FROM alert_deliveries "
                "WHERE final = 1 AND alert_id IN ({}) ORDER BY id".format(", ".join("?" * len(ids))), ids):
            deliveries.setdefault(row["alert_id"], []).append(
                {key: row[key] for key in ("kind", "channel", "attempt", "status", "error", "at")})
    engine = sidecar.alerts
    return json_response({"rules": [rule.public() for rule in engine.rules],
                          "open": [_alert(row, deliveries) for row in open_rows],
                          "recent": [_alert(row, deliveries) for row in recent], "limit": limit})


@bp.post("/api/alerts/test")
def test_notification():
    sidecar = _sidecar()
    engine = sidecar.alerts
    channels = list(dict.fromkeys(url for rule in engine.rules for url in rule.channels))
    if not channels:
        raise ApiError(409, "no_channels", "no alert channel is configured: set SIDECAR_ALERT_URLS or channels "
                                           "in SIDECAR_ALERTS_FILE")
    now_text = format_ts(sidecar.clock())
    summary = "Test notification from the log sidecar"
    meta = catalog.connect_meta_cached(sidecar.data_dir)
    with catalog.immediate(meta):
        alert_id = meta.execute(
            "INSERT INTO alerts (rule, key, severity, state, started_at, resolved_at, summary, details) "
            "VALUES ('test', 'api', 'info', 'resolved', ?, ?, ?, '{\"kind\": \"test\"}')",
            (now_text, now_text, summary)).lastrowid
    engine.delivery.send(alert_id, "firing", "[TEST] log sidecar alerts",
                         "{} at {}: this channel receives the sidecar's alerts.".format(summary, now_text),
                         channels, "info")
    return json_response({"alert_id": alert_id, "channels": [redact_url(url) for url in channels]}, 202)
