"""Backups to S3-compatible storage, and restore on boot of an empty store.

What goes to the bucket (`SIDECAR_BACKUP_S3_BUCKET`, under `SIDECAR_BACKUP_S3_PREFIX`):

    segments/<name>@g<generation>   every closed segment, at its current generation
    meta/meta-<UTC time>.db          consistent snapshots of meta.db (SQLite online backup API)
    heads/<name>@<UTC time>          head snapshots: at a graceful stop (`final_run`) or `backup run --include-head`
    manifest.json                    what a restore needs: the meta snapshot, the segments, their SHA-256

A run (every `SIDECAR_BACKUP_INTERVAL_S`, in one process at a time) holds the
backup lock and the retention lock: closed segments only change under the
retention lock, so what is uploaded is exactly the generation the catalog
names. It snapshots meta.db first, uploads the closed segments that snapshot
lists and the bucket lacks, then the snapshot, then the manifest, and only then
deletes what the new manifest no longer names (older generations, segments
retention deleted, old snapshots beyond `SIDECAR_BACKUP_KEEP_META_SNAPSHOTS`).
The regular runs do not snapshot the head segments (they are being written);
a graceful stop does, after the writer stopped, and the regular runs keep that
snapshot while the head is still being written.

Restore (gunicorn's master before it binds and forks, or `Sidecar.start()`
outside gunicorn, or the CLI): when the store is empty, the manifest's files
are downloaded into a staging directory, checked against their SHA-256, the
segments the backup lacks are forgotten in the downloaded meta.db, and the
store is moved into place; the normal start-up recovery then reconciles the
catalog with the files.

A store only writes to a bucket prefix whose manifest carries its own store
id (or none): a wiped store whose restore failed never deletes the backup.
"""
import logging
import os
import shutil
import signal
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import orjson

from ingest import catalog, segments, snapshots
from ingest.entries import format_ts
from ingest.locks import flock_held
from retention import job as retention_job
from retention.schedule import run_lock as retention_lock

from . import jsonlog
from .settings import SettingsError

log = logging.getLogger("sidecar.backup")
MANIFEST = "manifest.json"
FORMAT = 1
TMP_DIR = ".backup-tmp"
STAGING_PREFIX = ".restore-staging"
CHILD_GRACE_S = 30  # an isolated restore is killed this long after its own time limit
BACKUP_TABLES = """
CREATE TABLE IF NOT EXISTS backup_runs (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
    ok INTEGER NOT NULL, segments_uploaded INTEGER NOT NULL DEFAULT 0, bytes_uploaded INTEGER NOT NULL DEFAULT 0,
    segments_deleted INTEGER NOT NULL DEFAULT 0, segments_in_backup INTEGER, meta_key TEXT, duration_ms REAL,
    error TEXT, report TEXT
);
CREATE INDEX IF NOT EXISTS backup_runs_kind_started ON backup_runs(kind, started_at);
CREATE TABLE IF NOT EXISTS backup_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Data dirs this process (or gunicorn's master before it forked this worker) already tried to
# restore: a worker never repeats a restore the master attempted, so a failing restore cannot
# turn into one attempt per worker boot.
_restore_attempted = set()


class BackupError(Exception):
    pass


class ForeignBackup(BackupError):
    """The bucket prefix holds the backup of another store."""


# -- settings ---------------------------------------------------------------------

def configured(settings):
    return bool(settings.get("backup_s3_bucket"))


def check_settings(settings):
    """Combinations the settings table cannot check one by one; raises SettingsError."""
    if not configured(settings):
        return
    url = settings["backup_s3_endpoint_url"]
    if url and not url.startswith(("http://", "https://")):
        raise SettingsError("SIDECAR_BACKUP_S3_ENDPOINT_URL must start with http:// or https://")
    if bool(settings["backup_s3_access_key_id"]) != bool(settings["backup_s3_secret_access_key"]):
        raise SettingsError("set both SIDECAR_BACKUP_S3_ACCESS_KEY_ID and SIDECAR_BACKUP_S3_SECRET_ACCESS_KEY, "
                            "or neither (boto3's default chain: AWS_ACCESS_KEY_ID, ..., an instance role)")


def open_store(settings, **kwargs):
    from .backup_store import S3Store  # boto3: imported only when backups are used
    return S3Store.from_settings(settings, **kwargs)


# -- bookkeeping in meta.db ------------------------------------------------------------

def ensure_schema(meta):
    retention_job.ensure_schema(meta)  # sidecar_events, error groups
    with catalog.immediate(meta):
        for statement in BACKUP_TABLES.split(";"):
            if statement.strip():
                meta.execute(statement)


def store_id(meta):
    """This store's id, made once: a restore carries it over, a wiped store gets a new one."""
    with catalog.immediate(meta):
        row = meta.execute("SELECT value FROM backup_state WHERE key = 'store_id'").fetchone()
        if row:
            return row[0]
        value = uuid.uuid4().hex
        meta.execute("INSERT INTO backup_state VALUES ('store_id', ?)", (value,))
        return value


