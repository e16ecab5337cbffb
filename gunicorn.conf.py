"""Gunicorn settings, all derived from the sidecar's settings table (SIDECAR_* variables)."""
import signal
import sys

from sidecar.settings import SettingsError, is_loopback, load_settings

try:
    _settings = load_settings()
except SettingsError as _error:
    sys.stderr.write("sidecar: {}\n".format(_error))
    raise SystemExit(2) from None

# /metrics sums the counts of every worker (sidecar/metrics.py): a fresh directory for them,
# in the environment before any worker imports prometheus_client.
from sidecar import metrics_dir  # noqa: E402

_metrics_path = metrics_dir.prepare(_settings["data_dir"])

bind = "{}:{}".format(_settings["host"], _settings["port"])
workers = _settings["workers"]
# One writer thread per process wants threads, not processes: requests
# validate in parallel while the writer commits (SQLite releases the GIL).
worker_class = "gthread"
threads = _settings["threads"]
timeout = 60
graceful_timeout = 30
keepalive = 5
accesslog = None  # the sidecar logs each request itself, as JSON, without query strings
errorlog = "-"
loglevel = "warning"
wsgi_app = "sidecar:create_app()"
# No gunicornc control socket: unused here; the master would import asyncio and run a thread for it
# while the first worker boots (about 10 ms of CPU and 1 MB), and servers on one machine would share
# its default path ($HOME/.gunicorn/gunicorn.ctl).
control_socket_disable = True


def on_starting(server):
    # Once per server start (not on a HUP reload): the boot id the first ready worker records
    # as a sidecar.boot event (sidecar/boot.py); marked before the restore below, so the event
    # tells whether the data directory was empty. The master writes no boot row itself.
    from sidecar import boot
    boot.mark_server_start(_settings["data_dir"])
    # An empty store (a wiped disk) is restored from the backup here, once, before the port is
    # bound and before any worker forks: every worker then opens the restored store, and a
    # restore never runs in a worker (whose boot the worker timeout would cut short). A failed
    # restore logs one line and the server starts empty; its workers do not try again.
    if not _settings["backup_s3_bucket"]:
        return  # no backups configured: nothing to restore, and the master stays small
    from sidecar import backup
    try:
        backup.restore_on_boot(_settings, isolate=True)  # in a child process, killed past its timeout
    except SettingsError as error:
        sys.stderr.write("sidecar: {}\n".format(error))
        raise SystemExit(2) from None


def when_ready(server):
    for listener in server.LISTENERS:
        host = str(listener).split("://", 1)[-1].rsplit(":", 1)[0]
        if not _settings["ingest_tokens"] and not is_loopback(host):
            sys.stderr.write("sidecar: refusing to listen on {} without ingest tokens: set "
                             "SIDECAR_INGEST_TOKENS\n".format(host))
            server.halt(reason="no ingest tokens on a public address", exit_status=2)
    from sidecar.banner import print_banner
    try:
        print_banner(_settings, [str(listener) for listener in server.LISTENERS])  # writes the dev tokens
    except OSError as error:  # a new store on a full or read-only disk: no worker could start either
        sys.stderr.write("sidecar: cannot write to the data directory {}: {}\n".format(
            _settings["data_dir"], error.strerror or error))
        server.halt(reason="data directory not writable", exit_status=1)


def post_fork(server, worker):
    # An exceeded file-size limit must fail the write (answered 503), not kill the worker.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _tune_malloc()
    _stop_sqlite_memory_statistics()


# glibc malloc in the worker (mallopt's parameter numbers, from malloc.h).
M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -8, -3, -1
MALLOC_ARENAS = 8
MALLOC_MMAP_THRESHOLD_BYTES = 1024 * 1024
MALLOC_TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024


def _tune_malloc():
    # With fewer arenas than busy threads, the writer thread (SQLite allocates per row) and the
    # request threads queue for the same arena's lock: with 2 arenas the server took 2-25% less
    # ingest a second than with 8 (bench/ingest.py, docs/benchmarks.md, 2026-12-03). Each arena
    # keeps what its thread freed, so a fixed mmap threshold (which also stops glibc raising it
    # after each large free) hands blocks of 1 MiB and more, such as a group commit's rows,
    # straight back to the system: the RSS stays that of 2 arenas. Fixing it also fixes the trim
    # threshold at 128 KiB, so each request's body and the blocks made from it went back to the
    # system when freed and were faulted in afresh by the next request: 18,000 page faults a
    # second, about 5% of the server's ingest (docs/benchmarks.md, 2026-12-03, late). An arena now
    # keeps up to 4 MiB free at its top.
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


SQLITE_CONFIG_MEMSTATUS = 9


def _stop_sqlite_memory_statistics():
    # SQLite counts every allocation it makes in global statistics, under a process-wide mutex;
    # nothing here reads them (no sqlite3_status, no soft heap limit). Without them the writer
    # thread takes 12% less CPU an entry (bench/ingest_threads.py, docs/benchmarks.md,
    # 2026-12-03). The setting can only change while SQLite is shut down: right after the fork,
    # when the worker has no connection yet (none crosses a fork, sidecar/boot.py). A Python
    # built with its own copy of SQLite loads a second, unused one here, at no harm.
    import ctypes
    try:
        libsqlite = ctypes.CDLL("libsqlite3.so.0")
        if libsqlite.sqlite3_shutdown() == 0:
            libsqlite.sqlite3_config(SQLITE_CONFIG_MEMSTATUS, ctypes.c_int(0))
        libsqlite.sqlite3_initialize()
    except (OSError, AttributeError):
        pass


def post_worker_init(worker):
    # Datasette and search are open without a login on loopback only: bound elsewhere
    # (gunicorn -b 0.0.0.0:...), they need a login or an admin token.
    app = getattr(worker, "wsgi", None)
    sidecar = getattr(app, "extensions", {}).get("sidecar") if app else None
    hosts = [str(sock).split("://", 1)[-1].rsplit(":", 1)[0] for sock in getattr(worker, "sockets", [])]
    if sidecar is not None and not all(is_loopback(host) for host in hosts):
        sidecar.readers.open_access = False
    _tune_gc()


# Young collections at 100,000 net new containers (dicts, lists, tuples) instead of 700.
GC_THRESHOLDS = (100_000, 10, 10)


def _tune_gc():
    # Ingest makes and drops dicts, lists and tuples by the million, under the GIL. At the
    # default thresholds the cyclic GC ran two young collections a request and, with
    # batches alive while they wait for their commit, a full one every ~60 requests
    # (48 ms each). The objects of the loaded app are frozen out of its reach. Young
    # collections come at 100,000 net new containers: every collection holds the GIL, and
    # so stops the writer and every request, for as long as it walks the batches in flight.
    # At 20,000 a 1M-entry run of bench/ingest.py (4 clients) still had 16 of them, 20-55 ms
    # each, 0.4-0.5 s in all (timed with gc.callbacks); at 100,000 it has none. Request data
    # holds no reference cycles and refcounting frees it, so the count rarely grows that far;
    # what cycles there are (tracebacks) are still collected, later.
    import gc
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def on_exit(server):
    # The counts live in shared memory (sidecar/metrics_dir.py): give it back. A master killed
    # with -9 leaves them to the next start on the same data directory.
    metrics_dir.remove(_metrics_path)


def child_exit(server, worker):
    metrics_dir.worker_gone(worker.pid)


def worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    sidecar = getattr(app, "extensions", {}).get("sidecar") if app else None
    if sidecar is not None:
        sidecar.close()
