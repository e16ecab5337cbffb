"""Alert rules, evaluation and delivery: a real data dir, an injected clock, and a real HTTP
receiver on loopback reached through apprise's json:// URLs."""
import dataclasses
import json
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ingest import catalog
from ingest.entries import format_ts
from retention import job as retention_job
from sidecar import backup, create_app
from sidecar.alert_delivery import redact_url, scrub
from sidecar.alert_rules import load_rules
from sidecar.alerts import AlertEngine, evaluation_lock
from sidecar.settings import SettingsError, load_settings

from conftest import AUTH, TOKEN, free_port

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=timezone.utc)
ADMIN = "admin-token-0123456789abcdef"
ADMIN_AUTH = {"Authorization": "Bearer " + ADMIN}


class Clock:
    def __init__(self, moment=NOW):
        self.moment = moment

    def __call__(self):
        return self.moment

    def advance(self, **delta):
        self.moment += timedelta(**delta)


class Receiver:
    """A webhook on loopback that records every POST body and answers `status` after `delay` s."""

    def __init__(self, status=200, delay=0.0):
        self.status, self.delay, self.requests = status, delay, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "body": json.loads(body),
                                          "authorization": self.headers.get("Authorization")})
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "json://127.0.0.1:{}/hook".format(self.port)

    @property
    def titles(self):
        return [request["body"]["title"] for request in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def make_app(data_dir, tmp_path):
    """make_app(rules_yaml=None, **settings) -> (app, sidecar, clock); closed at teardown."""
    apps = []

    def make(rules=None, clock=None, **settings):
        clock = clock or Clock()
        config = {"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN],
                  "alert_interval_s": 3600, "alert_retry_attempts": 2, "alert_retry_base_ms": 50,
                  "alert_delivery_timeout_s": 5, "clock": clock}
        if rules is not None:
            path = tmp_path / "alerts-{}.yaml".format(len(apps))
            path.write_text(rules)
            config["alerts_file"] = str(path)
        config.update(settings)
        app = create_app(config)
        apps.append(app)
        return app, app.extensions["sidecar"], clock

    yield make
    for app in apps:
        app.extensions["sidecar"].close()


def evaluate(sidecar):
    report = sidecar.alerts.evaluate_once()
    assert report["errors"] == {}
    assert sidecar.alerts.delivery.flush(20)
    return report


def post(client, entries):
    response = client.post("/api/logs", json=entries, headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return response


def alerts(data_dir, rule=None):
    con = sqlite3.connect(data_dir + "/meta.db")
    con.row_factory = sqlite3.Row
    sql = "SELECT * FROM alerts" + (" WHERE rule = ?" if rule else "") + " ORDER BY id"
    rows = [dict(row) for row in con.execute(sql, (rule,) if rule else ())]
    con.close()
    return rows


def deliveries(data_dir):
    con = sqlite3.connect(data_dir + "/meta.db")
    con.row_factory = sqlite3.Row
    rows = [dict(row) for row in con.execute("SELECT * FROM alert_deliveries ORDER BY id")]
    con.close()
    return rows


def only(*rules):
    return "include_defaults: false\nrules:\n" + "".join(rules)


# -- rules files -------------------------------------------------------------------------

YAML_RULES = """
channels: ["json://127.0.0.1:9/from-file"]
rules:
  - name: error_rate            # a built-in: only what is given changes
    threshold_per_minute: 50
    service: api
  - name: memory
    enabled: false
  - name: checkout-latency
    kind: latency_p95
    per: route
    route: /checkout
    threshold_ms: 800
    for_minutes: 3
    severity: critical
    channels: ["json://127.0.0.1:9/${ALERT_HOOK_PATH}"]
"""

TOML_RULES = """
include_defaults = false

[[rules]]
name = "errors"
kind = "error_rate"
threshold_per_minute = 5
per_service = false
levels = ["error", "critical", "warn"]

[[rules]]
name = "disk"
kind = "disk_budget"
threshold_percent = 70
cooldown_minutes = 120
"""


def settings_with(path=""):
    return load_settings({"alerts_file": str(path), "alert_urls": ["json://127.0.0.1:9/global"]}, environ={})


def test_builtin_rules_cover_every_kind():
    rules = load_rules(settings_with(), environ={})
    assert {rule.kind for rule in rules} == {"new_error_group", "regression", "error_rate", "latency_p95",
                                             "disk_budget", "memory", "health", "cold_start",
                                             "retention_budget_drop", "backup_failed", "uptime_down",
                                             "cert_expiry"}
    disk = {rule.name: rule.params["threshold_percent"] for rule in rules if rule.kind == "disk_budget"}
    assert disk == {"disk_budget_warning": 80, "disk_budget_critical": 95}
    assert all(rule.channels == ("json://127.0.0.1:9/global",) for rule in rules)


def test_yaml_rules_merge_over_the_builtins(tmp_path):
    path = tmp_path / "alerts.yml"
    path.write_text(YAML_RULES)
    rules = {rule.name: rule for rule in load_rules(settings_with(path), environ={"ALERT_HOOK_PATH": "s3cret"})}
    assert "memory" not in rules and "new_error_group" in rules
    rate = rules["error_rate"]
    assert (rate.kind, rate.for_minutes, rate.params["threshold_per_minute"], rate.params["service"]) == \
        ("error_rate", 5, 50, "api")
    assert rate.channels == ("json://127.0.0.1:9/from-file",)
    latency = rules["checkout-latency"]
    assert latency.params == {"threshold_ms": 800, "per": "route", "service": None, "route": "/checkout",
                              "min_count": 5}
    assert latency.channels == ("json://127.0.0.1:9/s3cret",) and latency.severity == "critical"
    assert "s3cret" not in json.dumps(latency.public())


def test_toml_rules_without_defaults(tmp_path):
    path = tmp_path / "alerts.toml"
    path.write_text(TOML_RULES)
    rules = load_rules(settings_with(path), environ={})
    assert [rule.name for rule in rules] == ["errors", "disk"]
    assert rules[0].params["levels"] == ("error", "critical", "warn") and not rules[0].params["per_service"]
    assert rules[1].cooldown_minutes == 120 and rules[1].params["threshold_percent"] == 70


@pytest.mark.parametrize("name, text, message", [
    ("a.yaml", "rules:\n  - name: slow\n    kind: latency_p95\n    treshold_ms: 5\n",
     r"rule 1 \('slow', line 2\): key 'treshold_ms' \(line 4\): not a key of a latency_p95 rule"),
    ("a.yaml", "rules:\n  - name: x\n    kind: nope\n", r"key 'kind' \(line 3\): kind must be one of"),
    ("a.yaml", "rules:\n  - name: x\n    kind: memory\n    for_minutes: -1\n", r"'for_minutes' \(line 4\)"),
    ("a.yaml", "rules:\n  - name: x\n    kind: memory\n  - name: x\n    kind: memory\n",
     r"rule 2 \('x', line 4\).*a second rule with this name"),
    ("a.yaml", "rules:\n  - name: x\n   kind: memory\n", r"not valid YAML at line 3"),
    ("a.yaml", "rulez: []\n", r"key 'rulez' \(line 1\): unknown top-level key"),
    ("a.yaml", "rules:\n  - name: x\n    kind: memory\n    threshold_percent: lots\n",
     r"'threshold_percent' \(line 4\): must be a number"),
    ("a.yaml", "rules:\n  - name: x\n    kind: memory\n    channels: ['nothing://at/all']\n",
     r"rule 'x': channel 1 \(nothing://...\) is not a URL apprise can send to"),
    ("a.yaml", "rules:\n  - name: x\n    kind: memory\n    channels: ['json://h/${NOT_SET_ANYWHERE}']\n",
     r"channel 1 uses \$\{NOT_SET_ANYWHERE\}, which is not set"),
    ("a.toml", "[[rules]]\nname = 'x'\nkind = 'health'\nstatus = 'sad'\n",
     r"rule 1 \('x', line 1\): key 'status' \(line 4\): must be one of degraded, unhealthy"),
    ("a.toml", "[[rules]\nname = 'x'\n", r"not valid TOML: .*line 1"),
    ("a.json", "{}", r"must end in .yaml, .yml or .toml"),
])
def test_bad_rules_files_name_the_place(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SettingsError, match=message) as raised:
        load_rules(settings_with(path), environ={})
    assert str(raised.value).startswith("SIDECAR_ALERTS_FILE " + str(path))


def test_a_bad_rules_file_stops_the_start(data_dir, tmp_path):
    path = tmp_path / "alerts.yaml"
    path.write_text("rules:\n  - name: x\n    kind: memory\n    typo: 1\n")
    with pytest.raises(SettingsError, match="key 'typo' \\(line 4\\)"):
        create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN], "alerts_file": str(path)})


