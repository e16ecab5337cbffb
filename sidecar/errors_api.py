"""The error groups API (admin token): list, one group with its events, status changes."""
import os
import sqlite3
from datetime import timedelta

import orjson
from flask import Blueprint, current_app, request

from ingest import catalog, segments
from ingest.entries import EntryError, format_ts, parse_timestamp
from ingest.groups import STATUSES

from .auth import bearer_token
from .errors import ApiError, json_response

bp = Blueprint("errors_api", __name__)
SORTS = {"last_seen": "last_seen DESC", "count": "count DESC", "users": "users_affected DESC",
         "first_seen": "first_seen DESC"}
GROUP_COLUMNS = ("fingerprint, title, culprit, type, service, level, first_seen, last_seen, count, "
                 "users_affected, status, status_changed_at, last_release, regressed_at, ignore_until_count, "
                 "ignore_until, events_stored")


def _sidecar():
    sidecar = current_app.extensions["sidecar"]
    sidecar.admin_tokens.require(bearer_token())
    return sidecar


def _int_arg(name, default, low, high):
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ApiError(400, "invalid_parameter", "{} must be a whole number from {} to {}".format(name, low, high))
    return value


def _group_dict(row):
    group = dict(row)
    group["regressed"] = group["regressed_at"] is not None and group["status"] == "unresolved"
    # Groups outlive their events: retention may have deleted every one of them.
    group["events_gone"] = group["events_stored"] == 0
    return group


@bp.get("/api/errors")
def list_groups():
    sidecar = _sidecar()
    status, service = request.args.get("status"), request.args.get("service")
    sort = request.args.get("sort", "last_seen")
    if status is not None and status not in STATUSES + ("regressed",):
        raise ApiError(400, "invalid_parameter", "status must be one of " + ", ".join(STATUSES + ("regressed",)))
    if sort not in SORTS:
        raise ApiError(400, "invalid_parameter", "sort must be one of " + ", ".join(SORTS))
    limit, offset = _int_arg("limit", 50, 1, 500), _int_arg("offset", 0, 0, 10**9)
    where, params = [], []
    if status == "regressed":
        where.append("status = 'unresolved' AND regressed_at IS NOT NULL")
    elif status:
        where.append("status = ?")
        params.append(status)
    if service:
        where.append("service = ?")
        params.append(service)
    sql = "SELECT {} FROM error_groups {} ORDER BY {}, fingerprint LIMIT ? OFFSET ?".format(
        GROUP_COLUMNS, "WHERE " + " AND ".join(where) if where else "", SORTS[sort])
    meta = catalog.connect_meta_cached(sidecar.data_dir)
    rows = meta.execute(sql, params + [limit, offset]).fetchall()
    return json_response({"groups": [_group_dict(row) for row in rows], "limit": limit, "offset": offset})


def recent_events(data_dir, meta, fingerprint, limit):
    """The newest events of a group, newest segment first, through each segment's fingerprint index."""
    events = []
    for row in meta.execute("SELECT name FROM segments ORDER BY day DESC, seq DESC"):
        path = os.path.join(segments.segments_dir(data_dir), row["name"])
        try:
            con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True)
            con.row_factory = sqlite3.Row
            found = con.execute("SELECT * FROM logs WHERE fingerprint = ? ORDER BY id DESC LIMIT ?",
                                (fingerprint, limit - len(events))).fetchall()
            con.close()
        except sqlite3.Error:
            continue
        for event in found:
            event = dict(event)
            for column in ("metadata", "exception"):
                if event[column]:
                    event[column] = orjson.loads(event[column])
            event["segment"] = row["name"]
            events.append(event)
        if len(events) >= limit:
            break
    events.sort(key=lambda event: event["ts"], reverse=True)
    return events


@bp.get("/api/errors/<fingerprint>")
def show_group(fingerprint):
    sidecar = _sidecar()
    meta = catalog.connect_meta_cached(sidecar.data_dir)
    row = meta.execute("SELECT {} FROM error_groups WHERE fingerprint = ?".format(GROUP_COLUMNS),
                       (fingerprint,)).fetchone()
    if row is None:
        raise ApiError(404, "not_found", "no error group has fingerprint {}".format(fingerprint[:64]))
    group = _group_dict(row)
    since = format_ts(sidecar.clock() - timedelta(hours=48))[:13]
    group["hourly"] = [dict(hour) for hour in meta.execute(
        "SELECT hour, count FROM error_group_hours WHERE fingerprint = ? AND hour >= ? ORDER BY hour",
        (fingerprint, since))]
    group["events"] = recent_events(sidecar.data_dir, meta, fingerprint, _int_arg("events", 20, 1, 200))
    return json_response(group)


def _status_body():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", 'send a JSON object such as {"status": "resolved"}')
    status = body.get("status")
    if status not in STATUSES:
        raise ApiError(400, "invalid_status", "status must be one of " + ", ".join(STATUSES))
    until_count, until = body.get("ignore_until_count"), body.get("ignore_until")
    if status != "ignored" and (until_count is not None or until is not None):
        raise ApiError(400, "invalid_status", "ignore_until_count and ignore_until go with status ignored")
    if until_count is not None and (not isinstance(until_count, int) or isinstance(until_count, bool)
                                    or until_count < 1):
        raise ApiError(400, "invalid_status", "ignore_until_count must be a whole number of at least 1")
    if until is not None:
        try:
            until = format_ts(parse_timestamp(until))
        except EntryError as error:
            raise ApiError(400, "invalid_status", "ignore_until: " + str(error)) from None
    return status, until_count, until


@bp.post("/api/errors/<fingerprint>/status")
def set_status(fingerprint):
    sidecar = _sidecar()
    status, until_count, until = _status_body()
    meta = catalog.connect_meta_cached(sidecar.data_dir)
    now_text = format_ts(sidecar.clock())
    with catalog.immediate(meta):
        changed = meta.execute(
            "UPDATE error_groups SET status = ?, status_changed_at = ?, ignore_until_count = ?, ignore_until = ?, "
            "count_at_ignore = count, regressed_at = CASE WHEN ? = 'unresolved' THEN regressed_at END "
            "WHERE fingerprint = ?", (status, now_text, until_count, until, status, fingerprint)).rowcount
    if not changed:
        raise ApiError(404, "not_found", "no error group has fingerprint {}".format(fingerprint[:64]))
    row = meta.execute("SELECT {} FROM error_groups WHERE fingerprint = ?".format(GROUP_COLUMNS),
                       (fingerprint,)).fetchone()
    return json_response(_group_dict(row))
