from datetime import datetime, timezone

import orjson
import pytest

from ingest.entries import EntryError, Limits, format_ts, parse_timestamp, to_row
from ingest.schema import LOG_COLUMNS

RECEIVED = "2026-01-10T12:00:00.000Z"
MAX_TS = "2026-01-17T12:00:00.000Z"


def row_of(entry, limits=Limits()):
    return dict(zip(LOG_COLUMNS, to_row(entry, RECEIVED, MAX_TS, limits)))


def base(**fields):
    entry = {"service": "api", "message": "hello"}
    entry.update(fields)
    return entry


@pytest.mark.parametrize("stamp, expected", [
    ("2026-01-10T10:00:00Z", "2026-01-10T10:00:00.000Z"),
    ("2026-01-10T10:00:00.123456789Z", "2026-01-10T10:00:00.123Z"),
    ("2026-01-10T12:00:00+02:00", "2026-01-10T10:00:00.000Z"),
    ("2026-01-10T10:00:00", "2026-01-10T10:00:00.000Z"),
    (1768039200, "2026-01-10T10:00:00.000Z"),
    (1768039200.5, "2026-01-10T10:00:00.500Z"),
    (1768039200123, "2026-01-10T10:00:00.123Z"),
    (1768039200123456, "2026-01-10T10:00:00.123Z"),
    (1768039200123456789, "2026-01-10T10:00:00.123Z"),
])
def test_timestamps_are_normalised_to_utc_milliseconds(stamp, expected):
    assert row_of(base(timestamp=stamp))["ts"] == expected


def test_missing_timestamp_means_received_time():
    row = row_of(base())
    assert row["ts"] == RECEIVED == row["received_at"]


@pytest.mark.parametrize("level, expected", [
    ("debug", "debug"), ("TRACE", "debug"), ("Info", "info"), ("notice", "info"), ("WARNING", "warn"),
    ("warn", "warn"), ("err", "error"), ("ERROR", "error"), ("fatal", "critical"), ("critical", "critical"),
])
def test_level_aliases(level, expected):
    assert row_of(base(level=level))["level"] == expected


def test_level_defaults_to_info():
    assert row_of(base())["level"] == "info"


@pytest.mark.parametrize("entry, message", [
    ("not an object", "must be a JSON object"),
    ({"message": "x"}, "service is required"),
    ({"service": "", "message": "x"}, "service is required"),
    ({"service": 3, "message": "x"}, "service is required"),
    ({"service": "a"}, "message is required"),
    ({"service": "a", "message": 5}, "message is required"),
    (base(level="loud"), "level 'loud' is not one of"),
    (base(level=3), "is not one of"),
    (base(timestamp="yesterday"), "is not RFC 3339"),
    # Shaped like the stored form (kept as sent once valid), yet not a time.
    (base(timestamp="2025-02-29T12:00:00.000Z"), "is not RFC 3339"),
    (base(timestamp="2025-01-01T24:00:00.000Z"), "is not RFC 3339"),
    (base(timestamp="2025-01-01Tab:00:00.000Z"), "is not RFC 3339"),
    (base(timestamp=True), "must be an RFC 3339 string or a number"),
    (base(timestamp=1e30), "out of range"),
    (base(timestamp="2026-01-20T00:00:00Z"), "in the future"),
    (base(metadata=[1, 2]), "metadata must be an object"),
    (base(metadata="x"), "metadata must be an object"),
    (base(trace_id=123), "trace_id must be a string"),
    (base(host={"a": 1}), "host must be a string"),
    (base(user_id=[1]), "user_id must be a string"),
    (base(exception="boom"), "exception must be an object"),
    (base(exception={"type": "E", "stacktrace": "x"}), "stacktrace must be a list"),
    (base(fingerprint="abc"), "fingerprint must be a non-empty list"),
    (base(fingerprint=[1]), "fingerprint must be a non-empty list"),
])
def test_bad_entries_are_rejected_with_a_reason(entry, message):
    with pytest.raises(EntryError, match=message):
        to_row(entry, RECEIVED, MAX_TS, Limits())


def test_all_fields_are_stored():
    exception = {"type": "ValueError", "value": "bad", "stacktrace": [
        {"filename": "app.py", "function": "main", "lineno": 3, "module": "app", "in_app": True}]}
    row = row_of(base(level="error", metadata={"k": "v"}, trace_id="t1", span_id="s1", user_id=42,
                      environment="prod", release="1.0", host="h1", exception=exception, fingerprint=["a"]))
    assert row["trace_id"] == "t1" and row["span_id"] == "s1" and row["user_id"] == "42"
    assert (row["environment"], row["release"], row["host"]) == ("prod", "1.0", "h1")
    assert orjson.loads(row["exception"]) == exception
    assert orjson.loads(row["metadata"]) == {"k": "v", "fingerprint": ["a"]}


def test_unknown_top_level_fields_are_kept_in_metadata():
    row = row_of(base(metadata={"a": 1, "request_id": "m"}, request_id="top", pid=7))
    assert orjson.loads(row["metadata"]) == {"a": 1, "request_id": "m", "pid": 7, "_extra": {"request_id": "top"}}


def test_long_message_is_truncated_and_flagged():
    row = row_of(base(message="é" * 100), Limits(max_message_bytes=51))
    assert row["message"] == "é" * 25
    assert orjson.loads(row["metadata"])["_sidecar"]["truncated"]["message"] == {"original_bytes": 200}


def test_large_metadata_is_truncated_and_flagged():
    metadata = {"small": 1, "big": "x" * 5000, "other": list(range(2000))}
    row = row_of(base(metadata=metadata), Limits(max_metadata_bytes=1000))
    stored = orjson.loads(row["metadata"])
    assert stored["small"] == 1
    assert stored["big"].startswith("xxx") and len(stored["big"]) < 1000
    assert "other" not in stored
    flag = stored["_sidecar"]["truncated"]["metadata"]
    assert flag["dropped_keys"] == ["other"] and flag["original_bytes"] > 5000


def nested(depth):
    value = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_metadata_nesting_limit():
    assert row_of(base(metadata=nested(20)))["metadata"]
    with pytest.raises(EntryError, match="nested 21 levels deep"):
        to_row(base(metadata=nested(21)), RECEIVED, MAX_TS, Limits())


def test_brackets_inside_strings_do_not_count_as_depth():
    assert row_of(base(metadata={"text": "{[" * 50}))["metadata"]


def test_format_and_parse_round_trip():
    moment = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=timezone.utc)
    assert parse_timestamp(format_ts(moment)) == moment