def test_redaction_hides_secrets():
    assert redact_url("json://user:pw@hooks.example.com:8443/secret/path?token=abc").startswith(
        "json://****@hooks.example.com:8443/… #")
    slack = redact_url("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ")
    assert slack.startswith("slack://****/… #") and "T1JJ3T3L2" not in slack
    assert redact_url("mailto://ops:hunter22@gmail.com").startswith("mailto://****@gmail.com #")
    url = "discord://1234567/tokentokentoken"
    assert scrub("failed to reach discord 1234567 with tokentokentoken", url) == \
        "failed to reach discord **** with ****"


# -- each kind fires and resolves ----------------------------------------------------------

def test_new_groups_burst_is_one_notification(make_app, receiver, data_dir):
    app, sidecar, clock = make_app(alert_urls=[receiver.url])
    client = app.test_client()
    post(client, [{"service": "api", "level": "error", "message": "boom {}".format(n), "fingerprint": ["g", str(n)]}
                  for n in range(50)])
    sidecar.tracker.flush()
    report = evaluate(sidecar)
    assert len(report["fired"]) == 1
    [request] = receiver.requests
    assert request["body"]["title"] == "[WARNING] new_error_group: 50 new error groups"
    lines = request["body"]["message"].splitlines()
    assert len(lines) == 21 and lines[0].startswith("- new error group in api: boom")
    assert lines[-1].startswith("... and 30 more new error groups")
    rows = alerts(data_dir, "new_error_group")
    assert len(rows) == 50 and {row["state"] for row in rows} == {"resolved"}
    assert {json.loads(row["details"])["notification"] for row in rows} == {rows[0]["id"]}
    assert [(d["alert_id"], d["kind"], d["status"], d["attempt"], d["final"]) for d in deliveries(data_dir)] == \
        [(rows[0]["id"], "firing", "ok", 1, 1)]
    # Nothing new: nothing sent. One more group: one more notification, naming it.
    clock.advance(minutes=1)
    evaluate(sidecar)
    post(client, [{"service": "web", "level": "error", "message": "TypeError: x is undefined"}])
    sidecar.tracker.flush()
    evaluate(sidecar)
    assert receiver.titles[1:] == ["[WARNING] new_error_group: new error group in web: TypeError: x is undefined"]


