"""Validate one LogEntry and turn it into a row of the `logs` table.

Each entry is judged on its own: `EntryError` rejects it with a message that
says what to fix, and the rest of its batch goes on.
"""
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson

# EntryError and keep_displaced stay importable from ingest.entries, as before the move.
from .metadata import (EntryError, SIDECAR_KEY, dumps, encode_metadata, fit_metadata, keep_displaced,  # noqa: F401
                       name_sidecar_keys, truncate_utf8, wide_integers_as_floats)
from .scrub import has_sensitive_key, may_hold_card, scrub_text, scrub_value
from .timestamps import format_ts
from .wire import WireEntry

LEVELS = ("debug", "info", "warn", "error", "critical")
LEVEL_ALIASES = {
    **{level: level for level in LEVELS},
    "trace": "debug", "verbose": "debug", "dbg": "debug",
    "information": "info", "informational": "info", "notice": "info", "log": "info",
    "warning": "warn", "wrn": "warn",
    "err": "error", "exception": "error", "severe": "error",
    "fatal": "critical", "crit": "critical", "crt": "critical", "alert": "critical",
    "emerg": "critical", "emergency": "critical", "panic": "critical",
}
STRING_FIELDS = ("trace_id", "span_id", "environment", "release", "host")
KNOWN_FIELDS = frozenset(("timestamp", "level", "service", "message", "metadata",
                          "user_id", "exception", "fingerprint") + STRING_FIELDS)


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 64 * 1024
    max_metadata_bytes: int = 64 * 1024
    max_metadata_depth: int = 20
    max_future_s: int = 7 * 86400
    scrub: bool = True
    cards_possible: bool = True  # False when the request body was shown to hold no card number

    @classmethod
    def from_settings(cls, settings):
        return cls(settings["max_message_bytes"], settings["max_metadata_bytes"],
                   settings["max_metadata_depth"], settings["max_future_s"], settings["scrub"])


def _from_epoch(number):
    # Magnitude tells the unit: seconds until the year 5138, then ms, µs, ns.
    magnitude = abs(number)
    try:
        if magnitude < 1e11:
            seconds = number
        elif magnitude < 1e14:
            seconds = number / 1e3
        elif magnitude < 1e17:
            seconds = number / 1e6
        else:
            seconds = number / 1e9  # OverflowError for an integer of over 308 digits
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise EntryError("timestamp {} is out of range".format(repr(number)[:64])) from None


def parse_timestamp(value):
    """Return an aware UTC datetime from RFC 3339 text or epoch s/ms/µs/ns."""
    if isinstance(value, str):
        moment = _from_text(value)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=timezone.utc)
        try:
            return moment.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise EntryError("timestamp {!r} is out of range in UTC".format(value[:64])) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:
            raise EntryError("timestamp must not be NaN")
        return _from_epoch(value)
    raise EntryError("timestamp must be an RFC 3339 string or a number, got {}".format(type(value).__name__))


def _from_text(value):
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    try:  # RFC 3339 5.6 allows a lowercase "t" and "z"
        return datetime.fromisoformat(value.upper())
    except ValueError:
        raise EntryError("timestamp {!r} is not RFC 3339 (e.g. 2024-05-01T12:00:00.000Z) "
                         "nor a number of epoch seconds, ms or ns".format(value[:64])) from None


def _optional_strings(entry):
    values = [entry.get(field) for field in STRING_FIELDS]
    for field, value in zip(STRING_FIELDS, values):
        if value is not None and type(value) is not str:
            raise EntryError("{} must be a string, got {}".format(field, type(value).__name__))
    return values


def _user_id(entry):
    value = entry.get("user_id")
    if value is None or type(value) is str:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _user_id_text(value)
    raise EntryError("user_id must be a string, got {}".format(type(value).__name__))


def _user_id_text(number):
    # An integer past 64 bits as the float orjson reads it (see wide_integers_as_floats):
    # the same text whichever way the body was decoded.
    return str(wide_integers_as_floats(number))


