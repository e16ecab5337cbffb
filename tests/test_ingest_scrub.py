import orjson
import pytest

from ingest.entries import Limits, to_row
from ingest.scrub import body_may_hold_cards, luhn_ok, scrub_text, scrub_value


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


CARD_CONTEXTS = ["4111 1111 1111 1111", "x 4111-1111-1111-1111 y", "\n4111111111111111", "(4111111111111111)",
                 "id=4111111111111111", "no 1 4111 1111 1111 1111", "\t378282246310005\t", "€4111111111111111",
                 "order 123 4111 1111 1111 1111", "\"5555555555554444\""]


@pytest.mark.parametrize("text", CARD_CONTEXTS)
def test_body_check_finds_every_card_the_scrubber_masks(text):
    assert scrub_text(text) != text
    assert body_may_hold_cards(orjson.dumps([{"message": text}]))
    assert body_may_hold_cards(orjson.dumps({"metadata": {"card": text}}))


@pytest.mark.parametrize("text", [
    "trace 4bf92f3577b34da6a3ce929d0e0e4736",           # hex id with a long digit run inside
    "a1234567890123456789b", "v1.4111111111111111", "blk_-6952295868487656571",
    "req 9a2b1234-5678-9012-3456-7890abcdef12",         # UUID: the digit groups follow letters
    "short 4111 1111",
])
def test_body_check_skips_ids_where_no_card_can_start(text):
    assert scrub_text(text) == text
    assert not body_may_hold_cards(orjson.dumps([{"message": text}]))


def test_body_check_never_misses_a_card_in_random_text():
    import random
    rng = random.Random(5)
    alphabet = "0123456789abcdef -_.:\"\n"
    cards = ["4111111111111111", "5555 5555 5555 4444", "3782-822463-10005", "6011000990139424"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.5:
            cut = rng.randint(0, len(text))
            text = text[:cut] + rng.choice(cards) + text[cut:]
        if scrub_text(text) != text:
            assert body_may_hold_cards(orjson.dumps({"message": text})), text


def test_body_check_skips_hex_ids_that_start_with_digits():
    body = orjson.dumps([{"trace_id": "64429228036159e12fba1b0ad", "span_id": "4515759132710e7b"}])
    assert not body_may_hold_cards(body)
    assert body_may_hold_cards(orjson.dumps([{"message": "4111111111111111-e7b"}]))
    assert not body_may_hold_cards(orjson.dumps([{"request_id": "88485733-8184-9996-1005-f4d13"}]))
    assert not body_may_hold_cards(orjson.dumps([{"span_id": "5159431369604235"}]))
    assert body_may_hold_cards(orjson.dumps([{"metadata": {"span": "5555555555554444"}}]))


@pytest.mark.parametrize("request_id, holds", [
    ("43101379-7424-7210-4fcf-c90edad09912", False),  # all-digit groups, no valid card number in them
    ("5555-5555-5555-4444-4fcf-c90edad09912", True),  # a real card number's layout: masked, so checked
])
def test_body_check_luhn_checks_digit_runs_it_cannot_rule_out(request_id, holds):
    body = orjson.dumps([{"message": "m", "metadata": {"request_id": request_id}}] * 3)
    assert body_may_hold_cards(body) is holds
    assert (scrub_text(request_id) != request_id) is holds


def test_body_check_never_misses_a_card_among_escapes_and_near_misses():
    import random
    rng = random.Random(11)
    alphabet = "0123456789abcdef -_.:/\\\"\n\t"
    numbers = ["4111111111111111", "5555 5555 5555 4444", "3782-822463-10005", "4111111111111112",
               "5555 5555 5555 4445", "43101379-7424-7210", "2222 4000 7000 0005"]
    missed = []
    for _ in range(4000):
        texts = []
        for _ in range(rng.randint(1, 3)):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
            if rng.random() < 0.6:
                cut = rng.randint(0, len(text))
                text = text[:cut] + rng.choice(numbers) + text[cut:]
            texts.append(text)
        body = orjson.dumps([{"message": texts[0], "metadata": {"k{}".format(i): t for i, t in enumerate(texts)}}])
        if any(scrub_text(text) != text for text in texts) and not body_may_hold_cards(body):
            missed.append(texts)
    assert missed == []


def test_body_check_finds_a_card_spelled_with_unicode_escapes():
    body = b'[{"service": "api", "message": "card \\u0034\\u0031\\u0031\\u0031 1111 1111 1111"}]'
    assert scrub_text(orjson.loads(body)[0]["message"]) == "card [Filtered]"
    assert body_may_hold_cards(body)
    assert not body_may_hold_cards(b'[{"service": "api", "message": "path C:\\\\temp\\\\4111"}]')
