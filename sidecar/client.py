"""`SidecarHandler`: a `logging.Handler` that ships records to the sidecar's `POST /api/logs`.

    import logging
    from sidecar.client import SidecarHandler

    logging.getLogger().addHandler(SidecarHandler(service="shop", url="http://127.0.0.1:8080",
                                                  token="..."))

Standard library and `requests` only: the file can be copied into an application as it is.

The calling thread only turns the record into a LogEntry dict and appends it to a bounded
in-memory queue; it never waits on the network and `emit()` never raises. A background thread
(started on the first record, and again in a forked child) serialises, batches (by count, bytes
and time), gzips and POSTs, with an `Idempotency-Key` per batch kept across its retries, so a
batch retried after a lost answer is stored once. See docs/clients.md for every option.
"""
import atexit
import email.utils
import gzip
import json
import linecache
import logging
import math
import os
import random
import socket
import sys
import sysconfig
import threading
import time
import traceback
import uuid
import weakref
from collections import deque

import requests

__all__ = ["SidecarHandler"]

USER_AGENT = "sidecar-client-python/1"
QUEUE_FULL_POLICIES = ("drop_new", "drop_oldest")

_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
           logging.ERROR: "error", logging.CRITICAL: "critical"}

# Every attribute a plain LogRecord has (plus what formatters add): the rest came from `extra`.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
    # structlog's ProcessorFormatter.wrap_for_formatter and its formatter's own keys
    "_logger", "_name", "_record", "_from_structlog"}
_STANDARD_COUNT = len(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
# `extra` keys that become top-level LogEntry fields rather than metadata.
_TOP_LEVEL = frozenset({"trace_id", "span_id", "user_id", "environment", "release", "fingerprint"})
# opentelemetry-instrumentation-logging's record attributes, used when trace_id/span_id are not given
_OTEL_IDS = {"otelTraceID": "trace_id", "otelSpanID": "span_id"}
_SPECIAL = _TOP_LEVEL | frozenset(_OTEL_IDS)
# structlog event-dict keys that the record already carries.
_STRUCTLOG_SKIP = frozenset({"event", "level", "timestamp", "exc_info", "stack_info",
                             "_record", "_from_structlog"})

_INF = float("inf")
_MAX_DEPTH = 8          # metadata nesting kept as is; deeper values become their repr()
_MAX_CHAIN = 10         # exceptions in one chain
_MAX_FRAMES = 100       # frames per exception (the innermost ones)
_MAX_RETRY_AFTER = 300.0
_RETRY_STATUSES = frozenset({408, 409, 425, 429})

# Set on the sender threads (and on a thread running close()'s fallback drain): records
# created there (urllib3, requests, warnings) are never fed back into any SidecarHandler.
class _SenderLocal(threading.local):
    active = False  # a class default: reading it costs no exception on other threads


_sender_local = _SenderLocal()


class _NotOnSenderThread(logging.Filter):
    """Installed on the HTTP libraries' loggers: their records about our own sends are dropped
    for every handler, not only ours."""

    def filter(self, record):
        return not _sender_local.active


_HTTP_LOGGERS = ("urllib3", "urllib3.connectionpool", "urllib3.connection", "urllib3.response",
                 "urllib3.poolmanager", "urllib3.util.retry", "requests", "charset_normalizer",
                 "py.warnings")
_filter_installed = False


def _install_http_filter():
    global _filter_installed
    if not _filter_installed:
        _filter_installed = True
        quiet = _NotOnSenderThread()
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).addFilter(quiet)


# --- turning values into JSON-safe ones ---------------------------------------------------

def _repr(value):
    try:
        return repr(value)
    except Exception:
        return "<unrepresentable {}>".format(type(value).__name__)


