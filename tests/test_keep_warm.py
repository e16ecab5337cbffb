"""Keep-warm (scripts/keep_warm.py, `python -m sidecar keep-warm`) and POST /api/events/cold-start."""
import argparse
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from sidecar import keep_warm
from sidecar.__main__ import main as sidecar_main

from conftest import AUTH, ROOT, TOKEN, free_port

SCRIPT = os.path.join(ROOT, "scripts", "keep_warm.py")
UTC = timezone.utc


def args_for(*argv):
    parser = argparse.ArgumentParser()
    keep_warm.add_arguments(parser)
    args = parser.parse_args(list(argv))
    keep_warm.check_arguments(parser, args)
    return args


def events(data_dir, kind):
    con = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    rows = con.execute("SELECT id, ts, message, details FROM sidecar_events WHERE type = ? ORDER BY id",
                       (kind,)).fetchall()
    con.close()
    return [{"id": row[0], "ts": row[1], "message": row[2], "details": json.loads(row[3])} for row in rows]


# --- schedule: pure functions ---------------------------------------------------------------------

@pytest.mark.parametrize("failures, delay_s", [
    (1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 960), (7, 1920), (8, 3600), (9, 3600), (50, 3600),
])
def test_backoff_schedule(failures, delay_s):
    assert keep_warm.backoff_delay_s(failures) == delay_s


def test_backoff_needs_a_failure_and_honours_its_bounds():
    with pytest.raises(ValueError):
        keep_warm.backoff_delay_s(0)
    assert [keep_warm.backoff_delay_s(n, base_s=5, cap_s=15) for n in (1, 2, 3, 4)] == [5, 10, 15, 15]


def test_jittered_interval_stays_between_10_and_14_minutes():
    rng = random.Random(1)
    waits = [keep_warm.jittered_interval_s(rng, 10, 14) for _ in range(500)]
    assert 600 <= min(waits) and max(waits) <= 840 and max(waits) - min(waits) > 200


@pytest.mark.parametrize("window, tz, when, inside", [
    ("07:00-23:00", "UTC", "2026-01-10T06:59:59", False),
    ("07:00-23:00", "UTC", "2026-01-10T07:00:00", True),    # the start is inside
    ("07:00-23:00", "UTC", "2026-01-10T22:59:59", True),
    ("07:00-23:00", "UTC", "2026-01-10T23:00:00", False),   # the end is not
    ("22:00-06:00", "UTC", "2026-01-10T21:59:00", False),   # across midnight
    ("22:00-06:00", "UTC", "2026-01-10T22:00:00", True),
    ("22:00-06:00", "UTC", "2026-01-10T23:59:59", True),
    ("22:00-06:00", "UTC", "2026-01-11T00:00:00", True),
    ("22:00-06:00", "UTC", "2026-01-11T05:59:59", True),
    ("22:00-06:00", "UTC", "2026-01-11T06:00:00", False),
    ("18:00-24:00", "UTC", "2026-01-10T23:59:59", True),
    ("18:00-24:00", "UTC", "2026-01-11T00:00:00", False),
    # Paris is UTC+1 in winter, UTC+2 in summer
    ("07:00-23:00", "Europe/Paris", "2026-01-10T05:59:00", False),
    ("07:00-23:00", "Europe/Paris", "2026-01-10T06:00:00", True),
    ("07:00-23:00", "Europe/Paris", "2026-07-10T05:00:00", True),
    ("07:00-23:00", "Europe/Paris", "2026-07-10T21:00:00", False),
    ("22:00-06:00", "Europe/Paris", "2026-01-10T04:59:00", True),
    ("22:00-06:00", "Europe/Paris", "2026-01-10T05:00:00", False),
])
def test_active_hours(window, tz, when, inside):
    moment = datetime.fromisoformat(when).replace(tzinfo=UTC)
    assert keep_warm.ActiveHours.parse(window, tz).contains(moment) is inside


@pytest.mark.parametrize("text", ["07:00", "7-23", "07:00-07:00", "00:00-24:00", "25:00-26:00", "07:60-08:00",
                                  "24:00-06:00"])
def test_bad_active_hours(text):
    with pytest.raises(ValueError):
        keep_warm.ActiveHours.parse(text)


@pytest.mark.parametrize("window, tz, when, opens", [
    ("07:00-23:00", "UTC", "2026-01-10T03:00:00", "2026-01-10T07:00:00"),
    ("07:00-23:00", "UTC", "2026-01-10T23:30:00", "2026-01-11T07:00:00"),
    ("07:00-23:00", "UTC", "2026-01-10T12:00:00", "2026-01-10T12:00:00"),  # open now
    ("22:00-06:00", "UTC", "2026-01-10T06:00:00", "2026-01-10T22:00:00"),
    ("07:00-23:00", "Europe/Paris", "2026-01-10T23:00:00", "2026-01-11T06:00:00"),
    ("07:00-23:00", "Europe/Paris", "2026-03-28T23:00:00", "2026-03-29T05:00:00"),  # the night clocks go forward
])
def test_next_open(window, tz, when, opens):
    moment = datetime.fromisoformat(when).replace(tzinfo=UTC)
    assert keep_warm.ActiveHours.parse(window, tz).next_open(moment) == datetime.fromisoformat(opens).replace(tzinfo=UTC)


