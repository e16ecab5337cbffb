"""/api/health and /api/health/deep: the probe round trip, every check's thresholds, dependencies
(a real HTTP server on loopback, the real PostgreSQL server on 127.0.0.1:5432), no secrets."""
import http.server
import os
import sqlite3
import threading
import time

import orjson
import psycopg
import pytest

from conftest import AUTH, TOKEN, segment_files, stored_rows
from sidecar.settings import SettingsError, load_settings

ADMIN = "admin-token-0123456789abcdef"
ADMIN_AUTH = {"Authorization": "Bearer " + ADMIN}
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


class Behaviour(http.server.BaseHTTPRequestHandler):
    """/ok 200, /slow 200 after `delay` s, /status/<code>; the test can change `delay`."""
    delay = 0.6

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(self.server.delay)
        code = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/status/") else 200
        body = b'{"ok": true}'
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the checker gave up waiting (timeout tests)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream():
    """A real HTTP server on a loopback port, in a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Behaviour)
    server.daemon_threads = True
    server.delay = 0.6
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = "http://127.0.0.1:{}".format(server.server_address[1])
    yield server
    server.shutdown()
    server.server_close()


def closed_port():
    from conftest import free_port
    return free_port()  # bound then released: nothing listens there


@pytest.fixture
def make_app(data_dir):
    from sidecar import create_app
    apps = []

    def make(**settings):
        config = {"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN],
                  "dependency_check_interval_s": 3600}
        config.update(settings)
        app = create_app(config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["sidecar"].close()


def deep(app):
    response = app.test_client().get("/api/health/deep", headers=ADMIN_AUTH)
    return response.status_code, response.get_json(), response.get_data(as_text=True)


def dependency(body, name):
    [found] = [result for result in body["services"]["external_apis"] if result["name"] == name]
    return found


def send(app, entries):
    response = app.test_client().post("/api/logs", data=orjson.dumps(entries), headers=AUTH,
                                      content_type="application/json")
    assert response.status_code == 200, response.get_json()


# -- /api/health/deep: auth, shape, the probe ------------------------------------------

def test_deep_needs_an_admin_token(make_app):
    client = make_app().test_client()
    assert client.get("/api/health/deep").status_code == 401
    assert client.get("/api/health/deep", headers=AUTH).status_code == 401  # an ingest token never reads
    assert client.get("/api/health/deep", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert client.get("/api/health/deep", headers=ADMIN_AUTH).status_code == 200


def test_deep_shape_and_every_check_healthy(make_app):
    status, body, text = deep(make_app())
    assert status == 200 and body["status"] == "healthy", body
    assert set(body) == {"status", "timestamp", "services", "version", "environment", "checks"}
    assert set(body["services"]) == {"database", "external_apis", "memory", "disk"}
    assert set(body["checks"]) == {"probe", "integrity", "query", "writer", "memory", "disk", "datasette"}
    for name, check in body["checks"].items():
        assert check["status"] == "healthy", (name, check)
        assert check["message"], name
    assert body["checks"]["writer"]["queued_entries"] == 0
    assert body["checks"]["disk"]["budget"]["limit"] == 1024 * 1024 * 1024
    assert body["checks"]["disk"]["free_bytes"] > 0
    assert set(body["checks"]["memory"]) >= {"status", "used", "limit", "percent"}
    assert "/tmp" not in text and "segments" not in text and ".db" not in text  # no file paths


def test_probe_round_trip_leaves_nothing_behind(make_app, data_dir):
    app = make_app()
    send(app, [{"service": "api", "level": "error", "message": "boom"}])
    status, body, _ = deep(app)
    probe = body["checks"]["probe"]
    assert status == 200 and probe["status"] == "healthy", probe
    assert {"write_ms", "read_ms", "remove_ms"} <= set(probe)
    assert [row["service"] for row in stored_rows(data_dir)] == ["api"]
    [path] = segment_files(data_dir)
    con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True)
    assert con.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'probe'").fetchone()[0] == 0
    con.close()
    # The next entry gets a new id, not the probe's, and is found by full-text search.
    send(app, [{"service": "api", "level": "error", "message": "after the probe"}])
    assert [row["id"] for row in stored_rows(data_dir)] == [1, 3]
    found = app.test_client().get("/api/logs/search?q=after", headers=ADMIN_AUTH).get_json()["hits"]
    assert [hit["id"] for hit in found] == [3]
    sidecar = app.extensions["sidecar"]
    sidecar.tracker.flush()
    meta = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    assert meta.execute("SELECT sum(entries) FROM volume_minute WHERE service = 'sidecar.probe'").fetchone()[0] is None
    assert meta.execute("SELECT sum(entries) FROM volume_minute").fetchone()[0] == 2
    assert meta.execute("SELECT count(*) FROM error_groups WHERE service = 'sidecar.probe'").fetchone()[0] == 0
    assert meta.execute("SELECT sum(count) FROM error_groups").fetchone()[0] == 2
    meta.close()


def test_ids_stay_new_after_a_restart_that_follows_a_probe(make_app, data_dir):
    app = make_app()
    send(app, [{"service": "api", "level": "error", "message": "first"}])
    assert deep(app)[1]["checks"]["probe"]["status"] == "healthy"
    sidecar = app.extensions["sidecar"]
    sidecar.tracker.flush()  # the tracker has seen id 2 (the probe) before the restart
    sidecar.close()
    restarted = make_app()
    send(restarted, [{"service": "api", "level": "error", "message": "second"}])
    restarted.extensions["sidecar"].tracker.flush()
    assert [row["id"] for row in stored_rows(data_dir)] == [1, 3]
    meta = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    # Both errors are counted: id 3 is above the tracker's watermark.
    assert meta.execute("SELECT sum(count), sum(events_stored) FROM error_groups").fetchone() == (2, 2)
    meta.close()


def test_probes_during_ingest_keep_ids_search_and_counts_exact(make_app, data_dir):
    app = make_app()
    batches, size = 100, 10
    probes = [deep(app)[1]["checks"]["probe"]["status"]]  # loads Datasette before the race

    def ingest(worker):
        client = app.test_client()
        for n in range(batches):
            entries = [{"service": "api", "level": "error", "message": "entry w{} b{} n{}".format(worker, n, i)}
                       for i in range(size)]
            assert client.post("/api/logs", data=orjson.dumps(entries), headers=AUTH,
                               content_type="application/json").status_code == 200

    threads = [threading.Thread(target=ingest, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        probes.append(deep(app)[1]["checks"]["probe"]["status"])
    for thread in threads:
        thread.join()
    probes.append(deep(app)[1]["checks"]["probe"]["status"])  # the newest id: deleted, never given again
    send(app, [{"service": "api", "level": "error", "message": "entry last"}])
    assert set(probes) == {"healthy"} and len(probes) >= 3, probes
    total = 3 * batches * size + 1
    rows = stored_rows(data_dir, "id, service")
    ids = [row["id"] for row in rows]
    assert len(rows) == total and {row["service"] for row in rows} == {"api"}
    assert ids == sorted(set(ids))
    assert ids[-1] == total + len(probes)  # every probe took an id of its own, none was given twice
    [path] = segment_files(data_dir)
    con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True)
    assert con.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'entry'").fetchone()[0] == total
    assert con.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'probe'").fetchone()[0] == 0
    con.close()
    app.extensions["sidecar"].tracker.flush()
    meta = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    assert meta.execute("SELECT sum(count), sum(events_stored) FROM error_groups").fetchone() == (total, total)
    assert meta.execute("SELECT sum(entries) FROM volume_minute").fetchone()[0] == total
    assert meta.execute("SELECT sum(entries) FROM ingest_minute").fetchone()[0] == total
    meta.close()


def test_writer_call_runs_on_the_writer_thread(make_app):
    writer = make_app().extensions["sidecar"].writer
    assert writer.call(lambda head: threading.current_thread().name) == "sidecar-writer"
    with pytest.raises(ZeroDivisionError):
        writer.call(lambda head: 1 / 0)
    # Only the head is ever touched: a segment the head rotated away from is left alone.
    assert writer.delete_entries("logs-1999-01-01-0001.db", [1], "sidecar.probe") is None
    assert writer.delete_entries(writer.head.name, [1], "sidecar.probe") == 0  # no such entry


def test_writer_queue_and_commit_thresholds(make_app, data_dir):
    """The head's write lock held from outside: the writer blocks, the queue fills, the commit is slow."""
    from conftest import with_queue_filled
    from sidecar import health_deep
    app = make_app(queue_max_entries=10, max_batch_entries=10, commit_max_entries=10)
    sidecar = app.extensions["sidecar"]
    assert health_deep.writer_check(sidecar)["status"] == "healthy"
    sizes = [1, 9]  # the first batch is taken by the blocked writer, the second waits: 9 of 10 queued

    def post():
        entries = [{"service": "api", "message": "m"}] * sizes.pop(0)
        return app.test_client().post("/api/logs", data=orjson.dumps(entries), headers=AUTH,
                                      content_type="application/json").status_code

    full, results = with_queue_filled(data_dir, post, lambda: health_deep.writer_check(sidecar))
    assert results == [200, 200]
    assert full["status"] == "unhealthy" and full["queued_entries"] == 9 and full["percent"] == 90.0, full
    # One batch waits on the lock for over a second: its commit takes that long.
    with_queue_filled(data_dir, lambda: send(app, [{"service": "api", "message": "m"}]),
                                      lambda: time.sleep(0.6), waiting=1)
    check = health_deep.writer_check(sidecar)
    assert check["status"] == "degraded" and check["last_commit_ms"] >= 1000 and check["queued_entries"] == 0, check


