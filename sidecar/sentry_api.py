"""Sentry SDK endpoints: `/api/<project_id>/envelope/` and `/api/<project_id>/store/`.

A DSN `http://<ingest token>@host:port/<project_id>` makes the official SDKs
send here; the key is an ingest token.
"""
import re
import uuid

import orjson
from flask import Blueprint, current_app, request

from ingest.body import BodyError, decompress
from ingest.sentry import event_items, parse_envelope, to_log_entry
from ingest.writer import Batch

from .errors import ApiError, json_response
from .ingest_api import read_body, store_batch, validate_entries

bp = Blueprint("sentry", __name__)
_KEY = re.compile(r"sentry_key\s*=\s*([^,\s]+)")


def sentry_key():
    for header in ("X-Sentry-Auth", "Authorization"):
        value = request.headers.get(header, "")
        if value.lower().startswith("sentry"):
            match = _KEY.search(value)
            if match:
                return match.group(1)
    return request.args.get("sentry_key")


def _read(sidecar):
    settings = sidecar.settings
    try:
        return decompress(read_body(settings["max_body_bytes"]), request.headers.get("Content-Encoding"),
                          settings["max_decompressed_bytes"])
    except BodyError as error:
        raise ApiError(error.status, error.code, error.message, error.details) from None


def _store(sidecar, events, project_id, body):
    entries = [to_log_entry(event, project_id) for event in events]
    rows, rejected, tally = validate_entries(entries, sidecar, body)
    if rejected and not rows:
        raise ApiError(400, "invalid_event", rejected[0]["error"], {"rejected": rejected})
    if rows:
        try:
            store_batch(sidecar, Batch(rows, None, None, tally))
        except ApiError as error:
            if error.status == 429:
                error.headers["X-Sentry-Rate-Limits"] = "{}::organization".format(error.headers["Retry-After"])
            raise


@bp.post("/api/<int:project_id>/envelope/")
def envelope(project_id):
    sidecar = current_app.extensions["sidecar"]
    sidecar.tokens.require(sentry_key())
    try:
        body = _read(sidecar)
        header, items = parse_envelope(body)
        events, _skipped = event_items(items)
    except BodyError as error:
        raise ApiError(error.status, error.code, error.message, error.details) from None
    for event in events:
        event.setdefault("event_id", header.get("event_id"))
    _store(sidecar, events, project_id, body)
    event_id = header.get("event_id") or (events[0].get("event_id") if events else None)
    return json_response({"id": event_id} if event_id else {})


@bp.post("/api/<int:project_id>/store/")
def store(project_id):
    sidecar = current_app.extensions["sidecar"]
    sidecar.tokens.require(sentry_key())
    body = _read(sidecar)
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_json", "the event is not valid JSON: {}".format(error.msg)) from None
    if not isinstance(event, dict):
        raise ApiError(400, "invalid_event", "the event must be a JSON object")
    event.setdefault("event_id", uuid.uuid4().hex)
    _store(sidecar, [event], project_id, body)
    return json_response({"id": event["event_id"]})
