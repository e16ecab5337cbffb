"""What a request thread spends on an entry: decode, validate, tally and encode, in-process.

    .venv/bin/python bench/request_path.py            # wall time, and instructions when valgrind is there
    .venv/bin/python bench/request_path.py --no-valgrind

The request threads hold the GIL for all of this, so it bounds ingest throughput
together with the writer (bench/ingest_threads.py shows both in the server). Two
ways in are measured side by side on the seeded workload of bench/ingest.py: the
fast one (msgspec into WireEntry structs, ingest/wire.py) and the reference one
(orjson into dicts, ingest/body.py), which bodies with unknown fields or wrong
types take. Wall time on a shared 2-core VM drifts by 10-20% from run to run;
the instruction count from callgrind does not (the same count for the same code
and input), so it is the figure to compare changes by. It is measured as the
difference between two batch counts, which cancels start-up.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from bench.common import print_table  # noqa: E402
from bench.ingest import make_bodies  # noqa: E402
from ingest import body as body_module  # noqa: E402
from ingest.entries import Limits, format_ts, to_row_and_metadata  # noqa: E402
from ingest.fingerprint import Fingerprinter  # noqa: E402
from ingest.scrub import body_may_hold_cards  # noqa: E402
from ingest.tally import Tally  # noqa: E402
from ingest.writer import Batch  # noqa: E402

WAYS = {
    "fast (msgspec structs)": lambda body: body_module.parse_entries(body, "application/json"),
    "reference (orjson dicts)": body_module._parse_json,
}


def run_batches(bodies, decode):
    """What the request thread does with each body (sidecar/ingest_api.py), without HTTP."""
    fingerprinter = Fingerprinter()
    now = datetime.now(timezone.utc)
    received_at, max_ts = format_ts(now), format_ts(now + timedelta(days=7))
    with_cards, without_cards = Limits(), Limits(cards_possible=False)
    for body in bodies:
        entries = decode(body)
        limits = with_cards if body_may_hold_cards(body) else without_cards
        rows, metadatas = [], []
        for entry in entries:
            row, metadata = to_row_and_metadata(entry, received_at, max_ts, limits, fingerprinter)
            rows.append(row)
            metadatas.append(metadata)
        Batch(rows, None, "{}", Tally.of_rows(rows, metadatas))


def load_bodies(path, count):
    with open(path, "rb") as source:
        return orjson.loads(source.read())[:count]


def instructions(bodies_path, way, batches):
    """Instructions callgrind counts for a child that runs `batches` batches one way."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--child", bodies_path, way, str(batches)], capture_output=True, text=True, check=True).stderr
    line = next(line for line in out.splitlines() if "Collected" in line)
    return int(line.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50, help="batches of 1000 entries for the wall time")
    parser.add_argument("--no-valgrind", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        bodies_path, way, count = args.child
        run_batches([text.encode() for text in load_bodies(bodies_path, int(count))], WAYS[way])
        return
    bodies = make_bodies([orjson.dumps(e) for e in workload.entries(args.batches * 1000, seed=7)], 1000)
    use_valgrind = not args.no_valgrind and shutil.which("valgrind")
    rows = []
    with tempfile.NamedTemporaryFile(suffix=".json") as saved:
        saved.write(orjson.dumps([body.decode() for body in bodies]))
        saved.flush()
        for way, decode in WAYS.items():
            run_batches(bodies[:5], decode)  # warm
            started = time.perf_counter()
            run_batches(bodies, decode)
            wall_us = (time.perf_counter() - started) / (len(bodies) * 1000) * 1e6
            counted = "-"
            if use_valgrind:
                few, many = 5, min(25, len(bodies))
                per_entry = (instructions(saved.name, way, many) - instructions(saved.name, way, few)) / (
                    (many - few) * 1000)
                counted = "{:,.0f}".format(per_entry)
            rows.append([way, "{:.1f}".format(wall_us), counted])
    print("{:,} entries in batches of 1000 (bench/workload.py, seed 7)".format(len(bodies) * 1000))
    print_table(["way in", "µs an entry (wall)", "instructions an entry"], rows)


if __name__ == "__main__":
    main()