def last_started(meta):
    row = meta.execute("SELECT max(started_at) FROM backup_runs WHERE kind = 'backup'").fetchone()
    return row[0] if row else None


def _record(meta, kind, report, ok):
    with catalog.immediate(meta):
        meta.execute(
            "INSERT INTO backup_runs (kind, started_at, finished_at, ok, segments_uploaded, bytes_uploaded, "
            "segments_deleted, segments_in_backup, meta_key, duration_ms, error, report) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, report["started_at"], report.get("finished_at"), int(ok), len(report.get("uploaded", ())),
             report.get("bytes_uploaded", 0), len(report.get("deleted", ())), report.get("segments_in_backup"),
             report.get("meta_key"), report.get("duration_ms"), report.get("error"),
             orjson.dumps(report).decode()))


def _flock(data_dir, name, wait=False):
    return flock_held(os.path.join(data_dir, name), wait)


def _stamp(now):
    return now.strftime("%Y%m%dT%H%M%S") + "{:03d}Z".format(now.microsecond // 1000)


def segment_key(store, name, generation):
    return store.key("segments", "{}@g{}".format(name, generation))


# -- the backup run --------------------------------------------------------------------

def run(data_dir, store, clock, keep_snapshots=4, include_head=False, force=False, wait=False,
        due_after_s=None):
    """One backup run; returns its report (recorded in meta.db), or None when another run (or a
    retention run) holds the lock and `wait` is false, or when `due_after_s` has not passed since
    the last run. `store` is an S3Store or a function that makes one (called only when a run is due:
    a worker that never runs a backup never imports boto3)."""
    with _flock(data_dir, ".backup.lock", wait) as held:
        if not held:
            return None
        with retention_lock(data_dir, wait=wait) as retention_held:
            if not retention_held:
                return None  # retention is changing closed segments: try again at the next check
            meta = catalog.connect_meta(data_dir)
            try:
                catalog.ensure_schema(meta)
                ensure_schema(meta)
                now = clock()
                if due_after_s is not None:
                    last = last_started(meta)
                    if last is not None and last > format_ts(now - timedelta(seconds=due_after_s)):
                        return None
                if callable(store):
                    try:
                        store = store()
                    except Exception as error:  # noqa: BLE001 - e.g. a region name boto3 rejects
                        report = {"started_at": format_ts(now), "destination": "the bucket"}
                        return _failed(meta, clock, report, "{}: {}".format(type(error).__name__, error), started=None)
                return _run_locked(data_dir, meta, store, clock, now, keep_snapshots, include_head, force)
            finally:
                meta.close()


def _run_locked(data_dir, meta, store, clock, now, keep_snapshots, include_head, force):
    started = time.perf_counter()
    report = {"started_at": format_ts(now), "destination": store.describe(), "uploaded": [],
              "bytes_uploaded": 0, "deleted": [], "heads": [], "snapshots_deleted": [], "meta_key": None}
    tmp = os.path.join(data_dir, TMP_DIR)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            _backup(data_dir, meta, store, now, tmp, report, keep_snapshots, include_head, force)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as error:  # noqa: BLE001 - any failure is recorded and retried at the next interval
        return _failed(meta, clock, report, "{}: {}".format(type(error).__name__, store.redact(error)), started)
    report["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    report["finished_at"] = format_ts(clock())
    report["ok"] = True
    _record(meta, "backup", report, ok=True)
    retention_job.record_event(
        meta, report["finished_at"], "backup.completed",
        "backup to {}: {} segment(s), {} head snapshot(s) and a meta.db snapshot uploaded ({:,} bytes), {} "
        "segment object(s) deleted, {} segment(s) in the backup, snapshot {}".format(
            store.describe(), len(report["uploaded"]), len(report["heads"]), report["bytes_uploaded"],
            len(report["deleted"]), report["segments_in_backup"], report["meta_key"]), _event_details(report))
    return report


def _failed(meta, clock, report, error_text, started):
    report.update(error=error_text, ok=False, finished_at=format_ts(clock()),
                  duration_ms=None if started is None else round((time.perf_counter() - started) * 1000, 1))
    try:
        _record(meta, "backup", report, ok=False)
        retention_job.record_event(meta, report["finished_at"], "backup.failed",
                                   "backup to {} failed: {}".format(report["destination"], error_text),
                                   _event_details(report))
    except sqlite3.Error as meta_error:
        log.error("backup failed (%s) and could not be recorded: %s", error_text, meta_error)
    return report


def _event_details(report):
    keys = ("destination", "uploaded", "bytes_uploaded", "deleted", "segments_in_backup", "meta_key", "heads",
            "not_backed_up", "duration_ms", "error")
    return {key: report[key] for key in keys if key in report}


def _backup(data_dir, meta, store, now, tmp, report, keep_snapshots, include_head, force):
    sid = store_id(meta)
    previous = store.get_json(store.key(MANIFEST))
    if previous is not None and previous.get("store_id") != sid:
        if not force:
            raise ForeignBackup(
                "{} holds the backup of another store (id {}, written {}); this store was not restored from "
                "it, so nothing is uploaded or deleted there. Restore it (stop the sidecar, move the data dir "
                "aside, `python -m sidecar backup restore`), set another SIDECAR_BACKUP_S3_PREFIX, or replace "
                "it with `python -m sidecar backup run --force`".format(
                    store.describe(), previous.get("store_id"), previous.get("created_at")))
        previous = None
    known = {entry["key"]: entry for entry in (previous or {}).get("segments", ())}

    snapshot = snapshots.snapshot_meta(data_dir, os.path.join(tmp, "meta.db"))
    closed, heads = snapshots.catalog_of(snapshot)
    remote = store.list("segments/")
    entries = []
    for segment in closed:
        path = os.path.join(segments.segments_dir(data_dir), segment["name"])
        if not os.path.exists(path):
            continue  # deleted by retention before its catalog row: gone from the backup too
        key = segment_key(store, segment["name"], segment["generation"])
        stats = {name: segment[name] for name in ("name", "generation", "row_count", "min_ts", "max_ts")}
        old = known.get(key)
        if key in remote and old is not None and old.get("bytes") == remote[key]:
            entries.append(dict(old, **stats))
            continue
        # A segment still in WAL mode (its close met a reader) is copied first: the file alone lacks its WAL.
        source = (snapshots.sqlite_copy(path, os.path.join(tmp, segment["name"])) if snapshots.has_wal(path)
                  else path)
        digest = snapshots.file_sha256(source)
        if key in remote:
            remote_meta = store.metadata(key)
            if remote_meta is not None and remote_meta.get("sha256") == digest:
                entries.append(dict(stats, key=key, sha256=digest, bytes=os.path.getsize(source)))
                continue
        size = store.upload(key, source, digest, {"segment": segment["name"], "generation": segment["generation"],
                                                  "rows": segment["row_count"]})
        entries.append(dict(stats, key=key, sha256=digest, bytes=size))
        report["uploaded"].append(segment["name"])
        report["bytes_uploaded"] += size
        if source != path:
            os.remove(source)

    head_entries = []
    remote_heads = store.list("heads/")
    earlier_heads = {entry["name"]: entry for entry in (previous or {}).get("heads", ())
                     if entry["key"] in remote_heads}
    for head in heads:
        path = os.path.join(segments.segments_dir(data_dir), head["name"])
        if not os.path.exists(path):
            continue
        if not include_head:
            # A head snapshot of an earlier run (a graceful stop) stays while that head is still being
            # written here: after a crash, the entries up to it come back.
            if head["name"] in earlier_heads:
                head_entries.append(earlier_heads[head["name"]])
            continue
        copy = snapshots.sqlite_copy(path, os.path.join(tmp, head["name"]))
        digest = snapshots.file_sha256(copy)
        key = store.key("heads", "{}@{}".format(head["name"], _stamp(now)))
        size = store.upload(key, copy, digest, {"segment": head["name"], "head": "true"})
        head_entries.append({"name": head["name"], "key": key, "sha256": digest, "bytes": size,
                             "taken_at": format_ts(now)})
        report["heads"].append(head["name"])
        report["bytes_uploaded"] += size
        os.remove(copy)

    meta_digest = snapshots.file_sha256(snapshot)
    meta_key = store.key("meta", "meta-{}.db".format(_stamp(now)))
    meta_bytes = store.upload(meta_key, snapshot, meta_digest, {"store-id": sid})
    report["bytes_uploaded"] += meta_bytes
    report["meta_key"] = meta_key
    included = {entry["name"] for entry in head_entries}
    report["not_backed_up"] = [head["name"] for head in heads if head["name"] not in included]
    report["head_snapshots_kept"] = [entry["name"] for entry in head_entries if entry["name"] not in report["heads"]]
    report["segments_in_backup"] = len(entries)
    store.put_json(store.key(MANIFEST), {
        "format": FORMAT, "store_id": sid, "created_at": format_ts(now),
        "meta": {"key": meta_key, "sha256": meta_digest, "bytes": meta_bytes},
        "segments": entries, "heads": head_entries, "not_backed_up": report["not_backed_up"]})

    # Only now that the manifest names the new set: drop what it no longer needs.
    wanted = {entry["key"] for entry in entries}
    report["deleted"] = sorted(key for key in remote if key not in wanted)
    store.delete(report["deleted"])
    wanted_heads = {entry["key"] for entry in head_entries}
    store.delete([key for key in remote_heads if key not in wanted_heads])
    metas = sorted(store.list("meta/"), reverse=True)
    old_metas = [key for key in metas if key != meta_key][max(keep_snapshots - 1, 0):]
    report["snapshots_deleted"] = old_metas
    store.delete(old_metas)


# -- restore -------------------------------------------------------------------------

def restore(data_dir, store, clock, timeout_s=300, manifest=None):
    """Restore the bucket's latest backup into `data_dir`, which must hold an empty store.

    Returns the report, or None when the bucket holds no backup. Raises on failure
    (ChecksumMismatch, Deadline, S3 errors); the data dir is then left as empty as it was.
    """
    started, deadline = time.perf_counter(), time.monotonic() + timeout_s
    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    snapshots.clear_partial_restore(data_dir)
    if not snapshots.store_is_empty(data_dir):
        raise BackupError("{} already holds a store (meta.db or segments): a restore only goes into an "
                          "empty one".format(data_dir))
    manifest = manifest if manifest is not None else store.get_json(store.key(MANIFEST))
    if manifest is None:
        return None
    if manifest.get("format") != FORMAT:
        raise BackupError("manifest format {!r} is not one this version reads ({})".format(
            manifest.get("format"), FORMAT))
    staging = os.path.join(data_dir, "{}-{}".format(STAGING_PREFIX, os.getpid()))
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "segments"))
    downloaded = 0
    try:
        downloaded += store.download(manifest["meta"]["key"], os.path.join(staging, "meta.db"),
                                     manifest["meta"]["sha256"], deadline)
        for entry in list(manifest["segments"]) + list(manifest.get("heads", ())):
            if segments.parse_name(entry["name"]) is None:
                raise BackupError("manifest names a file that is not a segment: {!r}".format(entry["name"]))
            downloaded += store.download(entry["key"], os.path.join(staging, "segments", entry["name"]),
                                         entry["sha256"], deadline)
        check = sqlite3.connect(os.path.join(staging, "meta.db"))
        try:
            result = check.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            check.close()
        if result != "ok":
            raise BackupError("the downloaded meta.db fails SQLite's quick_check: {}".format(result))
        forgotten = snapshots.forget_missing(os.path.join(staging, "meta.db"), os.path.join(staging, "segments"))
        snapshots.recount_heads(os.path.join(staging, "meta.db"), os.path.join(staging, "segments"),
                                [entry["name"] for entry in manifest.get("heads", ())])
        snapshots.install(staging, data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        snapshots.clear_partial_restore(data_dir)
        raise
    now = clock()
    report = {"started_at": format_ts(now), "finished_at": format_ts(now), "source": store.describe(),
              "manifest_created_at": manifest.get("created_at"), "store_id": manifest.get("store_id"),
              "segments_restored": [entry["name"] for entry in manifest["segments"]],
              "heads_restored": [entry["name"] for entry in manifest.get("heads", ())],
              "segments_forgotten": forgotten, "bytes_downloaded": downloaded,
              "meta_key": manifest["meta"]["key"], "duration_ms": round((time.perf_counter() - started) * 1000, 1)}
    meta = catalog.connect_meta(data_dir)
    try:
        ensure_schema(meta)
        _record(meta, "restore", dict(report, uploaded=(), bytes_uploaded=0,
                                      segments_in_backup=len(manifest["segments"])), ok=True)
        # Not retention's record_event: it also logs, and the callers print their own line (JSON in the server).
        with catalog.immediate(meta):
            meta.execute("INSERT INTO sidecar_events (ts, type, message, details) VALUES (?, ?, ?, ?)", (
                report["finished_at"], "backup.restored",
                "restored {} segment(s) and meta.db ({}) from {}, backup of {}; not in the backup (lost): {}".format(
                    len(report["segments_restored"]) + len(report["heads_restored"]), manifest["meta"]["key"],
                    store.describe(), report["manifest_created_at"], ", ".join(forgotten) or "nothing"),
                orjson.dumps(report).decode()))
    finally:
        meta.close()
    return report


def restore_on_boot(settings, clock=None, isolate=False):
    """Restore an empty store from the backup, once per process tree (never raises for a failed
    restore: the sidecar then starts with an empty store). Returns a summary ({"ok": ...}) or None
    when there was nothing to do.

    `isolate` (gunicorn's master): the restore runs in a forked child that is killed past
    SIDECAR_BACKUP_RESTORE_TIMEOUT_S, so the master never imports boto3 nor opens meta.db
    (no SQLite connection crosses the fork of its workers) and the time is bounded for sure.
    """
    if not configured(settings) or not settings["backup_restore_on_boot"]:
        return None
    check_settings(settings)
    clock = clock or (lambda: datetime.now(timezone.utc))
    data_dir = os.path.abspath(settings["data_dir"])
    os.makedirs(data_dir, exist_ok=True)
    if data_dir in _restore_attempted:
        return None
    _restore_attempted.add(data_dir)
    if isolate:
        return _restore_in_child(settings, data_dir, clock)
    return _restore_locked(settings, data_dir, clock)


def _restore_locked(settings, data_dir, clock):
    with _flock(data_dir, ".restore.lock", wait=True):
        snapshots.clear_partial_restore(data_dir)
        if not snapshots.store_is_empty(data_dir):
            return None
        store = None
        try:
            store = open_store(settings)
            jsonlog.emit("info", "the store is empty: restoring it from the backup in {}".format(store.describe()),
                         event="backup.restore_started")
            report = restore(data_dir, store, clock, settings["backup_restore_timeout_s"])
        except Exception as error:  # noqa: BLE001 - a failed restore must never stop the start
            text = "{}: {}".format(type(error).__name__, store.redact(error) if store else error)
            _log_restore_failed(text)
            return {"ok": False, "error": text}
        if report is None:
            jsonlog.emit("info", "no backup in {} yet: starting with an empty store".format(store.describe()),
                         event="backup.restore_skipped")
            return None
        jsonlog.emit("info", "restored {} segment(s) and meta.db from the backup of {} in {} ms; lost (not in the "
                             "backup): {}".format(len(report["segments_restored"]) + len(report["heads_restored"]),
                                                  report["manifest_created_at"], report["duration_ms"],
                                                  ", ".join(report["segments_forgotten"]) or "nothing"),
                     event="backup.restored", bytes=report["bytes_downloaded"])
        return {"ok": True, "segments_restored": report["segments_restored"],
                "heads_restored": report["heads_restored"], "segments_forgotten": report["segments_forgotten"]}


def _log_restore_failed(text):
    jsonlog.emit("error", "restore from the backup failed, starting with an EMPTY store (the backup is kept "
                          "untouched; backups from this store stay off until it is restored or replaced, see "
                          "docs/backups.md): " + text, event="backup.restore_failed")


def _restore_in_child(settings, data_dir, clock):
    if not snapshots.store_is_empty(data_dir):
        return None  # the usual case: a store on disk, nothing to fork for
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: restore, report on the pipe, exit without running the parent's atexit hooks
        code = 1
        try:
            os.close(read_fd)
            result = _restore_locked(settings, data_dir, clock)  # it logs the details itself
            summary = None if result is None else {"ok": result["ok"], "error": result.get("error")}
            os.write(write_fd, orjson.dumps(summary))
            code = 0
        except BaseException:  # noqa: BLE001 - whatever happens, the child ends here
            pass
        finally:
            os._exit(code)
    os.close(write_fd)
    limit_s = settings["backup_restore_timeout_s"] + CHILD_GRACE_S
    deadline = time.monotonic() + limit_s
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                for name in os.listdir(data_dir):
                    if name.startswith(STAGING_PREFIX):
                        shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)
                snapshots.clear_partial_restore(data_dir)
                text = "Deadline: the restore did not end within {} s and was stopped".format(limit_s)
                _log_restore_failed(text)
                return {"ok": False, "error": text}
            time.sleep(0.05)
        chunks = []
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    if not chunks:
        text = "the restore process ended without a result (exit status {})".format(status)
        _log_restore_failed(text)
        return {"ok": False, "error": text}
    return orjson.loads(b"".join(chunks))


