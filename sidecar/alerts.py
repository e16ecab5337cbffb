"""Alert evaluation: rules (sidecar/alert_rules.py) over meta.db, incidents, notifications.

Every `alert_interval_s`, in exactly one process at a time (a non-blocking
flock on `<data_dir>/.alerts.lock`; the last evaluation's time in meta.db
keeps the interval across processes), the engine records a health sample and
evaluates every rule (sidecar/alert_checks.py). Incidents, as in Alertmanager:

- a condition true for `for_minutes` becomes a *firing* incident: one
  notification; nothing more while it stays true; when it clears, the
  incident is *resolved*: one "resolved" notification;
- a new incident of the same rule and key within `cooldown_minutes` of the
  last notified one's resolution is recorded *suppressed* and not notified
  (it is notified after all if it still fires once the cooldown is over);
- event rules (new error group, regression, cold start, retention budget
  drop) fire once per event key and resolve at once; all of one rule's events
  of one evaluation make one notification, listing at most `max_listed`.

Everything is recorded in meta.db (`alerts`, `alert_deliveries`,
`health_samples`); delivery runs on its own thread (sidecar/alert_delivery.py).
"""
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import timedelta

import orjson

from ingest import catalog
from ingest.entries import format_ts
from ingest.locks import flock_held
from retention import job as retention_job

from . import alert_checks, health_api
from .alert_delivery import Delivery
from .alert_rules import load_rules

log = logging.getLogger("sidecar.alerts")

ALERT_TABLES = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, rule TEXT NOT NULL, key TEXT NOT NULL, severity TEXT NOT NULL,
    state TEXT NOT NULL, started_at TEXT NOT NULL, resolved_at TEXT, summary TEXT NOT NULL, details TEXT
);
CREATE INDEX IF NOT EXISTS alerts_rule_key ON alerts(rule, key, started_at);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts(rule, resolved_at);
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id INTEGER PRIMARY KEY, alert_id INTEGER NOT NULL, kind TEXT NOT NULL, channel TEXT NOT NULL,
    attempt INTEGER NOT NULL, status TEXT NOT NULL, error TEXT, at TEXT NOT NULL, final INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_deliveries_alert ON alert_deliveries(alert_id);
