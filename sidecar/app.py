"""The sidecar app: the `Sidecar` object (settings, writer, tracker, jobs) and `create_app()`."""
import atexit
import logging
import dataclasses
import os
import sqlite3
import time

from flask import Flask, g, request

from ingest import catalog, groups, tracker
from ingest.entries import Limits, format_ts
from ingest.fingerprint import Fingerprinter
from ingest.idempotency import IdempotencyStore
from ingest.writer import Writer, utc_now
from retention import job as retention_job
from retention.policy import Policy
from retention.schedule import Scheduler, run_lock

from . import jsonlog
from .dependencies import DependencyMonitor
from .auth import ReaderAuth, TokenChecker
from .settings import is_loopback, level_days, load_settings
from .token_files import ADMIN_TOKEN_FILE, SESSION_SECRET_FILE, ensure_dev_token

log = logging.getLogger("sidecar.app")


class Sidecar:
    """What the blueprints share: settings, the writer, tokens, the clock."""

    def __init__(self, settings, clock=utc_now):
        self.settings = settings
        self.clock = clock
        self.data_dir = os.path.abspath(settings["data_dir"])
        self.limits = Limits.from_settings(settings)
        self.limits_without_cards = dataclasses.replace(self.limits, cards_possible=False)
        tokens = settings["ingest_tokens"] or [ensure_dev_token(self.data_dir)]
        self.tokens = TokenChecker(tokens, settings["auth_log_interval_s"])
        admin_tokens = settings["admin_tokens"] or [ensure_dev_token(self.data_dir, ADMIN_TOKEN_FILE)]
        self.admin_tokens = TokenChecker(admin_tokens, settings["auth_log_interval_s"], kind="admin")
        self.session_secret = settings["session_secret"] or ensure_dev_token(self.data_dir, SESSION_SECRET_FILE)
        # Open only on loopback with no password; gunicorn.conf.py closes it again if bound elsewhere.
        self.readers = ReaderAuth(self.admin_tokens, self.session_secret,
                                  open_access=not settings["datasette_password_hash"] and is_loopback(settings["host"]))
        self.tracker = tracker.GroupTracker(self.data_dir, clock, format_ts)
        self.writer = Writer(self.data_dir, settings, clock, on_commit=self.tracker.notify)
        from .metrics import Recorder  # imports prometheus_client: in the worker, never in gunicorn's master
        self.metrics = Recorder(self)
        self.writer.observe_commit = self.metrics.commit
        self.idempotency = IdempotencyStore(self.data_dir, settings["idempotency_ttl_s"], clock)
        self.dependencies = DependencyMonitor(settings)  # external APIs and databases, for /api/health
        self.fingerprinter = None
        self.meta = None
        self.retention_policy = Policy.from_settings(settings, level_days)
        self.retention = Scheduler(self.data_dir, self.retention_policy, settings["retention_interval_s"], clock)
        self._closed = False

    def start(self):
        from .alerts import AlertEngine
        self.alerts = AlertEngine(self)  # reads the alert rules first: a bad rules file stops the start here
        from .uptime import UptimeRunner
        self.uptime = UptimeRunner(self)  # reads the monitors file: a bad one stops the start here too
        from . import backup  # an empty store is restored from the backup before the writer opens a head
        self.backup = backup.prepare(self)
        self.writer.start()
        self.meta = catalog.connect_meta(self.data_dir)
        unfolded = groups.prepare(self.meta)
        self.fingerprinter = Fingerprinter.load(self.meta, self.settings["fingerprint_levels"])
        self.tracker.start(catch_up=unfolded)
        self.metrics.start()
        retention_job.ensure_schema(self.meta)
        with run_lock(self.data_dir) as held:
            if held:  # a retention run killed with the process: roll back and recount what it touched
                retention_job.recover_interrupted(self.data_dir, self.meta)
        self.retention.start()
        if self.backup is not None:
            self.backup.start()
        self.uptime.start()  # creates the uptime tables; checks in one process only (a flock)
        self.alerts.start()
        self.dependencies.start()
        from . import boot
        boot.record_for(self)  # one sidecar.boot row per server start, by whichever worker is first
        atexit.register(self.close)
        return self

    def save_templates(self):
        """Save the message templates learned since the last call; a failure (meta.db's disk
        full) keeps them for the next call and does not fail the request: its batch then gets
        the writer's own answer (503 storage_unavailable when the segments' disk is full too)."""
        if self.fingerprinter.dirty:
            try:
                self.fingerprinter.save(catalog.connect_meta_cached(self.data_dir), format_ts(self.clock()))
            except sqlite3.Error as error:
                log.warning("saving message templates failed, kept for the next batch: %s", error)

    def close(self):
        if not self._closed:
            self._closed = True
            self.retention.stop()
            if getattr(self, "backup", None) is not None:
                self.backup.stop()
            self.alerts.stop()
            self.uptime.stop()
            self.dependencies.stop()
            self.writer.stop()
            self.tracker.stop()
            self.metrics.stop()
            self.save_templates()
            if getattr(self, "backup", None) is not None:
                self.backup.final_run()  # with the heads: a disk wiped after this stop loses nothing committed


def create_app(config=None):
    """Build the app. `config` maps setting names to values (and may hold a `clock`)."""
    config = dict(config or {})
    clock = config.pop("clock", utc_now)
    jsonlog.install()
    sidecar = Sidecar(load_settings(config), clock).start()
    app = Flask(__name__)
    app.extensions["sidecar"] = sidecar
    from . import (alerts_api, errors, errors_api, events_api, health_api, ingest_api, metrics_api, otlp_api,
                   search_api, sentry_api, status_api, storage_api)
    for module in (errors, ingest_api, health_api, errors_api, sentry_api, otlp_api, storage_api, alerts_api,
                   search_api, metrics_api, events_api, status_api):
        app.register_blueprint(module.bp)
    _log_requests(app)
    # Browsers ask every site for /favicon.ico; a 404 shows up as a console error.
    app.add_url_rule("/favicon.ico", "favicon", lambda: ("", 204, {"Cache-Control": "max-age=86400"}))
    from .datasette_mount import DatasetteMount
    app.wsgi_app = app.extensions["datasette"] = DatasetteMount(app.wsgi_app, sidecar)
    return app


def _log_requests(app):
    from .metrics import UNMATCHED_ROUTE
    sidecar = app.extensions["sidecar"]

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _log(response):
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        duration_ms = round(seconds * 1000, 2)
        rule = request.url_rule
        sidecar.metrics.request(rule.rule if rule is not None else UNMATCHED_ROUTE, response.status_code, seconds)
        level = "error" if response.status_code >= 500 else "warn" if response.status_code >= 400 else "info"
        # request.path carries no query string, where a sentry_key could be.
        fields = dict(g.get("log_fields", {}))
        if request.headers.get("Content-Encoding"):
            fields["content_encoding"] = request.headers["Content-Encoding"]
        jsonlog.emit(level, "{} {} {}".format(request.method, request.path, response.status_code),
                     event="http.request", method=request.method, path=request.path,
                     status=response.status_code, duration_ms=duration_ms,
                     remote_addr=request.remote_addr, **fields)
        return response