# -- in the server -------------------------------------------------------------------

class BackupScheduler:
    """A thread in every worker process; the backup lock picks the one that runs, and the last
    run's start in meta.db keeps the interval across processes and restarts."""

    def __init__(self, data_dir, settings, clock, store_factory=None):
        self.data_dir, self.settings, self.clock = data_dir, settings, clock
        self.interval_s = settings["backup_interval_s"]
        self.store_factory = store_factory or (lambda: open_store(settings))
        self._store = None  # made on the first run this process does (boto3 is imported then)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sidecar-backup", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout=10):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)  # an upload in progress is abandoned: the next run redoes it

    def _loop(self):
        while not self._stop.wait(min(self.interval_s, 30)):
            try:
                self.run_if_due()
            except Exception as error:  # noqa: BLE001 - never let the thread die; ingest is not affected
                log.error("backup check failed: %s", error)

    def store(self):
        if self._store is None:
            self._store = self.store_factory()
        return self._store

    def run_if_due(self):
        return run(self.data_dir, self.store, self.clock, self.settings["backup_keep_meta_snapshots"],
                   due_after_s=self.interval_s)

    def final_run(self, wait_s=20):
        """At a graceful stop, once the writer has stopped: a run with snapshots of the heads, so a disk
        wiped after the stop (a free instance spinning down, a redeploy) loses nothing this process
        committed. Waits up to `wait_s` for a run of another process to end; never raises."""
        deadline = time.monotonic() + wait_s
        try:
            while True:
                report = run(self.data_dir, self.store, self.clock, self.settings["backup_keep_meta_snapshots"],
                             include_head=True)
                if report is not None or time.monotonic() > deadline:
                    return report
                time.sleep(0.2)
        except Exception as error:  # noqa: BLE001 - the stop goes on
            log.error("backup at shutdown failed: %s", error)
            return None

    def run_now(self, **kwargs):
        return run(self.data_dir, self.store, self.clock, self.settings["backup_keep_meta_snapshots"],
                   wait=True, **kwargs)