def _safe(value, depth=0):
    """A JSON-safe copy of `value`: containers are copied (later changes by the app do not
    show), anything else that JSON cannot hold becomes its repr()."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if depth >= _MAX_DEPTH:
        return _repr(value)
    if isinstance(value, dict):
        return {(key if type(key) is str else str(key) if isinstance(key, (int, float, bool)) or key is None
                 else _repr(key)): _safe(item, depth + 1) for key, item in list(value.items())}
    if isinstance(value, (list, tuple)):
        return [_safe(item, depth + 1) for item in list(value)]
    if isinstance(value, (set, frozenset)):
        return [_safe(item, depth + 1) for item in list(value)]
    if isinstance(value, str):  # subclasses (StrEnum, Markup, ...): the plain text
        return str.__str__(value)
    if isinstance(value, int):  # IntEnum, IntFlag, ...
        return int.__int__(value)
    if isinstance(value, float):
        value = float.__float__(value)
        return value if math.isfinite(value) else repr(value)
    return _repr(value)


def _text(value):
    if type(value) is str:
        return value
    try:
        return str(value)
    except Exception:
        return _repr(value)


# --- exceptions ---------------------------------------------------------------------------

def _library_prefixes():
    paths = set()
    try:
        installed = sysconfig.get_paths()
        for name in ("stdlib", "platstdlib", "purelib", "platlib"):
            if installed.get(name):
                paths.add(installed[name])
    except Exception:
        pass
    try:
        import site
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
    except Exception:
        pass
    for base in {sys.base_prefix, sys.base_exec_prefix}:
        paths.add(os.path.join(base, "lib", "python{}.{}".format(*sys.version_info[:2])))
    return tuple(sorted({os.path.join(os.path.realpath(path), "") for path in paths if path}))


class _InApp:
    """Is a frame the application's own code (outside the standard library and site-packages)?"""

    def __init__(self, include=()):
        self.prefixes = None
        self.include = tuple(include or ())
        self.cache = {}

    def __call__(self, filename, module):
        if module and self.include and any(module == name or module.startswith(name + ".")
                                           for name in self.include):
            return True
        known = self.cache.get(filename)
        if known is not None:
            return known
        if filename.startswith("<"):
            result = not filename.startswith("<frozen")
        else:
            if self.prefixes is None:
                self.prefixes = _library_prefixes()
            path = os.path.realpath(os.path.abspath(filename))
            parts = path.split(os.sep)
            result = not ("site-packages" in parts or "dist-packages" in parts
                          or path.startswith(self.prefixes))
        if len(self.cache) < 10_000:
            self.cache[filename] = result
        return result


def _frames(tb, in_app):
    """The frames of a traceback, outermost first (the innermost _MAX_FRAMES). The source lines
    (context_line) are read later, by the sender: no file is read in the calling thread."""
    frames = []
    for frame, lineno in list(traceback.walk_tb(tb))[-_MAX_FRAMES:]:
        code = frame.f_code
        filename = code.co_filename
        module = frame.f_globals.get("__name__")
        if not isinstance(module, str):
            module = None
        frames.append({"filename": filename, "function": code.co_name, "lineno": lineno, "module": module,
                       "in_app": in_app(filename, module)})
    return frames


def _add_context_lines(chain):
    for item in chain:
        for frame in item.get("stacktrace") or ():
            if frame["lineno"] and not frame["filename"].startswith("<"):
                line = linecache.getline(frame["filename"], frame["lineno"]).strip()
                if line:
                    frame["context_line"] = line


def _exc_value(exc_info):
    """The exception of an exc_info (a 3-tuple, an exception, or True for the current one)."""
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if len(exc_info) == 3 and isinstance(exc_info[1], BaseException) else None
    return sys.exc_info()[1] if exc_info is True else None


def _exception_chain(exc, in_app):
    """The chain as the sidecar stores it: causes first, the exception that was raised last."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen and len(chain) < _MAX_CHAIN:
        seen.add(id(exc))
        chain.append(exc)
        if exc.__cause__ is not None:
            exc = exc.__cause__
        elif exc.__context__ is not None and not exc.__suppress_context__:
            exc = exc.__context__
        else:
            break
    items = []
    for error in reversed(chain):
        kind = type(error)
        item = {"type": kind.__qualname__, "value": _text(error)}
        if kind.__module__ not in ("builtins", "__main__"):
            item["module"] = kind.__module__
        frames = _frames(error.__traceback__, in_app)
        if frames:
            item["stacktrace"] = frames
        items.append(item)
    return items


# --- HTTP helpers -------------------------------------------------------------------------

def _retry_after(value):
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _program_name():
    name = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else ""))[0]
    return name if name and not name.startswith("-") else "python"


def _endpoint(url):
    url = (url or "http://127.0.0.1:8080").strip().rstrip("/")
    if not url.endswith("/api/logs"):
        url += "/api/logs"
    return url


class _Abandon(Exception):
    """close()'s deadline passed while a batch was still being sent."""


