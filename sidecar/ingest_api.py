"""POST /api/logs: a thin HTTP layer over ingest.body, ingest.entries and the writer."""
import sqlite3
import threading
from datetime import timedelta

import orjson
from flask import Blueprint, current_app, g, request

from ingest.body import BodyError, decompress, parse_entries
from ingest.entries import EntryError, format_ts, to_row_and_metadata
from ingest.idempotency import MAX_KEY_LENGTH, body_hash
from ingest.scrub import body_may_hold_cards
from ingest.tally import Tally
from ingest.writer import Batch, QueueFull, StorageUnavailable

from .auth import bearer_token
from .errors import ApiError, json_response

bp = Blueprint("ingest", __name__)


def read_body(max_bytes):
    length = request.content_length
    if length is not None and length > max_bytes:
        raise ApiError(413, "body_too_large", "the body is larger than {} bytes; send smaller batches"
                       .format(max_bytes), {"max_body_bytes": max_bytes})
    body = request.stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise ApiError(413, "body_too_large", "the body is larger than {} bytes; send smaller batches"
                       .format(max_bytes), {"max_body_bytes": max_bytes})
    return body


def validate_entries(entries, sidecar, body=None):
    """Return (rows, rejected, tally) for a list of decoded entries (`body`: the raw JSON they came from)."""
    now = sidecar.clock()
    limits = sidecar.limits
    if limits.scrub and body is not None and not body_may_hold_cards(body):
        limits = sidecar.limits_without_cards
    received_at = format_ts(now)
    max_ts = format_ts(now + timedelta(seconds=limits.max_future_s))
    rows, metadatas, rejected = [], [], []
    fingerprinter = sidecar.fingerprinter
    for index, entry in enumerate(entries):
        try:
            row, metadata = to_row_and_metadata(entry, received_at, max_ts, limits, fingerprinter)
        except EntryError as error:
            rejected.append({"index": index, "error": str(error)})
            continue
        rows.append(row)
        metadatas.append(metadata)
    sidecar.save_templates()
    if rejected:
        sidecar.metrics.rejected(rejected)
    return rows, rejected, Tally.of_rows(rows, metadatas)


def store_batch(sidecar, batch):
    """Hand a batch to the writer and wait for the commit; raise ApiError when it cannot."""
    try:
        _submit_and_wait(sidecar, batch)
    except ApiError as error:
        sidecar.metrics.rejected_batch(error.code, len(batch.rows))
        raise
    sidecar.metrics.accepted(len(batch.rows))


def _submit_and_wait(sidecar, batch):
    try:
        sidecar.writer.submit(batch)
    except QueueFull:
        raise ApiError(429, "queue_full", "the sidecar is busy writing; retry after the pause in Retry-After",
                       {"queued_entries": sidecar.writer.queued_entries}, {"Retry-After": "1"}) from None
    except StorageUnavailable as error:
        raise _unavailable() from None
    if not batch.done.wait(sidecar.settings["request_timeout_s"]):
        raise ApiError(503, "commit_timeout", "the batch was not confirmed in time; retry with the same "
                       "Idempotency-Key to avoid storing it twice", headers={"Retry-After": "5"})
    if batch.error is not None:
        raise _unavailable()


def _unavailable():
    return ApiError(503, "storage_unavailable",
                    "the sidecar cannot write to its storage right now (disk full or read-only?); "
                    "nothing of this batch was stored, retry later", headers={"Retry-After": "5"})


def _idempotency_key():
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ApiError(400, "invalid_idempotency_key",
                       "Idempotency-Key must be 1 to {} characters".format(MAX_KEY_LENGTH))
    return key


def _store_once(sidecar, key, hashed_body, rows, response, tally):
    try:
        state, stored = sidecar.idempotency.claim(key, hashed_body)
    except sqlite3.Error:
        raise _unavailable() from None
    if state == "replay":
        return json_response(orjson.loads(stored), headers={"Idempotent-Replayed": "true"})
    if state == "mismatch":
        # As Stripe and the IETF Idempotency-Key draft do: answering the first batch's
        # acknowledgement would tell the client that this other batch was stored.
        raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was sent with another body in the "
                       "last {} h; nothing of this batch was stored: send a new batch with a new key"
                       .format(round(sidecar.settings["idempotency_ttl_s"] / 3600)))
    if state == "busy":
        raise ApiError(409, "idempotency_key_in_use", "a request with this Idempotency-Key is still "
                       "being processed; retry after it finishes", headers={"Retry-After": "1"})
    batch = Batch(rows, key, response, tally, hashed_body)
    try:
        store_batch(sidecar, batch)
    except ApiError as error:
        if error.code == "commit_timeout":
            threading.Thread(target=_settle_later, args=(sidecar, batch), daemon=True).start()
        else:
            sidecar.idempotency.release(key)
        raise
    sidecar.idempotency.complete(key, response)
    return None


def _settle_later(sidecar, batch):
    """The batch is still queued after the request gave up: settle its key when it is written."""
    batch.done.wait()
    if batch.error is None:
        sidecar.idempotency.complete(batch.idempotency_key, batch.response)
    else:
        sidecar.idempotency.release(batch.idempotency_key)


def _rows_of_request(sidecar, keyed):
    """(rows, rejected, tally, the body's hash when `keyed`, else None) of the request's body.
    The body and its decoded entries go out of scope here, before the batch waits for its
    commit: a 1000-entry batch decodes to about 3 times its JSON (9 MB for one of 2.7 MB with
    stack traces), and each request waiting held them."""
    settings = sidecar.settings
    try:
        body = decompress(read_body(settings["max_body_bytes"]), request.headers.get("Content-Encoding"),
                          settings["max_decompressed_bytes"])
        entries = parse_entries(body, request.headers.get("Content-Type"))
    except BodyError as error:
        raise ApiError(error.status, error.code, error.message, error.details) from None
    if len(entries) > settings["max_batch_entries"]:
        raise ApiError(413, "too_many_entries", "{} entries in one request; the limit is {}"
                       .format(len(entries), settings["max_batch_entries"]),
                       {"max_batch_entries": settings["max_batch_entries"]})
    if not entries:
        raise ApiError(400, "empty_batch", "the body holds no entries")
    return validate_entries(entries, sidecar, body) + (body_hash(body) if keyed else None,)


@bp.post("/api/logs")
def ingest_logs():
    sidecar = current_app.extensions["sidecar"]
    sidecar.tokens.require(bearer_token())
    key = _idempotency_key()  # a bad key is told before the body is read
    rows, rejected, tally, hashed_body = _rows_of_request(sidecar, key is not None)
    g.log_fields = {"accepted": len(rows), "rejected": len(rejected)}
    if not rows:
        raise ApiError(400, "no_valid_entries", "no entry of the batch is valid; nothing was stored",
                       {"rejected": rejected})
    response = orjson.dumps({"accepted": len(rows), "rejected": rejected}).decode()
    if key is not None:
        replay = _store_once(sidecar, key, hashed_body, rows, response, tally)
        if replay is not None:
            return replay
    else:
        store_batch(sidecar, Batch(rows, None, response, tally))
    return current_app.response_class(response, status=200, mimetype="application/json")
