"""ingest/otlp.py: OTLP log records (protobuf and OTLP/JSON) mapped to LogEntries, and the responses.

Most mapping tables run in both encodings: the request is built as protobuf
and turned into OTLP/JSON the way the spec says (camelCase, hex ids, integer
enums), so both readers must agree.
"""
import base64
import traceback

import orjson
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (ExportLogsServiceRequest,
                                                                    ExportLogsServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from ingest import otlp
from ingest.body import BodyError
from ingest.entries import Limits, to_row

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN = bytes.fromhex("eee19b7ec3c1b174")
T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123Z
KINDS = ("protobuf", "json")


# -- building requests -------------------------------------------------------------------

def value(python):
    """An AnyValue for a Python value."""
    if isinstance(python, AnyValue):
        return python
    if isinstance(python, bool):
        return AnyValue(bool_value=python)
    if isinstance(python, int):
        return AnyValue(int_value=python)
    if isinstance(python, float):
        return AnyValue(double_value=python)
    if isinstance(python, str):
        return AnyValue(string_value=python)
    if isinstance(python, bytes):
        return AnyValue(bytes_value=python)
    if isinstance(python, list):
        return AnyValue(array_value=ArrayValue(values=[value(item) for item in python]))
    if isinstance(python, dict):
        return AnyValue(kvlist_value=KeyValueList(values=attrs(python)))
    if python is None:
        return AnyValue()
    raise TypeError(python)


def attrs(mapping):
    return [KeyValue(key=key, value=value(item)) for key, item in mapping.items()]


def request(*records, resource=None, scope=None):
    """An ExportLogsServiceRequest with one resource and scope holding `records` (LogRecord or kwargs)."""
    message = ExportLogsServiceRequest()
    resource_logs = message.resource_logs.add()
    resource_logs.resource.attributes.extend(attrs({"service.name": "api"} if resource is None else resource))
    scope_logs = resource_logs.scope_logs.add()
    for key, item in (scope or {}).items():
        if key == "attributes":
            scope_logs.scope.attributes.extend(attrs(item))
        else:
            setattr(scope_logs.scope, key, item)
    for record in records:
        scope_logs.log_records.append(record if isinstance(record, LogRecord) else log_record(**record))
    return message


def log_record(body="hello", attributes=None, **fields):
    record = LogRecord(**fields)
    if body is not None:
        record.body.CopyFrom(value(body))
    record.attributes.extend(attrs(attributes or {}))
    return record


def to_json(message):
    """OTLP/JSON of a protobuf message: proto3 JSON with integer enums and hex trace and span ids."""
    document = json_format.MessageToDict(message, use_integers_for_enums=True)
    for resource in document.get("resourceLogs", []):
        for scope in resource.get("scopeLogs", []):
            for record in scope.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in record:
                        record[key] = base64.b64decode(record[key]).hex().upper()  # hex is case-insensitive
    return orjson.dumps(document)


def encode(message, kind):
    return message.SerializeToString() if kind == "protobuf" else to_json(message)


def decode(message, kind="protobuf"):
    return otlp.decode(encode(message, kind), kind)


def entries(message, kind="protobuf"):
    decoded = decode(message, kind)
    assert decoded.rejected == [], decoded.rejected
    return decoded.entries


def one(kind="protobuf", **record):
    [entry] = entries(request(record), kind)
    return entry


# -- severities --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("number, text, level", [
    (1, "", "debug"), (4, "TRACE4", "debug"), (5, "", "debug"), (8, "", "debug"),
    (9, "INFO", "info"), (12, "", "info"), (13, "WARN", "warn"), (16, "", "warn"),
    (17, "ERROR", "error"), (20, "", "error"), (21, "FATAL", "critical"), (24, "", "critical"),
    (30, "", "critical"),                           # beyond the table: the top range
    (9, "ERROR", "info"),                           # the number wins over the text
    (0, "WARNING", "warn"), (0, "warn", "warn"), (0, "Fatal", "critical"), (0, "ERROR3", "error"),
    (0, "notice", "info"), (0, "trace", "debug"), (0, "emergency", "critical"),
    (0, "", "info"), (0, "loud", "info"),           # nothing usable: info (the text stays in metadata)
])
def test_severity(kind, number, text, level):
    entry = one(kind, severity_number=number, severity_text=text)
    assert entry["level"] == level
    otel = entry.get("metadata", {}).get("otel", {})
    assert otel.get("severity_number", 0) == number and otel.get("severity_text", "") == text


