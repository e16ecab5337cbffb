"""Alert rules: the built-in set and the rules file (`SIDECAR_ALERTS_FILE`, YAML or TOML).

A rule is a name, a kind (what it watches), the kind's parameters, a
severity, `for_minutes`, `cooldown_minutes` and its channels (apprise URLs).
The file's rules replace built-in rules of the same name key by key, and add
new ones; `include_defaults: false` drops the built-ins. A bad file raises
SettingsError naming the rule, the key and the line, so the start stops.
"""
import os
import re
from dataclasses import dataclass

from .alert_delivery import redact_url
from .config_files import read_yaml_or_toml
from .settings import SettingsError

SEVERITIES = ("info", "warning", "error", "critical")
LEVELS = ("debug", "info", "warn", "error", "critical")
EVENT_KINDS = ("new_error_group", "regression", "cold_start", "retention_budget_drop", "backup_failed")
COMMON_KEYS = ("name", "kind", "severity", "for_minutes", "cooldown_minutes", "channels", "enabled")
TOP_KEYS = ("rules", "channels", "include_defaults")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _text_or_none(value):
    if value is None or (isinstance(value, str) and value.strip()):
        return value if value is None else value.strip()
    raise ValueError("must be a non-empty string")


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _number(low, high=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or (
                high is not None and value > high):
            raise ValueError("must be a number from {} to {}".format(low, high) if high is not None
                             else "must be a number of at least {}".format(low))
        return value
    return check


def _flag(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _choice(*choices):
    def check(value):
        if value not in choices:
            raise ValueError("must be one of {}".format(", ".join(choices)))
        return value
    return check


def _levels(value):
    if not isinstance(value, list) or not value or any(level not in LEVELS for level in value):
        raise ValueError("must be a list of levels among {}".format(", ".join(LEVELS)))
    return tuple(value)


_LISTED = {"max_listed": (_count, 20)}
# kind -> parameter -> (check, default)
KINDS = {
    "new_error_group": dict(_LISTED, service=(_text_or_none, None)),
    "regression": dict(_LISTED, service=(_text_or_none, None)),
    "error_rate": {"threshold_per_minute": (_number(0), 10), "per_service": (_flag, True),
                   "service": (_text_or_none, None), "levels": (_levels, ("error", "critical"))},
    "latency_p95": {"threshold_ms": (_number(0), 1000), "per": (_choice("service", "route", "all"), "service"),
                    "service": (_text_or_none, None), "route": (_text_or_none, None), "min_count": (_count, 5)},
    "disk_budget": {"threshold_percent": (_number(1, 100), 80)},
    "memory": {"threshold_percent": (_number(1, 1000), 90)},
    "health": {"status": (_choice("degraded", "unhealthy"), "degraded")},
    "cold_start": dict(_LISTED),
    "retention_budget_drop": dict(_LISTED),
    "backup_failed": dict(_LISTED),
    "uptime_down": {"monitor": (_text_or_none, None)},
    "cert_expiry": {"threshold_days": (_number(0), 14), "monitor": (_text_or_none, None)},
}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    severity: str
    for_minutes: int
    cooldown_minutes: int
    channels: tuple      # apprise URLs: secrets, never shown; see public()
    params: dict

    @property
    def event(self):
        return self.kind in EVENT_KINDS

    def public(self):
        """The rule as the API shows it: channels redacted."""
        return {"name": self.name, "kind": self.kind, "severity": self.severity, "for_minutes": self.for_minutes,
                "cooldown_minutes": self.cooldown_minutes, "channels": [redact_url(url) for url in self.channels],
                "params": {key: list(value) if isinstance(value, tuple) else value
                           for key, value in self.params.items()}}


def builtin_rules(settings):
    """The rules used when no file is set (and under a file's rules unless include_defaults is false)."""
    return [
        {"name": "new_error_group", "kind": "new_error_group", "severity": "warning"},
        {"name": "regression", "kind": "regression", "severity": "warning", "cooldown_minutes": 60},
        {"name": "error_rate", "kind": "error_rate", "severity": "critical", "for_minutes": 5,
         "cooldown_minutes": 30, "threshold_per_minute": 10},
        {"name": "latency_p95", "kind": "latency_p95", "severity": "warning", "for_minutes": 5,
         "cooldown_minutes": 30, "threshold_ms": 1000},
        {"name": "disk_budget_warning", "kind": "disk_budget", "severity": "warning", "cooldown_minutes": 60,
         "threshold_percent": settings["disk_budget_warn_percent"]},
        {"name": "disk_budget_critical", "kind": "disk_budget", "severity": "critical", "cooldown_minutes": 60,
         "threshold_percent": settings["disk_budget_critical_percent"]},
        {"name": "memory", "kind": "memory", "severity": "critical", "for_minutes": 2, "cooldown_minutes": 30,
         "threshold_percent": 90},
        {"name": "health", "kind": "health", "severity": "warning", "for_minutes": 5, "cooldown_minutes": 30},
        {"name": "cold_start", "kind": "cold_start", "severity": "warning"},
        {"name": "retention_budget_drop", "kind": "retention_budget_drop", "severity": "warning"},
        {"name": "backup_failed", "kind": "backup_failed", "severity": "error"},
        {"name": "uptime_down", "kind": "uptime_down", "severity": "critical"},
        {"name": "cert_expiry", "kind": "cert_expiry", "severity": "warning", "threshold_days": 14},
    ]


class _Where:
    """Names a place in the file for error messages: path, rule, key, line."""

    def __init__(self, path, lines):
        self.path, self.lines = path, lines

    def fail(self, message, index=None, name=None, key=None):
        place = []
        if index is not None:
            line = self.lines.get((index, None))
            inner = ([repr(name)] if isinstance(name, str) else []) + (["line {}".format(line)] if line else [])
            place.append("rule {}{}".format(index + 1, " ({})".format(", ".join(inner)) if inner else ""))
        if key is not None:
            line = self.lines.get((index, key))
            place.append("key {!r}{}".format(key, " (line {})".format(line) if line else ""))
        raise SettingsError("SIDECAR_ALERTS_FILE {}: {}{}".format(
            self.path, ": ".join(place) + ": " if place else "", message))


def _yaml_lines(text):
    """(rule index, key) -> line number, from the YAML node tree; (None, key) for top-level keys."""
    import yaml
    lines = {}
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        lines[(None, key_node.value)] = key_node.start_mark.line + 1
        if key_node.value == "rules" and isinstance(value_node, yaml.SequenceNode):
            for index, item in enumerate(value_node.value):
                lines[(index, None)] = item.start_mark.line + 1
                if isinstance(item, yaml.MappingNode):
                    for rule_key, _ in item.value:
                        lines[(index, rule_key.value)] = rule_key.start_mark.line + 1
    return lines


def _toml_lines(text):
    """The same, found in the text: the n-th `[[rules]]` table and the keys under it."""
    lines, index = {}, -1
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[["):
            index = index + 1 if stripped.replace(" ", "") == "[[rules]]" else None
            if index is not None:
                lines[(index, None)] = number
            continue
        if stripped.startswith("["):
            index = None
            continue
        match = re.match(r'^\s*"?([A-Za-z0-9_]+)"?\s*=', line)
        if match:
            lines[(None if index in (None, -1) else index, match.group(1))] = number
    return lines


def _parse_file(path):
    data, text, kind = read_yaml_or_toml(path, "SIDECAR_ALERTS_FILE")
    return data, _Where(path, _yaml_lines(text) if kind == "yaml" else _toml_lines(text))


def _channels(value, where, environ, index=None, name=None):
    if isinstance(value, str):
        value = [part for part in (piece.strip() for piece in value.split(",")) if part]
    if not isinstance(value, list) or not all(isinstance(url, str) for url in value):
        where.fail("must be a list of apprise URLs", index, name, "channels")
    urls = []
    for position, url in enumerate(value, 1):
        missing = [ref for ref in ENV_REF.findall(url) if ref not in environ]
        if missing:
            where.fail("channel {} uses ${{{}}}, which is not set in the environment".format(position, missing[0]),
                       index, name, "channels")
        urls.append(ENV_REF.sub(lambda match: environ[match.group(1)], url).strip())
    return tuple(urls)


def check_channels(urls, describe):
    """Refuse URLs apprise cannot use, naming them by position and scheme only (they hold secrets)."""
    if not urls:
        return
    import apprise
    for position, url in enumerate(urls, 1):
        if not apprise.Apprise().add(url):
            raise SettingsError("{}: channel {} ({}) is not a URL apprise can send to".format(
                describe, position, url.split("://", 1)[0] + "://..." if "://" in url else "no scheme"))


def _rule(raw, index, where, default_channels, environ):
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        where.fail("name is required: letters, digits, '_', '.', '-' (at most 64)", index, name,
                   "name" if "name" in raw else None)
    kind = raw.get("kind")
    if kind not in KINDS:
        where.fail("kind must be one of {}".format(", ".join(KINDS)), index, name, "kind")
    parameters = KINDS[kind]
    for key in raw:
        if key not in COMMON_KEYS and key not in parameters:
            where.fail("not a key of a {} rule (it takes {}; every rule takes {})".format(
                kind, ", ".join(parameters) or "no parameters", ", ".join(COMMON_KEYS)), index, name, key)
    severity = raw.get("severity", "warning")
    if severity not in SEVERITIES:
        where.fail("must be one of {}".format(", ".join(SEVERITIES)), index, name, "severity")
    minutes = {}
    for key in ("for_minutes", "cooldown_minutes"):
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            where.fail("must be a whole number of minutes, 0 or more", index, name, key)
        minutes[key] = value
    params = {}
    for key, (check, default) in parameters.items():
        try:
            params[key] = check(raw[key]) if key in raw else default
        except ValueError as error:
            where.fail(str(error), index, name, key)
    channels = default_channels
    if "channels" in raw:
        channels = _channels(raw["channels"], where, environ, index, name)
        check_channels(channels, "SIDECAR_ALERTS_FILE {}: rule {!r}".format(where.path, name))
    return Rule(name, kind, severity, minutes["for_minutes"], minutes["cooldown_minutes"], channels, params)


def load_rules(settings, environ=None):
    """The rules in force: the file's (merged over the built-ins), or the built-ins."""
    environ = os.environ if environ is None else environ
    global_channels = tuple(settings["alert_urls"])
    check_channels(global_channels, "SIDECAR_ALERT_URLS")
    builtins = builtin_rules(settings)
    path = settings["alerts_file"]
    if not path:
        where = _Where("", {})
        return [_rule(raw, None, where, global_channels, environ) for raw in builtins]
    data, where = _parse_file(path)
    if not isinstance(data, dict):
        where.fail("the top level must be a mapping with `rules` (a list of rules)")
    for key in data:
        if key not in TOP_KEYS:
            where.fail("unknown top-level key (the file takes {})".format(", ".join(TOP_KEYS)), key=key)
    include_defaults = data.get("include_defaults", True)
    if not isinstance(include_defaults, bool):
        where.fail("must be true or false", key="include_defaults")
    channels = _channels(data["channels"], where, environ) if "channels" in data else global_channels
    if "channels" in data:
        check_channels(channels, "SIDECAR_ALERTS_FILE {}: top-level channels".format(path))
    entries = data.get("rules", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        where.fail("must be a list of rules (mappings; in TOML, [[rules]] tables)", key="rules")
    merged = {raw["name"]: (None, raw) for raw in builtins} if include_defaults else {}
    seen = set()
    for index, raw in enumerate(entries):
        name = raw.get("name")
        if not isinstance(name, str):
            where.fail("name is required: letters, digits, '_', '.', '-' (at most 64)", index, None,
                       "name" if "name" in raw else None)
        if name in seen:
            where.fail("a second rule with this name", index, name, "name")
        seen.add(name)
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            where.fail("must be true or false", index, name, "enabled")
        base = merged[name][1] if name in merged and merged[name][0] is None else {}
        if "kind" in raw and base.get("kind") != raw["kind"]:
            base = {}  # a built-in name reused for another kind: nothing to inherit
        rule = dict(base)
        rule.update((key, value) for key, value in raw.items() if key != "enabled")
        merged[name] = (index, rule if enabled else None)  # a built-in keeps its place
    return [_rule(raw, index, where, channels, environ) for index, raw in merged.values() if raw is not None]
