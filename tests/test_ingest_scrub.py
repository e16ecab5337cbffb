import orjson
import pytest

from ingest.entries import Limits, to_row
from ingest.scrub import luhn_ok, scrub_text, scrub_value


@pytest.mark.parametrize("text, expected", [
    ("paid with 4111 1111 1111 1111 today", "paid with [Filtered] today"),
    ("card=4111-1111-1111-1111", "card=[Filtered]"),
    ("amex 378282246310005", "amex [Filtered]"),
    ("order 1234567890123 shipped", "order 1234567890123 shipped"),  # fails Luhn: not a card
    ("ts 1700000000.123456", "ts 1700000000.123456"),
    ("short 4111", "short 4111"),
])
def test_card_numbers_are_masked(text, expected):
    assert scrub_text(text) == expected


def test_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


@pytest.mark.parametrize("key", ["password", "db_passwd", "client_secret", "api_key", "X-ApiKey", "auth",
                                 "credentials", "private_key", "access_token", "Cookie", "Authorization",
                                 "sessionid"])
def test_sensitive_keys_are_filtered(key):
    assert scrub_value({key: "s3cr3t", "nested": [{key: 1}], "keep": "x"}) == {
        key: "[Filtered]", "nested": [{key: "[Filtered]"}], "keep": "x"}


def test_native_path_scrubs_metadata_message_and_exception():
    entry = {"service": "api", "message": "card 5555 5555 5555 4444 declined",
             "metadata": {"user": {"password": "hunter2", "name": "ann"}, "token": "abc"},
             "exception": {"type": "E", "value": "with 4111111111111111",
                           "stacktrace": [{"function": "f", "vars": {"secret": "x"}}]}}
    row = to_row(entry, "2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z", Limits())
    assert row[3] == "card [Filtered] declined"
    assert orjson.loads(row[11]) == {"user": {"password": "[Filtered]", "name": "ann"}, "token": "[Filtered]"}
    exception = orjson.loads(row[12])
    assert exception["value"] == "with [Filtered]" and exception["stacktrace"][0]["vars"]["secret"] == "[Filtered]"


def test_scrubbing_can_be_turned_off():
    entry = {"service": "api", "message": "4111 1111 1111 1111", "metadata": {"password": "p"}}
    row = to_row(entry, "2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z", Limits(scrub=False))
    assert row[3] == "4111 1111 1111 1111" and orjson.loads(row[11]) == {"password": "p"}
