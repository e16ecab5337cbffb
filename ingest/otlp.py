"""OTLP logs (`ExportLogsServiceRequest`, binary protobuf or OTLP/JSON) mapped to LogEntries.

`decode(body, kind)` turns a request body into LogEntry dicts for the same
validation as `POST /api/logs` (ingest.entries.to_row through the HTTP
layer's validate_entries). What cannot be decoded at all (not protobuf, not
JSON, a resource or scope of the wrong shape) raises `BodyError`: nothing of
the request is stored. A log record that cannot be mapped (an id of the wrong
length, a field of the wrong type in OTLP/JSON) is rejected on its own, with
a message, and counted in the response's `partial_success`.

The mapping (docs/clients.md has the table):

- resource `service.name` -> service (default `unknown_service`);
  `deployment.environment.name` / `deployment.environment` -> environment,
  `service.version` -> release, `host.name` -> host; the other resource
  attributes -> metadata `resource`
- scope name, version, attributes -> metadata `scope`
- severityNumber -> level by its range; severityText when the number is 0
- body -> message (a string as is, other values as text, kvlist/array as JSON)
- attributes -> metadata; `user.id` (or `enduser.id`) -> user_id;
  `exception.type`, `exception.message`, `exception.stacktrace` -> exception
  (a Python traceback is parsed into frames and a chain; any other stack
  trace text stays in metadata)
- traceId / spanId -> trace_id / span_id as lowercase hex (empty or all-zero: none)
- timeUnixNano, else observedTimeUnixNano, else the receive time -> timestamp
- severity number and text, flags, event name, the observed time and the
  record's dropped attribute count -> metadata `otel`

Also the responses: `ExportLogsServiceResponse` and the OTLP error body
(`google.rpc.Status`), in protobuf or JSON.
"""
import base64
import binascii
import math
import re
from datetime import datetime, timezone

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from .body import BodyError, load_json
from .entries import LEVEL_ALIASES, EntryError, format_ts
from .metadata import keep_displaced

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
JSON_TYPES = ("application/json",)
DEFAULT_SERVICE = "unknown_service"
MAX_VALUE_DEPTH = 64  # AnyValue nesting decoded at most (metadata deeper than 20 is rejected anyway)
MAX_LISTED_REJECTIONS = 5  # in partial_success.error_message

RESOURCE_COLUMNS = {
    "service.name": "service",
    "deployment.environment.name": "environment",
    "deployment.environment": "environment",
    "service.version": "release",
    "host.name": "host",
}
USER_ID_ATTRIBUTES = ("user.id", "enduser.id")
EXCEPTION_TYPE, EXCEPTION_MESSAGE, EXCEPTION_STACKTRACE = "exception.type", "exception.message", "exception.stacktrace"
# severityNumber ranges (OTel logs data model) -> our levels; index = (number - 1) // 4
SEVERITY_LEVELS = ("debug", "debug", "info", "warn", "error", "critical")
_SEVERITY_SUFFIX = re.compile(r"[234]$")  # TRACE2, INFO3, ERROR4: the OTel short names of a range
_HEX = re.compile(r"[0-9a-fA-F]*")
_INT = re.compile(r"[-+]?[0-9]+")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class _Invalid(Exception):
    """A part of the request that cannot be decoded; `path` says where."""

    def __init__(self, message, path=""):
        super().__init__(message)
        self.message, self.path = message, path

    def at(self, prefix):
        self.path = prefix + ("." + self.path if self.path and not self.path.startswith("[") else self.path)
        return self


class Decoded:
    """What a request holds: the entries to validate, and the records rejected while mapping."""

    def __init__(self):
        self.entries = []         # LogEntry dicts
        self.entry_records = []   # the record index of each entry
        self.rejected = []        # [{"index": record index, "error": ...}]
        self.locations = []       # (resource, scope, record) position of every record, by record index

    @property
    def total(self):
        return len(self.locations)

    def add(self, location, make_entry, *args):
        index = len(self.locations)
        self.locations.append(location)
        try:
            entry = make_entry(*args)
        except EntryError as error:
            self.rejected.append({"index": index, "error": str(error)})
            return
        self.entries.append(entry)
        self.entry_records.append(index)

    def path(self, index):
        resource, scope, record = self.locations[index]
        return "resourceLogs[{}].scopeLogs[{}].logRecords[{}]".format(resource, scope, record)