def prepare(sidecar):
    """Called by Sidecar.start() before the writer opens a head: restore an empty store (unless
    gunicorn's master already tried), and return the scheduler to start, or None."""
    settings = sidecar.settings
    if not configured(settings):
        return None
    check_settings(settings)
    restore_on_boot(settings, sidecar.clock)
    return BackupScheduler(sidecar.data_dir, settings, sidecar.clock)


# -- command line: python -m sidecar backup run|list|restore ------------------------------------

def add_arguments(parser):
    actions = parser.add_subparsers(dest="backup_command", required=True)
    run_parser = actions.add_parser("run", help="back up now (waits for a run in progress)")
    run_parser.add_argument("--include-head", action="store_true",
                            help="also upload a snapshot of each head segment (before a planned restart)")
    run_parser.add_argument("--force", action="store_true",
                            help="replace a backup written by another store under this prefix")
    run_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    list_parser = actions.add_parser("list", help="show what the bucket holds")
    list_parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    restore_parser = actions.add_parser("restore", help="restore the latest backup into an empty data dir")
    restore_parser.add_argument("--to", help="restore into this directory instead of SIDECAR_DATA_DIR")
    restore_parser.add_argument("--timeout", type=int, help="give up after this many seconds "
                                                            "(default SIDECAR_BACKUP_RESTORE_TIMEOUT_S)")


