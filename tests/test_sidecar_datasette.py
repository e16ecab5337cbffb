"""Datasette mounted at /datasette/: live segments, read-only, behind a login, canned queries and charts."""
import re
import sqlite3
from datetime import timedelta
from urllib.parse import quote

import pytest
from datasette_auth_passwords.utils import hash_password

from retention import job
from retention.policy import Policy
from sidecar import create_app
from sidecar.datasette_config import canned_queries, overview_dashboard, segment_queries
from sidecar.settings import level_days, load_settings

from conftest import AUTH, TOKEN, catalog_rows

from test_retention_job import NOW, Clock

ADMIN = "admin-token-0123456789abcdef"


def make_app(data_dir, clock=None, **settings):
    config = {"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN], **settings}
    if clock:
        config["clock"] = clock
    return create_app(config)


@pytest.fixture
def make(data_dir):
    apps = []

    def build(**kwargs):
        app = make_app(data_dir, **kwargs)
        apps.append(app)
        return app, app.test_client()
    yield build
    for app in apps:
        app.extensions["sidecar"].close()


def post(client, entries):
    response = client.post("/api/logs", json=entries, headers=AUTH)
    assert response.status_code == 200, response.json
    return response


def databases(client, headers=None):
    response = client.get("/datasette/-/databases.json", headers=headers or {})
    assert response.status_code == 200
    return {db["name"]: db for db in response.json}


def test_every_segment_is_a_database_and_new_ones_appear(make):
    clock = Clock(NOW - timedelta(days=2))
    app, client = make(clock=clock)
    post(client, [{"service": "api", "message": "day one", "timestamp": "2026-03-18T10:00:00Z"}])
    assert set(databases(client)) == {"_memory", "meta", "logs-2026-03-18-0001"}
    clock.moment = NOW
    post(client, [{"service": "api", "message": "day three", "timestamp": "2026-03-20T10:00:00Z"}])
    app.extensions["sidecar"].writer.wait_closers()
    app.extensions["datasette"].sync(force=True)
    found = databases(client)
    assert found["logs-2026-03-18-0001"]["is_mutable"] is False  # closed: immutable
    assert found["logs-2026-03-20-0001"]["is_mutable"] is True  # the head: read-only
    rows = client.get("/datasette/logs-2026-03-20-0001/logs.json?_shape=array").json
    assert [row["message"] for row in rows] == ["day three"]


def test_pruned_segments_disappear_and_rewritten_ones_are_reopened(make, data_dir):
    clock = Clock(NOW - timedelta(days=3))
    app, client = make(clock=clock)
    post(client, [{"service": "api", "level": "debug", "message": "old debug"},
                  {"service": "api", "level": "info", "message": "old info"}])
    clock.moment = NOW - timedelta(days=2)
    post(client, [{"service": "api", "level": "debug", "message": "debug two days ago"},
                  {"service": "api", "level": "info", "message": "info two days ago"}])
    clock.moment = NOW
    post(client, [{"service": "api", "message": "today"}])
    app.extensions["sidecar"].writer.wait_closers()
    before = databases(client)
    assert "logs-2026-03-17-0001" in before
    # Ages: everything 3 days, debug 1 day: the first segment goes, the second loses its debug entry.
    policy = Policy.from_settings(load_settings({"retention_days": 3}, environ={}), level_days)
    job.run(data_dir, policy, NOW + timedelta(hours=1))
    app.extensions["datasette"].sync(force=True)
    after = databases(client)
    assert "logs-2026-03-17-0001" not in after
    assert after["logs-2026-03-18-0001"]["hash"] != before["logs-2026-03-18-0001"]["hash"]
    rows = client.get("/datasette/logs-2026-03-18-0001/logs.json?_shape=array").json
    assert [row["message"] for row in rows] == ["info two days ago"]


@pytest.fixture
def locked(make):
    """A sidecar with a login password (so not open) and some data."""
    app, client = make(datasette_password_hash=hash_password("correct horse", iterations=1000))
    post(client, [{"service": "api", "level": "error", "message": "boom", "user_id": "u1"}])
    return app, client


@pytest.mark.parametrize("path", ["/datasette/", "/datasette/meta", "/datasette/meta/error_groups",
                                  "/datasette/meta.json?sql=select+1", "/datasette/-/dashboards/overview"])
def test_anonymous_users_see_nothing(locked, path):
    _, client = locked
    assert client.get(path).status_code == 403
    assert client.get(path, headers=AUTH).status_code == 403  # an ingest token does not read


def test_admin_token_reads(locked):
    _, client = locked
    assert client.get("/datasette/meta/error_groups.json", headers={"Authorization": "Bearer " + ADMIN}).status_code == 200


def login(client, password):
    page = client.get("/datasette/-/login")
    assert page.status_code == 200
    csrftoken = re.search(r'name="csrftoken" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    return client.post("/datasette/-/login", data={"username": "admin", "password": password,
                                                   "csrftoken": csrftoken})