def test_regression_fires_once_per_regression_with_cooldown(make_app, receiver, data_dir):
    app, sidecar, clock = make_app(only("  - {name: regressed, kind: regression, cooldown_minutes: 30}\n"),
                                   alert_urls=[receiver.url])
    client = app.test_client()

    def regress():
        clock.advance(minutes=1)
        assert client.post("/api/errors/{}/status".format(group["fingerprint"]), json={"status": "resolved"},
                           headers=ADMIN_AUTH).status_code == 200
        evaluate(sidecar)
        clock.advance(minutes=1)
        post(client, [{"service": "api", "level": "error", "message": "payment failed", "fingerprint": ["pay"]}])
        sidecar.tracker.flush()
        evaluate(sidecar)
        evaluate(sidecar)

    post(client, [{"service": "api", "level": "error", "message": "payment failed", "fingerprint": ["pay"]}])
    sidecar.tracker.flush()
    [group] = client.get("/api/errors", headers=ADMIN_AUTH).get_json()["groups"]
    evaluate(sidecar)
    assert receiver.requests == []  # a new group is not a regression
    regress()
    assert receiver.titles == ["[WARNING] regressed: regression in api: payment failed"]
    [row] = alerts(data_dir, "regressed")
    assert row["key"] == group["fingerprint"] and json.loads(row["details"])["regressed_at"] == format_ts(clock())
    regress()  # again within the 30 minutes: recorded, not sent
    clock.advance(minutes=30)
    regress()  # after them: sent
    assert [row["state"] for row in alerts(data_dir, "regressed")] == ["resolved", "suppressed", "resolved"]
    assert len(receiver.requests) == 2