def test_memory_and_disk_budget_thresholds(make_app):
    status, body, _ = deep(make_app(memory_limit_bytes=1024 * 1024, disk_budget_bytes=1000,
                                    disk_budget_warn_percent=50, disk_budget_critical_percent=60))
    assert body["checks"]["memory"]["status"] == "unhealthy" and body["checks"]["memory"]["percent"] > 100
    disk = body["checks"]["disk"]
    assert disk["status"] == "degraded" and disk["budget"]["state"] == "critical", disk
    assert status == 503 and body["status"] == "unhealthy"


# -- HTTP dependencies --------------------------------------------------------------------

def test_http_dependency_healthy_slow_wrong_status_down(make_app, upstream):
    port = closed_port()
    urls = ["ok={}/ok?api_key=s3cret-key".format(upstream.url), "slow={}/slow".format(upstream.url),
            "wrong={}/status/500".format(upstream.url), "created={}/status/201|201".format(upstream.url),
            "down=http://user:hunter2@127.0.0.1:{}/health".format(port)]
    status, body, text = deep(make_app(dependency_urls=urls, dependency_latency_degraded_ms=300,
                                       dependency_timeout_ms=2000))
    ok, slow, wrong = dependency(body, "ok"), dependency(body, "slow"), dependency(body, "wrong")
    created, down = dependency(body, "created"), dependency(body, "down")
    assert ok["status"] == "healthy" and ok["http_status"] == 200 and ok["latency_ms"] < 300
    assert slow["status"] == "degraded" and slow["latency_ms"] >= 600 and "slower than 300 ms" in slow["message"]
    assert wrong["status"] == "unhealthy" and wrong["message"] == "answered 500, expected 2xx"
    assert created["status"] == "healthy" and created["expected_status"] == "201"
    assert down["status"] == "unhealthy" and down["message"] == "connection refused"
    assert status == 503 and body["status"] == "unhealthy"
    for secret in ("s3cret-key", "hunter2", "api_key", upstream.url, str(port)):
        assert secret not in text


