"""Turn a request body into a list of entries: decompression with a cap, JSON and NDJSON.

Errors here concern the whole body, so nothing of it is stored: `BodyError`
carries the HTTP status, a stable code and a message that says what to fix.
"""
import zlib

import orjson

from . import wire

JSON_TYPES = ("application/json", "text/json")
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines", "application/jsonlines")


class BodyError(Exception):
    def __init__(self, status, code, message, details=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def decompress(body, encoding, max_bytes):
    """Decode `Content-Encoding`; stop as soon as the output passes `max_bytes`."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
        return body
    if encoding == "br":
        return _unbrotli(body, max_bytes)
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BodyError(415, "unsupported_encoding",
                        "Content-Encoding {!r} is not supported; send gzip, br or no encoding".format(encoding),
                        {"supported": ["gzip", "deflate", "br", "identity"]})
    # 32 + MAX_WBITS: zlib detects gzip or zlib headers by itself.
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS)
    try:
        output = inflater.decompress(body, max_bytes + 1)
        if len(output) > max_bytes or inflater.unconsumed_tail:
            raise _too_large(max_bytes)
        output += inflater.flush()
    except zlib.error as error:
        raise BodyError(400, "invalid_encoding", "the body is not valid {}: {}".format(encoding, error)) from None
    if len(output) > max_bytes:
        raise _too_large(max_bytes)
    if not inflater.eof:
        raise BodyError(400, "invalid_encoding", "the {} stream is truncated".format(encoding))
    return output


def _unbrotli(body, max_bytes):
    import brotli  # imported here: only Sentry SDKs send brotli
    decompressor = brotli.Decompressor()
    try:
        output = decompressor.process(body, output_buffer_limit=max_bytes + 1)
        while len(output) <= max_bytes and not decompressor.can_accept_more_data() \
                and not decompressor.is_finished():
            output += decompressor.process(b"", output_buffer_limit=max_bytes + 1 - len(output))
    except brotli.error as error:
        raise BodyError(400, "invalid_encoding", "the body is not valid br: {}".format(error)) from None
    if len(output) > max_bytes:
        raise _too_large(max_bytes)
    if not decompressor.is_finished():
        raise BodyError(400, "invalid_encoding", "the br stream is truncated")
    return output


def _too_large(max_bytes):
    return BodyError(413, "body_too_large",
                     "the decompressed body is larger than {} bytes; send smaller batches".format(max_bytes),
                     {"max_decompressed_bytes": max_bytes})


def media_type(content_type):
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_entries(body, content_type):
    """Return the list of entries in `body`; raise BodyError for a body that is not one.

    The entries are WireEntry structs when ingest/wire.py takes the whole body, otherwise
    dicts decoded here; ingest/entries.py makes the same rows of either.
    """
    kind = media_type(content_type)
    if kind in JSON_TYPES:
        entries = wire.decode_json(body)
        return entries if entries is not None else _parse_json(body)
    if kind in NDJSON_TYPES:
        entries = wire.decode_ndjson(body)
        return entries if entries is not None else _parse_ndjson(body)
    raise BodyError(415, "unsupported_media_type",
                    "Content-Type {!r} is not accepted; send application/json or application/x-ndjson"
                    .format(kind or "(none)"),
                    {"supported": list(JSON_TYPES + NDJSON_TYPES)})


def load_json(body):
    """The decoded JSON document of a body; a 400 BodyError naming the line, column and byte."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BodyError(400, "invalid_json", "the body is not valid JSON: {} (line {}, column {}, byte {})"
                        .format(error.msg, error.lineno, error.colno, error.pos),
                        {"line": error.lineno, "column": error.colno, "position": error.pos}) from None


def _parse_json(body):
    document = load_json(body)
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        if "logs" in document and len(document) == 1:
            if not isinstance(document["logs"], list):
                raise BodyError(400, "invalid_body", "\"logs\" must be an array of entries")
            return document["logs"]
        return [document]
    raise BodyError(400, "invalid_body",
                    "the body must be an entry object, an array of entries or {\"logs\": [...]}")


def _parse_ndjson(body):
    entries = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError as error:
            raise BodyError(400, "invalid_json", "line {} is not valid JSON: {} (column {})"
                            .format(number, error.msg, error.colno),
                            {"line": number, "column": error.colno}) from None
    return entries
