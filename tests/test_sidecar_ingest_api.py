"""POST /api/logs through the Flask app (real writer, real files)."""
import gzip
import os
import sqlite3
import threading
import time

import orjson
import pytest

from conftest import AUTH, TOKEN, entry, stored_rows


def post(client, payload=None, data=None, headers=None, content_type="application/json"):
    headers = dict(AUTH, **(headers or {}))
    if payload is not None:
        data = orjson.dumps(payload)
    return client.post("/api/logs", data=data, headers=headers, content_type=content_type)


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("payload", [entry(1), [entry(1), entry(2)], {"logs": [entry(1), entry(2), entry(3)]}])
def test_json_shapes(client, data_dir, payload):
    count = len(payload["logs"]) if "logs" in payload else len(payload) if isinstance(payload, list) else 1
    response = post(client, payload)
    assert response.status_code == 200
    assert response.get_json() == {"accepted": count, "rejected": []}
    assert len(stored_rows(data_dir)) == count


def test_ndjson_and_gzip(client, data_dir):
    body = b"\n".join(orjson.dumps(entry(i)) for i in range(3)) + b"\n\n"
    response = post(client, data=gzip.compress(body), content_type="application/x-ndjson",
                    headers={"Content-Encoding": "gzip"})
    assert response.get_json() == {"accepted": 3, "rejected": []}
    assert [row["message"] for row in stored_rows(data_dir)] == ["entry 0", "entry 1", "entry 2"]


def test_partial_acceptance_stores_the_valid_entries(client, data_dir):
    response = post(client, [entry(0), {"message": "no service"}, entry(2), {"service": "x", "message": 1}])
    body = response.get_json()
    assert response.status_code == 200 and body["accepted"] == 2
    assert [item["index"] for item in body["rejected"]] == [1, 3]
    assert "service is required" in body["rejected"][0]["error"]
    assert [row["message"] for row in stored_rows(data_dir)] == ["entry 0", "entry 2"]


def test_no_valid_entry_is_400_and_stores_nothing(client, data_dir):
    error = assert_error(post(client, [{"message": "x"}, {"service": "s"}]), 400, "no_valid_entries")
    assert [item["index"] for item in error["details"]["rejected"]] == [0, 1]
    assert stored_rows(data_dir) == []


@pytest.mark.parametrize("kwargs, status, code", [
    ({"data": b"{bad json"}, 400, "invalid_json"),
    ({"data": b"[]"}, 400, "empty_batch"),
    ({"data": b"42"}, 400, "invalid_body"),
    ({"data": b"service=a", "content_type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({"data": b"{}", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"data": b"xx", "headers": {"Content-Encoding": "gzip"}}, 400, "invalid_encoding"),
    ({"data": b"{}", "headers": {"Content-Encoding": "compress"}}, 415, "unsupported_encoding"),
    ({"payload": entry(1), "headers": {"Idempotency-Key": "k" * 300}}, 400, "invalid_idempotency_key"),
    # The key is judged before the body: a bad key is named even when no entry is valid.
    ({"payload": [{"no": "service"}], "headers": {"Idempotency-Key": "k" * 300}}, 400, "invalid_idempotency_key"),
    ({"data": b""}, 400, "empty_batch"),
    ({"data": b"\n \n", "content_type": "application/x-ndjson"}, 400, "empty_batch"),
    ({"data": gzip.compress(orjson.dumps(entry(1))) + b"junk", "headers": {"Content-Encoding": "gzip"}},
     400, "invalid_encoding"),
])
def test_bad_requests(client, data_dir, kwargs, status, code):
    assert_error(post(client, **kwargs), status, code)
    assert stored_rows(data_dir) == []


def test_limits(data_dir):
    from sidecar import create_app
    app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN], "max_body_bytes": 2000,
                      "max_decompressed_bytes": 4000, "max_batch_entries": 3, "queue_max_entries": 3,
                      "commit_max_entries": 3})
    client = app.test_client()
    try:
        assert_error(post(client, [entry(0, message="x" * 3000)]), 413, "body_too_large")
        bomb = gzip.compress(orjson.dumps([entry(0, message="x" * 10000)]))
        assert len(bomb) < 2000
        assert_error(post(client, data=bomb, headers={"Content-Encoding": "gzip"}), 413, "body_too_large")
        error = assert_error(post(client, [entry(i) for i in range(4)]), 413, "too_many_entries")
        assert error["details"] == {"max_batch_entries": 3}
        assert post(client, [entry(i) for i in range(3)]).status_code == 200
    finally:
        app.extensions["sidecar"].close()
    assert len(stored_rows(data_dir)) == 3


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-000000000"},
                                     {"Authorization": "Basic " + TOKEN}, {"Authorization": "Bearer"}])
