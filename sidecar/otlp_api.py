"""OTLP/HTTP logs: `POST /v1/logs`, what an OpenTelemetry SDK or Collector exports.

Protobuf (`application/x-protobuf`) or OTLP/JSON (`application/json`),
plain or gzip/deflate, authenticated with the ingest token as `Authorization:
Bearer <token>`. The records go through the same validation, scrubbing,
fingerprinting and writer as `POST /api/logs`; the answer is in the encoding
of the request: an `ExportLogsServiceResponse` (with `partial_success` when
records were rejected), or a `google.rpc.Status` for a 4xx/5xx.
"""
import orjson
from flask import Blueprint, Response, current_app, g, request

from ingest import otlp
from ingest.body import BodyError, decompress, media_type
from ingest.writer import Batch

from .auth import bearer_token
from .errors import ApiError
from .ingest_api import read_body, store_batch, validate_entries

bp = Blueprint("otlp", __name__)
MIMETYPES = {"protobuf": "application/x-protobuf", "json": "application/json"}


def _answer(kind, body, status=200, headers=None):
    return Response(body, status=status, headers=headers, mimetype=MIMETYPES[kind])


@bp.errorhandler(ApiError)
def _status(error):
    """Every error of /v1/logs as the OTLP spec asks: a Status, in the request's encoding (JSON when that
    is neither protobuf nor JSON), with the sidecar's error code in an ErrorInfo detail."""
    kind = g.get("otlp_kind") or "json"
    return _answer(kind, otlp.status_body(kind, error.status, error.code, error.message, error.details),
                   error.status, error.headers)


def _card_check_body(entries):
    """What validate_entries looks at to skip the per-entry card checks: the entries as JSON (a protobuf
    body carries numbers in binary, where a card number would not show)."""
    try:
        return orjson.dumps(entries)
    except (TypeError, orjson.JSONEncodeError):
        return None  # every entry gets the full check


@bp.post("/v1/logs")
def export_logs():
    sidecar = current_app.extensions["sidecar"]
    content_type = request.headers.get("Content-Type")
    kind = g.otlp_kind = otlp.media_kind(content_type)
    sidecar.tokens.require(bearer_token())
    if kind is None:
        raise ApiError(415, "unsupported_media_type",
                       "Content-Type {!r} is not accepted on /v1/logs; send application/x-protobuf or "
                       "application/json (OTEL_EXPORTER_OTLP_LOGS_PROTOCOL=http/protobuf or http/json)"
                       .format(media_type(content_type) or "(none)"),
                       {"supported": list(otlp.PROTOBUF_TYPES + otlp.JSON_TYPES)})
    settings = sidecar.settings
    try:
        body = decompress(read_body(settings["max_body_bytes"]), request.headers.get("Content-Encoding"),
                          settings["max_decompressed_bytes"])
        decoded = otlp.decode(body, kind, settings["max_batch_entries"])
    except BodyError as error:
        raise ApiError(error.status, error.code, error.message, error.details) from None
    rejected = decoded.rejected
    if rejected:
        sidecar.metrics.rejected(rejected)
    rows = []
    if decoded.entries:
        rows, invalid, tally = validate_entries(decoded.entries, sidecar, _card_check_body(decoded.entries))
        if invalid:  # validate_entries counted these; index them by record
            rejected = rejected + [{"index": decoded.entry_records[item["index"]], "error": item["error"]}
                                   for item in invalid]
    g.log_fields = {"accepted": len(rows), "rejected": len(rejected), "otlp_encoding": kind}
    if rows:
        store_batch(sidecar, Batch(rows, None, None, tally))
    message = otlp.rejection_message(decoded, rejected) if rejected else ""
    return _answer(kind, otlp.export_response(kind, len(rejected), message))