def media_kind(content_type):
    """'protobuf', 'json' or None for a Content-Type header."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in PROTOBUF_TYPES:
        return "protobuf"
    if kind in JSON_TYPES:
        return "json"
    return None


def decode(body, kind, max_records=None):
    """Return a `Decoded` for an ExportLogsServiceRequest body ('protobuf' or 'json')."""
    if kind == "protobuf":
        try:
            request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        except DecodeError as error:
            raise BodyError(400, "invalid_protobuf", "the body is not a protobuf ExportLogsServiceRequest: {}"
                            .format(error or "cannot be decoded")) from None
        _check_count(sum(len(scope.log_records) for resource in request.resource_logs
                         for scope in resource.scope_logs), max_records)
        return _decode_protobuf(request)
    document = load_json(body)
    try:
        resource_logs, count = _json_resource_logs(document)
        _check_count(count, max_records)
        return _decode_json(resource_logs)
    except _Invalid as error:
        where = " at {}".format(error.path) if error.path else ""
        raise BodyError(400, "invalid_body", "the body is not an OTLP/JSON ExportLogsServiceRequest{}: {}"
                        .format(where, error.message), {"field": error.path} if error.path else None) from None


def _check_count(count, max_records):
    if max_records is not None and count > max_records:
        raise BodyError(413, "too_many_entries", "{} log records in one request; the limit is {}: export smaller "
                        "batches (BatchLogRecordProcessor max_export_batch_size)".format(count, max_records),
                        {"max_batch_entries": max_records})


# -- the shared mapping ----------------------------------------------------------------

class _Group:
    """What every record of one resource and scope shares."""
    __slots__ = ("service", "columns", "metadata")

    def __init__(self, resource_attributes, scope_name, scope_version, scope_attributes):
        columns, resource = {}, dict(resource_attributes)
        for key, column in RESOURCE_COLUMNS.items():  # in order: the newer environment name wins
            if column not in columns and key in resource:
                text = _as_text(resource[key])
                if text:
                    columns[column] = text
                    del resource[key]
        self.service = columns.pop("service", None) or DEFAULT_SERVICE
        self.columns = columns
        scope = {}
        if scope_name:
            scope["name"] = scope_name
        if scope_version:
            scope["version"] = scope_version
        if scope_attributes:
            scope["attributes"] = scope_attributes
        self.metadata = [(key, value) for key, value in (("resource", resource), ("scope", scope)) if value]


def _as_text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return _render(value)
    return None


def _entry(group, time_ns, observed_ns, severity_number, severity_text, body, attributes,
           trace_id, span_id, flags, dropped, event_name):
    entry = {"service": group.service}
    entry.update(group.columns)
    metadata = attributes
    otel = {}
    if severity_number:
        otel["severity_number"] = severity_number
    if severity_text:
        otel["severity_text"] = severity_text
    if flags:
        otel["flags"] = flags
    if event_name:
        otel["event_name"] = event_name
    if dropped:
        otel["dropped_attributes_count"] = dropped
    if time_ns:
        entry["timestamp"] = _timestamp(time_ns)
        if observed_ns:
            otel["observed_time_unix_nano"] = observed_ns
    elif observed_ns:
        entry["timestamp"] = _timestamp(observed_ns)
    exception = _exception(metadata)
    if exception:
        entry["exception"] = exception
    level = _level(severity_number, severity_text)
    entry["level"] = level or ("error" if exception else "info")
    message = _render(body)
    if message is None:
        if exception:
            last = exception[-1]
            message = "{}: {}".format(last["type"], last["value"]) if last["value"] else last["type"]
        else:
            message = event_name or ""
    entry["message"] = message
    trace_id = _id(trace_id, 16, "trace_id")
    if trace_id:
        entry["trace_id"] = trace_id
    span_id = _id(span_id, 8, "span_id")
    if span_id:
        entry["span_id"] = span_id
    for key in USER_ID_ATTRIBUTES:
        value = metadata.get(key)
        if isinstance(value, str) and value or isinstance(value, int) and not isinstance(value, bool):
            entry["user_id"] = str(metadata.pop(key))
            break
    displaced = {}
    for key, value in group.metadata + ([("otel", otel)] if otel else []):
        if key not in metadata:
            metadata[key] = value
        else:  # an attribute took the name: kept under _extra, as unknown fields on /api/logs
            displaced[key] = value
    if displaced:
        keep_displaced(metadata, displaced)
    if metadata:
        entry["metadata"] = metadata
    return entry


def _timestamp(nanoseconds):
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    try:
        moment = datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise EntryError("timestamp {} ns since the epoch is out of range".format(nanoseconds)) from None
    return format_ts(moment.replace(microsecond=rest // 1000))


def _level(number, text):
    """Our level for a severityNumber (1-24), else for the severityText; None when neither says."""
    if number > 0:
        return SEVERITY_LEVELS[min((number - 1) // 4, 5)]
    if text:
        name = text.strip().lower()
        level = LEVEL_ALIASES.get(name) or LEVEL_ALIASES.get(_SEVERITY_SUFFIX.sub("", name))
        if level:
            return level
    return None


def _id(value, size, name):
    """Lowercase hex of a trace or span id (bytes from protobuf, text from JSON); None when unset."""
    if not value:
        return None
    if isinstance(value, str):
        raw = _id_bytes(value, size, name)
    else:
        raw = value
    if len(raw) != size:
        raise EntryError("{} must be {} bytes ({} hex digits), got {} bytes".format(name, size, size * 2, len(raw)))
    if not any(raw):
        return None  # all zeros: the invalid id, i.e. no trace
    return raw.hex()


def _id_bytes(text, size, name):
    if len(text) == size * 2 and _HEX.fullmatch(text):
        return bytes.fromhex(text)
    # Some exporters send protobuf's standard JSON mapping (base64) instead of OTLP's hex.
    if len(text) == (size + 2) // 3 * 4:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = None
        if raw is not None and len(raw) == size:
            return raw
    raise EntryError("{} must be a string of {} hex digits ({} bytes), got {!r}"
                     .format(name, size * 2, size, text[:80]))


def _render(value):
    """The message text of a body value."""
    if value is None or isinstance(value, str):
        return value
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return orjson.dumps(value).decode()


# -- exceptions ------------------------------------------------------------------------

_TRACEBACK_HEADER = "Traceback (most recent call last):"
_CHAIN_SEPARATORS = ("During handling of the above exception, another exception occurred:",
                     "The above exception was the direct cause of the following exception:")
_FRAME = re.compile(r'  File "(?P<filename>[^"]*)", line (?P<lineno>\d+)(?:, in (?P<function>.+))?')
_EXCEPTION_LINE = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?:: ?(?P<value>.*))?")
_MARKERS = frozenset("^~ ")
_LIBRARY_PATH = re.compile(r"[/\\](?:site|dist)-packages[/\\]|[/\\]lib[/\\]python\d|^<frozen ")


def _exception(metadata):
    """The `exception` chain from the exception.* attributes (taken out of metadata), or None."""
    exc_type = metadata.get(EXCEPTION_TYPE)
    exc_message = metadata.get(EXCEPTION_MESSAGE)
    stacktrace = metadata.get(EXCEPTION_STACKTRACE)
    exc_type = exc_type if isinstance(exc_type, str) and exc_type else None
    exc_message = exc_message if isinstance(exc_message, str) else None
    chain = parse_python_traceback(stacktrace) if isinstance(stacktrace, str) else None
    if chain is None and exc_type is None and exc_message is None:
        return None
    if chain:
        metadata.pop(EXCEPTION_STACKTRACE)
        last = chain[-1]
        qualified = "{}.{}".format(last["module"], last["type"]) if last.get("module") else last["type"]
        if exc_type and exc_type not in (last["type"], qualified):
            last["type"] = exc_type
            last.pop("module", None)
    else:
        chain = [{"type": exc_type or "Error", "value": ""}]
    if exc_message is not None:
        chain[-1]["value"] = exc_message
    for key, value in ((EXCEPTION_TYPE, exc_type), (EXCEPTION_MESSAGE, exc_message)):
        if value is not None:
            del metadata[key]
    return chain


def parse_python_traceback(text):
    """The exception chain of a Python traceback (traceback.format_exception text), oldest first,
    as LogEntry exception objects; None when the text is not one."""
    sections, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip() in _CHAIN_SEPARATORS:
            sections.append(current)
            current = []
        else:
            current.append(line)
    sections.append(current)
    chain, any_traceback = [], False
    for lines in sections:
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            return None
        item, had_traceback = _traceback_section(lines)
        if item is None:
            return None
        any_traceback = any_traceback or had_traceback
        chain.append(item)
    return chain if any_traceback else None


def _traceback_section(lines):
    frames, position = [], 0
    had_traceback = lines[0].rstrip() == _TRACEBACK_HEADER
    if had_traceback:
        position = 1
        while position < len(lines):
            line = lines[position]
            match = _FRAME.fullmatch(line.rstrip())
            if match:
                filename = match.group("filename")
                frame = {"filename": filename, "lineno": int(match.group("lineno")),
                         "in_app": _LIBRARY_PATH.search(filename) is None}
                if match.group("function"):
                    frame["function"] = match.group("function")
                frames.append(frame)
            elif line.startswith("    "):  # the source line, or the ^~~ markers under it
                source = line.strip()
                if frames and "context_line" not in frames[-1] and not _MARKERS.issuperset(source):
                    frames[-1]["context_line"] = source
            elif not line.strip().startswith("[Previous line repeated"):
                break
            position += 1
        if not frames:
            return None, False
    if position >= len(lines):
        return None, False
    match = _EXCEPTION_LINE.fullmatch(lines[position])
    if match is None:
        return None, False
    value = match.group("value") or ""
    if position + 1 < len(lines):  # a message over several lines, or notes added to the exception
        value = "\n".join([value] + lines[position + 1:])
    module, _, name = match.group("type").rpartition(".")
    item = {"type": name, "value": value}
    if module:
        item["module"] = module
    if frames:
        item["stacktrace"] = frames
    return item, had_traceback


# -- binary protobuf -------------------------------------------------------------------

def _decode_protobuf(request):
    decoded = Decoded()
    for r, resource_logs in enumerate(request.resource_logs):
        resource_attributes = _pb_attributes(resource_logs.resource.attributes)
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            scope = scope_logs.scope
            group = _Group(resource_attributes, scope.name, scope.version, _pb_attributes(scope.attributes))
            for i, record in enumerate(scope_logs.log_records):
                decoded.add((r, s, i), _pb_entry, group, record)
    return decoded


def _pb_entry(group, record):
    return _entry(group, record.time_unix_nano, record.observed_time_unix_nano, record.severity_number,
                  record.severity_text, _pb_value(record.body) if record.HasField("body") else None,
                  _pb_attributes(record.attributes), record.trace_id, record.span_id, record.flags,
                  record.dropped_attributes_count, record.event_name)


def _pb_attributes(key_values):
    return {kv.key: _pb_value(kv.value) for kv in key_values}


def _pb_value(value):
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return _double(value.double_value)
    if kind == "array_value":
        return [_pb_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None  # unset, or string_value_strindex (only meaningful for profiles)


def _double(number):
    if math.isfinite(number):
        return number
    return "NaN" if number != number else "Infinity" if number > 0 else "-Infinity"


# -- OTLP/JSON -------------------------------------------------------------------------

def _field(obj, camel, snake):
    """A field of an OTLP/JSON object (lowerCamelCase; the proto name is accepted too); None if absent."""
    value = obj.get(camel)
    if value is None and snake != camel:
        value = obj.get(snake)
    return value


_SNAKE = {"resourceLogs": "resource_logs", "scopeLogs": "scope_logs", "logRecords": "log_records"}


def _json_list(obj, name):
    value = _field(obj, name, _SNAKE.get(name, name))
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid("must be an array, got {}".format(_kind(value)), name)
    return value


def _json_resource_logs(document):
    if not isinstance(document, dict):
        raise _Invalid("the body must be a JSON object {\"resourceLogs\": [...]}, got " + _kind(document))
    resource_logs, count = _json_list(document, "resourceLogs"), 0
    for r, resource in enumerate(resource_logs):
        if not isinstance(resource, dict):
            raise _Invalid("must be an object, got {}".format(_kind(resource)), "resourceLogs[{}]".format(r))
        try:
            for s, scope in enumerate(_json_list(resource, "scopeLogs")):
                if not isinstance(scope, dict):
                    raise _Invalid("must be an object, got {}".format(_kind(scope)), "scopeLogs[{}]".format(s))
                try:
                    count += len(_json_list(scope, "logRecords"))
                except _Invalid as error:
                    raise error.at("scopeLogs[{}]".format(s)) from None
        except _Invalid as error:
            raise error.at("resourceLogs[{}]".format(r)) from None
    return resource_logs, count


def _kind(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _decode_json(resource_logs):
    decoded = Decoded()
    for r, resource_logs_item in enumerate(resource_logs):
        try:
            resource = resource_logs_item.get("resource")
            resource = {} if resource is None else resource
            if not isinstance(resource, dict):
                raise _Invalid("must be an object, got {}".format(_kind(resource)), "resource")
            try:
                resource_attributes = _json_attributes(resource)
            except _Invalid as error:
                raise error.at("resource") from None
            for s, scope_logs in enumerate(_json_list(resource_logs_item, "scopeLogs")):
                try:
                    group = _json_group(resource_attributes, scope_logs)
                    for i, record in enumerate(_json_list(scope_logs, "logRecords")):
                        decoded.add((r, s, i), _json_entry, group, record)
                except _Invalid as error:
                    raise error.at("scopeLogs[{}]".format(s)) from None
        except _Invalid as error:
            raise error.at("resourceLogs[{}]".format(r)) from None
    return decoded


def _json_group(resource_attributes, scope_logs):
    scope = scope_logs.get("scope")
    scope = {} if scope is None else scope
    if not isinstance(scope, dict):
        raise _Invalid("must be an object, got {}".format(_kind(scope)), "scope")
    try:
        name, version = scope.get("name") or "", scope.get("version") or ""
        for field, value in (("name", name), ("version", version)):
            if not isinstance(value, str):
                raise _Invalid("must be a string, got {}".format(_kind(value)), field)
        return _Group(resource_attributes, name, version, _json_attributes(scope))
    except _Invalid as error:
        raise error.at("scope") from None


def _json_attributes(obj):
    """The decoded `attributes` of an OTLP/JSON object."""
    key_values = _json_list(obj, "attributes")
    attributes = {}
    for position, kv in enumerate(key_values):
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise _Invalid("must be an object {\"key\": \"...\", \"value\": {...}}",
                           "attributes[{}]".format(position))
        try:
            attributes[kv["key"]] = _json_value(kv.get("value"), 1)
        except _Invalid as error:
            raise error.at("attributes[{}].value".format(position)) from None
    return attributes


def _json_value(value, depth):
    """A decoded OTLP/JSON AnyValue."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid("an AnyValue must be an object such as {{\"stringValue\": \"...\"}}, got {}"
                       .format(_kind(value)))
    if not value:
        return None
    for key, item in value.items():
        decoder = _JSON_VALUE_DECODERS.get(key)
        if decoder is not None and item is not None:
            if depth > MAX_VALUE_DEPTH:
                raise _Invalid("values are nested more than {} levels deep".format(MAX_VALUE_DEPTH))
            try:
                return decoder(item, depth)
            except _Invalid as error:
                raise error.at(key) from None
    return None  # only unknown kinds (or stringValueStrindex, meaningful for profiles only)


def _json_string(item, depth):
    if not isinstance(item, str):
        raise _Invalid("must be a string, got {}".format(_kind(item)))
    return item


def _json_bool(item, depth):
    if item is not True and item is not False:
        raise _Invalid("must be true or false, got {}".format(_kind(item)))
    return item


def _json_int(item, depth=0, low=_INT64[0], high=_INT64[1]):
    if isinstance(item, bool):
        raise _Invalid("must be an integer, got a boolean")
    if isinstance(item, int):
        number = item
    elif isinstance(item, float) and item.is_integer():
        number = int(item)
    elif isinstance(item, str) and _INT.fullmatch(item.strip()):
        number = int(item)
    else:
        raise _Invalid("must be an integer (a number or a decimal string), got {!r}".format(item))
    if not low <= number <= high:
        raise _Invalid("{} is out of range ({} to {})".format(number, low, high))
    return number


def _json_double(item, depth):
    if isinstance(item, bool):
        raise _Invalid("must be a number, got a boolean")
    if isinstance(item, (int, float)):
        return float(item)
    if isinstance(item, str):
        try:
            return _double(float(item))  # also "NaN", "Infinity", "-Infinity"
        except ValueError:
            pass
    raise _Invalid("must be a number, got {!r}".format(item))


def _json_array(item, depth):
    if not isinstance(item, dict):
        raise _Invalid("must be an object {\"values\": [...]}, got " + _kind(item))
    values = _json_list(item, "values")
    result = []
    for position, value in enumerate(values):
        try:
            result.append(_json_value(value, depth + 1))
        except _Invalid as error:
            raise error.at("values[{}]".format(position)) from None
    return result


def _json_kvlist(item, depth):
    if not isinstance(item, dict):
        raise _Invalid("must be an object {\"values\": [{\"key\": ..., \"value\": ...}]}, got " + _kind(item))
    result = {}
    for position, kv in enumerate(_json_list(item, "values")):
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise _Invalid("must be an object {\"key\": \"...\", \"value\": {...}}", "values[{}]".format(position))
        try:
            result[kv["key"]] = _json_value(kv.get("value"), depth + 1)
        except _Invalid as error:
            raise error.at("values[{}].value".format(position)) from None
    return result


def _json_bytes(item, depth):
    if not isinstance(item, str):
        raise _Invalid("must be a base64 string, got {}".format(_kind(item)))
    return item


_JSON_VALUE_DECODERS = {
    "stringValue": _json_string, "string_value": _json_string,
    "boolValue": _json_bool, "bool_value": _json_bool,
    "intValue": _json_int, "int_value": _json_int,
    "doubleValue": _json_double, "double_value": _json_double,
    "arrayValue": _json_array, "array_value": _json_array,
    "kvlistValue": _json_kvlist, "kvlist_value": _json_kvlist,
    "bytesValue": _json_bytes, "bytes_value": _json_bytes,
}
_SEVERITY_NAMES = {"SEVERITY_NUMBER_UNSPECIFIED": 0, **{
    "SEVERITY_NUMBER_{}{}".format(name, "" if step == 1 else step): base + step - 1
    for base, name in ((1, "TRACE"), (5, "DEBUG"), (9, "INFO"), (13, "WARN"), (17, "ERROR"), (21, "FATAL"))
    for step in (1, 2, 3, 4)}}


def _json_entry(group, record):
    """One OTLP/JSON logRecord as a LogEntry; EntryError when it cannot be one."""
    if not isinstance(record, dict):
        raise EntryError("an entry must be a JSON object: a logRecord is {}".format(_kind(record)))
    try:
        attributes = _json_attributes(record)
    except _Invalid as error:
        raise EntryError("metadata (the record's {}) cannot be decoded: {}".format(error.path, error.message)) from None
    try:
        body = _json_value(_field(record, "body", "body"), 1)
    except _Invalid as error:
        path = "body." + error.path if error.path else "body"
        raise EntryError("message (the record's {}) cannot be decoded: {}".format(path, error.message)) from None
    time_ns = _json_record_int(record, "timeUnixNano", "time_unix_nano", "timestamp", 0, (1 << 64) - 1)
    observed_ns = _json_record_int(record, "observedTimeUnixNano", "observed_time_unix_nano", "timestamp",
                                   0, (1 << 64) - 1)
    severity = _field(record, "severityNumber", "severity_number")
    if isinstance(severity, str) and severity in _SEVERITY_NAMES:
        severity = _SEVERITY_NAMES[severity]
    else:
        severity = _json_record_int(record, "severityNumber", "severity_number", "level", 0, (1 << 31) - 1)
    severity_text = _json_record_string(record, "severityText", "severity_text", "level")
    event_name = _json_record_string(record, "eventName", "event_name", "message")
    flags = _json_record_int(record, "flags", "flags", "metadata", 0, (1 << 32) - 1)
    dropped = _json_record_int(record, "droppedAttributesCount", "dropped_attributes_count", "metadata",
                               0, (1 << 32) - 1)
    trace_id = _json_record_string(record, "traceId", "trace_id", "trace_id")
    span_id = _json_record_string(record, "spanId", "span_id", "span_id")
    return _entry(group, time_ns, observed_ns, severity, severity_text, body, attributes,
                  trace_id, span_id, flags, dropped, event_name)


def _json_record_int(record, camel, snake, field, low, high):
    value = _field(record, camel, snake)
    if value is None:
        return 0
    try:
        return _json_int(value, 0, low, high)
    except _Invalid as error:
        raise EntryError("{} (the record's {}) {}".format(field, camel, error.message)) from None


def _json_record_string(record, camel, snake, field):
    value = _field(record, camel, snake)
    if value is None or isinstance(value, str):
        return value or ""
    raise EntryError("{} (the record's {}) must be a string, got {}".format(field, camel, _kind(value)))


# -- responses -------------------------------------------------------------------------

def rejection_message(decoded, rejected):
    """partial_success.error_message: how many, and why (the first few)."""
    rejected = sorted(rejected, key=lambda item: item["index"])
    reasons = ["{}: {}".format(decoded.path(item["index"]), item["error"])
               for item in rejected[:MAX_LISTED_REJECTIONS]]
    more = len(rejected) - len(reasons)
    return "{} of {} log records rejected: {}{}".format(
        len(rejected), decoded.total, "; ".join(reasons), "; and {} more".format(more) if more else "")


def export_response(kind, rejected=0, error_message=""):
    """The body of a 200: ExportLogsServiceResponse, partial_success set when records were rejected."""
    if kind == "json":
        if not rejected and not error_message:
            return b"{}"
        return orjson.dumps({"partialSuccess": {"rejectedLogRecords": rejected, "errorMessage": error_message}})
    response = logs_service_pb2.ExportLogsServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = error_message
    return response.SerializeToString()


# google.rpc.Code for the statuses the endpoint answers (OTLP clients go by the HTTP status).
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 10, 413: 3, 415: 3, 429: 8, 500: 13, 503: 14, 504: 4}
ERROR_DOMAIN = "sidecar"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