def test_unspecified_severity_with_an_exception_is_an_error():
    entry = one(attributes={"exception.type": "ValueError", "exception.message": "bad"})
    assert entry["level"] == "error"


def test_json_accepts_severity_enum_names():
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"severityNumber": "SEVERITY_NUMBER_WARN2", "body": {"stringValue": "x"}}]}]}]})
    [entry] = otlp.decode(body, "json").entries
    assert entry["level"] == "warn" and entry["metadata"]["otel"]["severity_number"] == 14


# -- AnyValue ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("python, decoded, message", [
    ("text", "text", "text"),
    ("", "", ""),
    (True, True, "true"),
    (False, False, "false"),
    (42, 42, "42"),
    (-(1 << 63), -(1 << 63), str(-(1 << 63))),
    (2.5, 2.5, "2.5"),
    (float("nan"), "NaN", "NaN"),
    (float("inf"), "Infinity", "Infinity"),
    (float("-inf"), "-Infinity", "-Infinity"),
    (b"\x00\xffbytes", base64.b64encode(b"\x00\xffbytes").decode(), base64.b64encode(b"\x00\xffbytes").decode()),
    ([1, "two", [3.5, False]], [1, "two", [3.5, False]], '[1,"two",[3.5,false]]'),
    ({"a": {"b": [1, {"c": None}]}, "d": "e"}, {"a": {"b": [1, {"c": None}]}, "d": "e"},
     '{"a":{"b":[1,{"c":null}]},"d":"e"}'),
    ([], [], "[]"),
    ({}, {}, "{}"),
    (None, None, ""),                                # an empty AnyValue: no value
])
def test_any_value_kinds(kind, python, decoded, message):
    entry = one(kind, body=python, attributes={"value": python})
    assert entry["metadata"]["value"] == decoded
    assert entry["message"] == message


def test_missing_body_is_an_empty_message_or_the_event_name():
    assert one(body=None)["message"] == ""
    assert one(body=None, event_name="user.login")["message"] == "user.login"
    assert one(body=None, event_name="user.login")["metadata"]["otel"]["event_name"] == "user.login"


@pytest.mark.parametrize("item, decoded", [
    ({"intValue": "12"}, 12), ({"intValue": 12}, 12), ({"intValue": 12.0}, 12), ({"intValue": "-7"}, -7),
    ({"doubleValue": 1}, 1.0), ({"doubleValue": "2.5"}, 2.5), ({"doubleValue": "NaN"}, "NaN"),
    ({"doubleValue": "-Infinity"}, "-Infinity"),
    ({"bytesValue": "AAE="}, "AAE="),
    ({}, None), ({"stringValueStrindex": 3}, None), ({"futureKind": 1}, None),
    ({"string_value": "snake"}, "snake"),
    ({"arrayValue": {}}, []), ({"kvlistValue": {"values": [{"key": "k"}]}}, {"k": None}),
])
def test_json_any_value_forms(item, decoded):
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"attributes": [{"key": "v", "value": item}]}]}]}]})
    [entry] = otlp.decode(body, "json").entries
    assert entry["metadata"]["v"] == decoded


