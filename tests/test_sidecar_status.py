"""GET /status (HTML, parsed) and GET /api/status (JSON): banner, states, uptime %, the SVG chart,
incidents, maintenance windows; public by default, private with SIDECAR_STATUS_PAGE_PUBLIC=false."""
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest

from ingest import catalog
from sidecar import create_app, status_api
from sidecar.uptime import UptimeRunner
from sidecar.uptime_checks import Outcome
from sidecar.uptime_config import parse
from sidecar.uptime_report import overall

from conftest import TOKEN
from uptime_helpers import Clock

ADMIN = "admin-token-0123456789abcdef"
LOGIN = "/datasette/-/login"
MONITORS = {
    "maintenance": [{"name": "nightly", "repeat": "weekly", "days": ["wed"], "start": "02:00", "end": "02:30"}],
    "monitors": [
        {"name": "api", "description": "Public API <v2>", "url": "https://api.example.com/health?token=s3cret",
         "retries": 1, "headers": {"Authorization": "Bearer hdr-s3cret"}},
        {"name": "db", "host": "10.0.0.5", "port": 5432, "retries": 1},
        {"name": "worker", "host": "127.0.0.1", "port": 9, "retries": 1,
         "maintenance": [{"name": "upgrade", "start": "2026-03-01T11:00:00Z", "end": "2026-03-01T13:00:00Z"}]},
    ]}


def make(data_dir, **settings):
    clock = Clock(datetime(2026, 3, 1, 12, 0, 30, tzinfo=timezone.utc))
    app = create_app(dict({"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN],
                           "alert_interval_s": 3600, "clock": clock}, **settings))
    sidecar = app.extensions["sidecar"]
    sidecar.uptime = UptimeRunner(sidecar, parse(MONITORS))
    return app, sidecar, clock


def seed(sidecar, clock):
    """Every 5 minutes for 25 hours: api up but for 10 minutes (an incident), db down for the last 15
    minutes, worker failing in its maintenance window (the last hour)."""
    runner, meta = sidecar.uptime, catalog.connect_meta(sidecar.data_dir)
    now = clock()
    moment = now - timedelta(hours=25)
    while moment <= now:
        minute = int((now - moment).total_seconds() // 60)
        failing = 300 <= minute < 310
        runner.record(meta, runner.monitors["api"], moment,
                      Outcome(not failing, 20.0 + minute % 50, 500 if failing else 200,
                              "HTTP 500, expected 2xx" if failing else None),
                      cert_days=40.0)
        runner.record(meta, runner.monitors["db"], moment, Outcome(minute > 15, 2.0 if minute > 15 else None,
                                                                   error=None if minute > 15 else "connection refused"))
        runner.record(meta, runner.monitors["worker"], moment, Outcome(minute > 60, error=None if minute > 60
                                                                       else "connection refused"))
        moment += timedelta(minutes=5)
    meta.close()


@pytest.fixture
def seeded(data_dir):
    app, sidecar, clock = make(data_dir)
    seed(sidecar, clock)
    yield app, sidecar, clock
    sidecar.close()


def test_api_status_shape(seeded):
    app, _, _ = seeded
    response = app.test_client().get("/api/status")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-cache"
    body = response.get_json()
    assert set(body) == {"status", "banner", "generated_at", "monitors", "incidents", "maintenance"}
    assert (body["status"], body["banner"]) == ("partial_outage", "Partial outage")
    monitors = {monitor["name"]: monitor for monitor in body["monitors"]}
    assert [monitor["name"] for monitor in body["monitors"]] == ["api", "db", "worker"]
    api, db, worker = monitors["api"], monitors["db"], monitors["worker"]
    assert set(api) == {"name", "description", "kind", "state", "since", "interval_s", "last_check",
                        "uptime_percent", "checks", "cert_days_left", "down_cause", "response_times"}
    assert (api["state"], db["state"], worker["state"]) == ("up", "down", "maintenance")
    assert api["checks"]["24h"] == {"up": 287, "down": 2, "maintenance": 0}
    assert api["uptime_percent"]["24h"] == round(100 * 287 / 289, 3)
    assert api["uptime_percent"]["7d"] == round(100 * 299 / 301, 3)
    assert worker["uptime_percent"]["24h"] == 100.0 and worker["checks"]["24h"] == {
        "up": 289 - 13, "down": 0, "maintenance": 13}
    assert api["cert_days_left"] == 40.0 and db["cert_days_left"] is None
    assert db["since"] == "2026-03-01T11:45:30.000Z" and db["down_cause"] == "connection refused"
    assert api["last_check"]["ts"] == "2026-03-01T12:00:30.000Z"
    assert len(api["response_times"]) == 24 * 6 + 1 and api["response_times"][0] == {
        "t": "2026-02-28T12:00:00Z", "avg_ms": 57.5, "checks": 2, "down": 0}  # 60 and 55 ms
    [api_incident] = [i for i in body["incidents"] if i["monitor"] == "api"]
    assert api_incident["duration_s"] == 600 and api_incident["ended_at"] is not None
    assert api_incident["cause"] == "HTTP 500, expected 2xx" and not api_incident["ongoing"]
    [ongoing] = [i for i in body["incidents"] if i["ongoing"]]
    assert ongoing["monitor"] == "db"
    windows = {(w["name"], str(w["monitors"])): w for w in body["maintenance"]}
    assert windows[("upgrade", "['worker']")]["active"] is True
    assert windows[("nightly", "all")] == {"name": "nightly", "monitors": "all", "start": "2026-03-04T02:00:00.000Z",
                                           "end": "2026-03-04T02:30:00.000Z", "active": False, "repeat": "weekly",
                                           "schedule": "weekly on wed 02:00-02:30 UTC"}


def test_nothing_secret_is_shown(seeded):
    app, _, _ = seeded
    client = app.test_client()
    for path in ("/api/status", "/status"):
        text = client.get(path).get_data(as_text=True)
        for secret in ("s3cret", "api.example.com", "10.0.0.5", ":5432", "Authorization"):
            assert secret not in text, (path, secret)


class Page(HTMLParser):
    """Collects text by element id / class, SVG elements and scripts."""

    def __init__(self):
        super().__init__()
        self.stack, self.text, self.tags, self.scripts = [], {}, [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "script":
            self.scripts += 1
        if tag not in ("line", "polyline", "circle", "link", "meta", "br"):
            self.stack.append(attrs.get("id") or attrs.get("class") or tag)

    def handle_endtag(self, tag):
        if tag not in ("line", "polyline", "circle", "link", "meta", "br") and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for key in self.stack:
            self.text[key] = self.text.get(key, "") + data


def parsed(response):
    page = Page()
    page.feed(response.get_data(as_text=True))
    return page


def test_status_page_renders(seeded):
    app, _, _ = seeded
    response = app.test_client().get("/status")
    assert response.status_code == 200 and response.content_type.startswith("text/html")
    page = parsed(response)
    assert page.scripts == 0
    assert not [attrs for tag, attrs in page.tags if tag in ("link", "img", "script") and
                (attrs.get("href") or attrs.get("src") or "").startswith(("http", "//"))]  # no external asset
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in page.tags
    assert page.text["banner"].strip() == "Partial outage"
    articles = [attrs for tag, attrs in page.tags if tag == "article"]
    assert [(a["id"], a["data-state"]) for a in articles] == [
        ("monitor-api", "up"), ("monitor-db", "down"), ("monitor-worker", "maintenance")]
    assert "Public API <v2>" in page.text["monitor-api"]  # escaped in the HTML, text again once parsed
    assert "&lt;v2&gt;" in response.get_data(as_text=True)
    assert "99.308%" in page.text["monitor-api"] and "40 days left" in page.text["monitor-api"]
    assert "Down since 2026-03-01 11:45 UTC: connection refused" in page.text["monitor-db"]
    polylines = [attrs["points"] for tag, attrs in page.tags if tag == "polyline"]
    assert len(polylines) >= 2  # api and db
    points = [tuple(map(float, xy.split(","))) for xy in polylines[0].split()]
    assert len(points) == 24 * 6 + 1 and points == sorted(points)
    svg_text = page.text["chart"]
    assert "00:00" in svg_text and "18:00" in svg_text and "ms" in svg_text
    assert "ongoing" in page.text["incidents"] and "10 min" in page.text["incidents"]
    assert "nightly" in page.text["maintenance"] and "upgrade" in page.text["maintenance"]


def test_empty_status_page(data_dir):
    app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN]})
    try:
        client = app.test_client()
        body = client.get("/api/status").get_json()
        assert body == {"status": "no_monitors", "banner": "No monitors configured", "generated_at": body["generated_at"],
                        "monitors": [], "incidents": [], "maintenance": []}
        assert client.get("/status").status_code == 200
    finally:
        app.extensions["sidecar"].close()