def status_body(kind, http_status, code, message, details=None):
    """The body of a 4xx/5xx: a google.rpc.Status with the sidecar's error code in an ErrorInfo
    (and a BadRequest naming the field, for undecodable OTLP/JSON), in protobuf or JSON."""
    details = details or {}
    metadata = {str(key): value if isinstance(value, str) else orjson.dumps(value).decode()
                for key, value in details.items()}
    grpc_code = GRPC_CODES.get(http_status, 2)
    violation = details.get("field") if http_status == 400 else None
    if kind == "protobuf":
        info = _string_field(1, code) + _string_field(2, ERROR_DOMAIN) + b"".join(
            _bytes_field(3, _string_field(1, key) + _string_field(2, value)) for key, value in metadata.items())
        any_values = [_bytes_field(1, ERROR_INFO_TYPE.encode()) + _bytes_field(2, info)]
        if violation:
            bad_request = _bytes_field(1, _string_field(1, violation) + _string_field(2, message))
            any_values.append(_bytes_field(1, BAD_REQUEST_TYPE.encode()) + _bytes_field(2, bad_request))
        return (_varint(1 << 3) + _varint(grpc_code) + _string_field(2, message)
                + b"".join(_bytes_field(3, value) for value in any_values))
    info = {"@type": ERROR_INFO_TYPE, "reason": code, "domain": ERROR_DOMAIN}
    if metadata:
        info["metadata"] = metadata
    status_details = [info]
    if violation:
        status_details.append({"@type": BAD_REQUEST_TYPE,
                               "fieldViolations": [{"field": violation, "description": message}]})
    return orjson.dumps({"code": grpc_code, "message": message, "details": status_details})


def _varint(number):
    out = bytearray()
    while True:
        bits = number & 0x7F
        number >>= 7
        if number:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _bytes_field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string_field(number, text):
    return _bytes_field(number, text.encode("utf-8")) if text else b""
