import gzip
import zlib

import msgspec
import pytest

from ingest.body import BodyError, decompress, parse_entries
from ingest.wire import WireEntry


def given_fields(entry):
    """An entry as the dict of the fields its client sent (a WireEntry's defaults left out)."""
    if type(entry) is not WireEntry:
        return entry
    defaults = WireEntry(service="", message="")
    return {name: value for name, value in msgspec.structs.asdict(entry).items()
            if value != getattr(defaults, name) or name in ("service", "message")}


@pytest.mark.parametrize("body, content_type, expected", [
    (b'{"service": "a", "message": "m"}', "application/json", [{"service": "a", "message": "m"}]),
    (b'[{"message": "1"}, {"message": "2"}]', "application/json; charset=utf-8", [{"message": "1"}, {"message": "2"}]),
    (b'{"logs": [{"message": "1"}]}', "application/json", [{"message": "1"}]),
    (b'{"message": "1"}\n\n{"message": "2"}\n', "application/x-ndjson", [{"message": "1"}, {"message": "2"}]),
    (b'{"message": "1"}\r\n{"message": "2"}', "application/jsonl", [{"message": "1"}, {"message": "2"}]),
    (b'[]', "application/json", []),
    (b' [{"service": "a", "message": "m", "level": "warn"}]', "application/json",
     [{"service": "a", "message": "m", "level": "warn"}]),
    (b'{"logs": [{"service": "a", "message": "m"}]}', "application/json", [{"service": "a", "message": "m"}]),
    (b'{"service": "a", "message": "1"}\n\n{"service": "b", "message": "2"}\n', "application/x-ndjson",
     [{"service": "a", "message": "1"}, {"service": "b", "message": "2"}]),
    # A UTF-8 byte order mark (some Windows tools write one) is skipped, as RFC 8259 allows.
    (b'\xef\xbb\xbf[{"service": "a", "message": "m"}]', "application/json", [{"service": "a", "message": "m"}]),
    (b'\xef\xbb\xbf{"service": "a", "message": "m"}\n', "application/x-ndjson", [{"service": "a", "message": "m"}]),
    # An empty body holds no entries (the API answers 400 empty_batch), in either format.
    (b'', "application/json", []),
    (b' \r\n ', "application/json", []),
    (b'\n\n', "application/x-ndjson", []),
    # An entry may have an unknown field named "logs": it is an entry, not the wrapper.
    (b'{"service": "a", "message": "m", "logs": [1]}', "application/json",
     [{"service": "a", "message": "m", "logs": [1]}]),
])
def test_accepted_shapes(body, content_type, expected):
    assert [given_fields(entry) for entry in parse_entries(body, content_type)] == expected


@pytest.mark.parametrize("body, content_type, status, code, detail", [
    (b'{"a": 1,}', "application/json", 400, "invalid_json", {"line": 1}),
    (b'[1, 2', "application/json", 400, "invalid_json", {"line": 1}),
    (b'{"m": 1}\n{"m": 2}\n{oops\n', "application/x-ndjson", 400, "invalid_json", {"line": 3}),
    (b'"text"', "application/json", 400, "invalid_body", {}),
    (b'{"logs": 5}', "application/json", 400, "invalid_body", {}),
    (b'{"logs": [{"service": "a", "message": "m"}], "source": "x"}', "application/json", 400, "invalid_body", {}),
    (b'a=1', "application/x-www-form-urlencoded", 415, "unsupported_media_type", {}),
    (b'{}', None, 415, "unsupported_media_type", {}),
])
def test_bad_bodies(body, content_type, status, code, detail):
    with pytest.raises(BodyError) as caught:
        parse_entries(body, content_type)
    assert (caught.value.status, caught.value.code) == (status, code)
    for key, value in detail.items():
        assert caught.value.details[key] == value


def test_ndjson_error_names_the_line():
    with pytest.raises(BodyError, match="line 2 is not valid JSON"):
        parse_entries(b'{"m": 1}\n{"m": \n', "application/x-ndjson")


def test_json_error_names_the_position():
    with pytest.raises(BodyError) as caught:
        parse_entries(b'[\n{"m": 1},\n{"m" 2}]', "application/json")
    assert caught.value.details["line"] == 3 and caught.value.details["position"] > 0


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress),
    (None, lambda data: data), ("identity", lambda data: data),
])
def test_decompress(encoding, compress):
    data = b'{"message": "hello"}' * 100
    assert decompress(compress(data), encoding, 10_000) == data


def test_gzip_bomb_stops_at_the_cap():
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB in about 50 KB
    with pytest.raises(BodyError) as caught:
        decompress(bomb, "gzip", 1_000_000)
    assert caught.value.status == 413 and caught.value.code == "body_too_large"


def test_brotli_body_and_bomb():
    import brotli
    assert decompress(brotli.compress(b"hello" * 100), "br", 1000) == b"hello" * 100
    with pytest.raises(BodyError) as caught:
        decompress(brotli.compress(b"\0" * 50_000_000), "br", 1_000_000)
    assert caught.value.status == 413


def test_uncompressed_body_over_the_cap():
    with pytest.raises(BodyError) as caught:
        decompress(b"x" * 101, None, 100)
    assert caught.value.status == 413


def test_every_member_of_a_gzip_stream_is_read():
    # `cat a.gz b.gz` is one valid gzip stream (RFC 1952 2.2); gunzip reads both members.
    body = gzip.compress(b'{"message": "one"}\n') + gzip.compress(b'{"message": "two"}\n')
    assert decompress(body, "gzip", 10_000) == b'{"message": "one"}\n{"message": "two"}\n'
    assert decompress(body + b"\0" * 512, "gzip", 10_000).count(b"message") == 2  # tar-style padding


def test_the_cap_counts_every_gzip_member():
    body = gzip.compress(b"x" * 600) + gzip.compress(b"y" * 600)
    with pytest.raises(BodyError) as caught:
        decompress(body, "gzip", 1000)
    assert caught.value.status == 413


def test_raw_deflate_is_read_as_well_as_zlib():
    data = b'{"message": "hello"}' * 100
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decompress(raw.compress(data) + raw.flush(), "deflate", 10_000) == data


@pytest.mark.parametrize("body, encoding, status, code", [
    (gzip.compress(b"x" * 100) + b"trailing junk", "gzip", 400, "invalid_encoding"),
    (b"not gzip at all", "gzip", 400, "invalid_encoding"),
    (gzip.compress(b"x" * 1000)[:-12], "gzip", 400, "invalid_encoding"),
    (b"data", "zstd", 415, "unsupported_encoding"),
    (b"\xff\xfenot brotli", "br", 400, "invalid_encoding"),
])
def test_bad_encodings(body, encoding, status, code):
    with pytest.raises(BodyError) as caught:
        decompress(body, encoding, 10_000)
    assert (caught.value.status, caught.value.code) == (status, code)
