"""External dependencies: HTTP URLs and PostgreSQL databases, checked now or from a cache.

Configured by name (`SIDECAR_DEPENDENCY_URLS`, `SIDECAR_DEPENDENCY_POSTGRES`);
a result names the dependency by that name only, never by its URL or DSN,
and its message is written here, never copied from an exception (which
would carry hosts, users or query strings). `DependencyMonitor` refreshes
the results in a background thread of each worker process, so `/api/health`
reads them without a network call; `/api/health/deep` checks every one now.
"""
import concurrent.futures
import math
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone

from ingest.timestamps import format_ts

from . import jsonlog
from .settings import SettingsError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STATUS_PATTERN = re.compile(r"^(?:[1-5]\d\d|[1-5]xx)$")
RANK = {"healthy": 0, "degraded": 1, "unhealthy": 2}
USER_AGENT = "log-sidecar health check"


@dataclass(frozen=True)
class Dependency:
    name: str
    kind: str  # "http" or "postgres"
    target: str  # the URL or DSN: never shown
    expected_status: str = "2xx"  # http only: "200", "2xx", ...


def worst(statuses):
    return max(statuses, key=RANK.__getitem__, default="healthy")


def _ms(seconds):
    return round(seconds * 1000, 1)


def _now_text():
    return format_ts(datetime.now(timezone.utc))


# -- settings ---------------------------------------------------------------------

def _split_item(item, variable, position, what):
    name, sep, target = item.partition("=")
    name, target = name.strip(), target.strip()
    if not sep or not target:
        raise SettingsError("{} takes comma-separated name={} items; item {} has no '=' or nothing after "
                            "it".format(variable, what, position))
    if not NAME_PATTERN.match(name):
        raise SettingsError("{} item {}: the name must be 1 to 64 letters, digits, '_', '.' or '-' (starting "
                            "with a letter or digit), got {!r}".format(variable, position, name[:64]))
    return name, target


def parse_urls(items):
    """`name=url` or `name=url|expected_status` items → Dependency list (raises SettingsError)."""
    variable = "SIDECAR_DEPENDENCY_URLS"
    found = []
    for position, item in enumerate(items, 1):
        name, target = _split_item(item, variable, position, "url")
        url, expected = target, "2xx"
        head, bar, tail = target.rpartition("|")
        if bar:
            url, expected = head.strip(), tail.strip().lower()
            if not STATUS_PATTERN.match(expected):
                raise SettingsError("{} item {!r}: the expected status after '|' must be a status code such as "
                                    "200 or a class such as 2xx".format(variable, name))
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError("{} item {!r}: the URL must start with http:// or https:// and name a host"
                                .format(variable, name))
        try:
            parts.port
        except ValueError:
            raise SettingsError("{} item {!r}: the URL has an invalid port".format(variable, name)) from None
        found.append(Dependency(name, "http", url, expected))
    return found


def parse_postgres(items):
    """`name=dsn` items (split on the first '=') → Dependency list (raises SettingsError)."""
    variable = "SIDECAR_DEPENDENCY_POSTGRES"
    found = []
    for position, item in enumerate(items, 1):
        name, dsn = _split_item(item, variable, position, "dsn")
        if "://" in dsn:
            if urllib.parse.urlsplit(dsn).scheme not in ("postgres", "postgresql"):
                raise SettingsError("{} item {!r}: a URI DSN must start with postgresql:// or postgres://"
                                    .format(variable, name))
        elif "=" not in dsn:
            raise SettingsError("{} item {!r}: the DSN must be a postgresql:// URI or libpq key=value pairs"
                                .format(variable, name))
        try:
            from psycopg.conninfo import conninfo_to_dict
            conninfo_to_dict(dsn)
        except ImportError:
            pass
        except Exception:  # psycopg.ProgrammingError; its message would show the DSN
            raise SettingsError("{} item {!r}: libpq cannot parse the DSN".format(variable, name)) from None
        found.append(Dependency(name, "postgres", dsn))
    return found


def parse_settings(settings):
    dependencies = parse_urls(settings["dependency_urls"]) + parse_postgres(settings["dependency_postgres"])
    names = [dependency.name for dependency in dependencies]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SettingsError("dependency names must be unique across SIDECAR_DEPENDENCY_URLS and "
                            "SIDECAR_DEPENDENCY_POSTGRES; repeated: " + ", ".join(repeated))
    return dependencies


def check_settings(values):
    """The dependency settings' own checks (called from settings.check_settings)."""
    parse_settings(values)
    if values["dependency_timeout_ms"] > 30_000:
        raise SettingsError("SIDECAR_DEPENDENCY_TIMEOUT_MS must be at most 30000: /api/health/deep must answer "
                            "well within gunicorn's 60 s worker timeout")
    if values["dependency_latency_degraded_ms"] >= values["dependency_timeout_ms"]:
        raise SettingsError("SIDECAR_DEPENDENCY_LATENCY_DEGRADED_MS must be below SIDECAR_DEPENDENCY_TIMEOUT_MS")
    if not isinstance(values["postgres_size_limit_bytes"], int) or values["postgres_size_limit_bytes"] < 0:
        raise SettingsError("SIDECAR_POSTGRES_SIZE_LIMIT_BYTES must be 0 (no limit) or a positive whole number")
    for name in ("postgres_size_warn_percent", "postgres_connections_warn_percent"):
        if not 1 <= values[name] <= 99:
            raise SettingsError("SIDECAR_{} must be between 1 and 99, got {}".format(name.upper(), values[name]))


