"""The official OpenTelemetry Python SDK (OTLP/HTTP log exporter) against a live sidecar (gunicorn on loopback)."""
import contextlib
import gzip
import json
import logging
import threading
import time
import warnings
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from conftest import TOKEN, entry, stored_rows, with_queue_filled
from test_ingest_otlp import encode, request

RESOURCE = {"service.name": "checkout", "service.version": "2.3.1", "deployment.environment": "test",
            "host.name": "web-7", "k8s.pod.name": "checkout-5f7d"}


class PaymentDeclined(Exception):
    pass


def charge(order):
    try:
        {}["card"]
    except KeyError as error:
        raise PaymentDeclined("order {} declined".format(order)) from error


@contextlib.contextmanager
def otel_logger(server, name, processor_class=BatchLogRecordProcessor, **exporter_args):
    """A stdlib logger whose records go through the SDK's logging bridge to the sidecar's /v1/logs."""
    provider = LoggerProvider(resource=Resource.create(RESOURCE), shutdown_on_exit=False)
    exporter = OTLPLogExporter(endpoint="{}/v1/logs".format(server.url), headers={"Authorization": "Bearer " + TOKEN},
                               **exporter_args)
    provider.add_log_record_processor(processor_class(exporter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's handler, deprecated for the instrumentation's
        handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, provider
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


@pytest.mark.parametrize("compression", [None, Compression.Gzip], ids=["plain", "gzip"])
def test_python_sdk_logging_bridge(live_server, data_dir, compression):
    server = live_server()
    tracer = TracerProvider(resource=Resource.create(RESOURCE)).get_tracer("checkout")
    args = {"compression": compression} if compression else {}
    with otel_logger(server, "checkout.payments", **args) as (logger, provider):
        with tracer.start_as_current_span("POST /orders") as span:
            logger.info("charging order %s", 1042, extra={"order_id": 1042, "user.id": "u-9", "amount": 12.5})
            try:
                charge(1042)
            except PaymentDeclined:
                logger.exception("payment failed", extra={"order_id": 1042, "retry": False})
        logger.warning("slow response", extra={"duration_ms": 812})
        assert provider.force_flush(10_000)
    context = span.get_span_context()
    rows = stored_rows(data_dir)
    assert [(row["level"], row["message"]) for row in rows] == [
        ("info", "charging order 1042"), ("error", "payment failed"), ("warn", "slow response")]
    info, error, warning = rows
    for row in rows:
        assert (row["service"], row["release"], row["environment"], row["host"]) == \
            ("checkout", "2.3.1", "test", "web-7")
    assert info["trace_id"] == error["trace_id"] == format(context.trace_id, "032x")
    assert info["span_id"] == format(context.span_id, "016x")
    assert warning["trace_id"] is None and warning["span_id"] is None  # logged outside the span
    assert info["user_id"] == "u-9"
    metadata = json.loads(info["metadata"])
    assert metadata["order_id"] == 1042 and metadata["amount"] == 12.5
    assert metadata["scope"] == {"name": "checkout.payments"}
    assert metadata["resource"]["k8s.pod.name"] == "checkout-5f7d" and "service.name" not in metadata["resource"]
    assert metadata["code.function.name"] == "test_python_sdk_logging_bridge"
    assert metadata["otel"]["severity_number"] == 9 and metadata["otel"]["severity_text"] == "INFO"
    exception = json.loads(error["exception"])
    assert [(item["type"], item["value"]) for item in exception] == [
        ("KeyError", "'card'"), ("PaymentDeclined", "order 1042 declined")]
    assert [frame["function"] for frame in exception[-1]["stacktrace"]] == ["test_python_sdk_logging_bridge", "charge"]
    assert all(frame["in_app"] for frame in exception[-1]["stacktrace"])
    error_metadata = json.loads(error["metadata"])
    assert error_metadata["retry"] is False and not any(key.startswith("exception.") for key in error_metadata)
    assert error["fingerprint"]
    assert json.loads(warning["metadata"])["duration_ms"] == 812
    output = server.output()
    assert ('"content_encoding":"gzip"' in output) is (compression is not None)
    assert '"otlp_encoding":"protobuf"' in output and TOKEN not in output


def test_json_and_protobuf_posted_by_hand(live_server, data_dir, monkeypatch):
    server = live_server()
    url = server.url + "/v1/logs"
    auth = {"Authorization": "Bearer " + TOKEN}
    deep = {"stringValue": "leaf"}
    for _ in range(25):
        deep = {"kvlistValue": {"values": [{"key": "k", "value": deep}]}}
    now = datetime.now(timezone.utc)
    far = int((now + timedelta(days=365)).timestamp() * 1e9)
    document = {"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]},
        "scopeLogs": [{"scope": {"name": "billing.jobs", "version": "1.0"}, "logRecords": [
            {"timeUnixNano": str(int(now.timestamp() * 1e9)), "severityNumber": 13, "severityText": "WARN",
             "body": {"stringValue": "invoice retry"}, "traceId": "5B8EFFF798038103D269B633813FC60C",
             "spanId": "EEE19B7EC3C1B174", "attributes": [{"key": "invoice", "value": {"intValue": "77"}}]},
            {"severityNumber": 9, "body": {"stringValue": "too deep"}, "attributes": [{"key": "d", "value": deep}]},
            {"timeUnixNano": far, "body": {"stringValue": "from next year"}},
            {"severityText": "error", "body": {"kvlistValue": {"values": [
                {"key": "event", "value": {"stringValue": "charge"}}, {"key": "ok", "value": {"boolValue": False}}]}}},
        ]}]}]}
    response = requests.post(url, data=gzip.compress(orjson.dumps(document)), timeout=10,
                             headers=dict(auth, **{"Content-Type": "application/json", "Content-Encoding": "gzip"}))
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    partial = response.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == 2
    assert "logRecords[1]: metadata is nested" in partial["errorMessage"]
    assert "logRecords[2]: timestamp" in partial["errorMessage"] and "in the future" in partial["errorMessage"]
    rows = stored_rows(data_dir)
    assert [(row["service"], row["level"], row["message"]) for row in rows] == [
        ("billing", "warn", "invoice retry"), ("billing", "error", '{"event":"charge","ok":false}')]
    assert rows[0]["trace_id"] == "5b8efff798038103d269b633813fc60c" and rows[0]["span_id"] == "eee19b7ec3c1b174"
    assert json.loads(rows[0]["metadata"])["invoice"] == 77

    # protobuf by hand: a record with a short trace id is rejected alone
    body = encode(request({"body": "fine"}, {"body": "short id", "trace_id": b"\x01\x02"},
                          resource={"service.name": "billing"}), "protobuf")
    response = requests.post(url, data=body, timeout=10,
                             headers=dict(auth, **{"Content-Type": "application/x-protobuf"}))
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-protobuf"
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_log_records == 1 and "logRecords[1]: trace_id must be 16 bytes" in partial.error_message
    assert stored_rows(data_dir)[-1]["message"] == "fine"

    response = requests.post(url, data=body, timeout=10, headers={"Content-Type": "application/x-protobuf"})
    assert response.status_code == 401 and status_pb2.Status.FromString(response.content).code == 16

    # the exporter configured only by the environment variables docs/clients.md lists
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "Authorization=Bearer%20" + TOKEN)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip")
    provider = LoggerProvider(resource=Resource.create({"service.name": "from-env"}), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter()))
    provider.get_logger("env").emit(body="configured by the environment", severity_text="WARN")
    provider.shutdown()
    assert (stored_rows(data_dir)[-1]["service"], stored_rows(data_dir)[-1]["level"]) == ("from-env", "warn")