def test_private_status_page_needs_a_reader(data_dir):
    from datasette_auth_passwords.utils import hash_password
    app, sidecar, _ = make(data_dir, status_page_public=False,
                           datasette_password_hash=hash_password("pw", iterations=1000))
    try:
        client = app.test_client()
        response = client.get("/api/status")
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
        response = client.get("/status")
        assert response.status_code == 302 and response.headers["Location"].endswith(LOGIN)
        auth = {"Authorization": "Bearer " + ADMIN}
        assert client.get("/api/status", headers=auth).status_code == 200
        assert client.get("/status", headers=auth).status_code == 200
    finally:
        sidecar.close()


def test_public_by_default_even_with_a_password(data_dir):
    from datasette_auth_passwords.utils import hash_password
    app, sidecar, _ = make(data_dir, datasette_password_hash=hash_password("pw", iterations=1000))
    try:
        assert app.test_client().get("/api/status").status_code == 200
        assert app.test_client().get("/status").status_code == 200
    finally:
        sidecar.close()


@pytest.mark.parametrize("states, expected", [
    ([], "no_monitors"), (["up", "up", "unknown"], "all_up"), (["up", "pending"], "all_up"),
    (["up", "maintenance"], "maintenance"), (["up", "down"], "partial_outage"),
    (["up", "down", "down"], "major_outage"), (["down"], "major_outage"),
    (["down", "maintenance", "maintenance", "up", "up"], "partial_outage"),
])
def test_overall_banner(states, expected):
    assert overall(states) == expected


def test_chart_breaks_at_gaps_and_marks_failures():
    now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    points = [{"t": "2026-03-01T0{}:{}0:00Z".format(hour, tens), "avg_ms": 100.0 + tens, "checks": 1,
               "down": int(hour == 3 and tens == 0)} for hour in (1, 3) for tens in range(3)]
    chart = status_api.chart(points, now, 60)
    assert len(chart["polylines"]) == 2 and len(chart["down"]) == 1
    assert [tick["label"] for tick in chart["y_ticks"]] == ["0", "100 ms", "200 ms"]
    assert [tick["label"] for tick in chart["x_ticks"]] == ["18:00", "00:00", "06:00", "12:00"]
    assert status_api.chart([], now, 60)["empty"] is True
    assert status_api.nice_ceiling(1234) == 2000 and status_api.nice_ceiling(180) == 200
    assert status_api.format_duration(3725) == "1 h 2 min" and status_api.format_percent(99.5) == "99.5%"