def test_auth_required(client, data_dir, headers, capsys):
    response = client.post("/api/logs", data=orjson.dumps(entry(0)), content_type="application/json",
                           headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert stored_rows(data_dir) == []
    out = capsys.readouterr().out
    assert '"event":"security.auth_failed"' in out
    assert "wrong-token" not in out and TOKEN not in out


def test_failed_auth_logging_is_rate_limited(client, capsys):
    for _ in range(5):
        client.post("/api/logs", data=b"{}", content_type="application/json",
                    headers={"Authorization": "Bearer nope-nope-nope-nope"})
    lines = [line for line in capsys.readouterr().out.splitlines() if "security.auth_failed" in line]
    assert len(lines) == 1


def test_request_log_line(client, capsys):
    post(client, [entry(0), {"bad": 1}])
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    [request_line] = [line for line in lines if line["metadata"].get("event") == "http.request"]
    assert request_line["service"] == "sidecar" and request_line["level"] == "info"
    metadata = request_line["metadata"]
    assert (metadata["method"], metadata["path"], metadata["status"]) == ("POST", "/api/logs", 200)
    assert (metadata["accepted"], metadata["rejected"]) == (1, 1) and metadata["duration_ms"] >= 0


def test_idempotency_key_stores_once(client, data_dir):
    headers = {"Idempotency-Key": "batch-1"}
    first = post(client, [entry(0), entry(1)], headers=headers)
    again = post(client, [entry(0), entry(1)], headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json() == {"accepted": 2, "rejected": []}
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(stored_rows(data_dir)) == 2
    assert post(client, [entry(2)], headers={"Idempotency-Key": "batch-2"}).status_code == 200
    assert len(stored_rows(data_dir)) == 3


def test_every_member_of_a_gzip_body_is_stored(client, data_dir):
    # What `cat a.gz b.gz` or a client appending compressed chunks sends: one gzip stream of two members.
    body = gzip.compress(orjson.dumps(entry(0)) + b"\n") + gzip.compress(orjson.dumps(entry(1)) + b"\n")
    response = post(client, data=body, content_type="application/x-ndjson", headers={"Content-Encoding": "gzip"})
    assert response.get_json() == {"accepted": 2, "rejected": []}
    assert [row["message"] for row in stored_rows(data_dir)] == ["entry 0", "entry 1"]


def test_idempotency_key_with_another_body_is_422_and_stores_nothing(client, data_dir):
    headers = {"Idempotency-Key": "batch-1"}
    assert post(client, [entry(0)], headers=headers).status_code == 200
    error = assert_error(post(client, [entry(1), entry(2)], headers=headers), 422, "idempotency_key_reused")
    assert "another body" in error["message"]
    # The body is compared decompressed: the same batch gzipped is a retry, not another batch.
    again = post(client, data=gzip.compress(orjson.dumps([entry(0)])), headers=dict(headers, **{"Content-Encoding": "gzip"}))
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert [row["message"] for row in stored_rows(data_dir)] == ["entry 0"]


def test_keys_recorded_before_body_hashes_still_replay(data_dir):
    """Segments and key files of an earlier version have no body_hash column: the head gets one
    when it is opened again, and a key recorded without a hash is answered as before."""
    from sidecar import create_app
    app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN]})
    first = post(app.test_client(), [entry(0)], headers={"Idempotency-Key": "old"})
    head = app.extensions["sidecar"].writer.head.path
    app.extensions["sidecar"].close()
    for path, table in ((head, "batches"), (os.path.join(data_dir, "idempotency.db"), "idempotency_keys")):
        con = sqlite3.connect(path)
        con.execute("ALTER TABLE {} DROP COLUMN body_hash".format(table))
        con.commit()
        con.close()
    app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN]})
    retried = post(app.test_client(), [entry(0)], headers={"Idempotency-Key": "old"})
    new = post(app.test_client(), [entry(1)], headers={"Idempotency-Key": "new"})
    reused = post(app.test_client(), [entry(2)], headers={"Idempotency-Key": "new"})
    app.extensions["sidecar"].close()
    assert first.status_code == retried.status_code == new.status_code == 200
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert reused.status_code == 422
    assert [row["message"] for row in stored_rows(data_dir)] == ["entry 0", "entry 1"]
    con = sqlite3.connect(head)
    assert con.execute("SELECT idempotency_key, body_hash IS NOT NULL FROM batches ORDER BY 1").fetchall() == [
        ("new", 1), ("old", 0)]
    con.close()


def test_idempotency_key_of_a_failed_batch_can_be_retried(client, data_dir):
    headers = {"Idempotency-Key": "k"}
    assert post(client, [{"no": "service"}], headers=headers).status_code == 400
    assert post(client, [entry(0)], headers=headers).status_code == 200
    assert len(stored_rows(data_dir)) == 1


def test_idempotency_survives_restart(data_dir):
    from sidecar import create_app
    for _ in range(2):
        app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN]})
        response = post(app.test_client(), [entry(0)], headers={"Idempotency-Key": "same"})
        app.extensions["sidecar"].close()
        assert response.status_code == 200
    assert len(stored_rows(data_dir)) == 1


