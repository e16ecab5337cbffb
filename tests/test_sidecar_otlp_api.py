"""POST /v1/logs through the Flask test client: encodings, statuses, partial success, metrics."""
import gzip
import json
import zlib
from datetime import timedelta

import orjson
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from conftest import AUTH, TOKEN, stored_rows
from ingest.writer import QueueFull, StorageUnavailable, utc_now
from test_ingest_otlp import KINDS, SPAN, TRACE, encode, request
from test_sidecar_metrics import moved, scrape

TYPES = {"protobuf": "application/x-protobuf", "json": "application/json"}


def post(client, body, kind="protobuf", headers=None, auth=AUTH):
    headers = dict(auth, **{"Content-Type": TYPES.get(kind, kind)}, **(headers or {}))
    return client.post("/v1/logs", data=body, headers=headers)


def export(client, message, kind="protobuf", **kwargs):
    return post(client, encode(message, kind), kind, **kwargs)


def partial_success(response, kind):
    if kind == "protobuf":
        partial = ExportLogsServiceResponse.FromString(response.data).partial_success
        return partial.rejected_log_records, partial.error_message
    partial = response.get_json().get("partialSuccess", {})
    return partial.get("rejectedLogRecords", 0), partial.get("errorMessage", "")


def status_of(response, kind):
    """(grpc code, message, ErrorInfo reason) of an error answer."""
    assert response.content_type == TYPES[kind]
    if kind == "protobuf":
        status = status_pb2.Status.FromString(response.data)
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        return status.code, status.message, info.reason
    body = response.get_json()
    return body["code"], body["message"], body["details"][0]["reason"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
def test_records_are_stored(client, data_dir, kind, encoding):
    message = request({"body": "order placed", "severity_number": 9, "trace_id": TRACE, "span_id": SPAN,
                       "attributes": {"order": 7}},
                      {"body": "card declined", "severity_number": 17},
                      resource={"service.name": "checkout", "host.name": "web-1"})
    body = encode(message, kind)
    headers = {}
    if encoding:
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        headers["Content-Encoding"] = encoding
    response = post(client, body, kind, headers)
    assert response.status_code == 200 and response.content_type == TYPES[kind]
    assert response.data == (b"" if kind == "protobuf" else b"{}")  # full success: partial_success unset
    rows = stored_rows(data_dir)
    assert [(r["service"], r["level"], r["message"], r["host"]) for r in rows] == [
        ("checkout", "info", "order placed", "web-1"), ("checkout", "error", "card declined", "web-1")]
    assert rows[0]["trace_id"] == TRACE.hex() and rows[0]["span_id"] == SPAN.hex()
    assert json.loads(rows[0]["metadata"])["order"] == 7
    assert rows[1]["fingerprint"]  # errors are fingerprinted as on /api/logs


@pytest.mark.parametrize("kind", KINDS)
def test_partial_success(client, data_dir, kind):
    deep = {"k": "leaf"}
    for _ in range(25):
        deep = {"k": deep}
    future = int((utc_now() + timedelta(days=30)).timestamp()) * 10**9
    message = request({"body": "kept 1"}, {"body": "too deep", "attributes": {"deep": deep}},
                      {"body": "from the future", "time_unix_nano": future}, {"body": "kept 2"},
                      {"body": "bad id", "trace_id": b"\x01" * 4})
    response = export(client, message, kind)
    assert response.status_code == 200
    rejected, error_message = partial_success(response, kind)
    assert rejected == 3
    assert error_message.startswith("3 of 5 log records rejected: resourceLogs[0].scopeLogs[0].logRecords[1]: "
                                    "metadata is nested")
    assert "logRecords[2]: timestamp " in error_message and "in the future" in error_message
    assert "logRecords[4]: trace_id must be" in error_message
    assert [row["message"] for row in stored_rows(data_dir)] == ["kept 1", "kept 2"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_record_rejected_is_still_a_partial_success(client, data_dir, kind):
    response = export(client, request({"body": "x", "span_id": b"\x01"}), kind)
    assert response.status_code == 200 and partial_success(response, kind)[0] == 1
    assert stored_rows(data_dir) == []


@pytest.mark.parametrize("body, kind", [(b"", "protobuf"), (b"{}", "json"), (b'{"resourceLogs": []}', "json")])
def test_an_empty_request_succeeds(client, body, kind):
    response = post(client, body, kind)
    assert response.status_code == 200 and partial_success(response, kind) == (0, "")


def test_scrubbing_applies(client, data_dir):
    message = request({"body": "paid with 4111 1111 1111 1111", "attributes": {
        "password": "hunter2", "card": "4111111111111111", "nested": {"api_key": "sk_live_1"}}})
    assert export(client, message).status_code == 200
    [row] = stored_rows(data_dir)
    assert "4111" not in json.dumps(row) and "hunter2" not in row["metadata"] and "sk_live_1" not in row["metadata"]
    assert json.loads(row["metadata"])["password"] == "[Filtered]"


@pytest.mark.parametrize("kind", KINDS)
def test_unauthorized_answers_a_status_in_the_request_encoding(client, kind):
    response = export(client, request({}), kind, auth={"Authorization": "Bearer wrong-token-000000000"})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == 'Bearer realm="sidecar"'
    assert status_of(response, kind)[::2] == (16, "unauthorized")
    assert export(client, request({}), kind, auth={}).status_code == 401
    assert post(client, b"", kind, auth={"Authorization": "Basic " + TOKEN}).status_code == 401


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-ndjson", ""])
def test_other_content_types_get_415(client, content_type):
    response = client.post("/v1/logs", data=b"{}", headers=dict(AUTH, **{"Content-Type": content_type}))
    assert response.status_code == 415
    code, message, reason = status_of(response, "json")
    assert reason == "unsupported_media_type" and "application/x-protobuf" in message


@pytest.mark.parametrize("kind, body, reason", [
    ("protobuf", b"\x0a\xff\xff\xff\xff\x0f", "invalid_protobuf"),
    ("json", b'{"resourceLogs": ', "invalid_json"),
    ("json", b'{"resourceLogs": [{"resource": {"attributes": [{"key": "a", "value": 3}]}}]}', "invalid_body"),
])
def test_undecodable_bodies_get_400(client, data_dir, kind, body, reason):
    response = post(client, body, kind)
    assert response.status_code == 400
    code, message, got = status_of(response, kind)
    assert (code, got) == (3, reason)
    if reason == "invalid_body":
        violation = response.get_json()["details"][1]
        assert violation["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        assert violation["fieldViolations"][0]["field"] == "resourceLogs[0].resource.attributes[0].value"
    assert stored_rows(data_dir) == []


def test_bad_gzip_and_unknown_encodings(client):
    response = post(client, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400 and status_of(response, "protobuf")[2] == "invalid_encoding"
    response = post(client, b"", headers={"Content-Encoding": "zstd"})
    assert response.status_code == 415 and status_of(response, "protobuf")[2] == "unsupported_encoding"


@pytest.fixture
def small_app(data_dir):
    from conftest import TOKEN as token
    from sidecar import create_app
    application = create_app({"data_dir": data_dir, "ingest_tokens": [token], "max_body_bytes": 2000,
                              "max_decompressed_bytes": 4000, "max_batch_entries": 3, "queue_max_entries": 3})
    yield application
    application.extensions["sidecar"].close()


@pytest.mark.parametrize("kind", KINDS)
def test_limits_answer_413(small_app, kind):
    client = small_app.test_client()
    response = export(client, request(*[{"body": str(i)} for i in range(4)]), kind)
    assert response.status_code == 413 and status_of(response, kind)[2] == "too_many_entries"
    response = post(client, b"x" * 2001, kind)
    assert response.status_code == 413 and status_of(response, kind)[2] == "body_too_large"
    response = post(client, gzip.compress(b" " * 5000), kind, {"Content-Encoding": "gzip"})
    assert response.status_code == 413 and status_of(response, kind)[2] == "body_too_large"
    assert export(client, request(*[{"body": str(i)} for i in range(3)]), kind).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("failure, status, grpc_code, retry_after", [
    (QueueFull, 429, 8, "1"), (StorageUnavailable, 503, 14, "5")])
def test_busy_or_unavailable_answers_retry_after(client, app, data_dir, monkeypatch, kind, failure, status,
                                                 grpc_code, retry_after):
    def refuse(batch):
        raise failure()

    monkeypatch.setattr(app.extensions["sidecar"].writer, "submit", refuse)
    response = export(client, request({"body": "a"}, {"body": "b"}), kind)
    assert response.status_code == status and response.headers["Retry-After"] == retry_after
    code, message, reason = status_of(response, kind)
    assert code == grpc_code and reason == ("queue_full" if status == 429 else "storage_unavailable")
    assert stored_rows(data_dir) == []


def test_metrics_count_otlp_records_once(client, app, monkeypatch):
    before = scrape(client)
    future = int((utc_now() + timedelta(days=30)).timestamp()) * 10**9
    assert export(client, request({"body": "a"}, {"body": "b"}, {"time_unix_nano": future},
                                  {"trace_id": b"\x01"})).status_code == 200
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"body": {"stringValue": "c"}}, {"severityNumber": "very"}]}]}]})
    assert post(client, body, "json").status_code == 200
    after = scrape(client)
    assert moved(before, after, "sidecar_entries_accepted_total") == 3
    assert moved(before, after, "sidecar_entries_rejected_total", reason="timestamp_future") == 1
    assert moved(before, after, "sidecar_entries_rejected_total", reason="invalid_field") == 1
    assert moved(before, after, "sidecar_entries_rejected_total", reason="invalid_level") == 1
    assert moved(before, after, "sidecar_requests_total", route="/v1/logs", status="200") == 2

    monkeypatch.setattr(app.extensions["sidecar"].writer, "submit", lambda batch: (_ for _ in ()).throw(QueueFull()))
    before = scrape(client)
    assert export(client, request({"body": "a"}, {"body": "b"})).status_code == 429
    after = scrape(client)
    assert moved(before, after, "sidecar_entries_rejected_total", reason="queue_full") == 2
    assert moved(before, after, "sidecar_entries_accepted_total") == 0


def test_get_is_not_allowed(client):
    response = client.get("/v1/logs", headers=AUTH)
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert response.status_code == 405 and "POST" in allowed and "GET" not in allowed