# -- ids ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("trace_id, span_id, expected", [
    (TRACE, SPAN, (TRACE.hex(), SPAN.hex())),
    (b"", b"", (None, None)),
    (bytes(16), bytes(8), (None, None)),            # all zeros: the invalid id, no trace
    (TRACE, b"", (TRACE.hex(), None)),
])
def test_ids(kind, trace_id, span_id, expected):
    entry = one(kind, trace_id=trace_id, span_id=span_id)
    assert (entry.get("trace_id"), entry.get("span_id")) == expected
    if expected[0]:
        assert expected[0] == expected[0].lower() and len(expected[0]) == 32


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("trace_id, span_id, error", [
    (b"\x01" * 5, SPAN, "trace_id must be 16 bytes (32 hex digits), got 5 bytes"),
    (TRACE, b"\x01" * 16, "span_id must be 8 bytes (16 hex digits), got 16 bytes"),
])
def test_ids_of_the_wrong_length_reject_the_record(kind, trace_id, span_id, error):
    decoded = decode(request({"trace_id": trace_id, "span_id": span_id}, {"body": "fine"}), kind)
    assert [entry["message"] for entry in decoded.entries] == ["fine"]
    expected = error if kind == "protobuf" else "{} must be a string of".format(error.split()[0])
    [rejected] = decoded.rejected
    assert rejected["index"] == 0 and rejected["error"].startswith(expected), rejected


@pytest.mark.parametrize("trace_id, span_id, expected", [
    (TRACE.hex().upper(), SPAN.hex().upper(), (TRACE.hex(), SPAN.hex())),
    (base64.b64encode(TRACE).decode(), base64.b64encode(SPAN).decode(), (TRACE.hex(), SPAN.hex())),  # proto3 JSON
    ("", "", (None, None)),
    ("0" * 32, "0" * 16, (None, None)),
    ("zz" * 16, SPAN.hex(), "trace_id must be a string of 32 hex digits (16 bytes), got 'zzzz"),
    (TRACE.hex(), "abc", "span_id must be a string of 16 hex digits (8 bytes), got 'abc'"),
    (TRACE.hex(), 12, "span_id (the record's spanId) must be a string, got a number"),
])
def test_json_id_forms(trace_id, span_id, expected):
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"traceId": trace_id, "spanId": span_id, "body": {"stringValue": "x"}}]}]}]})
    decoded = otlp.decode(body, "json")
    if isinstance(expected, str):
        assert decoded.entries == [] and decoded.rejected[0]["error"].startswith(expected)
    else:
        [entry] = decoded.entries
        assert (entry.get("trace_id"), entry.get("span_id")) == expected


# -- resource and scope ------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("resource, columns, kept", [
    ({"service.name": "checkout"}, {"service": "checkout"}, None),
    ({}, {"service": "unknown_service"}, None),
    ({"service.name": ""}, {"service": "unknown_service"}, {"service.name": ""}),
    ({"service.name": "api", "deployment.environment": "prod", "service.version": "1.4.2", "host.name": "web-1"},
     {"service": "api", "environment": "prod", "release": "1.4.2", "host": "web-1"}, None),
    ({"service.name": "api", "deployment.environment": "old", "deployment.environment.name": "staging"},
     {"environment": "staging"}, {"deployment.environment": "old"}),
    ({"service.name": "api", "service.version": 7}, {"release": "7"}, None),
    ({"service.name": "api", "host.name": ["a", "b"]}, {"host": None}, {"host.name": ["a", "b"]}),
    ({"service.name": "api", "k8s.pod.name": "api-7d9", "process.pid": 12, "telemetry.sdk.language": "python"},
     {}, {"k8s.pod.name": "api-7d9", "process.pid": 12, "telemetry.sdk.language": "python"}),
])
def test_resource_attributes(kind, resource, columns, kept):
    entry = one_with(kind, resource=resource)
    for column, expected in columns.items():
        assert entry.get(column) == expected, column
    assert entry.get("metadata", {}).get("resource") == kept


def one_with(kind, resource=None, scope=None, **record):
    [entry] = entries(request(record, resource=resource, scope=scope), kind)
    return entry


