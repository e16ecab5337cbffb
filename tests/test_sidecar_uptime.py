"""Uptime monitors: the file, the checks against real servers on loopback (HTTP up, down, slow,
keyword; HTTPS with a self-signed certificate; TCP open and closed), incidents and uptime % with an
injected clock, maintenance windows, the one-process runner, and the alerts they feed."""
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest

from ingest import catalog
from ingest.entries import format_ts
from sidecar import create_app, uptime, uptime_checks, uptime_report
from sidecar.settings import SettingsError
from sidecar.uptime import UptimeRunner
from sidecar.uptime_checks import Outcome
from sidecar.uptime_config import load_monitors, parse

from conftest import TOKEN, free_port
from uptime_helpers import NOW, Clock, Listener, Site, self_signed, tls_context

ADMIN = "admin-token-0123456789abcdef"


@pytest.fixture
def site():
    server = Site()
    yield server
    server.close()


@pytest.fixture
def make_app(data_dir):
    """make_app(**settings) -> (app, sidecar, clock): no monitors file, so no runner thread; tests
    give the sidecar monitors with use_monitors()."""
    apps = []

    def make(clock=None, **settings):
        clock = clock or Clock()
        config = {"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN],
                  "alert_interval_s": 3600, "clock": clock}
        config.update(settings)
        app = create_app(config)
        apps.append(app)
        return app, app.extensions["sidecar"], clock

    yield make
    for app in apps:
        app.extensions["sidecar"].close()


def use_monitors(sidecar, tmp_path, text, name="monitors.yaml", environ=None):
    path = tmp_path / name
    path.write_text(text)
    config = load_monitors({"monitors_file": str(path)}, environ=environ or {})
    sidecar.uptime = UptimeRunner(sidecar, config)
    return sidecar.uptime


def rows(data_dir, sql, args=()):
    con = sqlite3.connect(data_dir + "/meta.db")
    con.row_factory = sqlite3.Row
    found = [dict(row) for row in con.execute(sql, args)]
    con.close()
    return found


def load_text(tmp_path, text, name="monitors.yaml", environ=None):
    path = tmp_path / name
    path.write_text(text)
    return load_monitors({"monitors_file": str(path)}, environ=environ or {})


# -- the file ---------------------------------------------------------------------------------

YAML = """
defaults:
  interval_s: 30
  timeout_ms: 2000
maintenance:
  - name: nightly backup
    repeat: daily
    start: "02:00"
    end: "02:30"
monitors:
  - name: shop
    description: The web shop
    url: https://shop.example.com/health?key=${SHOP_KEY}
    method: HEAD
    expected_status: [200, "3xx", "418-420"]
    keyword: ok
    retries: 3
    retry_interval_s: 10
    headers:
      Authorization: Bearer ${SHOP_KEY}
  - name: db
    kind: tcp
    host: db.internal
    port: 5432
    maintenance:
      - {start: "2026-05-01T02:00:00Z", end: "2026-05-01T04:00:00+01:00"}
      - {repeat: weekly, days: [sat, sun], start: "23:30", end: "00:30"}
"""

TOML = """
[defaults]
interval_s = 30
timeout_ms = 2000

[[maintenance]]
name = "nightly backup"
repeat = "daily"
start = "02:00"
end = "02:30"

[[monitors]]
name = "shop"
description = "The web shop"
url = "https://shop.example.com/health?key=${SHOP_KEY}"
method = "HEAD"
expected_status = [200, "3xx", "418-420"]
keyword = "ok"
retries = 3
retry_interval_s = 10

[monitors.headers]
Authorization = "Bearer ${SHOP_KEY}"

[[monitors]]
name = "db"
kind = "tcp"
host = "db.internal"
port = 5432

[[monitors.maintenance]]
start = 2026-05-01T02:00:00Z
end = 2026-05-01T04:00:00+01:00

[[monitors.maintenance]]
repeat = "weekly"
days = ["sat", "sun"]
start = "23:30"
end = "00:30"
"""


