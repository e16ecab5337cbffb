"""What a batch adds to the rollups, counted before it is written.

The request thread that validated a batch counts it (`Tally`): the volume
by minute, service and level, and the latency of entries whose metadata has
a `duration_ms`, from the metadata dicts it already decoded. The batch
carries its tally through the writer to the error-group tracker, which adds
the tallies of the commits it folds to meta.db in the transaction that moves
the segment's watermark (ingest/groups.py). Counting here costs about a
microsecond an entry; reading the rows back from the segment with
json_extract cost the tracker about 7 µs an entry of CPU, taken from the
writer and the request threads on a 2-core host (bench/ingest.py).

The tracker still reads a segment back (`Volume.of_segment`,
`Latency.of_segment`) whenever what was handed over does not line up with
the watermark: after a restart, or when another process wrote the rows.
"""
from .latency import Latency
from .rollups import Volume


class Tally:
    __slots__ = ("volume", "latency")

    def __init__(self, volume=None, latency=None):
        self.volume = volume if volume is not None else Volume()
        self.latency = latency if latency is not None else Latency()

    @classmethod
    def of_rows(cls, rows, metadatas=None):
        """The tally of row tuples; `metadatas`, when given, are the dicts each row's metadata
        column was encoded from (None for a row without), saving a decoding per row."""
        latency = Latency().add_rows(rows) if metadatas is None else Latency().add_decoded(rows, metadatas)
        return cls(Volume.of_rows(rows), latency)

    def add(self, other):
        self.volume.add(other.volume)
        self.latency.add(other.latency)
        return self