def test_idempotency_keys_of_an_older_version_are_rebuilt_from_the_segments(data_dir):
    """Versions before idempotency.db kept the keys in meta.db: after the upgrade a retry is
    still answered from the segments' record, and the old table is gone."""
    from sidecar import create_app
    app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN]})
    first = post(app.test_client(), [entry(0)], headers={"Idempotency-Key": "before-upgrade"})
    app.extensions["sidecar"].close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(os.path.join(data_dir, "idempotency.db" + suffix)):
            os.remove(os.path.join(data_dir, "idempotency.db" + suffix))
    meta = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    meta.execute("CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY, state TEXT NOT NULL, owner_pid INTEGER, "
                 "created_at TEXT NOT NULL, response TEXT)")
    meta.commit()
    meta.close()
    app = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN]})
    retried = post(app.test_client(), [entry(0)], headers={"Idempotency-Key": "before-upgrade"})
    app.extensions["sidecar"].close()
    assert first.status_code == retried.status_code == 200
    assert retried.headers["Idempotent-Replayed"] == "true" and retried.get_json() == first.get_json()
    assert len(stored_rows(data_dir)) == 1
    meta = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    assert meta.execute("SELECT name FROM sqlite_master WHERE name = 'idempotency_keys'").fetchall() == []
    meta.close()


def test_idempotency_key_in_flight_is_409(app, client, data_dir):
    sidecar = app.extensions["sidecar"]
    lock = sqlite3.connect(sidecar.writer.head.path, timeout=0)
    lock.execute("BEGIN IMMEDIATE")  # the writer waits, so the first request stays in flight
    results = {}
    first = threading.Thread(target=lambda: results.update(first=post(app.test_client(), [entry(0)],
                                                                      headers={"Idempotency-Key": "slow"})))
    first.start()
    try:
        keys = sqlite3.connect(os.path.join(data_dir, "idempotency.db"))
        for _ in range(500):  # until the first request holds its claim
            if keys.execute("SELECT 1 FROM idempotency_keys WHERE key = 'slow'").fetchone():
                break
            time.sleep(0.01)
        busy = post(client, [entry(0)], headers={"Idempotency-Key": "slow"})
    finally:
        lock.execute("ROLLBACK")
        first.join(40)
    assert_error(busy, 409, "idempotency_key_in_use")
    assert results["first"].status_code == 200
    assert len(stored_rows(data_dir)) == 1


def test_idempotency_key_does_not_wait_for_meta_db(app, client, data_dir):
    """A fold of the error groups holds meta.db's write lock, for seconds in a storm of new groups:
    a batch with a key is claimed, stored and answered meanwhile (the keys have their own file)."""
    meta = sqlite3.connect(os.path.join(data_dir, "meta.db"), timeout=0)
    meta.execute("BEGIN IMMEDIATE")
    results = {}
    request = threading.Thread(target=lambda: results.update(first=post(app.test_client(), [entry(0)],
                                                                        headers={"Idempotency-Key": "k1"})))
    request.start()
    try:
        request.join(20)  # with the claim in meta.db it waited for the lock (busy timeout 60 s)
        answered = not request.is_alive()
        replayed = post(client, [entry(0)], headers={"Idempotency-Key": "k1"}) if answered else None
    finally:
        meta.execute("ROLLBACK")
        request.join(60)
    assert answered
    assert results["first"].status_code == 200
    assert replayed.status_code == 200 and replayed.headers["Idempotent-Replayed"] == "true"
    assert len(stored_rows(data_dir)) == 1


@pytest.mark.parametrize("method, path, status, code", [
    ("get", "/nowhere", 404, "not_found"),
    ("get", "/api/logs", 405, "method_not_allowed"),
])
def test_other_errors_are_json(client, method, path, status, code):
    assert_error(getattr(client, method)(path), status, code)


def test_health_shape(client):
    response = client.get("/api/health")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "healthy"
    assert set(body) == {"status", "timestamp", "services", "version", "environment"}
    assert set(body["services"]) == {"database", "external_apis", "memory", "disk"}
    assert set(body["services"]["database"]) >= {"status", "latency_ms", "message"}
    for resource in ("memory", "disk"):
        assert set(body["services"][resource]) >= {"status", "used", "limit", "percent"}
    assert "/" not in body["services"]["database"]["message"]  # no file paths


def test_a_template_save_that_fails_does_not_fail_the_batch(app, client, data_dir, monkeypatch):
    """meta.db refusing the write (its disk full) is no reason to fail a batch that the
    segments can take: it is stored, and the templates are saved with a later batch."""
    from sidecar import app as app_module
    read_only = sqlite3.connect("file:{}?mode=ro".format(os.path.join(data_dir, "meta.db")), uri=True)
    monkeypatch.setattr(app_module.catalog, "connect_meta_cached", lambda data_dir: read_only)
    response = post(client, [entry(0, level="error", message="Job 7 failed on worker 2")])
    assert response.status_code == 200
    assert app.extensions["sidecar"].fingerprinter.dirty  # kept for the next save
    monkeypatch.undo()
    read_only.close()
    assert post(client, [entry(1)]).status_code == 200
    assert not app.extensions["sidecar"].fingerprinter.dirty
    assert [row["message"] for row in stored_rows(data_dir)] == ["Job 7 failed on worker 2", "entry 1"]