@pytest.mark.parametrize("kind", KINDS)
def test_scope_and_record_metadata(kind):
    entry = one_with(kind, scope={"name": "shop.payments", "version": "2.0", "attributes": {"lib": "x"}},
                     attributes={"order": 42, "http.route": "/pay", "resource": "mine"},
                     flags=1, dropped_attributes_count=3, time_unix_nano=T0, observed_time_unix_nano=T0 + 5)
    metadata = entry["metadata"]
    assert metadata["scope"] == {"name": "shop.payments", "version": "2.0", "attributes": {"lib": "x"}}
    assert metadata["order"] == 42 and metadata["http.route"] == "/pay"
    assert metadata["resource"] == "mine" and "_extra" not in metadata  # the resource has no other attributes
    assert metadata["otel"] == {"flags": 1, "dropped_attributes_count": 3, "observed_time_unix_nano": T0 + 5}


def test_a_record_attribute_named_like_a_metadata_section_keeps_both():
    entry = one_with("protobuf", resource={"service.name": "api", "region": "eu"},
                     scope={"name": "lib"}, attributes={"scope": "mine"})
    assert entry["metadata"]["scope"] == "mine"
    assert entry["metadata"]["_extra"] == {"scope": {"name": "lib"}}
    assert entry["metadata"]["resource"] == {"region": "eu"}


def test_an_extra_attribute_that_is_no_object_is_kept():
    entry = one_with("protobuf", scope={"name": "lib"}, attributes={"scope": "mine", "_extra": "x"})
    assert entry["metadata"]["_extra"] == {"_extra": "x", "scope": {"name": "lib"}}


@pytest.mark.parametrize("attributes, user_id, left", [
    ({"user.id": "u-7"}, "u-7", {}),
    ({"enduser.id": 42}, "42", {}),
    ({"user.id": "u-7", "enduser.id": "e-1"}, "u-7", {"enduser.id": "e-1"}),
    ({"user.id": ["a"]}, None, {"user.id": ["a"]}),
])
def test_user_id(attributes, user_id, left):
    entry = one(attributes=attributes)
    assert entry.get("user_id") == user_id
    assert {k: v for k, v in entry.get("metadata", {}).items() if k != "otel"} == left


def test_several_resources_and_scopes():
    message = ExportLogsServiceRequest()
    for service in ("a", "b"):
        resource_logs = message.resource_logs.add()
        resource_logs.resource.attributes.extend(attrs({"service.name": service}))
        for scope in ("s1", "s2"):
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name = scope
            scope_logs.log_records.extend([log_record("{}/{}/{}".format(service, scope, i)) for i in range(2)])
    for kind in KINDS:
        decoded = decode(message, kind)
        assert decoded.total == 8
        assert [(e["service"], e["metadata"]["scope"]["name"], e["message"]) for e in decoded.entries] == [
            (s, sc, "{}/{}/{}".format(s, sc, i)) for s in ("a", "b") for sc in ("s1", "s2") for i in range(2)]
        assert decoded.path(7) == "resourceLogs[1].scopeLogs[1].logRecords[1]"


# -- time --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("time_ns, observed_ns, timestamp", [
    (T0, 0, "2023-11-14T22:13:20.123Z"),
    (0, T0, "2023-11-14T22:13:20.123Z"),
    (T0, T0 + 10**9, "2023-11-14T22:13:20.123Z"),
    (0, 0, None),                                   # the receive time, set by validation
    (1, 0, "1970-01-01T00:00:00.000Z"),
])
def test_time(kind, time_ns, observed_ns, timestamp):
    entry = one(kind, time_unix_nano=time_ns, observed_time_unix_nano=observed_ns)
    assert entry.get("timestamp") == timestamp