def test_a_cold_start_right_after_the_window_opens_is_expected():
    window = keep_warm.ActiveHours.parse("07:00-23:00")
    day = datetime(2026, 1, 10, tzinfo=UTC)
    assert keep_warm.expected_cold_start(window, day.replace(hour=7, minute=5))
    assert keep_warm.expected_cold_start(window, day.replace(hour=7, minute=14, second=59))
    assert not keep_warm.expected_cold_start(window, day.replace(hour=7, minute=15))
    assert not keep_warm.expected_cold_start(None, day.replace(hour=7, minute=5))


# --- --plan ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("window, services, hours, fits, left, services_that_fit, runs_out", [
    (None, 1, 744.0, True, 6.0, 1, None),                         # 24 h x 31 days
    (None, 2, 1488.0, False, -738.0, 1, 16),                      # 750 / 48 h a day: out on day 16
    ("07:00-23:00", 1, 503.75, True, 246.25, 1, None),            # (16 h + 15 min) x 31
    ("07:00-23:00", 2, 1007.5, False, -257.5, 1, 24),
    ("08:00-18:00", 2, 635.5, True, 114.5, 2, None),              # (10 h + 15 min) x 31 = 317.75 each
    ("22:00-06:00", 1, 255.75, True, 494.25, 2, None),
])
def test_plan(window, services, hours, fits, left, services_that_fit, runs_out):
    result = keep_warm.plan(keep_warm.ActiveHours.parse(window) if window else None, services)
    assert result["hours_total"] == pytest.approx(hours)
    assert result["fits"] is fits and result["hours_left"] == pytest.approx(left)
    assert result["services_that_fit"] == services_that_fit and result["runs_out_on_day"] == runs_out


def test_plan_command(capsys):
    assert sidecar_main(["keep-warm", "--plan", "--active-hours", "07:00-23:00", "--timezone", "Europe/Paris"]) == 0
    out = capsys.readouterr().out
    assert "awake per day: 16.25 h" in out and "503.8 instance hours" in out and "of the 750 free hours" in out
    assert "fits, 246.2 h left" in out and "fit in 750 h: 1" in out
    assert sidecar_main(["keep-warm", "--plan", "--services", "2"]) == 0
    out = capsys.readouterr().out
    assert "1488.0 h a month: does NOT fit: the free hours run out on day 16" in out
    assert sidecar_main(["keep-warm", "--plan", "--interval-max", "20"]) == 0
    assert "let the instance sleep" in capsys.readouterr().out


# --- the loop, with a fake clock ------------------------------------------------------------------

class FakeResponse:
    def __init__(self, status, body):
        self.status_code, self._body = status, body

    def json(self):
        if self._body is None:
            raise ValueError("not JSON")
        return self._body


