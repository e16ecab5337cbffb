"""Sentry wire formats: envelopes and store bodies, mapped to LogEntries.

Only error and message events become entries; every other item type
(transactions, sessions, client reports, attachments, ...) is accepted and
skipped, as a relay that does not use them would.
"""
import orjson

from .body import BodyError

EVENT_ITEM_TYPES = ("event",)


def parse_envelope(body):
    """Return (envelope header, [(item header, payload bytes)])."""
    newline = body.find(b"\n")
    header_bytes = body if newline < 0 else body[:newline]
    header = _json(header_bytes, "envelope header")
    items, position = [], len(body) if newline < 0 else newline + 1
    while position < len(body):
        end = body.find(b"\n", position)
        line = body[position:] if end < 0 else body[position:end]
        position = len(body) if end < 0 else end + 1
        if not line.strip():
            continue
        item_header = _json(line, "item header")
        length = item_header.get("length")
        if isinstance(length, int) and length >= 0:
            payload = body[position:position + length]
            if len(payload) < length:
                raise BodyError(400, "invalid_envelope", "an item is shorter than its length header")
            position += length
            if body[position:position + 1] == b"\n":
                position += 1
        else:
            end = body.find(b"\n", position)
            payload = body[position:] if end < 0 else body[position:end]
            position = len(body) if end < 0 else end + 1
        items.append((item_header, payload))
    return header, items


def _json(data, what):
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BodyError(400, "invalid_envelope", "the {} is not valid JSON: {}".format(what, error.msg)) from None
    if not isinstance(value, dict):
        raise BodyError(400, "invalid_envelope", "the {} must be a JSON object".format(what))
    return value


def event_items(items):
    """The payloads of the items that become entries; the count of the skipped ones."""
    events = [_json(payload, "event") for header, payload in items if header.get("type") in EVENT_ITEM_TYPES]
    return events, len(items) - len(events)


def _frames(stacktrace):
    frames = []
    for frame in (stacktrace or {}).get("frames") or []:
        if isinstance(frame, dict):
            frames.append({key: frame.get(key) for key in
                           ("filename", "function", "lineno", "module", "in_app", "abs_path", "context_line", "vars")
                           if frame.get(key) is not None})
    return frames


def _exception(event):
    container = event.get("exception")
    values = container.get("values") if isinstance(container, dict) else container
    if not isinstance(values, list) or not values:
        return None
    chain = []
    for value in values:
        if not isinstance(value, dict):
            continue
        item = {"type": value.get("type") or "Error", "value": value.get("value") or ""}
        if value.get("module"):
            item["module"] = value["module"]
        frames = _frames(value.get("stacktrace"))
        if frames:
            item["stacktrace"] = frames
        chain.append(item)
    return chain or None


def _message(event, exception):
    logentry = event.get("logentry") or event.get("sentry.interfaces.Message")
    if isinstance(logentry, dict):
        text = logentry.get("formatted") or logentry.get("message")
        if text:
            return str(text)
    message = event.get("message")
    if isinstance(message, dict):
        message = message.get("formatted") or message.get("message")
    if message:
        return str(message)
    if exception:
        last = exception[-1]
        return "{}: {}".format(last["type"], last["value"]) if last["value"] else last["type"]
    return "(no message)"


def _user_id(user):
    if not isinstance(user, dict):
        return None
    for key in ("id", "email", "username", "ip_address"):
        if user.get(key) not in (None, ""):
            return str(user[key])
    return None


def _tags(event):
    tags = event.get("tags")
    if isinstance(tags, list):  # the store API also allows [[key, value], ...]
        tags = {str(pair[0]): pair[1] for pair in tags if isinstance(pair, (list, tuple)) and len(pair) == 2}
    return tags if isinstance(tags, dict) else {}


def to_log_entry(event, project_id):
    """Map one Sentry event to our LogEntry."""
    exception = _exception(event)
    tags = _tags(event)
    contexts = event.get("contexts") if isinstance(event.get("contexts"), dict) else {}
    trace = contexts.get("trace") if isinstance(contexts.get("trace"), dict) else {}
    metadata = {"sentry": {"event_id": event.get("event_id"), "project_id": project_id,
                           "platform": event.get("platform"), "sdk": event.get("sdk")}}
    for key in ("tags", "contexts", "extra", "request", "modules", "breadcrumbs"):
        if event.get(key):
            metadata[key] = tags if key == "tags" else event[key]
    if event.get("logger"):
        metadata["logger"] = event["logger"]
    if isinstance(event.get("user"), dict):
        metadata["user"] = event["user"]
    entry = {
        "service": str(tags.get("service") or event.get("logger_service") or "sentry-{}".format(project_id)),
        "level": event.get("level") or ("error" if exception else "info"),
        "message": _message(event, exception),
        "metadata": metadata,
    }
    if event.get("timestamp") is not None:
        entry["timestamp"] = event["timestamp"]
    for source, target in (("release", "release"), ("environment", "environment"), ("server_name", "host")):
        if event.get(source):
            entry[target] = str(event[source])
    user_id = _user_id(event.get("user"))
    if user_id:
        entry["user_id"] = user_id
    if trace.get("trace_id"):
        entry["trace_id"] = str(trace["trace_id"])
    if trace.get("span_id"):
        entry["span_id"] = str(trace["span_id"])
    if exception:
        entry["exception"] = exception
    fingerprint = event.get("fingerprint")
    if isinstance(fingerprint, list) and fingerprint and all(isinstance(p, str) for p in fingerprint):
        entry["fingerprint"] = fingerprint
    return entry