# -- checks -------------------------------------------------------------------------

def _result(dependency, status, latency_ms, message, **extra):
    result = {"name": dependency.name, "type": dependency.kind, "status": status, "latency_ms": latency_ms,
              "message": message, "checked_at": _now_text()}
    result.update(extra)
    return result


def _latency_status(latency_ms, degraded_ms):
    return "degraded" if latency_ms > degraded_ms else "healthy"


def _status_matches(code, expected):
    return str(code) == expected or (expected.endswith("xx") and str(code)[0] == expected[0])


def _causes(error):
    """The error and what it wraps (requests → urllib3 → socket errors), breadth first."""
    queue, seen = [error], set()
    while queue:
        current = queue.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        queue.extend([current.__cause__, current.__context__, getattr(current, "reason", None)]
                     + list(current.args[:1]))


def network_reason(error):
    """A short description of a connection failure that names no host, URL or user."""
    for cause in _causes(error):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not resolved"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, (socket.timeout, TimeoutError)):
            return "timed out"
    text = str(error).lower()  # inspected, never shown
    for needle, reason in (("refused", "connection refused"), ("name or service not known", "host name not resolved"),
                           ("nodename nor servname", "host name not resolved"), ("timed out", "timed out"),
                           ("certificate", "TLS certificate rejected"), ("ssl", "TLS handshake failed")):
        if needle in text:
            return reason
    return "connection failed ({})".format(type(error).__name__)


def check_http(dependency, timeout_ms, degraded_ms):
    import requests
    timeout = timeout_ms / 1000
    started = time.perf_counter()
    try:
        response = requests.get(dependency.target, timeout=(timeout, timeout), allow_redirects=False,
                                stream=True, headers={"User-Agent": USER_AGENT})
        response.close()
    except requests.Timeout:
        return _result(dependency, "unhealthy", None, "no answer within {} ms".format(timeout_ms),
                       http_status=None, expected_status=dependency.expected_status)
    except requests.RequestException as error:
        return _result(dependency, "unhealthy", None, network_reason(error), http_status=None,
                       expected_status=dependency.expected_status)
    latency_ms = _ms(time.perf_counter() - started)
    extra = {"http_status": response.status_code, "expected_status": dependency.expected_status}
    if not _status_matches(response.status_code, dependency.expected_status):
        return _result(dependency, "unhealthy", latency_ms, "answered {}, expected {}".format(
            response.status_code, dependency.expected_status), **extra)
    status = _latency_status(latency_ms, degraded_ms)
    message = "answered {} in {} ms".format(response.status_code, latency_ms)
    if status != "healthy":
        message += " (slower than {} ms)".format(degraded_ms)
    return _result(dependency, status, latency_ms, message, **extra)


def _resource(used, limit, warn_percent):
    if not limit:
        return {"status": "healthy", "used": used, "limit": None, "percent": None}
    percent = round(100.0 * used / limit, 1)
    status = "unhealthy" if percent >= 100 else "degraded" if percent >= warn_percent else "healthy"
    return {"status": status, "used": used, "limit": limit, "percent": percent}


def _megabytes(count):
    return "{:.1f} MB".format(count / 1e6)


_POSTGRES_STATS = (
    "SELECT current_setting('max_connections')::int, "
    "current_setting('superuser_reserved_connections')::int, "
    "coalesce(current_setting('reserved_connections', true)::int, 0), "
    "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
    "pg_database_size(current_database())")


def _postgres_reason(error):
    text = str(error).lower()  # inspected, never shown: it names hosts, users and databases
    for needle, reason in (("refused", "connection refused"), ("timeout", "timed out"), ("timed out", "timed out"),
                           ("password authentication failed", "authentication failed"),
                           ("no password supplied", "authentication failed"),
                           ("authentication failed", "authentication failed"),
                           ("no pg_hba.conf entry", "rejected by pg_hba.conf"),
                           ("does not exist", "database or role does not exist"),
                           ("too many clients", "no connection slot left (too many clients)"),
                           ("remaining connection slots", "no connection slot left"),
                           ("could not translate host name", "host name not resolved"),
                           ("name or service not known", "host name not resolved"),
                           ("ssl", "TLS negotiation failed"), ("statement timeout", "timed out"),
                           ("canceling statement", "timed out")):
        if needle in text:
            return reason
    return "failed ({})".format(type(error).__name__)