class FakeSession:
    """Answers GETs from a script of outcomes: 'ok', 'down' (connection refused), 'proxy' (a 502 page)."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.gets = []

    def get(self, url, timeout, headers):
        self.gets.append(url)
        outcome = self.outcomes.pop(0)
        if outcome == "down":
            raise requests.ConnectionError("refused")
        if outcome == "proxy":
            return FakeResponse(502, None)
        return FakeResponse(200, {"status": "healthy"})


class FakeClock:
    def __init__(self, start):
        self.now = start
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)


def test_loop_jitters_backs_off_and_recovers():
    clock = FakeClock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))
    session = FakeSession(["ok", "down", "proxy", "down", "ok", "ok"])
    out = io.StringIO()
    pings = keep_warm.run_loop(args_for("--url", "https://logs.example.com/"), session, out, clock=clock,
                               sleep=clock.sleep, rng=random.Random(3), max_pings=6)
    assert pings == 6 and session.gets == ["https://logs.example.com/api/health"] * 6
    jitter_1, backoff_1, backoff_2, backoff_3, jitter_2 = clock.sleeps
    assert 600 <= jitter_1 <= 840 and 600 <= jitter_2 <= 840
    assert (backoff_1, backoff_2, backoff_3) == (30, 60, 120)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and "status=200 health=healthy latency_ms=" in lines[0] and "next_in_s=" in lines[0]
    assert 'error="connection failed"' in lines[1] and "failures=1 retry_in_s=30" in lines[1]
    assert 'error="HTTP 502"' in lines[2] and "failures=2 retry_in_s=60" in lines[2]
    assert "failures=3 retry_in_s=120" in lines[3] and "status=200" in lines[4]


def test_loop_waits_for_the_active_hours():
    clock = FakeClock(datetime(2026, 1, 10, 22, 50, tzinfo=UTC))
    session = FakeSession(["ok"] * 3)
    out = io.StringIO()
    keep_warm.run_loop(args_for("--url", "https://logs.example.com", "--active-hours", "07:00-23:00",
                                "--interval-min", "12", "--interval-max", "12"),
                       session, out, clock=clock, sleep=clock.sleep, rng=random.Random(1), max_pings=3)
    # 22:50 ping, then 12 min later it is 23:02: sleep until 07:00, ping, 07:12 ping
    assert clock.sleeps == [720, 7 * 3600 + 58 * 60, 720]
    lines = out.getvalue().splitlines()
    assert "outside the active hours 07:00-23:00 UTC: next ping at 2026-01-11T07:00:00Z" in lines[1]
    assert lines[2].startswith("2026-01-11T07:00:00Z ping ")


# --- against live servers -------------------------------------------------------------------------

def run_script(*argv, env=None, script=SCRIPT, cwd=None):
    environment = dict(os.environ)
    environment.pop(keep_warm.TOKEN_ENV, None)
    environment.update(env or {})
    return subprocess.run([sys.executable, script] + list(argv), capture_output=True, text=True, timeout=60,
                          env=environment, cwd=cwd or ROOT)


def test_once_against_a_live_sidecar(live_server):
    server = live_server()
    done = run_script("--url", server.url, "--once")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert " ping {}/api/health status=200 health=healthy latency_ms=".format(server.url) in line
    assert "cold_start" not in line
    # the same through `python -m sidecar keep-warm`
    module = subprocess.run([sys.executable, "-m", "sidecar", "keep-warm", "--url", server.url + "/api/health",
                             "--once"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert module.returncode == 0 and "status=200" in module.stdout


def test_once_fails_with_exit_1_and_skips_outside_the_active_hours():
    url = "http://127.0.0.1:{}".format(free_port())
    done = run_script("--url", url, "--once", "--timeout-s", "5")
    assert done.returncode == 1 and 'error="connection failed"' in done.stdout
    now = datetime.now(UTC)
    later = "{:%H:%M}-{:%H:%M}".format(now + timedelta(hours=2), now + timedelta(hours=3))
    done = run_script("--url", url, "--once", "--active-hours", later)
    assert done.returncode == 0 and "skip: outside the active hours" in done.stdout


class SlowHealth(BaseHTTPRequestHandler):
    delay_s = 0.4

    def do_GET(self):
        time.sleep(self.delay_s)
        body = b'{"status": "healthy"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:{}".format(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_a_slow_answer_is_recorded_as_a_cold_start(live_server, slow_server, data_dir, tmp_path):
    sidecar = live_server()
    # The standalone script, copied out of the repository: it must need nothing of the project.
    copy = str(tmp_path / "keep_warm.py")
    shutil.copy(SCRIPT, copy)
    done = run_script("--url", slow_server, "--once", "--slow-ms", "150", "--report-url", sidecar.url,
                      env={"KEEP_WARM_TOKEN": TOKEN}, script=copy, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "cold_start=yes (slower than 150 ms): reported (event " in done.stdout
    [event] = events(data_dir, "sidecar.cold_start")
    assert event["details"]["latency_ms"] >= 400 and event["details"]["threshold_ms"] == 150
    assert event["details"]["source"] == "keep-warm" and event["details"]["expected"] is False
    assert event["details"]["seconds_since_boot"] >= 0
    assert event["message"].startswith("cold start: /api/health answered in ")
    # A second pinger meeting the same wake-up: answered, not recorded again.
    again = run_script("--url", slow_server, "--once", "--slow-ms", "150", "--report-url", sidecar.url,
                       "--token", TOKEN)
    assert "already reported (event {})".format(event["id"]) in again.stdout
    assert len(events(data_dir, "sidecar.cold_start")) == 1
    # Without a token it says so, and still exits 0.
    untold = run_script("--url", slow_server, "--once", "--slow-ms", "150")
    assert untold.returncode == 0 and "not reported: no token" in untold.stdout


# --- POST /api/events/cold-start ------------------------------------------------------------------

def test_cold_start_endpoint(client, app, data_dir):
    url = "/api/events/cold-start"
    assert client.post(url, json={"latency_ms": 9000}).status_code == 401
    assert client.post(url, json={"latency_ms": 9000}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for body in ({}, {"latency_ms": "slow"}, {"latency_ms": -1}, {"latency_ms": True}, [1],
                 {"latency_ms": 1, "source": ""}, {"latency_ms": 1, "expected": "yes"},
                 {"latency_ms": 1, "health_status": 42}):
        response = client.post(url, json=body, headers=AUTH)
        assert response.status_code == 400, body
    assert client.post(url, data=b"{" * 5000, headers=AUTH).status_code == 413
    response = client.post(url, json={"latency_ms": 8123.4, "threshold_ms": 5000, "expected": True}, headers=AUTH)
    assert response.status_code == 201 and response.json["recorded"] is True
    first = response.json["event_id"]
    admin = open(os.path.join(data_dir, "dev-admin-token")).read().strip()
    response = client.post(url, json={"latency_ms": 7000}, headers={"Authorization": "Bearer " + admin})
    assert response.status_code == 200 and response.json == {
        "recorded": False, "event_id": first, "reason": "a cold start was recorded less than 120 s ago"}
    [event] = events(data_dir, "sidecar.cold_start")
    assert event["details"]["latency_ms"] == 8123.4 and event["details"]["expected"] is True
    assert "answered in 8123 ms (over 5000 ms)" in event["message"] and "expected" in event["message"]