@pytest.mark.parametrize("name, text", [("m.yaml", YAML), ("m.toml", TOML)])
def test_yaml_and_toml_files_say_the_same(tmp_path, name, text):
    config = load_text(tmp_path, text, name, environ={"SHOP_KEY": "s3cret-key"})
    shop, db = config.monitors
    assert (shop.kind, shop.method, shop.interval_s, shop.timeout_ms, shop.retries, shop.retry_interval_s) == (
        "http", "HEAD", 30, 2000, 3, 10)
    assert shop.url.endswith("key=s3cret-key") and shop.headers == (("Authorization", "Bearer s3cret-key"),)
    assert shop.expected_status == ((200, 200), (300, 399), (418, 420)) and shop.expected_text == "200, 3xx, 418-420"
    assert shop.status_expected(302) and shop.status_expected(419) and not shop.status_expected(404)
    assert "s3cret" not in shop.target() and shop.target().startswith("https://shop.example.com/…")
    assert (db.kind, db.host, db.port, db.retries, db.retry_interval_s) == ("tcp", "db.internal", 5432, 2, 30)
    assert db.target() == "db.internal:5432"
    assert [window.describe() for window in config.windows(db)] == [
        "daily 02:00-02:30 UTC", "once", "weekly on sat,sun 23:30-00:30 UTC"]
    once = config.windows(db)[1]
    assert once.start == datetime(2026, 5, 1, 2, tzinfo=timezone.utc) and once.end == datetime(
        2026, 5, 1, 3, tzinfo=timezone.utc)


def test_defaults_of_a_bare_monitor(tmp_path):
    [monitor] = load_text(tmp_path, "monitors:\n  - name: a\n    url: http://127.0.0.1/\n").monitors
    assert (monitor.interval_s, monitor.timeout_ms, monitor.retries, monitor.retry_interval_s, monitor.method,
            monitor.expected_text, monitor.keyword, monitor.follow_redirects, monitor.verify_tls) == (
        60, 10000, 2, 60, "GET", "2xx", None, True, True)
    assert load_monitors({"monitors_file": ""}).monitors == ()


@pytest.mark.parametrize("text, message", [
    ("monitors:\n  - name: a\n    url: http://x.example/\n    timeout_ms: fast\n",
     r"monitor 1 \('a', line 2\): key 'timeout_ms' \(line 4\): must be a whole number"),
    ("monitors:\n  - name: a\n    url: http://x.example/\n  - name: b\n    url: ftp://x.example/\n",
     r"monitor 2 \('b', line 4\): key 'url' \(line 5\): must be an http:// or https:// URL"),
    ("monitors:\n  - name: a\n    url: http://x.example/\n    expected_status: [200, 7xx]\n",
     r"key 'expected_status' \(line 4\): '7xx' is not a status code"),
    ("monitors:\n  - name: a\n    url: http://x.example/\n    treshold: 1\n",
     r"key 'treshold' \(line 4\): not a key of a http monitor"),
    ("monitors:\n  - name: a\n    kind: tcp\n    host: db\n", r"monitor 1 \('a', line 2\): a tcp monitor needs port"),
    ("monitors:\n  - name: a\n    host: db\n    port: 70000\n", r"key 'port' \(line 4\): must be a whole number from 1"),
    ("monitors:\n  - url: http://x.example/\n", r"monitor 1 \(line 2\): name is required"),
    ("monitors:\n  - name: a\n    url: http://x.example/\n  - name: a\n    url: http://y.example/\n",
     r"monitor 2 .*key 'name' \(line 4\): a second monitor with this name"),
    ("monitor:\n  - name: a\n", r"key 'monitor' \(line 1\): unknown top-level key"),
    ("defaults:\n  retries: 0\n", r"defaults: key 'retries' \(line 2\): must be a whole number from 1 to 100"),
    ("maintenance:\n  - start: '2026-05-01T02:00:00'\n    end: '2026-05-01T03:00:00Z'\n",
     r"maintenance window 1 \(line 2\): key 'start' \(line 2\): must have a time zone offset"),
    ("maintenance:\n  - {repeat: weekly, start: '01:00', end: '02:00'}\n",
     r"maintenance window 1 .*key 'days'.*a weekly window takes days"),
    ("monitors:\n  - name: a\n    url: http://x.example/\n    maintenance:\n      - {repeat: daily, start: '25:00', "
     "end: '02:00'}\n", r"monitor 1 \('a', line 2\): maintenance window 1 \(line 5\): key 'start'.*HH:MM"),
    ("monitors: [\n", r"not valid YAML at line"),
])
def test_bad_yaml_names_the_monitor_key_and_line(tmp_path, text, message):
    with pytest.raises(SettingsError, match=message):
        load_text(tmp_path, text)


