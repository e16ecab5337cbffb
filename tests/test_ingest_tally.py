"""A batch's tally, counted from the metadata dicts validation decoded, equals the tally read
back from the stored rows (the tracker's fallback), entry for entry."""
import pytest

from ingest.entries import Limits, to_row_and_metadata
from ingest.tally import Tally

from test_ingest_latency import TS, entries

NOW_TEXT, MAX_TS = "2026-01-01T00:00:00.000Z", "2099-01-01T00:00:00.000Z"


def decoded(batch, limits=Limits()):
    pairs = [to_row_and_metadata(entry, NOW_TEXT, MAX_TS, limits) for entry in batch]
    return [row for row, _ in pairs], [metadata for _, metadata in pairs]


def same(first, second):
    return (first.volume.by_level == second.volume.by_level and first.volume.received == second.volume.received
            and first.latency.cells == second.latency.cells)


UNUSUAL = [
    # truncated metadata: duration_ms kept, the long value dropped or cut
    {"service": "api", "message": "m", "timestamp": TS,
     "metadata": {"duration_ms": 12.5, "route": "/r", "blob": "x" * 70000}},
    # truncated metadata: duration_ms after the cut is dropped
    {"service": "api", "message": "m", "timestamp": TS,
     "metadata": {"blob": "x" * 70000, "more": "y" * 70000, "duration_ms": 3}},
    # a sensitive key scrubbed, a card number in the route
    {"service": "api", "message": "m", "timestamp": TS,
     "metadata": {"duration_ms": 8, "password": "hunter2", "route": "/pay/4111 1111 1111 1111"}},
    # a long route, a status as text, an extra field that collides with metadata
    {"service": "web", "message": "m", "timestamp": TS, "route": "/top",
     "metadata": {"duration_ms": 0, "route": "/" + "a" * 300, "status": "503"}},
    {"service": "web", "message": "m", "timestamp": TS, "metadata": {"duration_ms": 1e308, "status": 404}},
    {"service": "web", "message": "m", "timestamp": TS, "metadata": {"duration_ms": None}},
    {"service": "web", "message": "m", "timestamp": TS, "metadata": {}},
    {"service": "sidecar.probe", "message": "not counted in volume", "timestamp": TS},
    # statuses that are not counted as 4xx or 5xx
    *[{"service": "web", "message": "m", "timestamp": TS, "metadata": {"duration_ms": 1, "status": status}}
      for status in (True, 500.0, "5O3", 700, 99, "", None, [500])],
]


@pytest.mark.parametrize("batch", [entries(), UNUSUAL], ids=["latency-table", "unusual"])
def test_tally_from_dicts_equals_tally_from_stored_rows(batch):
    rows, metadatas = decoded(batch)
    from_dicts = Tally.of_rows(rows, metadatas)
    assert same(from_dicts, Tally.of_rows(rows))
    assert from_dicts.latency.count > 0


def test_tallies_of_interleaved_halves_add_up():
    # The same cells in both halves: counts, sums, 4xx and 5xx add up, the max is the larger.
    rows, metadatas = decoded(entries() + UNUSUAL)
    total = Tally.of_rows(rows[::2], metadatas[::2]).add(Tally.of_rows(rows[1::2], metadatas[1::2]))
    assert same(total, Tally.of_rows(rows, metadatas))


def test_tallies_add_up():
    rows, metadatas = decoded(entries() + UNUSUAL)
    half = len(rows) // 2
    total = Tally().add(Tally.of_rows(rows[:half], metadatas[:half])).add(Tally.of_rows(rows[half:]))
    assert same(total, Tally.of_rows(rows))
    assert sum(total.volume.received.values()) == len(rows) - 1  # the probe entry is not counted
