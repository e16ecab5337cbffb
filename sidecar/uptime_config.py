"""Uptime monitors file (`SIDECAR_MONITORS_FILE`, YAML or TOML) and maintenance windows.

The file has up to three top-level keys: `monitors` (a list), `maintenance`
(windows for every monitor) and `defaults` (values every monitor takes unless
it sets its own). A bad file raises SettingsError naming the monitor, the key
and the line, so the start stops. Secrets: a URL or a header value may hold
tokens; they are never copied into an error message, and `${NAME}` in them is
replaced by the environment variable NAME so the file can be committed.
"""
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from .alert_delivery import redact_url
from .config_files import read_yaml_or_toml
from .settings import SettingsError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TOP_KEYS = ("monitors", "maintenance", "defaults")
KINDS = ("http", "tcp")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
COMMON_KEYS = ("name", "kind", "description", "interval_s", "timeout_ms", "retries", "retry_interval_s",
               "maintenance", "enabled")
HTTP_KEYS = ("url", "method", "expected_status", "keyword", "headers", "follow_redirects", "verify_tls")
TCP_KEYS = ("host", "port")
DEFAULT_KEYS = ("interval_s", "timeout_ms", "retries", "retry_interval_s", "method", "expected_status",
                "follow_redirects", "verify_tls")
WINDOW_KEYS = ("name", "start", "end", "repeat", "days")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULTS = {"interval_s": 60, "timeout_ms": 10_000, "retries": 2, "method": "GET", "expected_status": ((200, 299),),
            "follow_redirects": True, "verify_tls": True}


