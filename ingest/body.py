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


UTF8_BOM = b"\xef\xbb\xbf"


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
                        "Content-Encoding {!r} is not supported; send gzip, deflate, br or no encoding".format(encoding),
                        {"supported": ["gzip", "deflate", "br", "identity"]})
    if encoding == "deflate":
        return _inflate_member(body, _deflate_wbits(body), encoding, max_bytes)[0]
    return _gunzip(body, max_bytes)


def _gunzip(body, max_bytes):
    """All the members of a gzip stream, one after another (RFC 1952 2.2: a stream may hold
    several, as `cat a.gz b.gz` makes; gunzip and Go's reader read them all). NUL padding after
    the last member is ignored, as gunzip does; other bytes there are an error, not data to drop."""
    output, rest = b"", body
    while True:
        # 32 + MAX_WBITS: zlib tells a gzip header from a zlib one by itself.
        member, rest = _inflate_member(rest, 32 + zlib.MAX_WBITS, "gzip", max_bytes - len(output))
        output += member
        if not rest.strip(b"\0"):
            return output
        if not rest.startswith(b"\x1f\x8b"):
            raise BodyError(400, "invalid_encoding", "the gzip stream is followed by {} bytes that are not "
                            "gzip".format(len(rest)), {"trailing_bytes": len(rest)})


def _deflate_wbits(body):
    # HTTP's "deflate" is the zlib format (RFC 9110 8.4.1.2), but some clients send raw deflate:
    # a zlib header is two bytes, the first naming method 8, together a multiple of 31.
    if len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0:
        return zlib.MAX_WBITS
    return -zlib.MAX_WBITS


def _inflate_member(body, wbits, encoding, max_bytes):
    """(the decompressed bytes of the one stream at the start of `body`, the bytes after it)."""
    inflater = zlib.decompressobj(wbits)
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
    return output, inflater.unused_data


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
    if body.startswith(UTF8_BOM):  # RFC 8259 8.1: a parser may ignore one; some Windows tools write it
        body = body[len(UTF8_BOM):]
    if (kind in JSON_TYPES or kind in NDJSON_TYPES) and (not body or body.isspace()):
        return []  # the caller answers 400 empty_batch (isspace stops at the first other byte)
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
        if isinstance(document.get("logs"), list) and not ("service" in document and "message" in document):
            raise BodyError(400, "invalid_body", "a {{\"logs\": [...]}} body must hold nothing beside \"logs\"; "
                            "found {}".format(", ".join(sorted(key for key in document if key != "logs"))[:200]))
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
