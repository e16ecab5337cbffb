"""The error groups API through the Flask app, with the live tracker."""
import os

import orjson
import pytest

from conftest import AUTH, TOKEN

ADMIN = "admin-token-0123456789abcdef"
ADMIN_AUTH = {"Authorization": "Bearer " + ADMIN}


@pytest.fixture
def app(data_dir):
    from sidecar import create_app
    application = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN]})
    yield application
    application.extensions["sidecar"].close()


def send(app, client, entries):
    response = client.post("/api/logs", data=orjson.dumps(entries), headers=AUTH, content_type="application/json")
    assert response.status_code == 200, response.get_json()
    app.extensions["sidecar"].tracker.flush()


def seed(app, client):
    send(app, client, [{"service": "api", "level": "error", "message": "Timeout after {} ms".format(n),
                        "user_id": "u{}".format(n)} for n in range(3)]
         + [{"service": "web", "level": "critical", "message": "Template render failed"}]
         + [{"service": "web", "level": "info", "message": "fine"}])


def test_ingest_token_never_reads(client):
    response = client.get("/api/errors", headers=AUTH)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/api/errors").status_code == 401


def test_list_filter_and_sort(app, client):
    seed(app, client)
    groups = client.get("/api/errors?sort=count", headers=ADMIN_AUTH).get_json()["groups"]
    assert [(g["service"], g["count"], g["users_affected"]) for g in groups] == [("api", 3, 3), ("web", 1, 0)]
    web = client.get("/api/errors?service=web", headers=ADMIN_AUTH).get_json()["groups"]
    assert [g["title"] for g in web] == ["Template render failed"]
    by_users = client.get("/api/errors?sort=users", headers=ADMIN_AUTH).get_json()["groups"]
    assert by_users[0]["service"] == "api"
    assert client.get("/api/errors?status=resolved", headers=ADMIN_AUTH).get_json()["groups"] == []


def test_one_group_with_its_events(app, client):
    seed(app, client)
    [group] = client.get("/api/errors?service=api", headers=ADMIN_AUTH).get_json()["groups"]
    detail = client.get("/api/errors/" + group["fingerprint"], headers=ADMIN_AUTH).get_json()
    assert detail["count"] == 3 and len(detail["events"]) == 3
    assert {event["user_id"] for event in detail["events"]} == {"u0", "u1", "u2"}
    assert all(event["segment"].startswith("logs-") for event in detail["events"])
    assert sum(hour["count"] for hour in detail["hourly"]) == 3


def test_status_workflow_and_regression(app, client):
    seed(app, client)
    [group] = client.get("/api/errors?service=web", headers=ADMIN_AUTH).get_json()["groups"]
    url = "/api/errors/{}/status".format(group["fingerprint"])
    resolved = client.post(url, json={"status": "resolved"}, headers=ADMIN_AUTH).get_json()
    assert resolved["status"] == "resolved"
    send(app, client, [{"service": "web", "level": "critical", "message": "Template render failed"}])
    regressed = client.get("/api/errors?status=regressed", headers=ADMIN_AUTH).get_json()["groups"]
    assert [g["fingerprint"] for g in regressed] == [group["fingerprint"]] and regressed[0]["regressed"]
    ignored = client.post(url, json={"status": "ignored", "ignore_until_count": 5}, headers=ADMIN_AUTH).get_json()
    assert ignored["status"] == "ignored" and ignored["ignore_until_count"] == 5


@pytest.mark.parametrize("body, code", [
    ({"status": "done"}, "invalid_status"),
    ({"status": "resolved", "ignore_until_count": 3}, "invalid_status"),
    ({"status": "ignored", "ignore_until_count": 0}, "invalid_status"),
    ({"status": "ignored", "ignore_until": "soon"}, "invalid_status"),
    ("not an object", "invalid_json"),
])
def test_bad_status_changes(app, client, body, code):
    seed(app, client)
    [group] = client.get("/api/errors?service=web", headers=ADMIN_AUTH).get_json()["groups"]
    response = client.post("/api/errors/{}/status".format(group["fingerprint"]), json=body, headers=ADMIN_AUTH)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == code


@pytest.mark.parametrize("method, path, status, code", [
    ("get", "/api/errors/0123456789abcdef", 404, "not_found"),
    ("post", "/api/errors/0123456789abcdef/status", 404, "not_found"),
    ("get", "/api/errors?sort=random", 400, "invalid_parameter"),
    ("get", "/api/errors?status=open", 400, "invalid_parameter"),
    ("get", "/api/errors?limit=0", 400, "invalid_parameter"),
    ("get", "/api/errors?limit=many", 400, "invalid_parameter"),
])
def test_api_errors(client, method, path, status, code):
    kwargs = {"json": {"status": "resolved"}} if method == "post" else {}
    response = getattr(client, method)(path, headers=ADMIN_AUTH, **kwargs)
    assert response.status_code == status and response.get_json()["error"]["code"] == code


def test_counts_survive_a_restart_without_double_counting(data_dir):
    from sidecar import create_app
    config = {"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN]}
    for _ in range(2):
        app = create_app(config)
        send(app, app.test_client(), [{"service": "api", "level": "error", "message": "Lost connection to db"}])
        app.extensions["sidecar"].close()
    app = create_app(config)
    try:
        [group] = app.test_client().get("/api/errors", headers=ADMIN_AUTH).get_json()["groups"]
        assert group["count"] == 2
    finally:
        app.extensions["sidecar"].close()
    assert os.path.exists(os.path.join(data_dir, "meta.db"))
