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
    # RFC 3339 5.6 allows a lowercase t and z.
    ("2026-01-10t10:00:00z", "2026-01-10T10:00:00.000Z"),
    ("2026-01-10t10:00:00.250z", "2026-01-10T10:00:00.250Z"),
    # As long as the stored form, but an ISO week date: normalised, not kept as sent.
    ("2026-W02-6T10:00:00.000Z", "2026-01-10T10:00:00.000Z"),
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
    assert row_of(base(level=None))["level"] == "info"  # null means missing, as for timestamp and metadata


@pytest.mark.parametrize("entry, message", [
    ("not an object", "must be a JSON object"),
    ({"message": "x"}, "service is required"),
    ({"service": "", "message": "x"}, "service is required"),
    ({"service": "  \t", "message": "x"}, "service is required"),
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
    (base(timestamp=10 ** 400), "out of range"),
    (base(timestamp="0001-01-01T00:00:00+01:00"), "out of range"),
    (base(timestamp="9999-12-31T23:59:59-01:00"), "out of range"),
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


@pytest.mark.parametrize("entry, metadata", [
    # The client's own _extra, of any type, moves inside the sidecar's: nothing is overwritten.
    (base(metadata={"_extra": 1, "foo": 1}, foo=2), {"foo": 1, "_extra": {"foo": 2, "_extra": 1}}),
    (base(metadata={"_extra": {"foo": "orig"}, "foo": 1}, foo=2),
     {"foo": 1, "_extra": {"foo": 2, "_extra": {"foo": "orig"}}}),
    (base(metadata={"_extra": "m"}, _extra="top"), {"_extra": {"_extra": "top", "_extra_1": "m"}}),
    # metadata.fingerprint is the client's fingerprint field; a value the client had there is kept.
    (base(fingerprint=["x"], metadata={"fingerprint": "client-meta"}),
     {"fingerprint": ["x"], "_extra": {"fingerprint": "client-meta"}}),
    (base(fingerprint=["x"], metadata={"fingerprint": ["x"]}), {"fingerprint": ["x"]}),
    # _sidecar is the sidecar's: a client cannot write flags there.
    (base(_sidecar={"truncated": {"message": {"original_bytes": 1}}}),
     {"_extra": {"_sidecar": {"truncated": {"message": {"original_bytes": 1}}}}}),
    (base(metadata={"_sidecar": "x"}), {"_extra": {"_sidecar": "x"}}),
])
def test_what_the_client_sends_under_the_sidecars_names_is_kept_under_extra(entry, metadata):
    assert orjson.loads(row_of(entry)["metadata"]) == metadata


def test_a_client_sidecar_key_does_not_stop_truncation():
    row = row_of(base(message="a" * 200, metadata={"_sidecar": "x"}), Limits(max_message_bytes=100))
    stored = orjson.loads(row["metadata"])
    assert stored == {"_extra": {"_sidecar": "x"}, "_sidecar": {"truncated": {"message": {"original_bytes": 200}}}}


@pytest.mark.parametrize("metadata", [
    {"big": "x" * 65_520},  # 65,537 bytes as JSON
    {"k{:03}".format(n): "v" * 1000 for n in range(100)},  # 100 keys of 1 KB
    {"k{:03}".format(n) + "n" * 500: n for n in range(200)},  # long names, many dropped
])
def test_truncated_metadata_with_its_flag_stays_within_the_cap(metadata):
    limits, original_bytes = Limits(), len(orjson.dumps(metadata))
    row = row_of(base(message="m" * 70_000, metadata=metadata), limits)
    assert len(row["metadata"].encode()) <= limits.max_metadata_bytes
    flags = orjson.loads(row["metadata"])["_sidecar"]["truncated"]
    assert flags["message"] == {"original_bytes": 70_000}
    assert flags["metadata"]["original_bytes"] == original_bytes
    assert len(flags["metadata"]["dropped_keys"]) <= 20
    assert flags["metadata"]["dropped_key_count"] >= len(flags["metadata"]["dropped_keys"])


def test_a_message_flag_does_not_push_metadata_past_the_cap():
    limits = Limits(max_metadata_bytes=1000)
    metadata = {"a": "x" * 985}  # 993 bytes: fits alone, not with the message's flag
    stored = row_of(base(message="m" * 70_000, metadata=metadata), limits)["metadata"]
    assert len(stored.encode()) <= 1000
    assert orjson.loads(stored)["_sidecar"]["truncated"]["metadata"]["original_bytes"] == 993


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
    assert flag["dropped_keys"] == ["other"] and flag["dropped_key_count"] == 1 and flag["original_bytes"] > 5000


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