@pytest.mark.parametrize("stamp", [str(T0), T0, float(T0)])
def test_json_time_as_string_or_number(stamp):
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": stamp}]}]}]})
    [entry] = otlp.decode(body, "json").entries
    assert entry["timestamp"][:19] == "2023-11-14T22:13:20"


# -- exceptions --------------------------------------------------------------------------

def _raise_chain():
    def inner():
        {}["missing"]

    def outer():
        try:
            inner()
        except KeyError as error:
            raise RuntimeError("lookup failed\nsecond line") from error
    try:
        outer()
    except RuntimeError as error:
        return "".join(traceback.format_exception(error))


REAL_TRACEBACK = _raise_chain()
LIBRARY_TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/shop/pay.py", line 12, in charge
    response = requests.post(url)
               ^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/site-packages/requests/api.py", line 115, in post
    return request("post", url, data=data, json=json, **kwargs)
  File "<frozen importlib._bootstrap>", line 1, in _load
  [Previous line repeated 2 more times]
requests.exceptions.ConnectionError: refused
"""
CONTEXT_TRACEBACK = """Traceback (most recent call last):
  File "a.py", line 1, in f
    x()
ZeroDivisionError: division by zero

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "a.py", line 3, in g
    f()
ValueError
"""
SYNTAX_TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/run.py", line 3, in <module>
    compile("x = (", "<string>", "exec")
  File "<string>", line 1
    x = (
        ^
SyntaxError: '(' was never closed
"""
JAVA_TRACE = """java.lang.IllegalStateException: boom
\tat com.shop.Pay.charge(Pay.java:12)
\tat com.shop.Main.main(Main.java:3)
"""


def test_a_real_python_traceback_becomes_a_chain_with_frames():
    chain = otlp.parse_python_traceback(REAL_TRACEBACK)
    assert [(item["type"], item["value"]) for item in chain] == [
        ("KeyError", "'missing'"), ("RuntimeError", "lookup failed\nsecond line")]
    assert [frame["function"] for frame in chain[0]["stacktrace"]][-1] == "inner"
    assert [frame["function"] for frame in chain[1]["stacktrace"]] == ["_raise_chain", "outer"]
    frame = chain[0]["stacktrace"][-1]
    assert frame["filename"].endswith("test_ingest_otlp.py") and frame["in_app"] is True
    assert frame["context_line"] == '{}["missing"]' and isinstance(frame["lineno"], int)


@pytest.mark.parametrize("text, expected", [
    (LIBRARY_TRACEBACK, [("ConnectionError", "refused", "requests.exceptions",
                          [("pay.py", "charge", True, "response = requests.post(url)"),
                           ("api.py", "post", False, 'return request("post", url, data=data, json=json, **kwargs)'),
                           ("<frozen importlib._bootstrap>", "_load", False, None)])]),
    (CONTEXT_TRACEBACK, [("ZeroDivisionError", "division by zero", None, [("a.py", "f", True, "x()")]),
                         ("ValueError", "", None, [("a.py", "g", True, "f()")])]),
    (SYNTAX_TRACEBACK, [("SyntaxError", "'(' was never closed", None,
                         [("run.py", "<module>", True, 'compile("x = (", "<string>", "exec")'),
                          ("<string>", None, True, "x = (")])]),
])
def test_traceback_shapes(text, expected):
    chain = otlp.parse_python_traceback(text)
    got = [(item["type"], item["value"], item.get("module"),
            [(frame["filename"].rsplit("/", 1)[-1], frame.get("function"), frame["in_app"],
              frame.get("context_line")) for frame in item.get("stacktrace", [])]) for item in chain]
    assert got == expected


@pytest.mark.parametrize("text", [JAVA_TRACE, "", "just words", "Traceback (most recent call last):\nValueError: x",
                                  "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\n"])
