"""Fingerprints: which error group an entry belongs to.

- A client `fingerprint` list wins; `{{ default }}` in it stands for the default fingerprint.
- With a stack trace: every exception of the chain, its type and each frame's module (or
  file basename) and function; in-app frames only when the exception has any; never line
  numbers, never the exception value.
- Without one: the message's template from the online TemplateMiner (its state lives in
  meta.db, so a fingerprint does not change across restarts).

`python -m ingest.fingerprint` reads NDJSON LogEntries on stdin and prints one
fingerprint per line (empty when the entry is not fingerprinted), starting from empty
state and processing in order exactly as ingest does.
"""
import hashlib
import os
import threading

from .templates import TemplateMiner

DEFAULT_MARKERS = ("{{ default }}", "{{default}}")


def _digest(*parts):
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _chain(exception):
    return exception if isinstance(exception, list) else [exception]


def _frame_key(frame):
    module = frame.get("module")
    if not module:
        filename = frame.get("filename") or frame.get("abs_path") or ""
        module = os.path.basename(str(filename).replace("\\", "/"))
    return "{}:{}".format(module, frame.get("function") or "?")


def stack_parts(exception):
    """The grouping parts of an exception chain, or None when no exception has frames."""
    parts, any_frames = [], False
    for item in _chain(exception):
        frames = [f for f in item.get("stacktrace") or [] if isinstance(f, dict)]
        if any(f.get("in_app") for f in frames):
            frames = [f for f in frames if f.get("in_app")]
        any_frames = any_frames or bool(frames)
        parts.append(str(item.get("type") or "Error"))
        parts.extend(_frame_key(frame) for frame in frames)
    return parts if any_frames else None


class Fingerprinter:
    """Thread-safe: request threads share the miners behind a lock.

    One miner per service: one service's messages never generalise another's
    templates, and the candidates a message is compared with stay few.
    """

    def __init__(self, miners=None, levels=("error", "critical")):
        self.miners = miners or {}
        self.levels = frozenset(levels)
        self._lock = threading.Lock()
        self.dirty = set()  # (service, cluster id) created or changed since the last save

    @classmethod
    def load(cls, meta, levels):
        """A fingerprinter whose miners resume from the templates saved in meta.db."""
        by_service = {}
        for service, cluster_id, template, size in meta.execute(
                "SELECT service, cluster_id, template, size FROM templates"):
            by_service.setdefault(service, []).append((cluster_id, template, size))
        return cls({service: TemplateMiner.from_clusters(rows) for service, rows in by_service.items()}, levels)

    def save(self, meta, now_text):
        """Persist the clusters created or changed since the last save."""
        with self._lock:
            if not self.dirty:
                return
            dirty, self.dirty = self.dirty, set()
            # Only the changed clusters: building every row of every service to pick them out
            # cost each batch with a new template O(all templates): 15% of a worker's samples
            # once free-text errors had made thousands (bench/ingest.py --free-text-errors).
            rows = [(service,) + self.miners[service].cluster(cid) + (now_text,) for service, cid in dirty]
        from .catalog import immediate
        try:
            with immediate(meta):
                meta.executemany("INSERT OR REPLACE INTO templates VALUES (?, ?, ?, ?, ?)", rows)
        except BaseException:
            with self._lock:  # not saved (disk full, ...): saved with the next call instead
                self.dirty |= dirty
            raise

    def template_id(self, service, text):
        with self._lock:
            miner = self.miners.get(service)
            if miner is None:
                miner = self.miners[service] = TemplateMiner()
            cluster_id, changed = miner.add(text)
            if changed:
                self.dirty.add((service, cluster_id))
        return cluster_id

    def default(self, service, message, exception):
        if exception:
            parts = stack_parts(exception)
            if parts is not None:
                return _digest(service, "stack", *parts)
            last = _chain(exception)[-1]
            value = str(last.get("value") or message)
            return _digest(service, "exception", str(last.get("type") or "Error"), self.template_id(service, value))
        return _digest(service, "message", self.template_id(service, message))

    def __call__(self, service, level, message, exception=None, client_fingerprint=None):
        if level not in self.levels and not exception:
            return None
        if client_fingerprint:
            parts = [self.default(service, message, exception) if part in DEFAULT_MARKERS else part
                     for part in client_fingerprint]
            return _digest(service, "custom", *parts)
        return self.default(service, message, exception)


def main():
    import sys
    from datetime import datetime, timezone

    import orjson

    from .entries import EntryError, Limits, format_ts, to_row

    fingerprinter = Fingerprinter()
    limits = Limits()
    received_at = format_ts(datetime.now(timezone.utc))  # timestamps do not change fingerprints
    out = []
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            row = to_row(orjson.loads(line), received_at, "9999-12-31T23:59:59.999Z", limits, fingerprinter)
            out.append(row[4] or "")
        except (EntryError, orjson.JSONDecodeError):
            out.append("")
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
