"""Alert delivery through apprise, off every other path.

`Delivery.send()` only pushes onto an in-memory heap and returns, so neither
evaluation nor ingest ever waits on a channel. One thread sends each
(notification, channel) pair; a failure is retried after the base wait, then
4x longer each time (1 s, 4 s, 16 s), without holding up other channels, and
every attempt is recorded in `alert_deliveries` with the channel redacted.
Apprise URLs hold secrets (tokens, passwords, webhook paths): only
`redact_url()` forms are logged or stored, and error texts are scrubbed.
"""
import hashlib
import heapq
import itertools
import logging
import re
import sqlite3
import threading
import time
from urllib.parse import parse_qsl, unquote, urlsplit

from ingest import catalog
from ingest.entries import format_ts

log = logging.getLogger("sidecar.alerts")
MAX_QUEUED = 1000
# Hosts shown in a redacted URL: DNS names and IPv4 addresses. A "host" that is a token
# (slack://TokenA/..., discord://<id>/<token>, ntfy://<topic>) has no dot and is hidden.
_SHOWN_HOST = re.compile(r"^(?:[a-z0-9-]{1,63}\.)+[a-z][a-z0-9-]{0,62}$|^\d{1,3}(?:\.\d{1,3}){3}$|^localhost$")
NOTIFY_TYPES = {"critical": "failure", "error": "failure", "warning": "warning", "info": "info"}


def _parts(url):
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None, None
    return parts, port


def redact_url(url):
    """`scheme://host:port/… #digest`: the host only when it is a DNS name or an IP, never a
    user, password, path or query; the digest tells channels apart without revealing them."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    parts, port = _parts(url)
    if parts is None or not parts.scheme:
        return "(unparsable URL) #" + digest
    host = parts.hostname or ""
    shown = host if _SHOWN_HOST.match(host) else ("****" if host else "")
    user = "****@" if parts.username or parts.password else ""
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return "{}://{}{}{}{} #{}".format(parts.scheme, user, shown, ":{}".format(port) if port else "", rest, digest)


def scrub(text, url):
    """`text` with every secret-looking part of `url` replaced by ****."""
    secrets = {url}
    parts, _port = _parts(url)
    if parts is not None:
        secrets.update(value for value in (parts.username, parts.password, parts.fragment) if value)
        if parts.hostname and not _SHOWN_HOST.match(parts.hostname):
            secrets.add(parts.hostname)
        secrets.update(segment for segment in parts.path.split("/") if segment)
        secrets.update(value for _key, value in parse_qsl(parts.query) if value)
    for secret in sorted(secrets | {unquote(s) for s in secrets}, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "****")
    return text


class _Job:
    __slots__ = ("alert_id", "kind", "title", "body", "notify_type", "url", "attempt", "last_error")

    def __init__(self, alert_id, kind, title, body, notify_type, url):
        self.alert_id, self.kind, self.title, self.body = alert_id, kind, title, body
        self.notify_type, self.url, self.attempt, self.last_error = notify_type, url, 1, None


class Delivery:
    def __init__(self, data_dir, retries, base_ms, timeout_s, clock):
        self.data_dir, self.retries, self.base_s, self.timeout_s = data_dir, retries, base_ms / 1000, timeout_s
        self.clock = clock
        self._heap = []  # (due, seq, job), due on time.monotonic()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._drain_until = None
        self._thread = threading.Thread(target=self._run, name="sidecar-alert-delivery", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def send(self, alert_id, kind, title, body, urls, severity="warning"):
        """Queue one notification to every channel in `urls`; never blocks."""
        notify_type = "success" if kind == "resolved" else NOTIFY_TYPES.get(severity, "info")
        dropped = []
        with self._cond:
            for url in urls:
                if len(self._heap) >= MAX_QUEUED or self._stopping:
                    dropped.append(url)
                    continue
                job = _Job(alert_id, kind, title, body, notify_type, url)
                heapq.heappush(self._heap, (time.monotonic(), next(self._seq), job))
            self._cond.notify()
        for url in dropped:
            job = _Job(alert_id, kind, title, body, notify_type, url)
            self._record(catalog.connect_meta_cached(self.data_dir), job, False,
                         "not sent: the delivery queue is full or the sidecar is stopping", True)

    def pending(self):
        with self._cond:
            return len(self._heap) + (1 if self._busy else 0)

    def flush(self, timeout=30):
        """Wait until every queued delivery is sent or given up (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._heap and not self._busy, timeout)

    def stop(self, drain_s=5):
        """Send what is due within `drain_s`; record the rest as failed."""
        with self._cond:
            self._stopping = True
            self._drain_until = time.monotonic() + drain_s
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(drain_s + self.timeout_s + 5)

    def _next(self):
        """The next due job, or None when stopping (the heap then holds what is left)."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now and not (self._stopping and now > self._drain_until):
                    self._busy = True
                    return heapq.heappop(self._heap)[2]
                if self._stopping and (not self._heap or self._heap[0][0] > self._drain_until
                                       or now > self._drain_until):
                    return None
                until = self._heap[0][0] if self._heap else None
                if self._stopping:
                    until = min(until, self._drain_until)
                self._cond.wait(None if until is None else max(until - now, 0.001))

    def _run(self):
        meta = catalog.connect_meta(self.data_dir)
        try:
            while True:
                job = self._next()
                if job is None:
                    break
                try:
                    self._deliver(meta, job)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
            with self._cond:
                left, self._heap = [entry[2] for entry in self._heap], []
                self._cond.notify_all()
            for job in left:
                self._record(meta, job, False, (job.last_error or "not sent") + " (the sidecar stopped before "
                             "the next attempt)", True)
        finally:
            meta.close()

    def _deliver(self, meta, job):
        ok, error, retry = self._attempt(job)
        final = ok or not retry or job.attempt > self.retries
        self._record(meta, job, ok, error, final)
        if final:
            if not ok:
                log.warning("alert %s (%s) not delivered to %s after %d attempt(s): %s", job.alert_id, job.kind,
                            redact_url(job.url), job.attempt, error)
            return
        wait = self.base_s * 4 ** (job.attempt - 1)
        job.attempt, job.last_error = job.attempt + 1, error
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + wait, next(self._seq), job))

    def _attempt(self, job):
        """(ok, error, worth retrying)."""
        try:
            import apprise
            sender = apprise.Apprise()
            if not sender.add(job.url):
                return False, "not a URL apprise can send to", False
            result = sender.notify(body=job.body, title=job.title, notify_type=job.notify_type,
                                   timeout=self.timeout_s)
            if result:
                return True, None, False
            messages = [str(getattr(entry, "message", entry)) for entry in result.logs()]
            status = getattr(getattr(result, "status", None), "name", "FAILURE")
            return False, scrub("; ".join(messages) or status.lower(), job.url)[:500], True
        except Exception as error:  # a plugin bug must not kill the delivery thread
            return False, scrub("{}: {}".format(type(error).__name__, error), job.url)[:500], True

    def _record(self, meta, job, ok, error, final):
        try:
            with catalog.immediate(meta):
                meta.execute(
                    "INSERT INTO alert_deliveries (alert_id, kind, channel, attempt, status, error, at, final) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.alert_id, job.kind, redact_url(job.url), job.attempt, "ok" if ok else "failed", error,
                     format_ts(self.clock()), 1 if final else 0))
        except sqlite3.Error as db_error:
            log.error("recording an alert delivery: %s", db_error)
