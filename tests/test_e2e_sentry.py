"""The official sentry-sdk against a live sidecar (gunicorn on loopback)."""
import gzip
import json
import os
import subprocess
import sys
import time

import orjson
import pytest
import requests

from conftest import TOKEN, stored_rows, with_queue_filled

HERE = os.path.dirname(os.path.abspath(__file__))


def admin_get(server, path):
    token = open(os.path.join(server.data_dir, "dev-admin-token")).read().strip()
    return requests.get(server.url + path, headers={"Authorization": "Bearer " + token}, timeout=10)


def wait_for_groups(server, count, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        groups = admin_get(server, "/api/errors?sort=count").json()["groups"]
        if sum(group["count"] for group in groups) >= count:
            return groups
        time.sleep(0.1)
    raise AssertionError("groups did not reach {} events: {}".format(count, groups))


@pytest.mark.parametrize("brotli", [True, False], ids=["brotli", "gzip"])
def test_sentry_sdk_events_are_stored_and_grouped(live_server, data_dir, brotli):
    server = live_server()
    dsn = "http://{}@127.0.0.1:{}/1".format(TOKEN, server.port)
    args = [sys.executable, os.path.join(HERE, "sentry_app.py"), dsn] + ([] if brotli else ["--no-brotli"])
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    sent = json.loads(result.stdout.strip().splitlines()[-1])
    output = server.output()
    assert "/api/1/envelope/" in output and TOKEN not in output
    assert ('"content_encoding":"br"' in output) is brotli
    rows = stored_rows(data_dir)
    by_event = {orjson.loads(row["metadata"])["sentry"]["event_id"]: row for row in rows}
    for name in ("charge_negative", "charge_large", "divide", "message"):
        assert sent[name] in by_event, name
    negative, large, divide = (by_event[sent[n]] for n in ("charge_negative", "charge_large", "divide"))
    assert negative["fingerprint"] == large["fingerprint"] != divide["fingerprint"]
    assert negative["service"] == "shop" and negative["level"] == "error" and negative["user_id"] == "user-7"
    assert negative["release"] == "shop@1.2.3" and negative["environment"] == "test"
    assert negative["trace_id"] and len(negative["trace_id"]) == 32
    exception = orjson.loads(negative["exception"])
    assert exception[-1]["type"] == "ValueError"
    assert [frame["function"] for frame in exception[-1]["stacktrace"]][-1] == "charge"
    assert "4111 1111 1111 1111" not in negative["exception"]  # a card number in frame vars is scrubbed
    assert by_event[sent["message"]]["message"] == "Payment provider timeout after 3000 ms"
    [logged] = [row for row in rows if row["message"].startswith("Refund R-17 failed")]
    assert orjson.loads(logged["metadata"])["logger"] == "shop.payments"
    assert "hunter2" not in logged["metadata"]
    assert len(rows) == 5  # the transaction was skipped, not stored
    groups = wait_for_groups(server, 5)
    assert [g["count"] for g in groups][:1] == [2]
    assert groups[0]["type"] == "ValueError" and groups[0]["culprit"].endswith("in charge")
    assert groups[0]["users_affected"] == 1 and groups[0]["last_release"] == "shop@1.2.3"


def test_store_endpoint_and_auth_forms(live_server, data_dir):
    server = live_server()
    event = {"event_id": "a" * 32, "level": "error", "message": "Disk quota exceeded for /srv/data",
             "tags": [["service", "files"]], "timestamp": "2026-01-10T10:00:00Z"}
    forms = [
        ({"X-Sentry-Auth": "Sentry sentry_version=7, sentry_key={}, sentry_client=raw/1".format(TOKEN)}, ""),
        ({"Authorization": "Sentry sentry_key={}".format(TOKEN)}, ""),
        ({}, "?sentry_key={}".format(TOKEN)),
    ]
    for headers, query in forms:
        response = requests.post(server.url + "/api/5/store/" + query, data=gzip.compress(orjson.dumps(event)),
                                 headers=dict(headers, **{"Content-Encoding": "gzip",
                                                          "Content-Type": "application/json"}), timeout=10)
        assert response.status_code == 200 and response.json() == {"id": "a" * 32}
    rows = stored_rows(data_dir)
    assert len(rows) == 3 and {row["service"] for row in rows} == {"files"}
    assert TOKEN not in server.output()  # the query string is never logged
    bad = requests.post(server.url + "/api/5/store/?sentry_key=wrong-key-0000000000", data=b"{}", timeout=10)
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"


def test_scrubbing_on_the_sentry_path(live_server, data_dir):
    server = live_server()
    event = {"level": "error", "message": "card 4242-4242-4242-4242 declined",
             "extra": {"api_key": "sk_live_123", "note": "ok"}, "request": {"cookies": "session=abc"},
             "exception": {"values": [{"type": "CardError", "value": "4242424242424242", "stacktrace": {
                 "frames": [{"function": "pay", "module": "shop", "vars": {"password": "hunter2"}}]}}]}}
    response = requests.post(server.url + "/api/1/store/?sentry_key=" + TOKEN, data=orjson.dumps(event), timeout=10)
    assert response.status_code == 200
    [row] = stored_rows(data_dir)
    stored = json.dumps(row)
    for secret in ("4242-4242-4242-4242", "4242424242424242", "sk_live_123", "session=abc", "hunter2"):
        assert secret not in stored
    assert row["message"] == "card [Filtered] declined"
    assert orjson.loads(row["metadata"])["extra"] == {"api_key": "[Filtered]", "note": "ok"}


@pytest.mark.parametrize("body, code", [
    (b"not json\n", "invalid_envelope"),
    (b'{"event_id": "x"}\n{"type": "event", "length": 500}\n{}', "invalid_envelope"),
    (b'{}\n{"type": "event"}\n[1, 2]\n', "invalid_envelope"),
])
def test_bad_envelopes(live_server, body, code):
    server = live_server()
    response = requests.post(server.url + "/api/1/envelope/?sentry_key=" + TOKEN, data=body, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == code


def test_envelope_with_only_other_items_is_accepted(live_server, data_dir):
    server = live_server()
    body = b'{"event_id": "' + b"b" * 32 + b'"}\n{"type": "session"}\n{"sid": "1"}\n' \
           b'{"type": "client_report", "length": 2}\n{}\n'
    response = requests.post(server.url + "/api/1/envelope/?sentry_key=" + TOKEN, data=body, timeout=10)
    assert response.status_code == 200 and response.json() == {"id": "b" * 32}
    assert stored_rows(data_dir) == []


def test_queue_full_answers_like_relay(live_server, data_dir):
    server = live_server(max_batch_entries=1, queue_max_entries=1, commit_max_entries=1)
    url = server.url + "/api/1/store/?sentry_key=" + TOKEN
    event = orjson.dumps({"message": "x", "level": "error"})
    response, results = with_queue_filled(data_dir, lambda: requests.post(url, data=event, timeout=60),
                                          lambda: requests.post(url, data=event, timeout=10))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1" and response.headers["X-Sentry-Rate-Limits"] == "1::organization"
    assert [r.status_code for r in results] == [200, 200]
