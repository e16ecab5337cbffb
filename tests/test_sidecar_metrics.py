"""GET /metrics, parsed with prometheus_client's own parser; the sidecar's own request latencies."""
import hashlib
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import AUTH, ROOT, TOKEN, entry
from ingest import catalog, latency
from ingest.entries import EntryError, Limits, format_ts, to_row
from ingest.writer import QueueFull, utc_now

ADMIN = "admin-token-0123456789abcdef"


def scrape(client, headers=None):
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def test_counters_move_by_the_accepted_and_rejected_counts(client):
    before = scrape(client)
    future = format_ts(utc_now() + timedelta(days=30))
    batch = [entry(1), entry(2), entry(3), entry(4, level="loud"), entry(5, timestamp=future), {"message": "no service"}]
    assert client.post("/api/logs", json=batch, headers=AUTH).status_code == 200
    assert client.post("/api/logs", json=[entry(6, level="loud")], headers=AUTH).status_code == 400
    after = scrape(client)
    assert moved(before, after, "sidecar_entries_accepted_total") == 3
    assert moved(before, after, "sidecar_entries_rejected_total", reason="invalid_level") == 2
    assert moved(before, after, "sidecar_entries_rejected_total", reason="timestamp_future") == 1
    assert moved(before, after, "sidecar_entries_rejected_total", reason="missing_service") == 1
    assert moved(before, after, "sidecar_requests_total", route="/api/logs", status="200") == 1
    assert moved(before, after, "sidecar_requests_total", route="/api/logs", status="400") == 1
    assert moved(before, after, "sidecar_requests_total", route="/metrics", status="200") == 1  # the first scrape
    assert moved(before, after, "sidecar_request_duration_seconds_count", route="/api/logs") == 2
    assert moved(before, after, "sidecar_commit_duration_seconds_count") >= 1
    assert value(after, "sidecar_writer_queue_entries") == 0


def test_a_refused_batch_counts_its_entries_under_its_reason(client, app, monkeypatch):
    def full(batch):
        raise QueueFull()

    monkeypatch.setattr(app.extensions["sidecar"].writer, "submit", full)
    before = scrape(client)
    assert client.post("/api/logs", json=[entry(1), entry(2)], headers=AUTH).status_code == 429
    after = scrape(client)
    assert moved(before, after, "sidecar_entries_rejected_total", reason="queue_full") == 2
    assert moved(before, after, "sidecar_entries_accepted_total") == 0


def test_store_gauges_are_read_from_meta_db(client, app):
    client.post("/api/logs", json=[entry(1), entry(2, level="error", message="boom")], headers=AUTH)
    sidecar = app.extensions["sidecar"]
    sidecar.tracker.flush()
    sidecar.writer._update_catalog(force=True)
    samples = scrape(client)
    assert value(samples, "sidecar_error_groups", status="unresolved") == 1
    assert value(samples, "sidecar_error_groups", status="resolved") == 0
    assert ("sidecar_error_groups", (("status", "ignored"),)) in samples
    assert value(samples, "sidecar_segments", state="head") == 1
    assert value(samples, "sidecar_segments", state="closed") == 0
    assert value(samples, "sidecar_segment_bytes", state="head") > 0
    assert value(samples, "sidecar_segment_entries", state="head") == 2
    assert value(samples, "sidecar_store_bytes") > 0
    assert value(samples, "sidecar_disk_budget_bytes") == sidecar.settings["disk_budget_bytes"]
    rank = {"healthy": 0, "degraded": 1, "unhealthy": 2}
    assert value(samples, "sidecar_health_status") == rank[client.get("/api/health").json["status"]]


@pytest.fixture
def locked(data_dir):
    from sidecar import create_app
    application = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN],
                              "metrics_require_token": True})
    yield application.test_client()
    application.extensions["sidecar"].close()


def test_metrics_require_the_admin_token_when_set(locked, client):
    assert client.get("/metrics").status_code == 200  # open by default
    assert locked.get("/metrics").status_code == 401
    assert locked.get("/metrics", headers=AUTH).status_code == 401  # an ingest token does not read
    scrape(locked, headers={"Authorization": "Bearer " + ADMIN})


@pytest.mark.parametrize("bad, reason", [
    ("not an object", "not_an_object"),
    ({"message": "m"}, "missing_service"),
    ({"service": "s"}, "missing_message"),
    ({"service": "s", "message": "m", "level": "loud"}, "invalid_level"),
    ({"service": "s", "message": "m", "timestamp": "yesterday"}, "invalid_timestamp"),
    ({"service": "s", "message": "m", "timestamp": [1]}, "invalid_timestamp"),
    ({"service": "s", "message": "m", "timestamp": "2999-01-01T00:00:00.000Z"}, "timestamp_future"),
    ({"service": "s", "message": "m", "metadata": [1]}, "invalid_metadata"),
    ({"service": "s", "message": "m", "metadata": {"a": {"b": {"c": {}}}}}, "metadata_too_deep"),
    ({"service": "s", "message": "m", "exception": 3}, "invalid_exception"),
    ({"service": "s", "message": "m", "exception": {"type": "E", "stacktrace": 3}}, "invalid_exception"),
    ({"service": "s", "message": "m", "fingerprint": []}, "invalid_fingerprint"),
    ({"service": "s", "message": "m", "trace_id": 3}, "invalid_field"),
    ({"service": "s", "message": "m", "user_id": [3]}, "invalid_field"),
])
def test_every_rejection_has_a_short_reason(bad, reason):
    from sidecar.metrics import REASONS, rejection_reason
    now = utc_now()
    limits = Limits(max_metadata_depth=2)
    with pytest.raises(EntryError) as raised:
        to_row(bad, format_ts(now), format_ts(now + timedelta(days=7)), limits)
    assert rejection_reason(str(raised.value)) == reason
    assert reason in REASONS