def test_bad_toml_names_the_line_too(tmp_path):
    text = '[[monitors]]\nname = "a"\nurl = "http://x.example/"\n\n[[monitors]]\nname = "b"\nhost = "db"\nport = 0\n'
    with pytest.raises(SettingsError, match=r"monitor 2 \('b', line 5\): key 'port' \(line 8\)"):
        load_text(tmp_path, text, "m.toml")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_text(tmp_path, "[[monitors]\n", "m.toml")
    with pytest.raises(SettingsError, match="must end in .yaml, .yml or .toml"):
        load_text(tmp_path, "", "m.json")


def test_errors_never_show_a_secret(tmp_path):
    text = "monitors:\n  - name: a\n    url: ftp://user:pa55word@x.example/${TOKEN_VAR}\n"
    with pytest.raises(SettingsError) as failure:
        load_text(tmp_path, text, environ={"TOKEN_VAR": "tok-123456"})
    assert "pa55word" not in str(failure.value) and "tok-123456" not in str(failure.value)
    with pytest.raises(SettingsError, match=r"uses \$\{MISSING\}, which is not set"):
        load_text(tmp_path, "monitors:\n  - name: a\n    url: http://x.example/${MISSING}\n")


def test_a_bad_file_stops_the_start(data_dir, tmp_path):
    path = tmp_path / "monitors.yaml"
    path.write_text("monitors:\n  - name: a\n    url: http://x.example/\n    interval_s: -1\n")
    with pytest.raises(SettingsError, match=r"SIDECAR_MONITORS_FILE .*key 'interval_s' \(line 4\)"):
        create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN], "monitors_file": str(path)})


def test_maintenance_windows_once_daily_weekly():
    config = parse({"maintenance": [
        {"name": "once", "start": "2026-03-01T10:00:00Z", "end": "2026-03-01T11:00:00Z"},
        {"name": "nightly", "repeat": "daily", "start": "23:30", "end": "00:30"},
        {"name": "sunday", "repeat": "weekly", "days": ["sun"], "start": "03:00", "end": "04:00"},
        {"name": "yaml-sexagesimal", "repeat": "daily", "start": 5 * 60, "end": 5 * 60 + 15}]})
    once, nightly, sunday, early = config.maintenance
    at = lambda *args: datetime(*args, tzinfo=timezone.utc)  # noqa: E731  (2026-03-01 is a Sunday)
    assert once.active(at(2026, 3, 1, 10)) and not once.active(at(2026, 3, 1, 11))
    assert once.occurrence(at(2026, 3, 1, 11)) is None
    assert nightly.active(at(2026, 3, 1, 23, 45)) and nightly.active(at(2026, 3, 2, 0, 15))
    assert not nightly.active(at(2026, 3, 2, 0, 30))
    assert nightly.occurrence(at(2026, 3, 2, 12)) == (at(2026, 3, 2, 23, 30), at(2026, 3, 3, 0, 30))
    assert sunday.active(at(2026, 3, 1, 3, 30)) and not sunday.active(at(2026, 3, 2, 3, 30))
    assert sunday.occurrence(at(2026, 3, 2, 3, 30)) == (at(2026, 3, 8, 3), at(2026, 3, 8, 4))
    assert early.describe() == "daily 05:00-05:15 UTC"


# -- checks against real servers ------------------------------------------------------------------

def monitor(**fields):
    base = {"name": "m", "timeout_ms": 2000}
    base.update(fields)
    return parse({"monitors": [base]}).monitors[0]


