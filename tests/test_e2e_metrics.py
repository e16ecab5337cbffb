"""/metrics with a live gunicorn running 2 workers: every scrape, whichever worker answers it,
sums the counts of both workers; the sidecar's own request latencies add up in meta.db."""
import os
import sqlite3
import threading

import requests

from conftest import entry, segment_files
from test_sidecar_metrics import value

from prometheus_client.parser import text_string_to_metric_families

from sidecar import metrics_dir


def scrape(server):
    response = requests.get(server.url + "/metrics", timeout=10)  # a new connection: any worker may answer
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def rows_per_segment(data_dir):
    counts = []
    for path in segment_files(data_dir):
        con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True)
        counts.append(con.execute("SELECT count(*) FROM logs").fetchone()[0])
        con.close()
    return counts


def test_two_workers_are_summed_on_every_scrape(live_server, data_dir):
    server = live_server(workers=2, threads=4)
    posted, requests_made, lock = [0], [0], threading.Lock()

    def send(n):
        for i in range(n):
            batch = [entry(i) for _ in range(25)] + [entry(i, level="loud")]
            response = server.post(batch)
            assert response.status_code == 200
            with lock:
                posted[0] += 25
                requests_made[0] += 1

    for _ in range(10):  # until both workers (each with its own head segment) have stored some
        threads = [threading.Thread(target=send, args=(5,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if sum(1 for count in rows_per_segment(data_dir) if count) >= 2:
            break
    assert sum(1 for count in rows_per_segment(data_dir) if count) == 2
    for _ in range(8):
        samples = scrape(server)
        assert value(samples, "sidecar_entries_accepted_total") == posted[0]
        assert value(samples, "sidecar_entries_rejected_total", reason="invalid_level") == requests_made[0]
        assert value(samples, "sidecar_requests_total", route="/api/logs", status="200") == requests_made[0]
        assert value(samples, "sidecar_request_duration_seconds_count", route="/api/logs") == requests_made[0]
        assert value(samples, "sidecar_writer_queue_entries") == 0
        assert value(samples, "sidecar_segments", state="head") == 2
        health = requests.get(server.url + "/api/health", timeout=10).json()["status"]
        assert value(samples, "sidecar_health_status") == {"healthy": 0, "degraded": 1, "unhealthy": 2}[health]
    multiproc = os.path.join(metrics_dir.base_dir(data_dir), str(server.proc.pid))
    assert os.path.isdir(multiproc)
    server.stop()  # each worker adds its own request latencies to meta.db as it exits
    assert not os.path.exists(multiproc)  # the master gives the shared memory back as it stops
    meta = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    counts = dict(meta.execute("SELECT route, sum(count) FROM latency_minute_totals WHERE service = 'sidecar' "
                               "GROUP BY route").fetchall())
    meta.close()
    assert counts["/api/logs"] == requests_made[0]
    assert counts["/metrics"] == 8

    again = live_server(workers=2)  # a new start counts from zero in a fresh directory
    assert value(scrape(again), "sidecar_entries_accepted_total") == 0
    assert not os.path.exists(multiproc)
