"""Local storage side of backups: consistent copies, checksums, an empty store, installing a restore.

Nothing here talks to the network (sidecar/backup.py does): it copies SQLite
files with the online backup API, hashes files, tells an empty store from a
used one, and moves a downloaded, verified store into place.
"""
import hashlib
import os
import shutil
import sqlite3

from . import groups, idempotency, segments

CHUNK_BYTES = 1024 * 1024
# Written before a restore moves files into the data dir, removed once meta.db is in place: a
# store that still has it was interrupted mid-install and counts as empty (it is cleared first).
RESTORE_MARKER = ".restore-incomplete"


def meta_path(data_dir):
    return os.path.join(data_dir, "meta.db")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sqlite_copy(source_path, dest_path, read_only=True):
    """A consistent copy of a live SQLite database (WAL included) through the online backup API.

    The source is opened read-only (a closed segment is never written by the copy); the
    copy leaves WAL mode so that it is one self-contained file.
    """
    if os.path.exists(dest_path):
        os.remove(dest_path)
    uri = "file:{}?mode=ro".format(source_path) if read_only else "file:{}".format(source_path)
    source = sqlite3.connect(uri, uri=True, timeout=60)
    try:
        source.execute("PRAGMA busy_timeout=60000")
        dest = sqlite3.connect(dest_path, isolation_level=None)
        try:
            source.backup(dest)  # one step: a single read transaction, so one point in time
            dest.execute("PRAGMA journal_mode=DELETE")
        finally:
            dest.close()
    finally:
        source.close()
    return dest_path


def snapshot_meta(data_dir, dest_path):
    """A consistent copy of meta.db (WAL mode, written by other threads and processes meanwhile)."""
    if not os.path.exists(meta_path(data_dir)):
        raise FileNotFoundError("no meta.db in {}".format(data_dir))
    return sqlite_copy(meta_path(data_dir), dest_path, read_only=False)


def catalog_of(db_path):
    """The segments catalog of a meta.db (a snapshot): (closed, open), each a list of dicts."""
    con = sqlite3.connect("file:{}?mode=ro".format(db_path), uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in con.execute(
            "SELECT name, generation, closed_at, row_count, min_ts, max_ts, bytes FROM segments ORDER BY day, seq")]
    finally:
        con.close()
    return [row for row in rows if row["closed_at"]], [row for row in rows if not row["closed_at"]]


def has_wal(path):
    try:
        return os.path.getsize(path + "-wal") > 0
    except FileNotFoundError:
        return False


def segment_files(data_dir):
    try:
        names = os.listdir(segments.segments_dir(data_dir))
    except FileNotFoundError:
        return []
    return sorted(name for name in names if segments.parse_name(name))


def store_is_empty(data_dir):
    """No meta.db and no segment file (a new or wiped disk), or a restore interrupted mid-install."""
    if os.path.exists(os.path.join(data_dir, RESTORE_MARKER)):
        return True
    return not os.path.exists(meta_path(data_dir)) and not segment_files(data_dir)


def clear_partial_restore(data_dir):
    """Remove what an interrupted install left (only when its marker is there)."""
    if not os.path.exists(os.path.join(data_dir, RESTORE_MARKER)):
        return
    directory = segments.segments_dir(data_dir)
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.startswith("logs-"):
            os.remove(os.path.join(directory, name))
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(meta_path(data_dir) + suffix)
        except FileNotFoundError:
            pass
    os.remove(os.path.join(data_dir, RESTORE_MARKER))


def forget_missing(db_path, staging_segments_dir):
    """In a downloaded meta.db: forget the segments the backup does not hold (the heads).

    Their error groups keep their counts; `events_stored` goes down by their events,
    exactly as when retention deletes a segment. Returns the forgotten names.
    """
    present = set(os.listdir(staging_segments_dir)) if os.path.isdir(staging_segments_dir) else set()
    meta = sqlite3.connect(db_path, isolation_level=None)
    try:
        meta.row_factory = sqlite3.Row
        groups.ensure_schema(meta)
        names = [row["name"] for row in meta.execute("SELECT name FROM segments ORDER BY day, seq")]
        gone = [name for name in names if name not in present]
        for name in gone:
            groups.forget_segment(meta, name)
    finally:
        meta.close()
    return gone


def recount_heads(db_path, staging_segments_dir, names):
    """In a downloaded meta.db: a head snapshot may be older than the meta.db snapshot (taken at an
    earlier stop), so the events each group has stored in it are counted again from the file."""
    meta = sqlite3.connect(db_path, isolation_level=None)
    try:
        for name in names:
            con = sqlite3.connect("file:{}?mode=ro".format(os.path.join(staging_segments_dir, name)), uri=True)
            try:
                groups.recount_segment(meta, con, name)
            finally:
                con.close()
    finally:
        meta.close()


def install(staging_dir, data_dir):
    """Move a verified store (staging_dir/meta.db, staging_dir/segments/*) into an empty data dir.

    Segments first, meta.db last, under a marker: a crash in between leaves a store
    that the next attempt recognises as empty and clears.
    """
    directory = segments.segments_dir(data_dir)
    os.makedirs(directory, exist_ok=True)
    marker = os.path.join(data_dir, RESTORE_MARKER)
    with open(marker, "w") as handle:
        handle.write("restore in progress\n")
    source = os.path.join(staging_dir, "segments")
    for name in sorted(os.listdir(source)) if os.path.isdir(source) else []:
        os.replace(os.path.join(source, name), os.path.join(directory, name))
    # Keys are an index of the segments' `batches`: any left here would answer for batches the
    # restored store may not hold; the next start rebuilds them from the restored segments.
    idempotency.remove_keys_file(data_dir)
    os.replace(os.path.join(staging_dir, "meta.db"), meta_path(data_dir))
    _fsync_dir(directory)
    _fsync_dir(data_dir)
    os.remove(marker)
    shutil.rmtree(staging_dir, ignore_errors=True)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