def test_http_checks(site):
    up = uptime_checks.check(monitor(url=site.url("/ok"), keyword="service ok"))
    assert up.ok and up.http_status == 200 and 0 < up.response_ms < 2000 and up.error is None
    down = uptime_checks.check(monitor(url=site.url("/fail")))
    assert (down.ok, down.http_status, down.error) == (False, 500, "HTTP 500, expected 2xx")
    assert uptime_checks.check(monitor(url=site.url("/fail"), expected_status="500-503")).ok
    missing = uptime_checks.check(monitor(url=site.url("/ok"), keyword="checkout"))
    assert (missing.ok, missing.http_status, missing.error) == (False, 200, "keyword not found in the response")
    site.slow_s = 0.6
    slow = uptime_checks.check(monitor(url=site.url("/slow"), timeout_ms=200))
    assert (slow.ok, slow.error) == (False, "no answer within 200 ms")
    assert uptime_checks.check(monitor(url=site.url("/redirect"), keyword="service ok")).ok
    moved = uptime_checks.check(monitor(url=site.url("/redirect"), follow_redirects=False))
    assert (moved.ok, moved.http_status) == (False, 302)
    assert uptime_checks.check(monitor(url=site.url("/ok"), method="HEAD")).ok


def test_http_headers_are_sent_and_refused_connections_reported(site):
    assert uptime_checks.check(monitor(url=site.url("/ok?k=1"), headers={"Authorization": "Bearer t0k"})).ok
    assert site.requests[-1]["headers"]["Authorization"] == "Bearer t0k"
    assert site.requests[-1]["headers"]["User-Agent"] == uptime_checks.USER_AGENT
    closed = uptime_checks.check(monitor(url="http://user:pw@127.0.0.1:{}/x?token=t0k".format(free_port())))
    assert (closed.ok, closed.error) == (False, "connection refused")


def test_tcp_checks():
    listener = Listener()
    try:
        up = uptime_checks.check(monitor(host="127.0.0.1", port=listener.port))
        assert up.ok and up.response_ms is not None
    finally:
        listener.close()
    down = uptime_checks.check(monitor(host="127.0.0.1", port=free_port()))
    assert (down.ok, down.error) == (False, "connection refused")


def test_certificate_days_from_a_file_and_a_live_server(tmp_path):
    cert, key, not_after, der = self_signed(tmp_path, days=30)
    assert uptime_checks.not_after(der) == not_after
    server = Site(tls_context(cert, key))
    try:
        assert uptime_checks.fetch_not_after("127.0.0.1", server.port, 2) == not_after
        strict = uptime_checks.check(monitor(url=server.url("/ok")))
        assert (strict.ok, strict.error) == (False, "TLS certificate not valid (verification failed)")
        assert uptime_checks.check(monitor(url=server.url("/ok"), verify_tls=False)).ok
    finally:
        server.close()


# -- results, incidents, uptime % (injected clock) ------------------------------------------------

TOGGLE = """
monitors:
  - name: web
    url: {url}
    retries: 2
    timeout_ms: 2000
"""


def test_down_after_retries_up_at_first_success(make_app, site, tmp_path, data_dir):
    _, sidecar, clock = make_app()
    runner = use_monitors(sidecar, tmp_path, TOGGLE.format(url=site.url("/toggle")))
    assert [row["status"] for row in runner.check_once()] == ["up"]
    site.code = 503
    clock.advance(seconds=60)
    first = runner.check_once()[0]
    assert (first["status"], first["transition"], first["http_status"]) == ("down", None, 503)
    assert rows(data_dir, "SELECT * FROM uptime_incidents") == []
    clock.advance(seconds=60)
    assert runner.check_once()[0]["transition"] == "down"
    clock.advance(seconds=60)
    assert runner.check_once()[0]["transition"] is None  # still down: one incident
    [incident] = rows(data_dir, "SELECT * FROM uptime_incidents")
    assert incident["started_at"] == first["ts"] and incident["ended_at"] is None
    assert incident["cause"] == "HTTP 503, expected 2xx"
    # A process that takes over carries on with the same incident.
    runner = use_monitors(sidecar, tmp_path, TOGGLE.format(url=site.url("/toggle")))
    site.code = 200
    clock.advance(seconds=60)
    assert runner.check_once()[0]["transition"] == "up"
    [incident] = rows(data_dir, "SELECT * FROM uptime_incidents")
    assert incident["ended_at"] == format_ts(clock())
    statuses = [row["status"] for row in rows(data_dir, "SELECT status FROM uptime_results ORDER BY ts")]
    assert statuses == ["up", "down", "down", "down", "up"]
    # One failure short of retries, then success: no incident.
    site.code = 500
    clock.advance(seconds=60)
    runner.check_once()
    site.code = 200
    clock.advance(seconds=60)
    runner.check_once()
    assert len(rows(data_dir, "SELECT * FROM uptime_incidents")) == 1


