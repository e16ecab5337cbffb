"""Datasette 0.65, mounted in-process at /datasette/ and loaded on first use.

Free hosts give a service one port, so Datasette runs inside the same
gunicorn worker: a WSGI middleware in front of Flask hands /datasette/...
to Datasette's ASGI app (through a2wsgi). Importing and building Datasette
happens on the first such request, so it adds nothing to a cold start.

Every segment in the catalog is a database named after its file (without
`.db`), plus `meta` for meta.db. Closed segments are opened immutable, the
head and meta.db read-only (`mode=ro`): nothing can be written through
Datasette. The catalog is re-read on each request (and every few seconds in
the background), so new segments appear and pruned ones disappear without a
restart.
"""
import hashlib
import os
import sqlite3
import threading
import time

from ingest import catalog, segments

from . import jsonlog

MOUNT = "/datasette"
DATASETTE_ROUTE = MOUNT + "/*"  # the route of every Datasette request in metrics and latency rollups
SYNC_INTERVAL_S = 10
CLOSE_GRACE_S = 30  # queries already running on a replaced database get this long to finish


def segment_database_class():
    """A Database that opens its own connections per instance, not per name.

    Datasette 0.65 keeps one connection per thread and database *name*. A
    segment keeps its name when it closes or when retention rewrites it, so
    connections are kept per instance here and closed when the instance is
    replaced; the head is never held open between queries, so the writer can
    take it out of WAL mode when it closes.
    """
    from datasette.database import Database, connections

    class SegmentDatabase(Database):
        def __init__(self, ds, path, closed, fingerprint):
            super().__init__(ds, path=path, is_mutable=not closed)
            self._local_key = "segment-{}".format(id(self))
            # Datasette would hash the whole file for its index page: a cheap stand-in.
            self.cached_hash = hashlib.sha256(fingerprint.encode()).hexdigest() if closed else None

        async def execute_fn(self, fn):
            import asyncio

            def in_thread():
                if self.is_mutable:
                    conn = sqlite3.connect("file:{}?mode=ro".format(self.path), uri=True, check_same_thread=False)
                    try:
                        self.ds._prepare_connection(conn, self.name)
                        return fn(conn)
                    finally:
                        conn.close()
                conn = getattr(connections, self._local_key, None)
                if not conn:
                    conn = self.connect()
                    self.ds._prepare_connection(conn, self.name)
                    setattr(connections, self._local_key, conn)
                return fn(conn)

            return await asyncio.get_event_loop().run_in_executor(self.ds.executor, in_thread)

    return SegmentDatabase


class DatasetteMount:
    """WSGI middleware: /datasette/... goes to Datasette, everything else to Flask."""

    def __init__(self, flask_wsgi, sidecar):
        self.flask_wsgi = flask_wsgi
        self.sidecar = sidecar
        self.datasette = None
        self._wsgi = None
        self._lock = threading.Lock()
        self._registered = {}  # database name -> (state key, Database)
        self._sync_lock = threading.Lock()
        self._last_sync = 0.0

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path != MOUNT and not path.startswith(MOUNT + "/"):
            return self.flask_wsgi(environ, start_response)
        if path == MOUNT:
            start_response("302 Found", [("Location", MOUNT + "/"), ("Content-Length", "0")])
            return [b""]
        self.ensure_loaded()
        self.sync()
        return self._logged(environ, start_response)

    def _logged(self, environ, start_response):
        started = time.perf_counter()
        status_holder = []

        def capture(status, headers, exc_info=None):
            status_holder.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        try:
            yield from self._wsgi(environ, capture)
        finally:
            status = status_holder[0] if status_holder else 500
            level = "error" if status >= 500 else "warn" if status >= 400 else "info"
            method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
            seconds = time.perf_counter() - started
            self.sidecar.metrics.request(DATASETTE_ROUTE, status, seconds)
            # The path only: query strings may hold SQL with literals from the logs.
            jsonlog.emit(level, "{} {} {}".format(method, path, status), event="http.request", method=method,
                         path=path, status=status, remote_addr=environ.get("REMOTE_ADDR"),
                         duration_ms=round(seconds * 1000, 2))

    # -- building --------------------------------------------------------------
    def ensure_loaded(self):
        if self._wsgi is not None:
            return
        with self._lock:
            if self._wsgi is not None:
                return
            from a2wsgi import ASGIMiddleware
            from datasette.app import Datasette, Database
            from datasette.plugins import pm

            from . import datasette_config, datasette_plugin
            if not pm.is_registered(datasette_plugin):
                pm.register(datasette_plugin, name="sidecar")
            ds = Datasette(
                files=[], metadata=datasette_config.metadata(self.sidecar), secret=self.sidecar.session_secret,
                settings={"base_url": MOUNT + "/", "sql_time_limit_ms": 5000, "num_sql_threads": 3,
                          "facet_time_limit_ms": 500, "allow_download": False,
                          # Suggesting facets runs a query per column over the whole table: 10x the
                          # time of a logs table page (bench/search.py). Facets still work on request.
                          "suggest_facets": False})
            ds.sidecar = self.sidecar
            meta_path = os.path.join(self.sidecar.data_dir, "meta.db")
            ds.add_database(Database(ds, path=meta_path, is_mutable=True), name="meta", route="meta")
            self.datasette = ds
            self.sync(force=True)
            self._wsgi = ASGIMiddleware(ds.app())
            threading.Thread(target=self._sync_forever, name="sidecar-datasette-sync", daemon=True).start()

    # -- keeping the databases in step with the catalog -------------------------
    def _sync_forever(self):
        while True:
            time.sleep(SYNC_INTERVAL_S)
            try:
                self.sync(force=True)
            except sqlite3.Error as error:
                jsonlog.emit("error", "datasette sync failed: {}".format(error), event="datasette.sync_failed")

    def sync(self, force=False):
        """Register new segments, re-open changed ones, drop pruned ones."""
        if not force and time.monotonic() - self._last_sync < 0.5:
            return
        with self._sync_lock:
            self._last_sync = time.monotonic()
            meta = catalog.connect_meta_cached(self.sidecar.data_dir)
            rows = meta.execute("SELECT name, closed_at, generation FROM segments").fetchall()
            wanted = {}
            for name, closed_at, generation in rows:
                path = os.path.join(segments.segments_dir(self.sidecar.data_dir), name)
                if os.path.exists(path):
                    wanted[name[:-3] if name.endswith(".db") else name] = (path, closed_at is not None, generation)
            self._apply(wanted)

    def _apply(self, wanted):
        ds = self.datasette
        database_class = segment_database_class()
        databases, retired = dict(ds.databases), []
        for name, (path, closed, generation) in wanted.items():
            key = (closed, generation)
            current = self._registered.get(name)
            if current is not None and current[0] == key:
                continue
            db = database_class(ds, path, closed, "{}:{}:{}".format(name, generation, os.path.getsize(path)))
            db.name, db.route = name, name
            databases[name] = db
            if current is not None:
                retired.append(current[1])
            self._registered[name] = (key, db)
        for name in [name for name in self._registered if name not in wanted]:
            databases.pop(name, None)
            retired.append(self._registered.pop(name)[1])
        if databases.keys() != ds.databases.keys() or retired or any(
                databases[name] is not ds.databases.get(name) for name in databases):
            ds.databases = databases  # replaced whole, as Datasette does: readers never see a half-built dict
        if retired:
            timer = threading.Timer(CLOSE_GRACE_S, _close_all, args=(retired,))
            timer.daemon = True
            timer.start()


def _close_all(databases):
    for db in databases:
        db.close()
