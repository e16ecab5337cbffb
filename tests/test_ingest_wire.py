"""The fast decoder (ingest/wire.py) gives exactly what the reference way gives, or declines."""
import random
import zlib

import orjson
import pytest

from ingest import body as body_module
from ingest import wire
from ingest.entries import EntryError, Limits, to_row_and_metadata
from ingest.fingerprint import Fingerprinter

RECEIVED = "2026-01-10T12:00:00.000Z"
MAX_TS = "2026-01-17T12:00:00.000Z"
MISSING = object()
EXCEPTION = {"type": "ValueError", "value": "bad id 42", "stacktrace": [
    {"filename": "app/views.py", "function": "show", "module": "app.views", "lineno": 9, "in_app": True}]}


def nested(depth):
    value = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


# Values of the right JSON type, good and bad: the fast decoder takes them, and the value
# checks after it must judge them as the reference way does.
WELL_TYPED = {
    "service": ["api", "billing", "ünïcode", "", "  "],
    "message": ["hello", "user 42 failed after 3 retries", "card 4111 1111 1111 1111 on file",
                "x" * 300, "", "quote \" backslash \\ newline \n tab \t emoji 😀"],
    "level": [MISSING, None, "info", "WARNING", "Fatal", "err", "loud", ""],
    "timestamp": [MISSING, None, "2026-01-10T10:00:00.000Z", "2026-01-10T10:00:00Z",
                  "2026-01-10T12:00:00+02:00", "2026-01-10T10:00:00", "yesterday", "2026-01-20T00:00:00.000Z",
                  1768039200, 1768039200.5, 1768039200123, 1768039200123456789, 1e30, -5,
                  "0001-01-01T00:00:00+01:00", "2024-W18-3T12:00:00.000Z", "2026-01-10t10:00:00.000z"],
    "metadata": [MISSING, None, {}, {"route": "/a/{id}", "duration_ms": 12.5, "status": 500},
                 {"password": "hunter2", "n": 1}, {"outer": {"api_key": "k", "list": [1, {"token": "t"}]}},
                 {"deep": nested(25)}, {"big": "y" * 300, "more": "z" * 50}, {"n": -0.0, "f": 1e-7, "t": True},
                 {"note": "card 5500-0000-0000-0004"}, {"_sidecar": "mine", "fingerprint": "meta", "_extra": 1}],
    "trace_id": [MISSING, None, "4bf92f3577b34da6a3ce929d0e0e4736", ""],
    "span_id": [MISSING, None, "00f067aa0ba902b7"],
    "user_id": [MISSING, None, "u-1", 42, 1.5, 0],
    "environment": [MISSING, "prod"],
    "release": [MISSING, "1.2.3"],
    "host": [MISSING, None, "web-1"],
    # exception is any JSON value to the decoder: its shape is checked after it, both ways.
    "exception": [MISSING, None, EXCEPTION, [EXCEPTION, {"type": "KeyError"}], {"type": "E", "value": "no frames"},
                  "boom", {"type": "E", "stacktrace": "x"}, [1]],
    "fingerprint": [MISSING, None, ["checkout"], ["{{ default }}", "eu"], []],
}
# Values of a type the schema does not allow, and top-level fields it does not know: the
# fast decoder declines the whole body, and the reference way names the entry.
ILL_TYPED = {
    "service": [3, None], "message": [5, None], "level": [3, True], "timestamp": [True, [1]],
    "metadata": [[1, 2], "x"], "trace_id": [123], "user_id": [True, [1]],
    "host": [{"a": 1}],
    "fingerprint": ["abc", [1]], "pid": [7], "request_id": ["top-level"],
}


def random_entry(rng, ill_typed):
    entry = {}
    for field, values in WELL_TYPED.items():
        value = rng.choice(values)
        if value is not MISSING:
            entry[field] = value
    if ill_typed:
        field = rng.choice(sorted(ILL_TYPED))
        entry[field] = rng.choice(ILL_TYPED[field])
    return entry


def outcomes(entries, limits):
    """What validation makes of each entry: its row and metadata, or its rejection."""
    fingerprinter = Fingerprinter()
    results = []
    for entry in entries:
        try:
            results.append(to_row_and_metadata(entry, RECEIVED, MAX_TS, limits, fingerprinter))
        except EntryError as error:
            results.append(("rejected", str(error)))
    return results


LIMITS = [Limits(), Limits(cards_possible=False), Limits(scrub=False),
          Limits(max_message_bytes=64, max_metadata_bytes=128, max_metadata_depth=5)]