# --- the handler --------------------------------------------------------------------------

_HANDLERS = weakref.WeakSet()


class SidecarHandler(logging.Handler):
    """Ship log records to the sidecar. Every argument is keyword-only (dictConfig passes them
    as keys of the handler's dict); see docs/clients.md for what each one does."""

    def __init__(self, *, service=None, url=None, token=None, level=logging.NOTSET,
                 environment=None, release=None, host=None,
                 max_queue=10_000, queue_full="drop_new", batch_size=500,
                 max_batch_bytes=4 * 1024 * 1024, flush_interval=1.0, timeout=10.0,
                 backoff_base=0.5, backoff_cap=30.0, retry_timeout=None, close_timeout=5.0,
                 gzip_level=1, verify=True, proxies=None, headers=None, in_app_include=()):
        super().__init__(level)
        if queue_full not in QUEUE_FULL_POLICIES:
            raise ValueError("queue_full must be one of {}, not {!r}".format(QUEUE_FULL_POLICIES, queue_full))
        self.service = service or os.environ.get("SIDECAR_SERVICE") or _program_name()
        self.url = _endpoint(url or os.environ.get("SIDECAR_URL"))
        self._token = token if token is not None else os.environ.get("SIDECAR_TOKEN", "")
        self.environment = environment
        self.release_name = release  # not `release`: logging.Handler.release() releases its lock
        self.host = host if host is not None else socket.gethostname()
        self.max_queue = max(1, int(max_queue))
        self.queue_full = queue_full
        self.batch_size = max(1, int(batch_size))
        self.max_batch_bytes = int(max_batch_bytes)
        self.flush_interval = max(0.01, float(flush_interval))
        self.timeout = float(timeout)
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self.retry_timeout = None if retry_timeout in (None, "") else float(retry_timeout)
        self.close_timeout = float(close_timeout)
        self.gzip_level = int(gzip_level)
        self.verify = verify
        self.proxies = proxies
        self.extra_headers = dict(headers or {})
        self._in_app = _InApp(in_app_include)
        self._drop_oldest = queue_full == "drop_oldest"
        self._defaults = {key: value for key, value in
                          (("environment", environment), ("release", release), ("host", self.host)) if value}
        self._ts_cache = (None, "")
        self._closed = False  # logging.Handler's own flag, same meaning: set by close()
        self._reset()
        _install_http_filter()
        _HANDLERS.add(self)

    def __repr__(self):
        return "<SidecarHandler {} service={} ({})>".format(self.url, self.service,
                                                            logging.getLevelName(self.level))

    # -- state (also what a forked child starts from) --

    def _reset(self):
        self._lock = threading.Lock()        # the queue and the counters emit() touches
        self._queue = deque()
        self._enqueued = 0                   # records appended to the queue
        self._evicted = 0                    # oldest records pushed out (drop_oldest)
        self._popped = 0                     # records taken by the sender
        self._dropped_queue_full = 0
        self._dropped_closed = 0
        self._dropped_error = 0
        self._drops = {}                     # sender-side drops by reason
        self._stats_lock = threading.RLock()  # the sender's counting against close()'s abandoning it
        self._abandoned = False              # close() gave up waiting: it counted what was left
        self._inflight = 0                   # app records in the batch being sent
        self._reported = {}                  # drop counts already sent in a sidecar.client.dropped entry
        self._sent = 0
        self._batches = 0
        self._retries = 0
        self._last_error = None
        self._carry = None                   # an entry popped past a batch's byte cap: next batch
        self._done = 0                       # the exit count up to which every record is settled
        self._done_cond = threading.Condition(threading.Lock())
        self._wake = threading.Event()       # batch full, flush, close
        self._interrupt = threading.Event()  # cuts a retry's backoff short (flush, close)
        self._flush_requested = False
        self._closing = False
        self._deadline = None
        self._thread = None
        self._session = None

    def _after_fork_in_child(self):
        # The parent keeps (and sends) what was queued before the fork; the child starts empty,
        # with fresh locks (another thread may have held them at the fork) and no sender thread.
        self._reset()
        if self._closed:
            self._closing = True

    # -- the calling thread --

    def handle(self, record):
        # Handler.handle() holds the handler's RLock around emit(); emit() has its own lock.
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record):
        """Format `record` into a LogEntry and queue it. Never blocks on I/O, never raises."""
        try:
            if _sender_local.active:
                return  # a record about our own sends (urllib3, requests): never fed back
            if self._closed:
                self._dropped_closed += 1
                return
            if len(self._queue) >= self.max_queue and not self._drop_oldest:
                with self._lock:  # full: drop before paying for the formatting
                    self._dropped_queue_full += 1
                return
            entry = self._entry(record)
            with self._lock:
                queue = self._queue
                if len(queue) >= self.max_queue:
                    self._dropped_queue_full += 1
                    if not self._drop_oldest:
                        return
                    if queue:
                        queue.popleft()
                        self._evicted += 1
                queue.append(entry)
                self._enqueued += 1
                waiting = len(queue)
            if self._thread is None:
                self._start_sender()
            if waiting >= self.batch_size and not self._wake.is_set():
                self._wake.set()
        except Exception:
            # handleError() semantics, silently: a logging call must never fail the app
            self._dropped_error += 1

    def _entry(self, record):
        msg = record.msg
        structlog_dict = msg if type(msg) is dict and "_name" in record.__dict__ else None
        if structlog_dict is not None:
            message = _text(structlog_dict.get("event", ""))
        else:
            try:
                message = record.getMessage()
            except Exception:  # bad %-format arguments: keep what there is
                message = "{} {}".format(_text(msg), _repr(record.args))
        metadata = {"logger": record.name, "module": record.module, "function": record.funcName,
                    "lineno": record.lineno, "thread": record.threadName, "process": record.process}
        # the timestamp stays record.created (a float) until the sender serialises the entry
        entry = {"timestamp": record.created,
                 "level": _LEVELS.get(record.levelno) or self._level(record.levelno),
                 "service": self.service, "message": message, "metadata": metadata}
        if self._defaults:
            entry.update(self._defaults)
        attrs = record.__dict__
        if len(attrs) != _STANDARD_COUNT:
            for key in attrs.keys() - _STANDARD_ATTRS:
                value = attrs[key]
                kind = type(value)
                if (kind is str or kind is int or kind is bool or value is None
                        or (kind is float and -_INF < value < _INF)) and key not in _SPECIAL:
                    metadata[key] = value
                else:
                    self._extra(entry, metadata, key, value)
        exc_info = record.exc_info
        if structlog_dict is not None:
            for key, value in structlog_dict.items():
                if key not in _STRUCTLOG_SKIP:
                    self._extra(entry, metadata, key, value)
            if not exc_info:
                exc_info = structlog_dict.get("exc_info")
        if exc_info:
            error = _exc_value(exc_info)
            if error is not None:
                try:
                    entry["exception"] = _exception_chain(error, self._in_app)
                except Exception:  # a broken exception object: keep the record without it
                    metadata["exception_repr"] = _repr(error)
        if record.stack_info:
            metadata["stack_info"] = record.stack_info
        return entry

    @staticmethod
    def _level(levelno):
        if not isinstance(levelno, (int, float)):
            return "info"
        if levelno >= logging.CRITICAL:
            return "critical"
        if levelno >= logging.ERROR:
            return "error"
        if levelno >= logging.WARNING:
            return "warn"
        if levelno >= logging.INFO:
            return "info"
        return "debug"

    @staticmethod
    def _extra(entry, metadata, key, value):
        if key in _TOP_LEVEL:
            if value is None:
                return
            if key == "fingerprint":
                if isinstance(value, (list, tuple)) and value and all(isinstance(part, str) for part in value):
                    entry["fingerprint"] = list(value)
                    return
            else:
                entry[key] = _text(value)
                return
        elif key in _OTEL_IDS and value not in (None, "0") and _OTEL_IDS[key] not in entry:
            # opentelemetry-instrumentation-logging's record attributes (also kept in metadata)
            entry[_OTEL_IDS[key]] = _text(value)
        metadata[key if type(key) is str else _text(key)] = _safe(value)

    def _start_sender(self):
        with self._lock:
            if self._thread is not None or self._closing:
                return
            thread = threading.Thread(target=self._run, name="sidecar-client-sender", daemon=True)
            self._thread = thread
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down: close() drains in its own thread
            pass

    # -- flush and close --

    def flush(self, timeout=None):
        """Send everything queued so far now; wait up to `timeout` seconds (default
        `close_timeout`). True when all of it was delivered or dropped (and counted)."""
        try:
            if _sender_local.active:
                return False
            with self._lock:
                target = self._enqueued
            if self._done >= target:
                return True
            if self._closed:  # close() already waited its close_timeout (logging.shutdown calls both)
                return False
            thread = self._thread
            if thread is None or not thread.is_alive():
                return False
            self._flush_requested = True
            self._wake.set()
            self._interrupt.set()
            with self._done_cond:
                return self._done_cond.wait_for(lambda: self._done >= target,
                                                self.close_timeout if timeout is None else timeout)
        except Exception:
            return False

    def close(self, timeout=None):
        """Flush what is queued within `timeout` (default `close_timeout`) seconds, then stop.
        Never takes longer than that, even when the sidecar is down; what could not be sent
        is counted as dropped ("closed"). Idempotent; also run at interpreter exit."""
        try:
            if not self._closed:
                self._closed = True
                budget = max(0.0, self.close_timeout if timeout is None else float(timeout))
                now = time.monotonic()
                # the sender gives up a little before close() stops waiting for it, so what it
                # could not send is counted before close() returns
                self._deadline = now + budget - min(0.2, budget * 0.1)
                self._closing = True
                self._wake.set()
                self._interrupt.set()
                thread = self._thread
                if thread is not None and thread.is_alive():
                    if thread is not threading.current_thread():
                        thread.join(max(0.0, now + budget - time.monotonic()))
                        if thread.is_alive():  # stuck in a request: count the rest, leave it behind
                            self._abandon()
                elif self._queue and not _sender_local.active:
                    # no sender (never started, or the interpreter refused a thread): drain here
                    _sender_local.active = True
                    try:
                        self._drain()
                    finally:
                        _sender_local.active = False
                _HANDLERS.discard(self)
        except Exception:
            pass
        finally:
            super().close()

    def _abandon(self):
        with self._stats_lock:
            self._abandoned = True
            with self._lock:
                left = len(self._queue) + (self._carry is not None) + self._inflight
                self._popped += len(self._queue)
                self._queue.clear()
                self._carry = None
            if left:
                self._drops["closed"] = self._drops.get("closed", 0) + left

    def stats(self):
        """Counters: queued, in_flight, sent, batches, retries, dropped (by reason), dropped_total,
        last_error (the last failed send, for diagnosis)."""
        dropped = self._drop_totals()
        return {"queued": len(self._queue), "in_flight": self._inflight, "sent": self._sent,
                "batches": self._batches, "retries": self._retries, "dropped": dropped, "dropped_total": sum(dropped.values()),
                "last_error": self._last_error}

    def _drop_totals(self):
        totals = dict(self._drops)
        for reason, count in (("queue_full", self._dropped_queue_full), ("closed", self._dropped_closed),
                              ("error", self._dropped_error)):
            if count:
                totals[reason] = totals.get(reason, 0) + count
        return totals

    # -- the sender thread (never calls logging) --

    def _run(self):
        _sender_local.active = True
        try:
            self._loop()
        except BaseException:
            pass
        finally:
            self._close_session()
            with self._done_cond:
                self._done_cond.notify_all()

    def _loop(self):
        next_tick = time.monotonic() + self.flush_interval
        while True:
            self._wake.clear()
            if self._closing:
                self._drain()
                return
            now = time.monotonic()
            urgent = now >= next_tick
            if urgent:
                next_tick = now + self.flush_interval
            if self._flush_requested:  # reset only once seen: the drain below empties the queue
                self._flush_requested = False
                urgent = True
            while (self._queue or self._carry) and not self._closing and \
                    (urgent or len(self._queue) >= self.batch_size):
                self._send_next_batch()
            self._settle_if_idle()
            if self._closing:
                continue
            wait = next_tick - time.monotonic()
            if wait > 0 and len(self._queue) < self.batch_size and not self._flush_requested:
                self._wake.wait(wait)

    def _drain(self):
        """Closing: send what is left until the deadline, then count the rest as dropped."""
        try:
            while (self._queue or self._carry) and time.monotonic() < self._deadline:
                self._send_next_batch()
        finally:
            with self._stats_lock:
                if not self._abandoned:
                    with self._lock:
                        left = len(self._queue) + (self._carry is not None)
                        self._popped += len(self._queue)
                        self._queue.clear()
                        self._carry = None
                    if left:
                        self._drop("closed", left)
            self._settle_if_idle()

    def _settle(self, mark):
        with self._done_cond:
            if mark > self._done:
                self._done = mark
            self._done_cond.notify_all()

    def _settle_if_idle(self):
        if not self._queue and self._carry is None:
            with self._lock:
                mark = self._evicted + self._popped
            self._settle(mark)

    def _take_batch(self):
        """Pop up to batch_size entries (and max_batch_bytes of JSON); return (parts, mark)."""
        parts, size = [], 2
        mark = None
        if self._carry is not None:
            part, mark = self._carry
            self._carry = None
            parts.append(part)
            size += len(part) + 1
        queue = self._queue
        while len(parts) < self.batch_size:
            with self._lock:
                if not queue:
                    break
                entry = queue.popleft()
                self._popped += 1
                popped_mark = self._evicted + self._popped
            part = self._serialize(entry)
            if part is None:
                mark = popped_mark
                continue
            if parts and size + len(part) + 1 > self.max_batch_bytes:
                self._carry = (part, popped_mark)
                break
            parts.append(part)
            size += len(part) + 1
            mark = popped_mark
        return parts, mark

    def _serialize(self, entry):
        try:
            created = entry["timestamp"]
            second = int(created)
            cache = self._ts_cache
            if cache[0] != second:
                cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
                self._ts_cache = cache
            entry["timestamp"] = "%s.%03dZ" % (cache[1], int((created - second) * 1000))
            if "exception" in entry:
                _add_context_lines(entry["exception"])
            return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                              default=_repr).encode("utf-8", "replace")
        except Exception:
            self._drop("error", 1)
            return None

    def _send_next_batch(self):
        parts, mark = self._take_batch()
        try:
            if parts:
                report = self._unreported()
                part = self._serialize(self._report_entry(report)) if report else None
                if part is None:
                    report = None
                else:
                    parts.append(part)
                self._inflight = len(parts) - bool(report)
                self._deliver(parts, self._inflight, report)
        except Exception as error:  # never let a bug kill the sender
            self._last_error = "internal: {!r}".format(error)[:200]
        finally:
            self._inflight = 0
            if mark is not None:
                self._settle(mark)

    def _unreported(self):
        totals = self._drop_totals()
        totals.pop("closed", None)
        return {reason: count - self._reported.get(reason, 0) for reason, count in totals.items()
                if count > self._reported.get(reason, 0)}

    def _report_entry(self, report):
        total = sum(report.values())
        return {"timestamp": time.time(), "level": "warn",
                "service": self.service,
                "message": "sidecar.client.dropped: {} log records dropped ({})".format(
                    total, ", ".join("{} {}".format(reason, count) for reason, count in sorted(report.items()))),
                "host": self.host,
                "metadata": {"event": "sidecar.client.dropped", "logger": "sidecar.client", "dropped": report,
                             "dropped_total": total, "process": os.getpid()}}

    def _deliver(self, parts, count, report):
        """Send one batch (split in halves once on 413); count what is delivered and dropped."""
        outcome, response = self._post(parts)
        if outcome == "too_large" and len(parts) > 1:
            middle = len(parts) // 2
            pieces = [(parts[:middle], min(middle, count)), (parts[middle:], count - min(middle, count))]
            for piece, piece_count in pieces:
                outcome, response = self._post(piece)
                has_report = report and piece is pieces[-1][0]
                self._account(outcome, response, piece_count, report if has_report else None)
        else:
            self._account(outcome, response, count, report)

    def _account(self, outcome, response, count, report):
        with self._stats_lock:
            if not self._abandoned:
                self._account_locked(outcome, response, count, report)

    def _account_locked(self, outcome, response, count, report):
        if outcome == "ok":
            self._batches += 1
            if report:
                for reason, number in report.items():
                    self._reported[reason] = self._reported.get(reason, 0) + number
            try:
                rejected = [item for item in response.json().get("rejected") or []
                            if isinstance(item, dict) and item.get("index", count) < count]
            except Exception:
                rejected = []
            self._sent += count - len(rejected)
            if rejected:
                self._drop("rejected", len(rejected))
                self._last_error = "rejected entries: {}".format(_text(rejected[0].get("error")))[:200]
        elif count:
            self._drop(outcome, count)

    def _drop(self, reason, count):
        with self._stats_lock:
            if not self._abandoned:
                self._drops[reason] = self._drops.get(reason, 0) + count

    def _post(self, parts):
        """POST one body until it is answered for good. Returns (outcome, response): "ok",
        "too_large", "unauthorized", "rejected", "retry_timeout" or "closed"."""
        body = b"[" + b",".join(parts) + b"]"
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Idempotency-Key": str(uuid.uuid4())}  # the same for every retry of this body
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        if self.gzip_level > 0:
            body = gzip.compress(body, compresslevel=self.gzip_level, mtime=0)
            headers["Content-Encoding"] = "gzip"
        headers.update(self.extra_headers)
        started = time.monotonic()
        attempt = 0
        while True:
            timeout = self.timeout
            if self._closing:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return "closed", None
                timeout = min(timeout, remaining)
            self._interrupt.clear()
            retry_after = None
            try:
                response = self._http().post(self.url, data=body, headers=headers, timeout=timeout,
                                             verify=self.verify, proxies=self.proxies)
                status = response.status_code
                response.content  # read it all: the connection goes back to the pool
            except Exception as error:  # connection refused, reset, timeout, DNS, ...
                self._last_error = "{}: {}".format(type(error).__name__, error)[:200]
                self._close_session()
            else:
                if 200 <= status < 300:
                    return "ok", response
                self._last_error = "HTTP {}: {}".format(status, response.text[:150])
                if status == 413:
                    return "too_large", response
                if status in (401, 403):
                    return "unauthorized", response
                if status < 500 and status not in _RETRY_STATUSES:
                    return "rejected", response
                retry_after = _retry_after(response.headers.get("Retry-After"))
            # retry: exponential backoff with full jitter, at least Retry-After (plus up to 20%)
            delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** min(attempt, 30)))
            if retry_after is not None:
                delay = max(delay, retry_after * (1 + 0.2 * random.random()))
            attempt += 1
            self._retries += 1
            if self.retry_timeout is not None and time.monotonic() + delay - started > self.retry_timeout:
                return "retry_timeout", None
            if self._closing:
                delay = min(delay, max(0.0, self._deadline - time.monotonic()))
            if delay > 0:
                self._interrupt.wait(delay)

    def _http(self):
        session = self._session
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no .netrc auth over our header, no proxy from the environment
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._session = session
        return session

    def _close_session(self):
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception:
                pass


def _after_fork_in_child():
    for handler in list(_HANDLERS):
        try:
            handler._after_fork_in_child()
        except Exception:
            pass


def _close_all():
    for handler in list(_HANDLERS):
        handler.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
# Registered after `logging` registered logging.shutdown, so it runs first (atexit is LIFO):
# every handler flushes within its close_timeout, then logging closes them again (a no-op).
atexit.register(_close_all)