def test_login_opens_datasette_and_the_cookie_is_the_sidecars_too(locked):
    app, client = locked
    assert login(client, "wrong").status_code == 200  # the form again, with an error
    assert client.get("/datasette/").status_code == 403
    response = login(client, "correct horse")
    assert response.status_code == 302
    assert client.get("/datasette/").status_code == 200
    cookie = client.get_cookie("ds_actor").value
    from sidecar.auth import actor_from_cookie
    assert actor_from_cookie(cookie, app.extensions["sidecar"].session_secret) == {"id": "admin"}


def test_nothing_can_be_written_through_datasette(make, data_dir):
    app, client = make()
    post(client, [{"service": "api", "message": "keep me"}])
    [head] = [row["name"][:-3] for row in catalog_rows(data_dir)]
    for database, sql in [(head, "DELETE FROM logs"), ("meta", "DELETE FROM segments"),
                          (head, "UPDATE logs SET message = 'x'"), ("meta", "DROP TABLE error_groups")]:
        response = client.get("/datasette/{}.json?sql={}".format(database, quote(sql)))
        assert response.status_code == 400
    rows = client.get("/datasette/{}/logs.json?_shape=array".format(head)).json
    assert [row["message"] for row in rows] == ["keep me"]
    assert len(catalog_rows(data_dir)) == 1


def test_segment_connections_do_not_hold_the_head_open(make, data_dir):
    app, client = make()
    post(client, [{"service": "api", "message": "x"}])
    [head] = [row["name"] for row in catalog_rows(data_dir)]
    assert client.get("/datasette/{}/logs".format(head[:-3])).status_code == 200
    # With no Datasette connection left open on the head, another connection can take it out of WAL.
    app.extensions["sidecar"].writer.stop()
    con = sqlite3.connect("{}/segments/{}".format(data_dir, head))
    assert con.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    con.close()


@pytest.fixture
def with_groups(make):
    app, client = make()
    post(client, [{"service": "api", "level": "error", "message": "<script>alert(1)</script> failed {}".format(n),
                   "user_id": "u{}".format(n % 2), "metadata": {"duration_ms": n * 10, "route": "/x"}}
                  for n in range(5)] + [{"service": "web", "level": "info", "message": "ok"}])
    app.extensions["sidecar"].tracker.flush()
    return app, client


@pytest.mark.parametrize("name", sorted(canned_queries()))
def test_canned_queries_run(with_groups, name):
    _, client = with_groups
    response = client.get("/datasette/meta/{}.json?_shape=array".format(name))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]


def test_error_queries_count_the_groups(with_groups):
    _, client = with_groups
    [group] = client.get("/datasette/meta/top_groups_by_count.json?_shape=array").json
    assert group["count"] == 5 and group["users_affected"] == 2
    rate = client.get("/datasette/meta/error_rate_per_minute.json?_shape=array&hours=24").json
    assert {row["service"]: row["error_percent"] for row in rate} == {"api": 100.0, "web": 0.0}