def test_removed_monitors_incidents_are_ended(make_app, tmp_path, data_dir):
    _, sidecar, clock = make_app()
    runner = use_monitors(sidecar, tmp_path, "monitors:\n  - {name: gone, host: 127.0.0.1, port: 9, retries: 1}\n")
    runner.record(catalog.connect_meta(data_dir), runner.monitors["gone"], clock(), Outcome(False, error="x"))
    runner = use_monitors(sidecar, tmp_path, "monitors:\n  - {name: other, host: 127.0.0.1, port: 9}\n")
    runner.reconcile(catalog.connect_meta(data_dir))
    [incident] = rows(data_dir, "SELECT * FROM uptime_incidents")
    assert incident["monitor"] == "gone" and incident["ended_at"] == format_ts(clock())


def feed(runner, meta, name, start, statuses, step=timedelta(minutes=1)):
    """Record one result per status ('u' up, 'd' down) every `step` from `start`."""
    moment = start
    for status in statuses:
        runner.record(meta, runner.monitors[name], moment,
                      Outcome(status == "u", 10.0, 200 if status == "u" else 500, None if status == "u" else "x"))
        moment += step
    return moment


def brute_force(data_dir, name, since, now):
    found = rows(data_dir, "SELECT status FROM uptime_results WHERE monitor = ? AND ts >= ? AND ts <= ?",
                 (name, format_ts(since), format_ts(now)))
    up = sum(row["status"] == "up" for row in found)
    down = sum(row["status"] == "down" for row in found)
    return round(100.0 * up / (up + down), 3) if up + down else None


def test_uptime_percent_at_window_boundaries(make_app, tmp_path, data_dir):
    _, sidecar, clock = make_app()
    runner = use_monitors(sidecar, tmp_path, "monitors:\n  - {name: api, host: 127.0.0.1, port: 9, retries: 1}\n")
    meta = catalog.connect_meta(data_dir)
    now = datetime(2026, 3, 1, 12, 17, 30, tzinfo=timezone.utc)
    since = now - timedelta(hours=24)
    # Right at the 24 h boundary (counted), 1 ms before it (not), across whole hours, in the hour under way.
    runner.record(meta, runner.monitors["api"], since - timedelta(milliseconds=1), Outcome(False, error="x"))
    runner.record(meta, runner.monitors["api"], since, Outcome(False, error="x"))
    feed(runner, meta, "api", since + timedelta(minutes=5), "uuudu" * 40, step=timedelta(minutes=7))
    feed(runner, meta, "api", now - timedelta(minutes=15), "ud" * 7 + "u")  # up to now, inclusive
    runner.record(meta, runner.monitors["api"], now + timedelta(seconds=1), Outcome(False, error="later"))
    report = uptime_report.uptime(meta, now)["api"]
    assert report["24h"]["percent"] == brute_force(data_dir, "api", since, now)
    assert report["24h"]["down"] == 1 + 40 + 7 and report["24h"]["up"] == 160 + 8
    assert report["7d"]["percent"] == brute_force(data_dir, "api", now - timedelta(days=7), now)
    assert report["7d"]["down"] == 1 + 1 + 40 + 7
    # On an hour boundary exactly, the whole-hour rollups alone answer for the middle.
    on_the_hour = datetime(2026, 3, 1, 11, 0, tzinfo=timezone.utc)
    assert uptime_report.uptime(meta, on_the_hour)["api"]["24h"]["percent"] == brute_force(
        data_dir, "api", on_the_hour - timedelta(hours=24), on_the_hour)
    meta.close()