def check_postgres(dependency, timeout_ms, degraded_ms, size_limit_bytes, size_warn_percent,
                   connections_warn_percent):
    import psycopg
    started = time.perf_counter()
    try:
        # libpq counts connect_timeout in whole seconds (and at least 2).
        with psycopg.connect(dependency.target, connect_timeout=max(2, math.ceil(timeout_ms / 1000)),
                             autocommit=True, prepare_threshold=None,
                             application_name="log-sidecar health check") as con:
            connected = time.perf_counter()
            con.execute("SELECT set_config('statement_timeout', %s, false)", (str(int(timeout_ms)),))
            select_started = time.perf_counter()
            con.execute("SELECT 1").fetchone()
            latency_ms = _ms(time.perf_counter() - select_started)
            stats_error = None
            try:
                max_connections, superuser_reserved, reserved, in_use, size = con.execute(_POSTGRES_STATS).fetchone()
            except psycopg.Error as error:
                stats_error = _postgres_reason(error)
    except psycopg.Error as error:
        elapsed = time.perf_counter() - started
        reason = _postgres_reason(error)
        if reason.startswith("failed") and elapsed * 1000 >= timeout_ms:
            reason = "timed out"
        return _result(dependency, "unhealthy", None, reason)
    connect_ms = _ms(connected - started)
    statuses = [_latency_status(latency_ms, degraded_ms), _latency_status(connect_ms, degraded_ms * 2)]
    parts = ["select 1 in {} ms (connect {} ms)".format(latency_ms, connect_ms)]
    extra = {"connect_ms": connect_ms}
    if stats_error is None:
        available = max(max_connections - superuser_reserved - reserved, 1)
        connections = _resource(in_use, available, connections_warn_percent)
        connections["max_connections"] = max_connections
        database_size = _resource(size, size_limit_bytes, size_warn_percent)
        statuses += [connections["status"], database_size["status"]]
        parts.append("{} of {} connections in use ({}%)".format(in_use, available, connections["percent"]))
        if size_limit_bytes:
            parts.append("database {} of {} ({}%)".format(_megabytes(size), _megabytes(size_limit_bytes),
                                                          database_size["percent"]))
        else:
            parts.append("database {}".format(_megabytes(size)))
        extra.update(connections=connections, database_size=database_size)
    else:
        statuses.append("degraded")
        parts.append("connections and size unreadable: " + stats_error)
    status = worst(statuses)
    return _result(dependency, status, latency_ms, "; ".join(parts), **extra)


def check(dependency, settings):
    timeout_ms, degraded_ms = settings["dependency_timeout_ms"], settings["dependency_latency_degraded_ms"]
    try:
        if dependency.kind == "http":
            return check_http(dependency, timeout_ms, degraded_ms)
        return check_postgres(dependency, timeout_ms, degraded_ms, settings["postgres_size_limit_bytes"],
                              settings["postgres_size_warn_percent"], settings["postgres_connections_warn_percent"])
    except Exception as error:  # a check must never take the health endpoints down
        return _result(dependency, "unhealthy", None, "check failed ({})".format(type(error).__name__))


# -- the cache and its thread -----------------------------------------------------------

class DependencyMonitor:
    """Last known result of every configured dependency, refreshed by a background thread."""

    def __init__(self, settings):
        self.settings = settings
        self.dependencies = parse_settings(settings)
        self._results = {dependency.name: {
            "name": dependency.name, "type": dependency.kind, "status": "degraded", "latency_ms": None,
            "message": "not checked yet", "checked_at": None} for dependency in self.dependencies}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = None

    def start(self):
        if self.dependencies and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sidecar-dependencies", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout=5):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def results(self):
        """The cached results, in configuration order (copies: no network call)."""
        with self._lock:
            return [dict(self._results[dependency.name]) for dependency in self.dependencies]

    def check_all(self):
        """Check every dependency now, in parallel; update the cache and return the results."""
        if not self.dependencies:
            return []
        deadline_s = 2 * self.settings["dependency_timeout_ms"] / 1000 + 1
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(self.dependencies)),
                                                     thread_name_prefix="sidecar-dependency-check")
        try:
            futures = [pool.submit(check, dependency, self.settings) for dependency in self.dependencies]
            concurrent.futures.wait(futures, timeout=deadline_s)
            results = []
            for dependency, future in zip(self.dependencies, futures):
                if future.done():
                    results.append(future.result())
                else:
                    results.append(_result(dependency, "unhealthy", None,
                                           "check did not finish within {} s".format(round(deadline_s, 1))))
        finally:
            pool.shutdown(wait=False)
        previous = self.results()
        with self._lock:
            for result in results:
                self._results[result["name"]] = result
        for old, new in zip(previous, results):
            if old["status"] != new["status"] and old["checked_at"] is not None:
                jsonlog.emit("warn" if new["status"] != "healthy" else "info",
                             "dependency {} is {}: {}".format(new["name"], new["status"], new["message"]),
                             event="health.dependency_changed", dependency=new["name"], status=new["status"],
                             previous_status=old["status"])
        return [dict(result) for result in results]

    def _run(self):
        interval = self.settings["dependency_check_interval_s"]
        while not self._stopping.is_set():
            try:
                self.check_all()
            except Exception as error:  # keep the thread alive whatever happens
                jsonlog.emit("error", "dependency checks failed: {}".format(type(error).__name__),
                             event="health.dependency_checks_failed")
            self._stopping.wait(interval)
