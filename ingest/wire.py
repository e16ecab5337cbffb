"""The fast way in for the common body: LogEntries decoded straight into typed structs.

msgspec decodes a body of well-formed entries into `WireEntry` structs, type checks
included, at C speed: no dict per entry and no field-by-field type test in Python
afterwards (ingest/entries.py reads the attributes). On the request threads, which
hold the GIL, that is about a sixth of an entry's cost (bench/ingest_threads.py).

It is only a shortcut. Any body it does not take whole returns None, and the caller
decodes it the reference way (orjson into dicts, every field checked in Python),
which names each bad entry and keeps unknown fields: an unknown top-level field, a
wrong type anywhere, invalid JSON, an integer past 64 bits (orjson reads it as a
float). A body this decoder takes yields exactly the rows the reference way yields;
tests/test_ingest_wire.py holds the two to that.
"""
from typing import Any, Union

import msgspec

_OptionalText = Union[str, None]


class WireEntry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A LogEntry whose fields all have the types the schema allows (values are checked later).

    gc=False: the struct holds no reference cycles of its own (its dicts are tracked by
    themselves), and a batch of 10,000 untracked structs costs the cyclic GC nothing.
    """
    service: str
    message: str
    timestamp: Union[str, int, float, None] = None
    level: Union[str, None] = "info"  # null: missing, as the reference way reads it
    metadata: Union[dict, None] = None
    trace_id: _OptionalText = None
    span_id: _OptionalText = None
    user_id: Union[str, int, float, None] = None
    environment: _OptionalText = None
    release: _OptionalText = None
    host: _OptionalText = None
    exception: Any = None
    fingerprint: Union[list[str], None] = None


class _Wrapped(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    logs: list[WireEntry]


_ARRAY = msgspec.json.Decoder(list[WireEntry])
_WRAPPED = msgspec.json.Decoder(_Wrapped)
_ONE = msgspec.json.Decoder(WireEntry)
# What the reference way would have to be asked: msgspec's own errors, and the TypeError
# of an integer past 64 bits or the RecursionError of a deeply nested value.
_NOT_TAKEN = (msgspec.MsgspecError, TypeError, ValueError, RecursionError)


def decode_json(body):
    """The entries of a JSON body as WireEntry structs, or None when the reference way must decode it."""
    start = body[:64].lstrip()[:1]
    try:
        if start == b"[":
            return _ARRAY.decode(body)
        if start != b"{":
            return None
        # {"logs": [...]} with nothing else, or one entry: the reference way tells them apart
        # by their keys; here the first decoder that takes the whole object decides.
        try:
            return _WRAPPED.decode(body).logs
        except _NOT_TAKEN:
            return [_ONE.decode(body)]
    except _NOT_TAKEN:
        return None


def decode_ndjson(body):
    """The entries of an NDJSON body (blank lines skipped) as WireEntry structs, or None."""
    try:
        return [_ONE.decode(line) for line in body.split(b"\n") if line.strip()]
    except _NOT_TAKEN:
        return None