def test_error_rate_fires_per_service_and_resolves(make_app, receiver, data_dir):
    rules = only("  - {name: errors, kind: error_rate, threshold_per_minute: 3, for_minutes: 2}\n")
    app, sidecar, clock = make_app(rules, alert_urls=[receiver.url])
    client = app.test_client()
    entries = []
    for back, api_errors in ((2, 5), (1, 4)):  # the two complete minutes before NOW
        stamp = format_ts(NOW.replace(second=10) - timedelta(minutes=back))
        entries += [{"service": "api", "level": "error", "message": "e", "timestamp": stamp}] * api_errors
        entries += [{"service": "web", "level": "error", "message": "e", "timestamp": stamp}] * 2
        entries += [{"service": "web", "level": "info", "message": "i", "timestamp": stamp}] * 20
    post(client, entries)
    sidecar.tracker.flush()
    evaluate(sidecar)
    [firing] = alerts(data_dir, "errors")
    assert (firing["key"], firing["state"], firing["severity"]) == ("api", "firing", "warning")
    assert json.loads(firing["details"])["per_minute"] == {"2026-03-01T11:58": 5, "2026-03-01T11:59": 4}
    clock.advance(seconds=20)
    evaluate(sidecar)  # still true: nothing sent
    clock.advance(minutes=1)  # the window now holds 11:59 and 12:00, which had no errors
    evaluate(sidecar)
    evaluate(sidecar)
    assert receiver.titles == [
        "[FIRING warning] errors: api: more than 3 error/critical entries a minute for 2 minute(s) (up to 5)",
        "[RESOLVED] errors: api: more than 3 error/critical entries a minute for 2 minute(s) (up to 5)"]
    [resolved] = alerts(data_dir, "errors")
    assert resolved["state"] == "resolved" and resolved["resolved_at"] == format_ts(clock())
    assert [(d["kind"], d["status"]) for d in deliveries(data_dir)] == [("firing", "ok"), ("resolved", "ok")]


def test_latency_p95_per_service_and_route(make_app, receiver, data_dir):
    rules = only("  - {name: slow, kind: latency_p95, threshold_ms: 500, for_minutes: 2, min_count: 3}\n",
                 "  - {name: slow-route, kind: latency_p95, per: route, threshold_ms: 500, for_minutes: 2,"
                 " min_count: 3}\n")
    app, sidecar, clock = make_app(rules, alert_urls=[receiver.url])
    client = app.test_client()
    entries = []
    for back in (2, 1):
        stamp = format_ts(NOW.replace(second=5) - timedelta(minutes=back))
        for n in range(10):
            slow = 900 if n < 9 else 20
            entries.append({"service": "shop", "message": "GET /cart", "timestamp": stamp,
                            "metadata": {"duration_ms": slow, "route": "/cart"}})
            entries.append({"service": "shop", "message": "GET /", "timestamp": stamp,
                            "metadata": {"duration_ms": 30, "route": "/"}})
    post(client, entries)
    sidecar.tracker.flush()
    evaluate(sidecar)
    assert {(row["rule"], row["key"]) for row in alerts(data_dir)} == {("slow", "shop"), ("slow-route", "shop /cart")}
    clock.advance(minutes=2)
    evaluate(sidecar)
    assert sorted(receiver.titles) == sorted(
        ["[FIRING warning] slow: shop: p95 latency above 500 ms in each of the last 2 minute(s) (up to {:g} ms)"
         .format(json.loads(alerts(data_dir, "slow")[0]["details"])["p95_ms_per_minute"]["2026-03-01T11:58"]),
         "[RESOLVED] slow: " + alerts(data_dir, "slow")[0]["summary"],
         "[FIRING warning] slow-route: " + alerts(data_dir, "slow-route")[0]["summary"],
         "[RESOLVED] slow-route: " + alerts(data_dir, "slow-route")[0]["summary"]])