def test_http_dependency_timeout_is_unhealthy(make_app, upstream):
    upstream.delay = 1.0
    try:
        status, body, _ = deep(make_app(dependency_urls=["slow={}/slow".format(upstream.url)],
                                        dependency_latency_degraded_ms=100, dependency_timeout_ms=300))
    finally:
        upstream.delay = 0.6
    slow = dependency(body, "slow")
    assert slow["status"] == "unhealthy" and slow["message"] == "no answer within 300 ms"
    assert status == 503


def test_slow_dependency_only_degrades(make_app, upstream):
    status, body, _ = deep(make_app(dependency_urls=["slow={}/slow".format(upstream.url)],
                                    dependency_latency_degraded_ms=100))
    assert status == 200 and body["status"] == "degraded"


# -- PostgreSQL ------------------------------------------------------------------------------

def database_size():
    with psycopg.connect(POSTGRES) as con:
        return con.execute("SELECT pg_database_size(current_database())").fetchone()[0]


@pytest.fixture(scope="module")
def postgres():
    """The real PostgreSQL server on 127.0.0.1:5432 (trust auth, database `test`): CI runs one."""
    try:
        psycopg.connect(POSTGRES, connect_timeout=2).close()
    except psycopg.OperationalError:
        if os.environ.get("CI"):
            raise RuntimeError("CI must run PostgreSQL on 127.0.0.1:5432 (see .github/workflows/ci.yml)")
        # Reason: a laptop without a local PostgreSQL cannot check one; CI runs it as a service container.
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 with trust auth and a database `test`")
    return POSTGRES