def test_slowest_requests_in_a_segment(with_groups, data_dir):
    _, client = with_groups
    [head] = [row["name"][:-3] for row in catalog_rows(data_dir)]
    assert set(segment_queries()) == {"slowest_requests"}
    rows = client.get("/datasette/{}/slowest_requests.json?_shape=array".format(head)).json
    assert [row["duration_ms"] for row in rows] == [40.0, 30.0, 20.0, 10.0, 0.0]


def dashboard_charts():
    settings = load_settings({}, environ={})
    return overview_dashboard(settings, "/datasette/")["charts"]


@pytest.mark.parametrize("slug", sorted(dashboard_charts()))
def test_dashboard_charts_query_and_escape_html(with_groups, slug):
    _, client = with_groups
    chart = dashboard_charts()[slug]
    sql = re.sub(r"\[\[.*?\]\]", "", chart["query"])  # no filter chosen
    response = client.get("/datasette/meta.json?_shape=array&sql=" + quote(sql))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    rows = response.json
    if chart["library"] in ("table", "metric"):
        assert rows, "tables and metrics cannot be drawn without a row"
    assert "<script>" not in str(rows)


def test_latency_percentiles_in_sql_match_the_library(make, data_dir):
    from ingest import catalog
    from ingest.latency import percentiles
    from sidecar.datasette_config import latency_percentiles_sql
    app, client = make()
    post(client, [{"service": "api", "message": "r", "metadata": {"duration_ms": ms, "route": "/x"}}
                  for ms in (3, 8, 40, 70, 120, 300, 900, 1500, 4000, 12000)]
         + [{"service": "web", "message": "r", "metadata": {"duration_ms": 30}}] * 4)
    app.extensions["sidecar"].tracker.flush()
    sql = latency_percentiles_sql("'2000-01-01T00:00'")
    rows = {row["service"]: row for row in client.get("/datasette/meta.json?_shape=array&sql=" + quote(sql)).json}
    meta = catalog.connect_meta(data_dir)
    for service in ("api", "web"):
        expected = percentiles(meta, "2000-01-01T00:00", service=service)
        assert rows[service]["requests"] == expected["count"]
        for key in ("p50", "p95", "p99"):
            assert rows[service][key + "_ms"] == pytest.approx(expected[key], abs=0.1)
    meta.close()


def test_dashboard_page_renders(with_groups):
    _, client = with_groups
    page = client.get("/datasette/-/dashboards/overview").get_data(as_text=True)
    assert "Events per minute by level" in page and "autorefresh(1.0)" in page


def test_group_page_links_to_its_events_across_segments(with_groups):
    app, client = with_groups
    post(client, [{"service": "api", "level": "error", "message": "another bug entirely"}])
    app.extensions["sidecar"].tracker.flush()
    [group] = client.get("/datasette/meta/top_groups_by_count.json?_shape=array").json[:1]
    page = client.get("/datasette/meta/error_groups/" + group["fingerprint"]).get_data(as_text=True)
    assert 'href="/search?fingerprint={}"'.format(group["fingerprint"]) in page
    hits = client.get("/api/logs/search?fingerprint=" + group["fingerprint"]).json["hits"]
    assert len(hits) == group["count"] == 5
    assert all(hit["fingerprint"] == group["fingerprint"] for hit in hits)


def test_segment_logs_tables_sort_newest_first_and_search_with_fts5(make, data_dir):
    app, client = make()
    post(client, [{"service": "api", "message": "first zebra"}, {"service": "api", "message": "second"},
                  {"service": "api", "message": "third zebra"}])
    [head] = [row["name"][:-3] for row in catalog_rows(data_dir)]
    rows = client.get("/datasette/{}/logs.json?_shape=array".format(head)).json
    assert [row["message"] for row in rows] == ["third zebra", "second", "first zebra"]
    found = client.get("/datasette/{}/logs.json?_shape=array&_search=zebra".format(head)).json
    assert [row["message"] for row in found] == ["third zebra", "first zebra"]