# -- maintenance windows ------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """A maintenance window: once (`start`/`end`, aware datetimes) or repeated daily or weekly
    (`start_minute`/`end_minute` of the UTC day; `days` 0 = Monday); an end before the start
    runs past midnight."""
    name: str
    repeat: str = None          # None, "daily" or "weekly"
    start: datetime = None
    end: datetime = None
    start_minute: int = 0
    end_minute: int = 0
    days: frozenset = frozenset()

    def occurrence(self, now):
        """(start, end) of the occurrence under way at `now`, else the next one; None when none is left."""
        if self.repeat is None:
            return (self.start, self.end) if self.end > now else None
        length = timedelta(minutes=(self.end_minute - self.start_minute) % 1440)
        midnight = datetime.combine(now.date(), time(), tzinfo=timezone.utc)
        for offset in range(-1, 9):
            day = midnight + timedelta(days=offset)
            if self.repeat == "weekly" and day.weekday() not in self.days:
                continue
            start = day + timedelta(minutes=self.start_minute)
            if start + length > now:
                return start, start + length
        return None  # not reached: a weekly window has a day within 8 days

    def active(self, now):
        found = self.occurrence(now)
        return found is not None and found[0] <= now < found[1]

    def describe(self):
        if self.repeat is None:
            return "once"
        times = "{:02d}:{:02d}-{:02d}:{:02d} UTC".format(self.start_minute // 60, self.start_minute % 60,
                                                         self.end_minute // 60, self.end_minute % 60)
        if self.repeat == "daily":
            return "daily " + times
        return "weekly on {} {}".format(",".join(DAYS[day] for day in sorted(self.days)), times)


# -- monitors -------------------------------------------------------------------------

@dataclass(frozen=True)
class Monitor:
    name: str
    kind: str                       # "http" or "tcp"
    interval_s: int
    timeout_ms: int
    retries: int                    # consecutive failed checks that make the monitor down
    retry_interval_s: int           # interval while a check fails
    description: str = ""
    url: str = None                 # http: secrets maybe; shown only through target()
    method: str = "GET"
    expected_status: tuple = ((200, 299),)
    expected_text: str = "200-299"
    keyword: str = None
    headers: tuple = ()             # ((name, value), ...): values may be secrets, never shown
    follow_redirects: bool = True
    verify_tls: bool = True
    host: str = None                # tcp
    port: int = None
    maintenance: tuple = ()         # this monitor's own windows

    @property
    def https(self):
        return self.kind == "http" and self.url.lower().startswith("https://")

    def status_expected(self, code):
        return any(low <= code <= high for low, high in self.expected_status)

    def target(self):
        """Where it points, safe to log: a redacted URL, or host:port for TCP."""
        if self.kind == "http":
            return redact_url(self.url)
        return "{}:{}".format("[{}]".format(self.host) if ":" in self.host else self.host, self.port)


@dataclass(frozen=True)
class MonitorsConfig:
    monitors: tuple = ()
    maintenance: tuple = ()         # windows of every monitor
    path: str = ""
    by_name: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        self.by_name.update((monitor.name, monitor) for monitor in self.monitors)

    def windows(self, monitor):
        return self.maintenance + monitor.maintenance

    def in_maintenance(self, monitor, now):
        return any(window.active(now) for window in self.windows(monitor))


# -- errors with places -------------------------------------------------------------------

class _Where:
    """Names a place in the file: `monitor 2 ('api', line 7): key 'url' (line 9)`."""

    def __init__(self, path, lines, names=None):
        self.path, self.lines, self.names = path, lines, names or {}

    def fail(self, message, *place):
        parts, walked = [], ()
        index = 0
        while index < len(place):
            item = place[index]
            walked += (item,)
            if item in ("monitors", "maintenance") and index + 1 < len(place) and isinstance(place[index + 1], int):
                position = place[index + 1]
                walked += (position,)
                inner = []
                if item == "monitors" and isinstance(self.names.get(position), str):
                    inner.append(repr(self.names[position]))
                if self.lines.get(walked):
                    inner.append("line {}".format(self.lines[walked]))
                parts.append("{} {}{}".format("monitor" if item == "monitors" else "maintenance window",
                                              position + 1, " ({})".format(", ".join(inner)) if inner else ""))
                index += 2
                continue
            if item == "defaults" and index + 1 < len(place):
                parts.append("defaults")
            else:
                line = self.lines.get(walked)
                parts.append("key {!r}{}".format(item, " (line {})".format(line) if line else ""))
            index += 1
        raise SettingsError("SIDECAR_MONITORS_FILE {}: {}{}".format(
            self.path, ": ".join(parts) + ": " if parts else "", message))


def _yaml_lines(text):
    """Path tuple -> line, from the YAML node tree: ("monitors", 0, "url") -> 9."""
    import yaml
    lines = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[path + (key.value,)] = key.start_mark.line + 1
                walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[path + (index,)] = item.start_mark.line + 1
                walk(item, path + (index,))

    walk(yaml.compose(text), ())
    return lines


def _toml_lines(text):
    """The same, found in the text: `[[monitors]]`, `[[monitors.maintenance]]`, `[[maintenance]]`,
    `[defaults]`, `[monitors.headers]` tables and the keys under them."""
    lines, counts, table = {}, {}, ()
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.split("#", 1)[0].strip().replace(" ", "")
        if stripped.startswith("[[") and stripped.endswith("]]"):
            names = tuple(stripped[2:-2].split("."))
            if names[0] == "monitors" and len(names) == 2:
                monitor = counts.get(("monitors",), 0) - 1
                key = ("monitors", monitor, names[1])
                counts[key] = counts.get(key, 0) + 1
                table = key + (counts[key] - 1,)
            else:
                counts[names] = counts.get(names, 0) + 1
                table = names + (counts[names] - 1,)
            lines[table] = number
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            names = tuple(stripped[1:-1].split("."))
            table = ("monitors", counts.get(("monitors",), 0) - 1) + names[1:] if names[0] == "monitors" else names
            lines[table] = number
            continue
        match = re.match(r'^\s*"?([A-Za-z0-9_-]+)"?\s*=', line)
        if match:
            lines[table + (match.group(1),)] = number
    return lines


def _parse_file(path):
    data, text, kind = read_yaml_or_toml(path, "SIDECAR_MONITORS_FILE")
    if kind == "yaml":
        return data, (_yaml_lines(text) if data else {})
    return data, _toml_lines(text)


# -- values -------------------------------------------------------------------------------

def _whole(low, high):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError("must be a whole number from {} to {}".format(low, high))
        return value
    return check


def _flag(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _method(value):
    if not isinstance(value, str) or value.upper() not in METHODS:
        raise ValueError("must be one of {}".format(", ".join(METHODS)))
    return value.upper()


STATUS_ITEM = re.compile(r"^([1-5])xx$|^(\d{3})(?:\s*-\s*(\d{3}))?$")


def expected_status(value):
    """200, "2xx", "200-299", a list of these or a comma-separated string -> ((low, high), ...)."""
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, (str, int)) else None
    if isinstance(value, bool) or not items:
        raise ValueError("must be a status code (200), a class (2xx), a range (200-299) or a list of these")
    ranges = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError("must be a status code (200), a class (2xx), a range (200-299) or a list of these")
        match = STATUS_ITEM.match(str(item).strip().lower())
        if not match:
            raise ValueError("{!r} is not a status code (200), a class (2xx) or a range (200-299)".format(item))
        if match.group(1):
            low = int(match.group(1)) * 100
            ranges.append((low, low + 99))
            continue
        low = int(match.group(2))
        high = int(match.group(3) or low)
        if not 100 <= low <= high <= 599:
            raise ValueError("{!r}: codes go from 100 to 599, the low one first".format(item))
        ranges.append((low, high))
    return tuple(ranges)


def status_text(ranges):
    def one(low, high):
        if low == high:
            return str(low)
        if low % 100 == 0 and high == low + 99:
            return "{}xx".format(low // 100)
        return "{}-{}".format(low, high)
    return ", ".join(one(low, high) for low, high in ranges)


def _text(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _with_env(value, environ):
    missing = [ref for ref in ENV_REF.findall(value) if ref not in environ]
    if missing:
        raise ValueError("uses ${{{}}}, which is not set in the environment".format(missing[0]))
    return ENV_REF.sub(lambda match: environ[match.group(1)], value)


def _url(value, environ):
    if not isinstance(value, str):
        raise ValueError("must be an http:// or https:// URL")
    url = _with_env(value.strip(), environ)
    parts = urllib.parse.urlsplit(url)  # the URL itself is never quoted back: it may hold a token
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL naming a host")
    try:
        parts.port
    except ValueError:
        raise ValueError("the URL has an invalid port") from None
    return url


def _headers(value, environ):
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of header names to values")
    headers = []
    for name, raw in value.items():
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", name):
            raise ValueError("{!r} is not a header name".format(str(name)[:64]))
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueError("the value of {} must be a string".format(name))
        text = _with_env(str(raw), environ)
        if "\n" in text or "\r" in text:
            raise ValueError("the value of {} must be one line".format(name))
        headers.append((name, text))
    return tuple(headers)


def _host(value):
    host = _text(value)
    if "/" in host or " " in host:
        raise ValueError("must be a host name or an IP address (no scheme, path or port)")
    return host.strip("[]")


def _clock_minute(value):
    """"HH:MM" (UTC) -> minute of the day; YAML 1.1 reads an unquoted 2:30 as 150, the same minute."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1440:
        return value
    if isinstance(value, time):  # TOML local time
        return value.hour * 60 + value.minute
    match = re.match(r"^(\d{1,2}):(\d{2})$", value.strip()) if isinstance(value, str) else None
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError("must be a UTC time of day as \"HH:MM\" (quoted)")
    return int(match.group(1)) * 60 + int(match.group(2))