def test_maintenance_is_recorded_and_not_downtime(make_app, site, tmp_path, data_dir):
    _, sidecar, clock = make_app()
    text = """
maintenance:
  - {{name: deploy, start: "2026-03-01T12:10:00Z", end: "2026-03-01T12:20:00Z"}}
monitors:
  - {{name: web, url: "{url}", retries: 1, timeout_ms: 2000}}
""".format(url=site.url("/toggle"))
    runner = use_monitors(sidecar, tmp_path, text)
    runner.check_once()                       # 12:00:30 up
    site.code = 500
    clock.advance(minutes=10)                 # 12:10:30 inside the window: maintenance, no incident
    assert runner.check_once()[0]["status"] == "maintenance"
    clock.advance(minutes=5)
    assert runner.check_once()[0]["transition"] is None
    assert rows(data_dir, "SELECT * FROM uptime_incidents") == []
    clock.advance(minutes=5)                  # 12:20:30 the window is over: down at once (retries 1)
    assert runner.check_once()[0]["transition"] == "down"
    site.code = 200
    clock.advance(minutes=1)
    runner.check_once()
    figures = uptime_report.uptime(catalog.connect_meta(data_dir), clock())["web"]["24h"]
    assert (figures["up"], figures["down"], figures["maintenance"], figures["percent"]) == (2, 1, 2, 66.667)
    result = rows(data_dir, "SELECT * FROM uptime_results WHERE status = 'maintenance' LIMIT 1")[0]
    assert result["http_status"] == 500 and result["error"] == "HTTP 500, expected 2xx"


def test_https_monitor_records_certificate_days(make_app, tmp_path, data_dir):
    cert, key, not_after, _der = self_signed(tmp_path, days=30)
    server = Site(tls_context(cert, key))
    try:
        clock = Clock(datetime.now(timezone.utc))
        _, sidecar, _ = make_app(clock=clock)
        runner = use_monitors(sidecar, tmp_path, "monitors:\n  - {{name: tls, url: '{}', verify_tls: false}}\n"
                              .format(server.url("/ok")))
        [result] = runner.check_once()
        assert result["status"] == "up" and 29.9 < result["cert_days_left"] <= 30
        assert result["cert_days_left"] == uptime_checks.days_left(not_after, clock())
        clock.advance(days=20)
        meta = catalog.connect_meta(data_dir)
        assert 9.9 < uptime.latest_cert_days(meta, "tls", clock()) <= 10
        meta.close()
    finally:
        server.close()


def test_prune_forgets_old_results(make_app, tmp_path, data_dir):
    _, sidecar, clock = make_app()
    runner = use_monitors(sidecar, tmp_path, "monitors:\n  - {name: api, host: 127.0.0.1, port: 9, retries: 1}\n")
    meta = catalog.connect_meta(data_dir)
    feed(runner, meta, "api", clock() - timedelta(days=100), "d")
    feed(runner, meta, "api", clock() - timedelta(days=99), "u")
    feed(runner, meta, "api", clock() - timedelta(days=1), "uu")
    assert uptime.prune(meta, clock(), 90) == 2
    assert rows(data_dir, "SELECT count(*) AS n FROM uptime_results")[0]["n"] == 2
    assert rows(data_dir, "SELECT count(*) AS n FROM uptime_incidents")[0]["n"] == 0
    assert rows(data_dir, "SELECT sum(up) AS up FROM uptime_hourly")[0]["up"] == 2
    meta.close()


# -- the runner: one process, its own schedule ---------------------------------------------------