def _needs_scrubbing(value, encoded, cards_possible):
    return has_sensitive_key(value) or (cards_possible and may_hold_card(encoded))


def _exception(value, scrub, limits_cards):
    if value is None:
        return None, None
    chain = value if isinstance(value, list) else [value]
    for item in chain:
        if not isinstance(item, dict):
            raise EntryError("exception must be an object {type, value, stacktrace} or a list of them")
        frames = item.get("stacktrace")
        if frames is not None and not (isinstance(frames, list) and all(isinstance(f, dict) for f in frames)):
            raise EntryError("exception.stacktrace must be a list of frame objects")
    value, encoded = dumps(value, "exception")
    if scrub and _needs_scrubbing(value, encoded, limits_cards):
        value = scrub_value(value)
        encoded = orjson.dumps(value)
    return value, encoded.decode()


def _fingerprint(value):
    if value is None:
        return None
    if not (isinstance(value, list) and value and all(isinstance(part, str) for part in value)):
        raise EntryError("fingerprint must be a non-empty list of strings")
    return value


def _metadata_and_displaced(entry):
    """(metadata with the unknown top-level fields added, the fields whose names it already had)."""
    metadata = entry.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise EntryError("metadata must be an object, got {}".format(type(metadata).__name__))
    displaced = None
    if not KNOWN_FIELDS.issuperset(entry):
        # Unknown top-level fields are kept, never dropped silently.
        for key, value in entry.items():
            if key in KNOWN_FIELDS:
                continue
            if key in metadata:
                displaced = displaced or {}
                displaced[key] = value
            else:
                metadata[key] = value
    return metadata, displaced


def to_row(entry, received_at, max_ts, limits, fingerprinter=None):
    """Return the row tuple for `entry` (columns as in schema.LOG_COLUMNS).

    `received_at` is the formatted receive time, `max_ts` the formatted
    latest timestamp accepted; `fingerprinter(service, level, message,
    exception, client_fingerprint)` returns the error group's fingerprint or None.
    """
    return to_row_and_metadata(entry, received_at, max_ts, limits, fingerprinter)[0]


def to_row_and_metadata(entry, received_at, max_ts, limits, fingerprinter=None):
    """to_row, and the metadata dict the row's metadata column was encoded from (None without
    metadata), so that counting it (ingest/tally.py) needs no second decoding.

    `entry` is a decoded JSON value (usually a dict) or a WireEntry (ingest/wire.py), whose
    fields msgspec has already type-checked; both give the same row.
    """
    if type(entry) is WireEntry:
        return _wire_row(entry, received_at, max_ts, limits, fingerprinter)
    if not isinstance(entry, dict):
        raise EntryError("an entry must be a JSON object, got {}".format(type(entry).__name__))
    service = entry.get("service")
    if not isinstance(service, str) or not service or service.isspace():
        raise EntryError(_SERVICE_REQUIRED)
    message = entry.get("message")
    if not isinstance(message, str):
        raise EntryError("message is required and must be a string")
    level = entry.get("level")
    level = "info" if level is None else _level(level)  # null means missing, as for timestamp and metadata
    ts = _ts(entry.get("timestamp"), received_at, max_ts, limits)
    trace_id, span_id, environment, release, host = _optional_strings(entry)
    user_id = _user_id(entry)
    exception, exception_json = _exception(entry.get("exception"), limits.scrub, limits.cards_possible)
    client_fingerprint = _fingerprint(entry.get("fingerprint"))
    metadata, displaced = _metadata_and_displaced(entry)
    return _row(ts, level, service, message, trace_id, span_id, user_id, environment, release, host,
                metadata, exception, exception_json, client_fingerprint, received_at, limits, fingerprinter,
                displaced)