CREATE TABLE IF NOT EXISTS alert_pending (
    rule TEXT NOT NULL, key TEXT NOT NULL, since TEXT NOT NULL, seen TEXT NOT NULL, PRIMARY KEY (rule, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alert_state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS health_samples (ts TEXT NOT NULL, status TEXT NOT NULL, details TEXT);
CREATE INDEX IF NOT EXISTS health_samples_ts ON health_samples(ts);
"""
LOCK_FILE = ".alerts.lock"
HEALTH_SAMPLE_DAYS = 30


@contextmanager
def evaluation_lock(data_dir, wait=False):
    """Yield True when this process (this open file) holds the alert evaluation lock."""
    with flock_held(os.path.join(data_dir, LOCK_FILE), wait) as held:
        yield held


def ensure_schema(meta):
    retention_job.ensure_schema(meta)  # error_groups, rollups, sidecar_events
    with catalog.immediate(meta):
        for statement in ALERT_TABLES.split(";"):
            if statement.strip():
                meta.execute(statement)


def health_now(sidecar):
    """What GET /api/health reports, computed by its own function (cheap: no scans, no network)."""
    body, status = health_api.health_report(sidecar)
    return {"status": status, "services": body["services"]}


def _dumps(value):
    return orjson.dumps(value, default=str).decode()


class Context:
    """What the checks of one evaluation share."""

    def __init__(self, sidecar, meta, now):
        self.sidecar, self.meta, self.now = sidecar, meta, now
        self.now_text = format_ts(now)
        self.health = health_now(sidecar)
        self.suppressed = []  # alert ids recorded suppressed in this evaluation


class AlertEngine:
    def __init__(self, sidecar, rules=None):
        settings = sidecar.settings
        self.sidecar = sidecar
        self.rules = load_rules(settings) if rules is None else rules
        self.interval_s = settings["alert_interval_s"]
        self.delivery = Delivery(sidecar.data_dir, settings["alert_retry_attempts"],
                                 settings["alert_retry_base_ms"], settings["alert_delivery_timeout_s"],
                                 sidecar.clock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sidecar-alerts", daemon=True)
        self._failing = set()  # rules whose last check raised: logged once until they work again

    @property
    def clock(self):
        return self.sidecar.clock

    def start(self):
        meta = catalog.connect_meta(self.sidecar.data_dir)
        try:
            ensure_schema(meta)
            with catalog.immediate(meta):
                for rule in self.rules:
                    if rule.event:
                        self._cursor(meta, rule, self.clock())
        finally:
            meta.close()
        self.delivery.start()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)
        self.delivery.stop()

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            try:
                self.run_if_due()
            except Exception as error:  # the thread must outlive a bad evaluation
                log.error("alert evaluation failed: %s: %s", type(error).__name__, error,
                          exc_info=not isinstance(error, (sqlite3.Error, OSError)))

    def run_if_due(self):
        """Evaluate when this process holds the lock and no process evaluated within the interval."""
        with evaluation_lock(self.sidecar.data_dir) as held:
            if not held:
                return None
            now = self.clock()
            meta = catalog.connect_meta(self.sidecar.data_dir)
            try:
                last = meta.execute("SELECT value FROM alert_state WHERE name = 'evaluated_at'").fetchone()
                if last and last[0] > format_ts(now - timedelta(seconds=self.interval_s * 0.9)):
                    return None
                return self._evaluate(meta, now)
            finally:
                meta.close()

    def evaluate_once(self):
        """Evaluate now, waiting for another evaluation to finish (tests, `python -m` tools)."""
        with evaluation_lock(self.sidecar.data_dir, wait=True):
            meta = catalog.connect_meta(self.sidecar.data_dir)
            try:
                return self._evaluate(meta, self.clock())
            finally:
                meta.close()

    def _evaluate(self, meta, now):
        ctx = Context(self.sidecar, meta, now)
        with catalog.immediate(meta):
            meta.execute("INSERT INTO health_samples (ts, status, details) VALUES (?, ?, ?)",
                         (ctx.now_text, ctx.health["status"], _dumps(_sample_details(ctx.health))))
            meta.execute("DELETE FROM health_samples WHERE ts < ?",
                         (format_ts(now - timedelta(days=HEALTH_SAMPLE_DAYS)),))
            meta.execute("INSERT OR REPLACE INTO alert_state VALUES ('evaluated_at', ?)", (ctx.now_text,))
        report = {"at": ctx.now_text, "health": ctx.health["status"], "fired": [], "resolved": [], "suppressed": [],
                  "errors": {}}
        for rule in self.rules:
            try:
                outbox = self._event_rule(ctx, rule) if rule.event else self._state_rule(ctx, rule)
            except Exception as error:  # one broken rule must not stop the others
                report["errors"][rule.name] = "{}: {}".format(type(error).__name__, error)
                if rule.name not in self._failing:
                    log.error("alert rule %s failed: %s", rule.name, report["errors"][rule.name],
                              exc_info=not isinstance(error, sqlite3.Error))
                self._failing.add(rule.name)
                continue
            self._failing.discard(rule.name)
            for alert_id, kind, title, body in outbox:
                report["resolved" if kind == "resolved" else "fired"].append(alert_id)
                if rule.channels:
                    self.delivery.send(alert_id, kind, title, body, rule.channels, rule.severity)
        report["suppressed"] = ctx.suppressed
        return report

    # State rules: incidents that open, stay and resolve.

    def _state_rule(self, ctx, rule):
        findings = alert_checks.STATE_CHECKS[rule.kind](ctx, rule)
        meta, now_text, outbox = ctx.meta, ctx.now_text, []
        with catalog.immediate(meta):
            open_ = {row["key"]: row for row in meta.execute(
                "SELECT * FROM alerts WHERE rule = ? AND resolved_at IS NULL", (rule.name,))}
            pending = {row["key"]: row for row in meta.execute(
                "SELECT * FROM alert_pending WHERE rule = ?", (rule.name,))}
            stale = format_ts(ctx.now - timedelta(seconds=max(3 * self.interval_s, 120)))
            for key, finding in findings.items():
                incident = open_.get(key)
                if incident is not None:
                    if incident["state"] == "suppressed" and not self._cooling(meta, rule, key, ctx.now):
                        meta.execute("UPDATE alerts SET state = 'firing' WHERE id = ?", (incident["id"],))
                        outbox.append(self._message(rule, incident["id"], "firing", key, incident["summary"],
                                                    incident["started_at"], None))
                    continue
                if rule.for_minutes and rule.kind not in alert_checks.WINDOWED:
                    waiting = pending.get(key)
                    if waiting is None or waiting["seen"] < stale:  # new, or seen before a gap in evaluation
                        meta.execute("INSERT OR REPLACE INTO alert_pending VALUES (?, ?, ?, ?)",
                                     (rule.name, key, now_text, now_text))
                        continue
                    meta.execute("UPDATE alert_pending SET seen = ? WHERE rule = ? AND key = ?",
                                 (now_text, rule.name, key))
                    if waiting["since"] > format_ts(ctx.now - timedelta(minutes=rule.for_minutes)):
                        continue
                meta.execute("DELETE FROM alert_pending WHERE rule = ? AND key = ?", (rule.name, key))
                state = "suppressed" if self._cooling(meta, rule, key, ctx.now) else "firing"
                alert_id = self._insert(meta, rule, key, state, now_text, None, finding.summary, finding.details)
                if state == "firing":
                    outbox.append(self._message(rule, alert_id, "firing", key, finding.summary, now_text, None))
                else:
                    ctx.suppressed.append(alert_id)
            for key, incident in open_.items():
                if key in findings:
                    continue
                state = "resolved" if incident["state"] == "firing" else incident["state"]
                meta.execute("UPDATE alerts SET state = ?, resolved_at = ? WHERE id = ?",
                             (state, now_text, incident["id"]))
                if incident["state"] == "firing":
                    outbox.append(self._message(rule, incident["id"], "resolved", key, incident["summary"],
                                                incident["started_at"], now_text))
            gone = [key for key in pending if key not in findings]
            meta.executemany("DELETE FROM alert_pending WHERE rule = ? AND key = ?",
                             [(rule.name, key) for key in gone])
        return outbox

    def _cooling(self, meta, rule, key, now):
        """Whether the last notified incident of rule+key resolved less than cooldown_minutes ago."""
        if not rule.cooldown_minutes:
            return False
        last, = meta.execute("SELECT max(resolved_at) FROM alerts WHERE rule = ? AND key = ? AND state = 'resolved'",
                             (rule.name, key)).fetchone()
        return last is not None and last > format_ts(now - timedelta(minutes=rule.cooldown_minutes))

    # Event rules: each event fires once; one notification per rule and evaluation.

    def _cursor(self, meta, rule, now):
        name = "cursor:" + rule.name
        row = meta.execute("SELECT value FROM alert_state WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return row[0]
        position = alert_checks.initial_position(meta, rule.kind, now)
        meta.execute("INSERT INTO alert_state VALUES (?, ?)", (name, position))
        return position

    def _event_rule(self, ctx, rule):
        meta, now_text = ctx.meta, ctx.now_text
        with catalog.immediate(meta):
            position = self._cursor(meta, rule, ctx.now)
            events, position = alert_checks.EVENT_CHECKS[rule.kind](ctx, rule, position)
            notified, suppressed = [], []
            for key, summary, details in events:
                state = "suppressed" if self._cooling(meta, rule, key, ctx.now) else "resolved"
                alert_id = self._insert(meta, rule, key, state, now_text, now_text, summary, details)
                (notified if state == "resolved" else suppressed).append((alert_id, summary))
            if notified:
                meta.execute("UPDATE alerts SET details = json_set(coalesce(details, '{{}}'), '$.notification', ?) "
                             "WHERE id IN ({})".format(", ".join("?" * len(notified))),
                             [notified[0][0]] + [alert_id for alert_id, _ in notified])
            meta.execute("INSERT OR REPLACE INTO alert_state VALUES (?, ?)", ("cursor:" + rule.name, position))
        ctx.suppressed.extend(alert_id for alert_id, _ in suppressed)
        if not notified:
            return []
        return [self._burst(rule, notified)]

    def _burst(self, rule, notified):
        singular, plural = alert_checks.NOUNS[rule.kind]
        limit = rule.params["max_listed"]
        if len(notified) == 1:
            title = "[{}] {}: {}".format(rule.severity.upper(), rule.name, notified[0][1])
        else:
            title = "[{}] {}: {} {}".format(rule.severity.upper(), rule.name, len(notified), plural)
        lines = ["- " + summary for _, summary in notified[:limit]]
        if len(notified) > limit:
            lines.append("... and {} more {} (table alerts in meta.db, rule {!r})".format(
                len(notified) - limit, plural if len(notified) - limit > 1 else singular, rule.name))
        return notified[0][0], "firing", _clip(title, 250), "\n".join(lines)

    # Rows and messages.

    def _insert(self, meta, rule, key, state, started_at, resolved_at, summary, details):
        return meta.execute(
            "INSERT INTO alerts (rule, key, severity, state, started_at, resolved_at, summary, details) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rule.name, key, rule.severity, state, started_at, resolved_at, _clip(summary, 1000),
             _dumps(dict(details, kind=rule.kind)))).lastrowid

    def _message(self, rule, alert_id, kind, key, summary, started_at, resolved_at):
        if kind == "firing":
            title = "[FIRING {}] {}: {}".format(rule.severity, rule.name, summary)
            body = ["{} (rule {}, {}, key {}), since {}.".format(summary, rule.name, rule.kind, key, started_at)]
            if rule.for_minutes:
                body.append("Condition held for {} minute(s).".format(rule.for_minutes))
        else:
            title = "[RESOLVED] {}: {}".format(rule.name, summary)
            body = ["Resolved at {} (started {}): {}".format(resolved_at, started_at, summary)]
        body.append("Alert {} in meta.db (table alerts).".format(alert_id))
        return alert_id, kind, _clip(title, 250), "\n".join(body)


def _clip(text, length):
    return text if len(text) <= length else text[:length - 1] + "…"


def _sample_details(health):
    """A health sample's details: each check's status and its figure."""
    details = {}
    for name, check in health["services"].items():
        if isinstance(check, dict):
            details[name] = {key: check.get(key) for key in ("status", "percent", "latency_ms") if key in check}
        elif isinstance(check, list):  # external_apis: each dependency by its configured name
            details[name] = {str(item.get("name")): item.get("status") for item in check if isinstance(item, dict)}
    return details