def test_text_that_is_no_python_traceback(text):
    assert otlp.parse_python_traceback(text) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attributes, exception, kept", [
    ({"exception.type": "ValueError", "exception.message": "bad", "exception.stacktrace": REAL_TRACEBACK},
     [("KeyError", "'missing'"), ("ValueError", "bad")], {}),            # the attributes name the last one
    ({"exception.stacktrace": REAL_TRACEBACK},
     [("KeyError", "'missing'"), ("RuntimeError", "lookup failed\nsecond line")], {}),
    ({"exception.type": "requests.exceptions.ConnectionError", "exception.stacktrace": LIBRARY_TRACEBACK},
     [("ConnectionError", "refused")], {}),                             # qualified name: same exception
    ({"exception.type": "IllegalStateException", "exception.message": "boom", "exception.stacktrace": JAVA_TRACE},
     [("IllegalStateException", "boom")], {"exception.stacktrace": JAVA_TRACE}),  # not Python: kept as text
    ({"exception.message": "no type"}, [("Error", "no type")], {}),
    ({"exception.type": "Timeout", "exception.escaped": True}, [("Timeout", "")], {"exception.escaped": True}),
    ({"exception.stacktrace": JAVA_TRACE}, None, {"exception.stacktrace": JAVA_TRACE}),
    ({"exception.type": 12}, None, {"exception.type": 12}),
])
def test_exception_attributes(kind, attributes, exception, kept):
    entry = one(kind, body=None, attributes=attributes)
    if exception is None:
        assert "exception" not in entry
    else:
        assert [(item["type"], item["value"]) for item in entry["exception"]] == exception
        last = exception[-1]
        assert entry["message"] == ("{}: {}".format(*last) if last[1] else last[0])
    assert {k: v for k, v in entry.get("metadata", {}).items() if k != "otel"} == kept


def test_the_exception_survives_validation_and_has_a_fingerprint():
    from ingest.fingerprint import Fingerprinter
    entry = one(body="payment failed", severity_number=17,
                attributes={"exception.type": "RuntimeError", "exception.stacktrace": REAL_TRACEBACK})
    fingerprints = []
    fingerprinter = Fingerprinter()

    def remember(*args):
        fingerprints.append(fingerprinter(*args))
        return fingerprints[-1]
    to_row(entry, "2026-01-01T00:00:00.000Z", "2099-01-01T00:00:00.000Z", Limits(), remember)
    assert fingerprints[0]


# -- bad inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("kind, body, status, code", [
    ("protobuf", b"\xff\xff\xff", 400, "invalid_protobuf"),
    ("protobuf", b"\x0a\x05abc", 400, "invalid_protobuf"),           # a length past the end
    ("json", b"{", 400, "invalid_json"),
    ("json", b"[]", 400, "invalid_body"),
    ("json", b'{"resourceLogs": {}}', 400, "invalid_body"),
    ("json", b'{"resourceLogs": [1]}', 400, "invalid_body"),
    ("json", b'{"resourceLogs": [{"scopeLogs": "x"}]}', 400, "invalid_body"),
    ("json", b'{"resourceLogs": [{"scopeLogs": [{"logRecords": {}}]}]}', 400, "invalid_body"),
    ("json", b'{"resourceLogs": [{"resource": [], "scopeLogs": []}]}', 400, "invalid_body"),
    ("json", b'{"resourceLogs": [{"resource": {"attributes": [{"key": "a", "value": 1}]}}]}', 400, "invalid_body"),
    ("json", b'{"resourceLogs": [{"scopeLogs": [{"scope": {"name": 5}}]}]}', 400, "invalid_body"),
])
def test_undecodable_bodies(kind, body, status, code):
    with pytest.raises(BodyError) as raised:
        otlp.decode(body, kind)
    assert (raised.value.status, raised.value.code) == (status, code)


def test_an_undecodable_json_body_names_the_field():
    body = b'{"resourceLogs": [{}, {"resource": {"attributes": [{"key": "a", "value": {"intValue": "x"}}]}}]}'
    with pytest.raises(BodyError) as raised:
        otlp.decode(body, "json")
    assert raised.value.details == {"field": "resourceLogs[1].resource.attributes[0].value.intValue"}
    assert "resourceLogs[1].resource.attributes[0].value.intValue" in raised.value.message