def test_queue_full_answers_429_with_retry_after_and_the_exporter_retries(live_server, data_dir):
    server = live_server(max_batch_entries=1, queue_max_entries=1, commit_max_entries=1)
    url = server.url + "/v1/logs"
    body = encode(request({"body": "refused"}), "protobuf")
    headers = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/x-protobuf"}

    with otel_logger(server, "checkout.retry", SimpleLogRecordProcessor) as (logger, provider):
        exporting = threading.Thread(target=logger.warning, args=("sent through a 429",))

        def send_last():
            exporting.start()  # SimpleLogRecordProcessor exports in this thread, retrying as the SDK does
            deadline = time.time() + 10
            while server.output().count("POST /v1/logs 429") < 1 and time.time() < deadline:
                time.sleep(0.05)
            return requests.post(url, data=body, headers=headers, timeout=10)

        response, results = with_queue_filled(data_dir, lambda: server.post([entry(1)]), send_last)
        exporting.join(30)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert response.headers["Content-Type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(response.content)
    info = error_details_pb2.ErrorInfo()
    assert status.code == 8 and status.details[0].Unpack(info) and info.reason == "queue_full"
    assert [r.status_code for r in results] == [200, 200]
    messages = [row["message"] for row in stored_rows(data_dir)]
    assert "sent through a 429" in messages and "refused" not in messages
    output = server.output()
    assert output.count("POST /v1/logs 429") >= 2 and output.count("POST /v1/logs 200") == 1