def test_the_sidecars_own_requests_are_rolled_up_by_route(client, app, data_dir):
    before = scrape(client)
    client.post("/api/logs", json=[entry(1)], headers=AUTH)
    client.post("/api/logs", json=[entry(2)], headers=AUTH)
    client.get("/api/health")
    client.get("/no/such/page")
    assert client.get("/datasette/-/databases.json").status_code == 200
    after = scrape(client)
    assert moved(before, after, "sidecar_requests_total", route="/datasette/*", status="200") == 1
    assert moved(before, after, "sidecar_requests_total", route="(unmatched)", status="404") == 1
    assert app.extensions["sidecar"].metrics.flush() == 7
    meta = catalog.connect_meta(data_dir)
    found = {row[0]: (row[1], row[2]) for row in meta.execute(
        "SELECT route, count, status_4xx FROM latency_minute_totals WHERE service = 'sidecar'")}
    assert found == {"/api/logs": (2, 0), "/api/health": (1, 0), "(unmatched)": (1, 1), "/datasette/*": (1, 0),
                     "/metrics": (2, 0)}
    since = format_ts(utc_now() - timedelta(minutes=1))
    assert latency.percentiles(meta, since, service="sidecar", route="/api/logs")["count"] == 2
    meta.close()


def test_gunicorn_conf_chooses_multiprocess_mode_before_prometheus_client_is_imported(tmp_path):
    data_dir = str(tmp_path / "data")
    script = (
        "import os, runpy, sys\n"
        "runpy.run_path('gunicorn.conf.py')\n"
        "assert 'prometheus_client' not in sys.modules, 'the master imported prometheus_client'\n"
        "from sidecar import metrics\n"
        "assert metrics.MULTIPROCESS\n"
        "print(os.environ['PROMETHEUS_MULTIPROC_DIR'])\n")
    env = {key: val for key, val in os.environ.items() if not key.startswith(("SIDECAR_", "PROMETHEUS_"))}
    env["SIDECAR_DATA_DIR"] = data_dir
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip()
    from sidecar import metrics_dir
    assert os.path.dirname(path) == metrics_dir.base_dir(data_dir) and os.path.isdir(path)
    assert path.startswith(metrics_dir.SHM_ROOT)  # off the data disk
    metrics_dir.remove(path)


def test_gunicorn_master_stays_without_flask(tmp_path):
    # What the master imports before it forks stays in the worker as well, and the benchmarks'
    # RSS counts it in both processes: the master's hooks (the boot mark, the banner with the
    # dev token) need neither Flask nor the app's other dependencies.
    script = (
        "import runpy, sys\n"
        "runpy.run_path('gunicorn.conf.py')\n"
        "from sidecar import banner, boot\n"
        "banner.print_banner({'host': '127.0.0.1', 'port': 1, 'data_dir': sys.argv[1], 'ingest_tokens': [],\n"
        "                     'admin_tokens': [], 'datasette_password_hash': ''}, ['http://127.0.0.1:1'])\n"
        "print(sorted(m for m in ('flask', 'werkzeug', 'msgspec', 'datasette') if m in sys.modules))\n")
    env = {key: val for key, val in os.environ.items() if not key.startswith(("SIDECAR_", "PROMETHEUS_"))}
    env["SIDECAR_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ingest token: dev-" in result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("shm", [True, False], ids=["in shared memory", "in the data dir"])
def test_metrics_dir_is_fresh_per_start_and_drops_dead_servers(tmp_path, monkeypatch, shm):
    from sidecar import metrics_dir
    monkeypatch.delenv(metrics_dir.ENV, raising=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    shm_root = tmp_path / "shm" if shm else None
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    base = data_dir / "prometheus"
    if shm:  # off the data disk: a full disk must not SIGBUS the workers' mapped pages
        shm_root.mkdir()
        base = shm_root / ("sidecar-metrics-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:16])
    (base / str(dead.pid)).mkdir(parents=True)
    (base / str(os.getppid())).mkdir()  # a server still running: kept
    (base / str(os.getpid())).mkdir()
    (base / str(os.getpid()) / "counter_1.db").write_bytes(b"old")
    path = metrics_dir.prepare(str(data_dir), shm_root=str(shm_root) if shm else None)
    assert os.environ[metrics_dir.ENV] == path == str(base / str(os.getpid()))
    assert os.listdir(path) == []
    assert sorted(os.listdir(base)) == sorted([str(os.getpid()), str(os.getppid())])
