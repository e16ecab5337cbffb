"""POST /api/events/cold-start (ingest or admin token): keep-warm reports a slow answer.

`scripts/keep_warm.py` (and `python -m sidecar keep-warm`) call it when
/api/health answered slower than their threshold: one `sidecar.cold_start` row
in meta.db's `sidecar_events`, which the alert rule `cold_start` notifies. An
endpoint of its own rather than a marked entry in POST /api/logs: the ingest
path stays free of any per-entry check. Reports within DEDUPE_S of a recorded
one (two pingers meeting the same wake-up) are answered but not recorded.
"""
import math
from datetime import timedelta

import orjson
from flask import Blueprint, current_app, request

from ingest import catalog
from ingest.entries import format_ts

from . import boot, jsonlog
from .auth import bearer_token
from .errors import ApiError, json_response

bp = Blueprint("events", __name__)
EVENT = "sidecar.cold_start"
MAX_BODY_BYTES = 4096
DEDUPE_S = 120
MAX_LATENCY_MS = 86_400_000


def _number(body, key, required=False):
    value = body.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_LATENCY_MS:
        raise ApiError(400, "invalid_event", "{} must be a number of milliseconds from 0 to {}".format(
            key, MAX_LATENCY_MS))
    return round(float(value), 1)


def _parse(raw):
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_event", "the body must be a JSON object")
    source = body.get("source", "keep-warm")
    if not isinstance(source, str) or not 0 < len(source.strip()) <= 64:
        raise ApiError(400, "invalid_event", "source must be a string of 1 to 64 characters")
    expected = body.get("expected", False)
    status = body.get("health_status")
    if not isinstance(expected, bool) or not (status is None or (type(status) is int and 100 <= status <= 599)):
        raise ApiError(400, "invalid_event", "expected must be true or false, health_status an HTTP status")
    return {"latency_ms": _number(body, "latency_ms", required=True), "threshold_ms": _number(body, "threshold_ms"),
            "source": source.strip(), "expected": expected, "health_status": status}


@bp.post("/api/events/cold-start")
def cold_start():
    sidecar = current_app.extensions["sidecar"]
    token = bearer_token()
    if not (token and sidecar.admin_tokens.matches(token)):
        sidecar.tokens.require(token)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", "an event is at most {} bytes".format(MAX_BODY_BYTES))
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", "an event is at most {} bytes".format(MAX_BODY_BYTES))
    details = _parse(raw)
    now = sidecar.clock()
    started = boot.server_started_at()
    details["seconds_since_boot"] = None if started is None else round(now.timestamp() - started, 1)
    message = "cold start: /api/health answered in {:.0f} ms{}{}, reported by {}{}".format(
        details["latency_ms"],
        "" if details["threshold_ms"] is None else " (over {:g} ms)".format(details["threshold_ms"]),
        "" if started is None else ", server up {}".format(boot.human_duration(details["seconds_since_boot"])),
        details["source"], " (expected: the active hours just opened)" if details["expected"] else "")
    meta = catalog.connect_meta_cached(sidecar.data_dir)
    with catalog.immediate(meta):
        last = meta.execute("SELECT id, ts FROM sidecar_events WHERE type = ? ORDER BY id DESC LIMIT 1",
                            (EVENT,)).fetchone()
        if last is not None and last["ts"] >= format_ts(now - timedelta(seconds=DEDUPE_S)):
            duplicate_of = last["id"]
        else:
            duplicate_of = None
            event_id = meta.execute("INSERT INTO sidecar_events (ts, type, message, details) VALUES (?, ?, ?, ?)",
                                    (format_ts(now), EVENT, message, orjson.dumps(details).decode())).lastrowid
    if duplicate_of is not None:
        return json_response({"recorded": False, "event_id": duplicate_of,
                              "reason": "a cold start was recorded less than {} s ago".format(DEDUPE_S)})
    jsonlog.emit("warn", message, event=EVENT, event_id=event_id, **details)
    return json_response({"recorded": True, "event_id": event_id}, 201)
