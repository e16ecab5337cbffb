"""The metadata of an entry, as it is stored: encoded, checked for depth, scrubbed, the
sidecar's own keys named, and fitted under the size cap without losing what it displaces.

Kept apart from ingest/entries.py (which imports these helpers by name, so calls on the
request path stay global lookups) to keep both modules small. `EntryError` lives here
because these helpers raise it; ingest.entries re-exports it.
"""
import orjson

from .scrub import has_sensitive_key, may_hold_card, scrub_value


class EntryError(ValueError):
    """This entry cannot be stored; the message tells the client why."""


def truncate_utf8(text, max_bytes):
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text, 0
    return encoded[:max_bytes].decode("utf-8", "ignore"), len(encoded)


def _depth(value):
    """Nesting depth of dicts and lists, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _check_depth(metadata, limit):
    # Called when the count of brackets in its JSON (C speed, an upper bound of the depth) is past the limit.
    depth = _depth(metadata)
    if depth > limit:
        raise EntryError("metadata is nested {} levels deep; the limit is {}".format(depth, limit))


def _truncate_metadata(metadata, limit):
    """Keep whole keys while they fit; cut the first string that does not; drop the rest."""
    kept, used, dropped = {}, 2, []
    for key, value in metadata.items():
        size = len(orjson.dumps({key: value})) + 1
        if used + size <= limit:
            kept[key] = value
            used += size
        elif isinstance(value, str) and used + len(key) + 64 < limit:
            kept[key] = truncate_utf8(value, limit - used - len(key) - 64)[0]
            used = limit
        else:
            dropped.append(key)
    return kept, dropped


def wide_integers_as_floats(value):
    """`value` with every integer past 64 bits made a float, or `value` itself when it holds none.

    msgspec (ingest/wire.py) keeps such integers, which orjson cannot encode; orjson.loads,
    the reference way in, reads their digits as a float (correctly rounded, like float()):
    so they are stored the same whichever way the entry came in.
    """
    if type(value) is int:
        if -2 ** 63 <= value < 2 ** 64:
            return value
        try:
            return float(value)
        except OverflowError:
            raise EntryError("a number of {} digits is out of range".format(len(str(abs(value))))) from None
    if type(value) is dict:
        return {key: wide_integers_as_floats(child) for key, child in value.items()}
    if type(value) is list:
        return [wide_integers_as_floats(child) for child in value]
    return value


def dumps(value, what):
    """(value, its JSON): integers past 64 bits as floats (see wide_integers_as_floats)."""
    try:
        return value, orjson.dumps(value)
    except TypeError as error:  # orjson.JSONEncodeError included
        return _dumps_after(value, what, error)


def _dumps_after(value, what, error):
    if "64-bit" in str(error):  # "Integer exceeds 64-bit range"
        try:
            value = wide_integers_as_floats(value)
            return value, orjson.dumps(value)
        except (TypeError, RecursionError):
            pass
    raise EntryError("{} cannot be stored as JSON: {}".format(what, error)) from None


def encode_metadata(metadata, limits):
    # Every entry with metadata comes here: the common case runs inline, without calls.
    try:
        encoded = orjson.dumps(metadata)
    except TypeError as error:
        as_stored, encoded = _dumps_after(metadata, "metadata", error)
        metadata.clear()
        metadata.update(as_stored)
    if encoded.count(b"{") + encoded.count(b"[") > limits.max_metadata_depth:
        _check_depth(metadata, limits.max_metadata_depth)
    if limits.scrub and (has_sensitive_key(metadata) or (limits.cards_possible and may_hold_card(encoded))):
        scrubbed = scrub_value(metadata)
        metadata.clear()
        metadata.update(scrubbed)
        encoded = orjson.dumps(metadata)
    return encoded


SIDECAR_KEY = "_sidecar"  # the sidecar's own notes in metadata (truncation flags); no client writes there
DROPPED_KEYS_NAMED = 20  # the flag names this many dropped keys (each cut to 100 characters) and counts all


def name_sidecar_keys(metadata, client_fingerprint, displaced):
    """Give the client's fingerprint its name in metadata and keep `_sidecar` for the sidecar's
    flags; what the client had under those names moves to `_extra` with `displaced`."""
    displaced = dict(displaced or ())
    if client_fingerprint is not None:
        if "fingerprint" in metadata and metadata["fingerprint"] != client_fingerprint:
            displaced["fingerprint"] = metadata["fingerprint"]
        metadata["fingerprint"] = client_fingerprint
    if SIDECAR_KEY in metadata:
        displaced[SIDECAR_KEY] = metadata.pop(SIDECAR_KEY)
    if displaced:
        keep_displaced(metadata, displaced)


def fit_metadata(metadata, encoded, flags, limit):
    """The JSON of `metadata` with the truncation `flags` in it, within `limit` bytes: whole keys
    are kept while they fit, the first string that does not is cut, the rest dropped and named."""
    original_bytes = len(encoded) if encoded is not None else 0
    budget = limit
    while True:
        kept, dropped = dict(metadata), []
        if original_bytes > budget:
            kept, dropped = _truncate_metadata(metadata, max(budget, 0))
            flags["metadata"] = {"original_bytes": original_bytes,
                                 "dropped_keys": [key[:100] for key in dropped[:DROPPED_KEYS_NAMED]],
                                 "dropped_key_count": len(dropped)}
        kept[SIDECAR_KEY] = {"truncated": flags}
        fitted = orjson.dumps(kept)
        if len(fitted) <= limit or budget <= 0:
            metadata.clear()
            metadata.update(kept)
            return fitted
        budget -= len(fitted) - limit  # the flags took that much room: cut the metadata further


def keep_displaced(metadata, displaced):
    """Keep `displaced` (values that lost their name in `metadata` to another value) under
    `metadata._extra`, losing nothing: an `_extra` the client had moves inside it."""
    if "_extra" in metadata:
        key, number = "_extra", 1
        while key in displaced:
            key, number = "_extra_{}".format(number), number + 1
        displaced[key] = metadata["_extra"]
    metadata["_extra"] = displaced