def test_disk_budget_fires_and_resolves(make_app, receiver, data_dir):
    app, sidecar, clock = make_app(only("  - {name: disk, kind: disk_budget, threshold_percent: 80}\n"),
                                   alert_urls=[receiver.url])
    policy = sidecar.retention_policy
    sidecar.retention_policy = dataclasses.replace(policy, budget_bytes=retention_job.store_bytes(data_dir) // 2)
    evaluate(sidecar)
    clock.advance(minutes=1)
    sidecar.retention_policy = dataclasses.replace(policy, budget_bytes=10 ** 12)
    evaluate(sidecar)
    assert [title.split(":")[0] for title in receiver.titles] == ["[FIRING warning] disk", "[RESOLVED] disk"]
    assert "of its disk budget" in receiver.titles[0]


def test_memory_and_health_wait_for_minutes_and_record_samples(make_app, receiver, data_dir):
    rules = only("  - {name: mem, kind: memory, threshold_percent: 90, for_minutes: 2, severity: critical}\n",
                 "  - {name: health, kind: health, for_minutes: 2}\n")
    app, sidecar, clock = make_app(rules, alert_urls=[receiver.url], memory_limit_bytes=1024 * 1024)
    for _ in range(2):
        assert evaluate(sidecar)["fired"] == []  # pending: not yet 2 minutes
        clock.advance(minutes=1)
    assert len(evaluate(sidecar)["fired"]) == 2
    sidecar.settings["memory_limit_bytes"] = 10 ** 12
    clock.advance(minutes=1)
    assert len(evaluate(sidecar)["resolved"]) == 2
    assert sorted(title.split(":")[0] for title in receiver.titles) == [
        "[FIRING critical] mem", "[FIRING warning] health", "[RESOLVED] health", "[RESOLVED] mem"]
    con = sqlite3.connect(data_dir + "/meta.db")
    samples = con.execute("SELECT ts, status, details FROM health_samples ORDER BY ts").fetchall()
    assert [status for _, status, _ in samples] == ["unhealthy"] * 3 + ["healthy"]
    assert json.loads(samples[0][2])["memory"]["status"] == "unhealthy"


def test_cooldown_suppresses_a_flapping_incident(make_app, receiver, data_dir):
    rules = only("  - {name: mem, kind: memory, cooldown_minutes: 10}\n")
    app, sidecar, clock = make_app(rules, alert_urls=[receiver.url])
    settings = sidecar.settings

    def step(limit):
        settings["memory_limit_bytes"] = limit
        clock.advance(minutes=1)
        return evaluate(sidecar)

    tiny, huge = 1024 * 1024, 10 ** 12
    step(tiny)  # fires: notified
    step(huge)  # resolved: notified
    assert step(tiny)["suppressed"]  # within 10 minutes of the resolution
    step(huge)
    step(tiny)
    assert len(receiver.requests) == 2
    for _ in range(6):
        step(tiny)  # still firing, still cooling down (resolved at minute 2)
    assert len(receiver.requests) == 2
    assert step(tiny)["fired"]  # minute 12: the cooldown is over and it still fires: told after all
    step(huge)
    assert [title.split(":")[0] for title in receiver.titles] == [
        "[FIRING warning] mem", "[RESOLVED] mem", "[FIRING warning] mem", "[RESOLVED] mem"]
    assert [row["state"] for row in alerts(data_dir, "mem")] == ["resolved", "suppressed", "resolved"]


def test_cold_start_and_budget_drop_events(make_app, receiver, data_dir):
    app, sidecar, clock = make_app(alert_urls=[receiver.url])
    meta = catalog.connect_meta(data_dir)
    retention_job.record_event(meta, format_ts(clock()), "sidecar.cold_start", "started with an empty data dir",
                               {"reason": "empty"})
    for n, dry_run in ((1, False), (2, False), (3, True)):
        retention_job.record_event(meta, format_ts(clock()), "retention.budget_drop",
                                   "dropped segment logs-{} inside its age to keep the disk budget".format(n),
                                   {"segment": "logs-{}".format(n), "dry_run": dry_run})
    meta.close()
    evaluate(sidecar)
    evaluate(sidecar)
    assert sorted(receiver.titles) == [
        "[WARNING] cold_start: started with an empty data dir",
        "[WARNING] retention_budget_drop: 2 segments dropped to keep the disk budget"]
    assert [row["key"] for row in alerts(data_dir, "retention_budget_drop")] == ["2", "3"]


def test_a_failed_backup_alerts_once(make_app, receiver, data_dir):
    app, sidecar, clock = make_app(alert_urls=[receiver.url])

    def store():  # as when boto3 rejects the configured endpoint or region
        raise ValueError("Invalid endpoint: r2.example.com")

    assert backup.run(data_dir, store, clock)["ok"] is False
    evaluate(sidecar)
    evaluate(sidecar)
    assert receiver.titles == [
        "[ERROR] backup_failed: backup to the bucket failed: ValueError: Invalid endpoint: r2.example.com"]
    [row] = alerts(data_dir, "backup_failed")
    assert row["state"] == "resolved"  # an event: fired and done; the next failure fires again


# -- delivery ----------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["status 500", "closed port"])
def test_a_failing_channel_is_retried_then_recorded_failed_without_slowing_ingest(make_app, data_dir, failure):
    failing = Receiver(status=500, delay=0.3)
    url = failing.url if failure == "status 500" else "json://127.0.0.1:{}/hook".format(free_port())
    try:
        app, sidecar, clock = make_app(only("  - {name: mem, kind: memory}\n"), alert_urls=[url],
                                       memory_limit_bytes=1024 * 1024, alert_retry_base_ms=200)
        client = app.test_client()
        sidecar.alerts.evaluate_once()
        started = time.perf_counter()
        for n in range(5):  # while delivery is failing and retrying
            post(client, [{"service": "api", "message": "still ingesting {}".format(n)}])
        assert time.perf_counter() - started < 1.0
        assert sidecar.alerts.delivery.pending()  # the retries had not finished meanwhile
        assert sidecar.alerts.delivery.flush(20)
    finally:
        failing.close()
    rows = deliveries(data_dir)
    assert [(row["attempt"], row["status"], row["final"]) for row in rows] == \
        [(1, "failed", 0), (2, "failed", 0), (3, "failed", 1)]
    assert len(failing.requests) == (3 if failure == "status 500" else 0)
    assert all(row["error"] for row in rows) and rows[0]["channel"] == redact_url(url)
    if failure == "status 500":
        assert "500" in rows[0]["error"]


def test_secrets_are_never_shown(make_app, receiver, data_dir, capsys):
    secret_url = "json://alice:pa55word-xyz@127.0.0.1:{}/hook/s3cret-path".format(receiver.port)
    closed = "json://bob:other-pa55@127.0.0.1:{}/t0ken-path".format(free_port())
    app, sidecar, clock = make_app(only("  - {name: mem, kind: memory}\n"), alert_urls=[secret_url, closed],
                                   memory_limit_bytes=1024 * 1024)
    client = app.test_client()
    evaluate(sidecar)
    [request] = receiver.requests
    assert request["path"] == "/hook/s3cret-path" and request["authorization"].startswith("Basic ")
    shown = json.dumps(deliveries(data_dir)) + json.dumps(alerts(data_dir))
    shown += client.get("/api/alerts", headers=ADMIN_AUTH).get_data(as_text=True)
    for table in ("alerts", "alert_deliveries"):  # what Datasette shows of meta.db
        response = client.get("/datasette/meta/{}.json?_shape=array".format(table), headers=ADMIN_AUTH)
        assert response.status_code == 200 and response.get_json()
        shown += response.get_data(as_text=True)
    shown += capsys.readouterr().out
    for secret in ("pa55word-xyz", "s3cret-path", "other-pa55", "t0ken-path", "alice", "bob"):
        assert secret not in shown
    assert {row["status"] for row in deliveries(data_dir) if row["final"]} == {"ok", "failed"}


def test_alerts_api_and_test_notification(make_app, receiver):
    app, sidecar, clock = make_app(only("  - {name: mem, kind: memory}\n"), alert_urls=[receiver.url],
                                   memory_limit_bytes=1024 * 1024)
    client = app.test_client()
    assert client.get("/api/alerts").status_code == 401
    assert client.post("/api/alerts/test", headers=AUTH).status_code == 401  # an ingest token never reads
    evaluate(sidecar)
    body = client.get("/api/alerts", headers=ADMIN_AUTH).get_json()
    assert [rule["name"] for rule in body["rules"]] == ["mem"]
    assert body["rules"][0]["channels"] == [redact_url(receiver.url)]
    [incident] = body["open"]
    assert incident["state"] == "firing" and incident["deliveries"][0]["status"] == "ok"
    response = client.post("/api/alerts/test", headers=ADMIN_AUTH)
    assert response.status_code == 202 and response.get_json()["channels"] == [redact_url(receiver.url)]
    assert sidecar.alerts.delivery.flush(10)
    assert receiver.titles[-1] == "[TEST] log sidecar alerts"


def test_without_channels_alerts_are_recorded_only(make_app, data_dir):
    app, sidecar, clock = make_app(only("  - {name: mem, kind: memory}\n"), memory_limit_bytes=1024 * 1024)
    evaluate(sidecar)
    assert [row["state"] for row in alerts(data_dir)] == ["firing"] and deliveries(data_dir) == []
    assert app.test_client().post("/api/alerts/test", headers=ADMIN_AUTH).status_code == 409


def test_one_evaluator_at_a_time_and_the_interval_is_shared(make_app, data_dir):
    app, sidecar, clock = make_app(only("  - {name: mem, kind: memory}\n"), alert_interval_s=30)
    with evaluation_lock(data_dir) as held:  # as another worker process evaluating
        assert held
        assert sidecar.alerts.run_if_due() is None
    assert sidecar.alerts.run_if_due() is not None
    other = AlertEngine(sidecar)  # a second process's engine: the interval is kept through meta.db
    assert other.run_if_due() is None
    clock.advance(seconds=30)
    assert other.run_if_due() is not None