def _wire_row(entry, received_at, max_ts, limits, fingerprinter):
    """to_row_and_metadata of a WireEntry: the same value checks, in the same order, without
    the type checks msgspec has made."""
    service = entry.service
    if not service or service.isspace():
        raise EntryError(_SERVICE_REQUIRED)
    level = LEVEL_ALIASES.get(entry.level) or ("info" if entry.level is None else _level(entry.level))
    ts = _ts(entry.timestamp, received_at, max_ts, limits)
    user_id = entry.user_id
    if user_id is not None and type(user_id) is not str:
        user_id = _user_id_text(user_id)
    exception, exception_json = None, None  # the calls below are for the few entries that have them
    if entry.exception is not None:
        exception, exception_json = _exception(entry.exception, limits.scrub, limits.cards_possible)
    client_fingerprint = entry.fingerprint
    if client_fingerprint is not None:
        _fingerprint(client_fingerprint)  # msgspec checked the list of strings; this rejects an empty one
    metadata = entry.metadata
    if metadata is None:
        metadata = {}
    return _row(ts, level, entry.service, entry.message, entry.trace_id, entry.span_id, user_id,
                entry.environment, entry.release, entry.host, metadata, exception, exception_json,
                client_fingerprint, received_at, limits, fingerprinter)


_SERVICE_REQUIRED = "service is required and must be a non-empty string (not only spaces)"


def _level(level):
    if isinstance(level, str):
        normal = LEVEL_ALIASES.get(level) or LEVEL_ALIASES.get(level.lower())
        if normal is not None:
            return normal
    raise EntryError("level {!r} is not one of {} (or an alias such as warning, fatal, err, trace)"
                     .format(level, ", ".join(LEVELS)))


def _ts(stamp, received_at, max_ts, limits):
    """The stored timestamp text of `stamp` (the receive time when there is none)."""
    if stamp is None:
        ts = received_at
    elif type(stamp) is str and len(stamp) == 24 and stamp[23] == "Z" and stamp[19] == "." and stamp[10] == "T" \
            and stamp[4] == "-" and stamp[7] == "-" and stamp[13] == ":" and stamp[16] == ":":  # not an ISO week date (2024-W18-3T...) of the same length
        try:  # already in the stored form: validate it, keep the text
            datetime.fromisoformat(stamp)
        except ValueError:
            parse_timestamp(stamp)  # raises the EntryError that says what is wrong
        ts = stamp
    else:
        ts = format_ts(parse_timestamp(stamp))
    if ts > max_ts:
        raise EntryError("timestamp {} is more than {} s in the future".format(ts, limits.max_future_s))
    return ts


def _row(ts, level, service, message, trace_id, span_id, user_id, environment, release, host,
         metadata, exception, exception_json, client_fingerprint, received_at, limits, fingerprinter,
         displaced=None):
    """The checks and the row common to both kinds of entry: scrubbing, truncation, the
    metadata's JSON and the error group's fingerprint."""
    if client_fingerprint is not None or SIDECAR_KEY in metadata or displaced:
        name_sidecar_keys(metadata, client_fingerprint, displaced)
    if limits.scrub and limits.cards_possible:
        message = scrub_text(message)
    flags = {}
    if len(message) * 4 > limits.max_message_bytes:
        message, original = truncate_utf8(message, limits.max_message_bytes)
        if original:
            flags["message"] = {"original_bytes": original}
    encoded = encode_metadata(metadata, limits) if metadata else None
    if flags or encoded is not None and len(encoded) > limits.max_metadata_bytes:
        encoded = fit_metadata(metadata, encoded, flags, limits.max_metadata_bytes)
    if encoded is not None:
        encoded = encoded.decode()
    fingerprint = None
    if fingerprinter is not None:
        fingerprint = fingerprinter(service, level, message, exception, client_fingerprint)
    return (ts, level, service, message, fingerprint, trace_id, span_id, user_id,
            environment, release, host, encoded, exception_json, received_at), (metadata if encoded else None)
