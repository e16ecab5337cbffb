import logging

from ingest.failure_log import FailureLog

log = logging.getLogger("test.failure_log")


def messages(caplog):
    return [(record.levelname, record.getMessage()) for record in caplog.records]


def test_a_run_of_failures_logs_its_first_then_one_line_an_interval_then_the_recovery(caplog):
    caplog.set_level(logging.INFO, logger="test.failure_log")
    failures = FailureLog(log, interval_s=3600)
    for attempt in range(5):
        failures.failed("opening %s: %s", "head", "disk full")
    failures.succeeded("back: %s opened", "head")
    failures.succeeded("back: %s opened", "head")  # no run of failures: nothing to say
    assert messages(caplog) == [("ERROR", "opening head: disk full (failed attempts in a row: 1)"),
                                ("INFO", "back: head opened (failed attempts before: 5)")]


def test_a_failure_past_the_interval_is_logged_with_the_count(caplog):
    caplog.set_level(logging.INFO, logger="test.failure_log")
    failures = FailureLog(log, interval_s=0)
    failures.failed("folding: %s", "disk full")
    failures.failed("folding: %s", "disk full")
    assert messages(caplog) == [("ERROR", "folding: disk full (failed attempts in a row: 1)"),
                                ("ERROR", "folding: disk full (failed attempts in a row: 2)")]