def main(args, out=None, err=None):
    import sys
    from .settings import load_settings
    out, err = out or sys.stdout, err or sys.stderr
    try:
        settings = load_settings()
        check_settings(settings)
    except SettingsError as error:
        err.write("backup: {}\n".format(error))
        return 2
    if not configured(settings):
        err.write("backup: backups are off: set SIDECAR_BACKUP_S3_BUCKET (docs/backups.md)\n")
        return 2
    clock = lambda: datetime.now(timezone.utc)  # noqa: E731
    store = open_store(settings)
    data_dir = os.path.abspath(settings["data_dir"])
    try:
        if args.backup_command == "run":
            if not os.path.exists(snapshots.meta_path(data_dir)):
                err.write("backup: no store in {}\n".format(data_dir))
                return 2
            report = run(data_dir, store, clock, settings["backup_keep_meta_snapshots"],
                         include_head=args.include_head, force=args.force, wait=True)
            if args.json:
                out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                _print_run(report, out)
            return 0 if report["ok"] else 1
        if args.backup_command == "list":
            return _list(store, data_dir, args.json, out, err)
        target = os.path.abspath(args.to or data_dir)
        report = restore(target, store, clock, args.timeout or settings["backup_restore_timeout_s"])
        if report is None:
            err.write("backup: no backup in {}\n".format(store.describe()))
            return 1
        out.write("restored into {}: {} segment(s), {:,} bytes, backup of {} ({} ms)\n".format(
            target, len(report["segments_restored"]) + len(report["heads_restored"]), report["bytes_downloaded"],
            report["manifest_created_at"], report["duration_ms"]))
        out.write("  not in the backup (lost): {}\n".format(", ".join(report["segments_forgotten"]) or "nothing"))
        return 0
    except Exception as error:  # noqa: BLE001 - one clear line, without credentials
        err.write("backup: {}: {}\n".format(type(error).__name__, store.redact(error)))
        return 1