def _moment(value):
    """RFC 3339 with an offset (a string, or a YAML/TOML date-time) -> aware UTC datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("must be an RFC 3339 date-time such as 2026-05-01T02:00:00Z") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        raise ValueError("must be a date-time, not a date (2026-05-01T02:00:00Z)")
    if not isinstance(value, datetime):
        raise ValueError("must be an RFC 3339 date-time such as 2026-05-01T02:00:00Z")
    if value.tzinfo is None:
        raise ValueError("must have a time zone offset (Z or +hh:mm)")
    return value.astimezone(timezone.utc)


def _window(raw, where, place):
    if not isinstance(raw, dict):
        where.fail("a maintenance window must be a mapping (start, end; repeat, days)", *place)
    for key in raw:
        if key not in WINDOW_KEYS:
            where.fail("not a key of a maintenance window (it takes {})".format(", ".join(WINDOW_KEYS)),
                       *place, key)
    name = raw.get("name", "maintenance")
    if not isinstance(name, str) or not name.strip():
        where.fail("must be a non-empty string", *place, "name")
    for key in ("start", "end"):
        if key not in raw:
            where.fail("{} is required".format(key), *place)
    repeat = raw.get("repeat")
    if repeat is None:
        if "days" in raw:
            where.fail("days go with repeat: weekly", *place, "days")
        values = {}
        for key in ("start", "end"):
            try:
                values[key] = _moment(raw[key])
            except ValueError as error:
                where.fail(str(error), *place, key)
        if values["end"] <= values["start"]:
            where.fail("must be after start", *place, "end")
        return Window(name.strip(), None, values["start"], values["end"])
    if repeat not in ("daily", "weekly"):
        where.fail("must be daily or weekly (or left out for a one-off window)", *place, "repeat")
    minutes = {}
    for key in ("start", "end"):
        try:
            minutes[key] = _clock_minute(raw[key])
        except ValueError as error:
            where.fail(str(error), *place, key)
    if minutes["start"] == minutes["end"]:
        where.fail("must differ from start", *place, "end")
    days = frozenset()
    if repeat == "weekly":
        value = raw.get("days")
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, list) or not value or any(
                not isinstance(day, str) or day.strip().lower()[:3] not in DAYS for day in value):
            where.fail("a weekly window takes days: a list of mon, tue, wed, thu, fri, sat, sun", *place, "days")
        days = frozenset(DAYS.index(day.strip().lower()[:3]) for day in value)
    elif "days" in raw:
        where.fail("days go with repeat: weekly", *place, "days")
    return Window(name.strip(), repeat, start_minute=minutes["start"], end_minute=minutes["end"], days=days)


def _windows(value, where, place):
    if not isinstance(value, list):
        where.fail("must be a list of maintenance windows (in TOML, [[maintenance]] tables)", *place)
    return tuple(_window(raw, where, place + (index,)) for index, raw in enumerate(value))


_CHECKS = {"interval_s": _whole(1, 86_400), "timeout_ms": _whole(1, 120_000), "retries": _whole(1, 100),
           "retry_interval_s": _whole(1, 86_400), "method": _method, "expected_status": expected_status,
           "follow_redirects": _flag, "verify_tls": _flag}


def _defaults(value, where):
    if not isinstance(value, dict):
        where.fail("must be a mapping", "defaults")
    found = {}
    for key, raw in value.items():
        if key not in DEFAULT_KEYS:
            where.fail("not a default a monitor takes (defaults take {})".format(", ".join(DEFAULT_KEYS)),
                       "defaults", key)
        try:
            found[key] = _CHECKS[key](raw)
        except ValueError as error:
            where.fail(str(error), "defaults", key)
    return found


def _monitor(raw, index, where, defaults, environ):
    place = ("monitors", index)
    if not isinstance(raw, dict):
        where.fail("a monitor must be a mapping (in TOML, a [[monitors]] table)", *place)
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        where.fail("name is required: letters, digits, '_', '.', '-' (at most 64)", *place,
                   *(("name",) if "name" in raw else ()))
    kind = raw.get("kind", "http" if "url" in raw else "tcp" if "host" in raw or "port" in raw else None)
    if kind not in KINDS:
        where.fail("kind must be http (with url) or tcp (with host and port)", *place,
                   *(("kind",) if "kind" in raw else ()))
    allowed = COMMON_KEYS + (HTTP_KEYS if kind == "http" else TCP_KEYS)
    for key in raw:
        if key not in allowed:
            where.fail("not a key of a {} monitor (it takes {})".format(kind, ", ".join(allowed)), *place, key)
    values = dict(DEFAULTS, **defaults)
    for key, check in _CHECKS.items():
        if key in raw and key in allowed:
            try:
                values[key] = check(raw[key])
            except ValueError as error:
                where.fail(str(error), *place, key)
    values.setdefault("retry_interval_s", values["interval_s"])
    description = raw.get("description", "")
    if not isinstance(description, str):
        where.fail("must be a string", *place, "description")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        where.fail("must be true or false", *place, "enabled")
    windows = _windows(raw["maintenance"], where, place + ("maintenance",)) if "maintenance" in raw else ()
    common = dict(name=name, kind=kind, interval_s=values["interval_s"], timeout_ms=values["timeout_ms"],
                  retries=values["retries"], retry_interval_s=values["retry_interval_s"],
                  description=description.strip(), maintenance=windows)
    if kind == "tcp":
        for key in ("host", "port"):
            if key not in raw:
                where.fail("a tcp monitor needs {}".format(key), *place)
        try:
            host = _host(raw["host"])
        except ValueError as error:
            where.fail(str(error), *place, "host")
        try:
            port = _whole(1, 65535)(raw["port"])
        except ValueError as error:
            where.fail(str(error), *place, "port")
        return enabled, Monitor(host=host, port=port, **common)
    if "url" not in raw:
        where.fail("an http monitor needs url", *place)
    parsed = {}
    for key, check in (("url", lambda value: _url(value, environ)), ("keyword", _text),
                       ("headers", lambda value: _headers(value, environ))):
        if key in raw:
            try:
                parsed[key] = check(raw[key])
            except ValueError as error:
                where.fail(str(error), *place, key)
    return enabled, Monitor(url=parsed["url"], method=values["method"], expected_status=values["expected_status"],
                            expected_text=status_text(values["expected_status"]), keyword=parsed.get("keyword"),
                            headers=parsed.get("headers", ()), follow_redirects=values["follow_redirects"],
                            verify_tls=values["verify_tls"], **common)


def parse(data, path="", lines=None, environ=None):
    """The monitors file's content (a dict) -> MonitorsConfig; raises SettingsError."""
    environ = os.environ if environ is None else environ
    names = {}
    if isinstance(data, dict) and isinstance(data.get("monitors"), list):
        names = {index: raw.get("name") for index, raw in enumerate(data["monitors"]) if isinstance(raw, dict)}
    where = _Where(path, lines or {}, names)
    if not isinstance(data, dict):
        where.fail("the top level must be a mapping with `monitors` (a list of monitors)")
    for key in data:
        if key not in TOP_KEYS:
            where.fail("unknown top-level key (the file takes {})".format(", ".join(TOP_KEYS)), key)
    defaults = _defaults(data["defaults"], where) if "defaults" in data else {}
    windows = _windows(data["maintenance"], where, ("maintenance",)) if "maintenance" in data else ()
    entries = data.get("monitors", [])
    if not isinstance(entries, list):
        where.fail("must be a list of monitors (in TOML, [[monitors]] tables)", "monitors")
    monitors, seen = [], set()
    for index, raw in enumerate(entries):
        enabled, monitor = _monitor(raw, index, where, defaults, environ)
        if monitor.name in seen:
            where.fail("a second monitor with this name", "monitors", index, "name")
        seen.add(monitor.name)
        if enabled:
            monitors.append(monitor)
    return MonitorsConfig(tuple(monitors), windows, path)


def load_monitors(settings, environ=None):
    """The monitors in force: from SIDECAR_MONITORS_FILE, or none."""
    path = settings["monitors_file"]
    if not path:
        return MonitorsConfig()
    data, lines = _parse_file(path)
    return parse(data, path, lines, environ)


def is_ip(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