@pytest.mark.parametrize("limits", LIMITS, ids=["default", "no-cards", "no-scrub", "small"])
@pytest.mark.parametrize("shape", ["array", "wrapped", "ndjson"])
def test_well_typed_bodies_take_the_fast_way_and_give_the_reference_rows(limits, shape):
    rng = random.Random(zlib.crc32("{} {!r}".format(shape, limits).encode()))  # the same cases every run
    for _ in range(150):
        entries = [random_entry(rng, ill_typed=False) for _ in range(rng.randint(1, 6))]
        if shape == "array":
            body, fast = orjson.dumps(entries), wire.decode_json(orjson.dumps(entries))
            reference = body_module._parse_json(body)
        elif shape == "wrapped":
            body = orjson.dumps({"logs": entries})
            fast, reference = wire.decode_json(body), body_module._parse_json(body)
        else:
            body = b"\n".join(orjson.dumps(entry) for entry in entries) + b"\n\n"
            fast, reference = wire.decode_ndjson(body), body_module._parse_ndjson(body)
        assert fast is not None and all(type(entry) is wire.WireEntry for entry in fast), body
        assert outcomes(fast, limits) == outcomes(reference, limits), body


def test_a_body_with_one_ill_typed_entry_is_left_to_the_reference_way():
    rng = random.Random(7)
    for _ in range(300):
        entries = [random_entry(rng, ill_typed=False) for _ in range(rng.randint(0, 3))]
        entries.insert(rng.randint(0, len(entries)), random_entry(rng, ill_typed=True))
        body = orjson.dumps(entries)
        assert wire.decode_json(body) is None, body
        parsed = body_module.parse_entries(body, "application/json")
        assert all(type(entry) is dict for entry in parsed)
        assert outcomes(parsed, Limits()) == outcomes(orjson.loads(body), Limits())


@pytest.mark.parametrize("body", [
    b'[{"service": "a", "message": "m", "n": 123456789012345678901234567890}]',  # unknown field
    b'[{"service": "a", "message": "m", "metadata": ' + b'{"a":' * 2000 + b'1' + b'}' * 2001 + b']',
    b'[{"service": "a", "message": "m"}, 5]',
    b'[{"service": "a", "message": "m"},]',
    b'{"logs": [{"service": "a", "message": "m"}], "source": "x"}',
    b'{"logs": 5}',
    b'"text"',
    b'{}',
    b'[{"service": "a", "message": "\\ud800"}]',
    b'\xef\xbb\xbf[{"service": "a", "message": "m"}]',
    b' ' * 100 + b'[{"service": "a", "message": "m"}]',
])
def test_the_fast_decoder_declines_what_it_does_not_take_whole(body):
    assert wire.decode_json(body) is None


@pytest.mark.parametrize("number", [b"123456789012345678901234567890", b"-9223372036854775809",
                                    b"18446744073709551616", b"18446744073709551615", b"-9223372036854775808"])
def test_integers_past_64_bits_are_stored_as_the_reference_way_reads_them(number):
    body = (b'[{"service": "a", "message": "m", "level": "error", "metadata": {"n": [' + number + b']}, '
            b'"exception": {"type": "E", "value": ' + number + b'}, "user_id": ' + number + b'}]')
    fast, reference = wire.decode_json(body), orjson.loads(body)
    assert type(fast[0]) is wire.WireEntry
    assert outcomes(fast, Limits()) == outcomes(reference, Limits())
    (row, metadata), = outcomes(fast, Limits())
    assert orjson.loads(row[11]) == reference[0]["metadata"] and orjson.loads(row[12]) == reference[0]["exception"]
    assert row[7] == str(reference[0]["user_id"])


@pytest.mark.parametrize("depth", [30, 300, 600, 900, 1000, 1100])
def test_deep_metadata_is_judged_the_same_both_ways(depth):
    body = b'[{"service": "a", "message": "m", "metadata": ' + b'{"k": ' * depth + b'1' + b'}' * depth + b'}]'
    fast = wire.decode_json(body)
    try:
        reference = outcomes(body_module._parse_json(body), Limits())
    except body_module.BodyError:
        assert fast is None  # past orjson's depth limit: a 400 for the body, both ways
        return
    assert fast is None or outcomes(fast, Limits()) == reference
    assert reference[0][0] == "rejected"


def test_an_integer_past_the_range_of_a_float_rejects_its_entry():
    # The reference way cannot read it at all (400 for the whole body); the fast way takes
    # the body and rejects only this entry: the one place where the two differ.
    body = b'[{"service": "a", "message": "m", "metadata": {"n": 1' + b"0" * 400 + b'}}]'
    with pytest.raises(body_module.BodyError):
        body_module._parse_json(body)
    assert outcomes(wire.decode_json(body), Limits()) == [("rejected", "a number of 401 digits is out of range")]


def test_ndjson_with_a_bad_line_is_left_to_the_reference_way_which_names_it():
    body = b'{"service": "a", "message": "1"}\n{"service": "a", "message": \n'
    assert wire.decode_ndjson(body) is None
    with pytest.raises(body_module.BodyError, match="line 2"):
        body_module.parse_entries(body, "application/x-ndjson")