def _print_run(report, out):
    if not report["ok"]:
        out.write("backup FAILED: {}\n".format(report["error"]))
        return
    out.write("backup to {} at {} ({} ms)\n".format(report["destination"], report["started_at"],
                                                    report["duration_ms"]))
    out.write("  segments uploaded:  {}\n".format(", ".join(report["uploaded"]) or "none"))
    out.write("  bytes uploaded:     {:,}\n".format(report["bytes_uploaded"]))
    out.write("  objects deleted:    {}\n".format(len(report["deleted"])))
    out.write("  segments in backup: {}\n".format(report["segments_in_backup"]))
    out.write("  meta snapshot:      {}\n".format(report["meta_key"]))
    if report["heads"]:
        out.write("  head snapshots:     {}\n".format(", ".join(report["heads"])))
    if report.get("head_snapshots_kept"):
        out.write("  earlier head snapshots kept: {}\n".format(", ".join(report["head_snapshots_kept"])))
    out.write("  not backed up:      {}\n".format(", ".join(report["not_backed_up"]) or "nothing"))


def _list(store, data_dir, as_json, out, err):
    manifest = store.get_json(store.key(MANIFEST))
    if manifest is None:
        err.write("backup: no backup in {}\n".format(store.describe()))
        return 1
    if as_json:
        out.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    out.write("backup in {} written {} (store {})\n".format(store.describe(), manifest["created_at"],
                                                          manifest["store_id"]))
    out.write("  meta.db snapshot: {} ({:,} bytes)\n".format(manifest["meta"]["key"], manifest["meta"]["bytes"]))
    for entry in manifest["segments"]:
        out.write("  {}  generation {}  {:>9,} rows  {:>13,} bytes  {} .. {}\n".format(
            entry["name"], entry["generation"], entry["row_count"], entry["bytes"], entry["min_ts"], entry["max_ts"]))
    for entry in manifest.get("heads", ()):
        out.write("  {}  head snapshot  {:>13,} bytes  taken {}\n".format(entry["name"], entry["bytes"],
                                                                         entry.get("taken_at", "?")))
    out.write("  not backed up (heads): {}\n".format(", ".join(manifest.get("not_backed_up", ())) or "nothing"))
    out.write("  meta snapshots kept: {}\n".format(", ".join(sorted(store.list("meta/"))) or "none"))
    if os.path.exists(snapshots.meta_path(data_dir)):
        meta = catalog.connect_meta(data_dir)
        try:
            rows = meta.execute("SELECT kind, started_at, ok, segments_uploaded, error FROM backup_runs "
                                "ORDER BY id DESC LIMIT 5").fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            meta.close()
        for row in rows:
            out.write("  local run: {} {} {}{}\n".format(row["started_at"], row["kind"], "ok" if row["ok"] else "FAILED",
                                                         " ({})".format(row["error"]) if row["error"] else ""))
    return 0