@pytest.mark.parametrize("record, error", [
    ([1], "an entry must be a JSON object"),
    ({"timeUnixNano": "soon"}, "timestamp (the record's timeUnixNano) must be an integer"),
    ({"timeUnixNano": -1}, "timestamp (the record's timeUnixNano) -1 is out of range"),
    ({"severityNumber": "loud"}, "level (the record's severityNumber) must be an integer"),
    ({"severityText": 3}, "level (the record's severityText) must be a string"),
    ({"attributes": "x"}, "metadata (the record's attributes) cannot be decoded: must be an array"),
    ({"attributes": [{"key": "a", "value": {"boolValue": "yes"}}]},
     "metadata (the record's attributes[0].value.boolValue) cannot be decoded: must be true or false"),
    ({"attributes": [{"key": "a", "value": {"intValue": str(1 << 63)}}]}, "metadata (the record's attributes[0]"),
    ({"attributes": [{"value": {"intValue": 1}}]}, "metadata (the record's attributes[0]) cannot be decoded"),
    ({"body": "plain"}, "message (the record's body) cannot be decoded: an AnyValue must be an object"),
    ({"body": {"kvlistValue": {"values": [{"key": "k", "value": {"arrayValue": {"values": [3]}}}]}}},
     "message (the record's body.kvlistValue.values[0].value.arrayValue.values[0]) cannot be decoded"),
    ({"flags": "x"}, "metadata (the record's flags) must be an integer"),
])
def test_json_records_of_the_wrong_shape_are_rejected_alone(record, error):
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"body": {"stringValue": "good"}}, record]}]}]})
    decoded = otlp.decode(body, "json")
    assert [entry["message"] for entry in decoded.entries] == ["good"]
    [rejected] = decoded.rejected
    assert rejected["index"] == 1 and rejected["error"].startswith(error), rejected["error"]


def test_json_values_nested_too_deep_are_rejected_without_recursing_forever():
    nested = '{"arrayValue": {"values": [' * 200 + '{"stringValue": "leaf"}' + "]}}" * 200  # 600 JSON levels
    body = ('{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": [{"key": "deep", "value": '
            + nested + "}]}]}]}]}").encode()
    decoded = otlp.decode(body, "json")
    assert decoded.entries == [] and "nested more than 64 levels" in decoded.rejected[0]["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_too_many_records(kind):
    message = request(*[{"body": str(i)} for i in range(6)])
    with pytest.raises(BodyError) as raised:
        otlp.decode(encode(message, kind), kind, max_records=5)
    assert (raised.value.status, raised.value.code) == (413, "too_many_entries")
    assert otlp.decode(encode(message, kind), kind, max_records=6).total == 6


@pytest.mark.parametrize("body, kind", [(b"", "protobuf"), (b"{}", "json"), (b'{"resourceLogs": []}', "json"),
                                        (b'{"resourceLogs": [{"scopeLogs": [{}]}]}', "json")])
def test_empty_requests_hold_no_records(body, kind):
    decoded = otlp.decode(body, kind)
    assert decoded.total == 0 and decoded.entries == [] and decoded.rejected == []


def test_json_accepts_proto_field_names_and_ignores_unknown_fields():
    body = orjson.dumps({"resource_logs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "snake"}}]}, "futureField": 1, "scope_logs": [
        {"log_records": [{"severity_number": 17, "body": {"stringValue": "x"}, "somethingNew": {"a": 1}}]}]}]})
    [entry] = otlp.decode(body, "json").entries
    assert entry["service"] == "snake" and entry["level"] == "error"