def test_postgres_healthy(make_app, postgres):
    status, body, text = deep(make_app(dependency_postgres=["main=" + POSTGRES]))
    main = dependency(body, "main")
    assert main["status"] == "healthy" and main["type"] == "postgres", main
    assert main["latency_ms"] is not None and main["latency_ms"] < 1000
    assert main["connections"]["used"] >= 1 and main["connections"]["max_connections"] >= main["connections"]["limit"]
    assert main["database_size"]["limit"] == 500_000_000 and main["database_size"]["used"] > 0
    assert status == 200 and body["status"] == "healthy"
    assert "postgresql://" not in text and "5432" not in text


def test_postgres_key_value_dsn_from_the_environment(make_app, postgres):
    settings = load_settings(environ={
        "SIDECAR_DEPENDENCY_POSTGRES": "kv=host=127.0.0.1 port=5432 user=postgres dbname=test, uri=" + POSTGRES})
    assert settings["dependency_postgres"] == ["kv=host=127.0.0.1 port=5432 user=postgres dbname=test",
                                               "uri=" + POSTGRES]
    _, body, _ = deep(make_app(dependency_postgres=settings["dependency_postgres"]))
    assert [result["status"] for result in body["services"]["external_apis"]] == ["healthy", "healthy"]


def test_postgres_size_near_and_over_the_limit(make_app, postgres):
    size = database_size()
    _, body, _ = deep(make_app(dependency_postgres=["near=" + POSTGRES, "pg2=" + POSTGRES],
                               postgres_size_limit_bytes=int(size * 1.5), postgres_size_warn_percent=50))
    near = dependency(body, "near")
    assert near["status"] == "degraded" and near["database_size"]["status"] == "degraded", near
    assert 50 <= near["database_size"]["percent"] < 100
    status, body, _ = deep(make_app(dependency_postgres=["full=" + POSTGRES], postgres_size_limit_bytes=size // 2))
    full = dependency(body, "full")
    assert full["status"] == "unhealthy" and full["database_size"]["percent"] >= 100, full
    assert "of {:.1f} MB".format(size // 2 / 1e6) in full["message"]
    assert status == 503


def test_postgres_connections_warning(make_app, postgres):
    _, body, _ = deep(make_app(dependency_postgres=["main=" + POSTGRES], postgres_connections_warn_percent=1))
    main = dependency(body, "main")
    assert main["status"] == "degraded" and main["connections"]["status"] == "degraded", main


def test_postgres_unreachable_is_unhealthy_and_secret_free(make_app):
    port = closed_port()
    status, body, text = deep(make_app(dependency_postgres=[
        "gone=postgresql://postgres:pg-secret-pw@127.0.0.1:{}/test".format(port)]))
    gone = dependency(body, "gone")
    assert gone["status"] == "unhealthy" and gone["message"] == "connection refused", gone
    assert status == 503
    assert "pg-secret-pw" not in text and str(port) not in text and "postgres@" not in text


# -- /api/health: the cached dependencies ---------------------------------------------------

def wait_checked(app, timeout=10):
    monitor = app.extensions["sidecar"].dependencies
    deadline = time.monotonic() + timeout
    while any(result["checked_at"] is None for result in monitor.results()):
        assert time.monotonic() < deadline, monitor.results()
        time.sleep(0.02)


def test_health_shows_cached_dependencies_without_secrets(make_app, upstream, postgres):
    port = closed_port()
    app = make_app(dependency_urls=["api={}/ok?token=abc123secret".format(upstream.url),
                                    "down=http://127.0.0.1:{}/".format(port)],
                   dependency_postgres=["db=postgresql://postgres:pw-in-dsn@127.0.0.1:5432/test"])  # trust auth
    wait_checked(app)
    response = app.test_client().get("/api/health")
    body, text = response.get_json(), response.get_data(as_text=True)
    assert [result["name"] for result in body["services"]["external_apis"]] == ["api", "down", "db"]
    assert [result["status"] for result in body["services"]["external_apis"]] == ["healthy", "unhealthy", "healthy"]
    for result in body["services"]["external_apis"]:
        assert set(result) >= {"name", "status", "latency_ms", "message"}
    # A dependency counts at most "degraded" here: the sidecar itself is up, hosts must not restart it.
    assert response.status_code == 200 and body["status"] == "degraded"
    assert "checks" not in body
    for secret in ("abc123secret", "token=", "pw-in-dsn", upstream.url, str(port)):
        assert secret not in text


def test_health_makes_no_network_call(make_app, upstream):
    upstream.delay = 1.0  # each check of the dependency takes a second
    try:
        app = make_app(dependency_urls=["slow={}/slow".format(upstream.url)], dependency_latency_degraded_ms=100,
                       dependency_check_interval_s=1)
        client = app.test_client()
        timings = []
        for _ in range(20):  # while the checker waits for the slow upstream
            started = time.perf_counter()
            assert client.get("/api/health").status_code == 200
            timings.append(time.perf_counter() - started)
        # Far below the upstream's second, also on a busy machine (typically about 2 ms).
        assert max(timings) < 0.5 and sorted(timings)[10] < 0.05, timings
        wait_checked(app)
        assert dependency(client.get("/api/health").get_json(), "slow")["status"] == "degraded"
    finally:
        upstream.delay = 0.6


def test_health_before_the_first_check_and_without_dependencies(make_app):
    app = make_app()
    body = app.test_client().get("/api/health").get_json()
    assert body["services"]["external_apis"] == [] and body["status"] == "healthy"


# -- settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("environ, message", [
    ({"SIDECAR_DEPENDENCY_URLS": "http://example.com"}, "name=url items; item 1 has no '='"),
    ({"SIDECAR_DEPENDENCY_URLS": "bad name=http://example.com"}, "the name must be"),
    ({"SIDECAR_DEPENDENCY_URLS": "api=ftp://example.com"}, "must start with http:// or https://"),
    ({"SIDECAR_DEPENDENCY_URLS": "api=https://example.com/|ok"}, "expected status after '|'"),
    ({"SIDECAR_DEPENDENCY_URLS": "api=https://example.com:99999/"}, "invalid port"),
    ({"SIDECAR_DEPENDENCY_URLS": "db=https://example.com", "SIDECAR_DEPENDENCY_POSTGRES": "db=" + POSTGRES},
     "repeated: db"),
    ({"SIDECAR_DEPENDENCY_POSTGRES": "db=mysql://root:secret@host/db"}, "postgresql:// or postgres://"),
    ({"SIDECAR_DEPENDENCY_POSTGRES": "db=justtext"}, "libpq key=value pairs"),
    ({"SIDECAR_DEPENDENCY_POSTGRES": "db=host='unterminated secret"}, "libpq cannot parse"),
    ({"SIDECAR_DEPENDENCY_TIMEOUT_MS": "500", "SIDECAR_DEPENDENCY_LATENCY_DEGRADED_MS": "500"},
     "DEGRADED_MS must be below SIDECAR_DEPENDENCY_TIMEOUT_MS"),
    ({"SIDECAR_DEPENDENCY_TIMEOUT_MS": "60000"}, "at most 30000"),
    ({"SIDECAR_DEPENDENCY_CHECK_INTERVAL_S": "0"}, "must be a positive"),
    ({"SIDECAR_POSTGRES_SIZE_LIMIT_BYTES": "-1"}, "0 \\(no limit\\) or a positive"),
    ({"SIDECAR_POSTGRES_SIZE_WARN_PERCENT": "100"}, "between 1 and 99"),
    ({"SIDECAR_POSTGRES_CONNECTIONS_WARN_PERCENT": "0"}, "must be a positive|between 1 and 99"),
])
def test_bad_dependency_settings(environ, message):
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(environ=environ)
    assert "secret" not in str(raised.value)


def test_dependency_settings_parse():
    settings = load_settings(environ={
        "SIDECAR_DEPENDENCY_URLS": "api=https://api.example.com/health|204, web=http://web.local:8080/?a=b|3xx",
        "SIDECAR_POSTGRES_SIZE_LIMIT_BYTES": "0"})
    from sidecar.dependencies import parse_settings
    parsed = parse_settings(settings)
    assert [(d.name, d.kind, d.target, d.expected_status) for d in parsed] == [
        ("api", "http", "https://api.example.com/health", "204"),
        ("web", "http", "http://web.local:8080/?a=b", "3xx")]
    assert settings["postgres_size_limit_bytes"] == 0