def test_runner_checks_in_one_process_and_another_takes_over(data_dir, tmp_path, site, monkeypatch):
    monkeypatch.setattr(uptime, "LOCK_POLL_S", 0.1)
    monkeypatch.setattr(uptime, "FIRST_CHECKS_SPREAD_S", 0.0)
    path = tmp_path / "monitors.toml"
    path.write_text('[[monitors]]\nname = "web"\nurl = "{}"\ninterval_s = 1\n\n[[monitors]]\nname = "tcp"\n'
                    'host = "127.0.0.1"\nport = {}\ninterval_s = 3600\n'.format(site.url("/ok"), free_port()))
    app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN], "monitors_file": str(path)})
    sidecar = app.extensions["sidecar"]
    other = UptimeRunner(sidecar).start()  # a second process's runner, in effect: its own lock file handle
    try:
        deadline = time.time() + 10
        while len(rows(data_dir, "SELECT * FROM uptime_results WHERE monitor = 'web'")) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert sidecar.uptime.holding != other.holding  # exactly one runs the monitors
        web = rows(data_dir, "SELECT ts, status FROM uptime_results WHERE monitor = 'web' ORDER BY ts")
        assert len(web) >= 2 and all(row["status"] == "up" for row in web)
        assert len(rows(data_dir, "SELECT * FROM uptime_results WHERE monitor = 'tcp'")) == 1  # hourly schedule
        holder, waiting = (sidecar.uptime, other) if sidecar.uptime.holding else (other, sidecar.uptime)
        holder.stop()
        deadline = time.time() + 10
        while not waiting.holding and time.time() < deadline:
            time.sleep(0.05)
        assert waiting.holding
    finally:
        other.stop()
        sidecar.close()


def test_no_monitors_no_thread(make_app):
    _, sidecar, _ = make_app()
    assert sidecar.uptime.monitors == {} and sidecar.uptime._thread is None


# -- alerts ---------------------------------------------------------------------------------------

def test_uptime_down_fires_once_and_resolves(make_app, site, tmp_path, data_dir):
    rules = tmp_path / "alerts.yaml"
    rules.write_text("include_defaults: false\nrules:\n  - {name: uptime_down, kind: uptime_down, "
                     "severity: critical}\n  - {name: certs, kind: cert_expiry, threshold_days: 14}\n")
    _, sidecar, clock = make_app(alerts_file=str(rules), alert_urls=[site.hook], alert_retry_base_ms=50,
                                 alert_delivery_timeout_s=5)
    runner = use_monitors(sidecar, tmp_path, TOGGLE.format(url=site.url("/toggle")))

    def evaluate():
        report = sidecar.alerts.evaluate_once()
        assert report["errors"] == {}
        assert sidecar.alerts.delivery.flush(20)
        return report

    runner.check_once()
    assert evaluate()["fired"] == []
    site.code = 500
    for _ in range(2):
        clock.advance(seconds=30)
        runner.check_once()
    fired = evaluate()["fired"]
    assert len(fired) == 1
    clock.advance(seconds=30)
    runner.check_once()
    assert evaluate()["fired"] == []  # still down: nothing more
    [alert] = rows(data_dir, "SELECT * FROM alerts WHERE rule = 'uptime_down'")
    assert alert["key"] == "web" and alert["state"] == "firing" and "HTTP 500, expected 2xx" in alert["summary"]
    site.code = 200
    clock.advance(seconds=30)
    runner.check_once()
    assert evaluate()["resolved"] == fired
    titles = [post["title"] for post in site.posts]
    assert len(titles) == 2 and titles[0].startswith("[FIRING critical] uptime_down: uptime monitor web is down")
    assert titles[1].startswith("[RESOLVED] uptime_down")


def test_cert_expiry_alert(make_app, tmp_path, data_dir):
    rules = tmp_path / "alerts.yaml"
    rules.write_text("include_defaults: false\nrules:\n  - {name: certs, kind: cert_expiry, threshold_days: 14}\n")
    _, sidecar, clock = make_app(alerts_file=str(rules))
    runner = use_monitors(sidecar, tmp_path, "monitors:\n  - {name: tls, url: 'https://127.0.0.1:9/'}\n")
    meta = catalog.connect_meta(data_dir)
    runner.record(meta, runner.monitors["tls"], clock(), Outcome(True, 5.0, 200), cert_days=20.0)
    assert sidecar.alerts.evaluate_once()["fired"] == []
    clock.advance(days=7)  # 13 days left now
    assert len(sidecar.alerts.evaluate_once()["fired"]) == 1
    [alert] = rows(data_dir, "SELECT * FROM alerts WHERE rule = 'certs'")
    assert alert["key"] == "tls" and "expires in 13.0 days" in alert["summary"]
    meta.close()