def test_the_entries_pass_the_same_validation_as_the_ingest_api():
    deep = {"k": 1}
    for _ in range(25):
        deep = {"k": deep}
    good, future, too_deep = entries(request(
        {"body": "ok", "time_unix_nano": T0},
        {"body": "later", "time_unix_nano": 4_000_000_000 * 10**9},
        {"body": "deep", "attributes": {"deep": deep}}))
    limits = Limits()
    assert to_row(good, "2026-01-01T00:00:00.000Z", "2026-01-08T00:00:00.000Z", limits)[0] == \
        "2023-11-14T22:13:20.123Z"
    from ingest.entries import EntryError
    with pytest.raises(EntryError, match="in the future"):
        to_row(future, "2026-01-01T00:00:00.000Z", "2026-01-08T00:00:00.000Z", limits)
    with pytest.raises(EntryError, match="metadata is nested"):
        to_row(too_deep, "2026-01-01T00:00:00.000Z", "2026-01-08T00:00:00.000Z", limits)


# -- responses ---------------------------------------------------------------------------

def test_export_responses():
    assert otlp.export_response("protobuf") == b""
    assert otlp.export_response("json") == b"{}"
    response = ExportLogsServiceResponse.FromString(otlp.export_response("protobuf", 2, "2 of 3 rejected"))
    assert response.partial_success.rejected_log_records == 2
    assert response.partial_success.error_message == "2 of 3 rejected"
    assert orjson.loads(otlp.export_response("json", 2, "why")) == {
        "partialSuccess": {"rejectedLogRecords": 2, "errorMessage": "why"}}
    # a JSON response is valid proto3 JSON for the official message too
    parsed = json_format.Parse(otlp.export_response("json", 2, "why"), ExportLogsServiceResponse())
    assert parsed.partial_success.rejected_log_records == 2


@pytest.mark.parametrize("http_status, grpc_code", [(400, 3), (401, 16), (413, 3), (415, 3), (429, 8), (503, 14)])
def test_status_bodies_decode_as_google_rpc_status(http_status, grpc_code):
    details = {"field": "resourceLogs[0]", "max_body_bytes": 5, "supported": ["a", "b"]}
    status = status_pb2.Status.FromString(otlp.status_body("protobuf", http_status, "some_code", "what to fix",
                                                           details))
    assert status.code == grpc_code and status.message == "what to fix"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "some_code" and info.domain == "sidecar"
    assert dict(info.metadata) == {"field": "resourceLogs[0]", "max_body_bytes": "5", "supported": '["a","b"]'}
    if http_status == 400:
        bad_request = error_details_pb2.BadRequest()
        assert status.details[1].Unpack(bad_request)
        assert bad_request.field_violations[0].field == "resourceLogs[0]"
    else:
        assert len(status.details) == 1
    as_json = json_format.Parse(otlp.status_body("json", http_status, "some_code", "what to fix", details),
                                status_pb2.Status())
    assert (as_json.code, as_json.message, len(as_json.details)) == (status.code, status.message, len(status.details))
    from_json = error_details_pb2.ErrorInfo()
    assert as_json.details[0].Unpack(from_json) and from_json == info  # maps compare by content


def test_rejection_message_lists_the_first_few():
    decoded = decode(request(*[{"body": str(i)} for i in range(9)]))
    rejected = [{"index": i, "error": "bad {}".format(i)} for i in (8, 0, 1, 2, 3, 4, 5)]
    message = otlp.rejection_message(decoded, rejected)
    assert message.startswith("7 of 9 log records rejected: resourceLogs[0].scopeLogs[0].logRecords[0]: bad 0; ")
    assert message.endswith("logRecords[4]: bad 4; and 2 more")


@pytest.mark.parametrize("content_type, kind", [
    ("application/x-protobuf", "protobuf"), ("application/protobuf", "protobuf"),
    ("application/json", "json"), ("Application/JSON; charset=utf-8", "json"),
    ("text/plain", None), (None, None), ("application/x-ndjson", None),
])
def test_media_kind(content_type, kind):
    assert otlp.media_kind(content_type) == kind
