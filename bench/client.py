"""Client benchmark: what `SidecarHandler` costs the application, and how fast it delivers.

    .venv/bin/python bench/client.py            # about a minute
    .venv/bin/python bench/client.py --quick    # fewer calls and records

Prints two tables:

- the cost of one `logger.info("order %s placed", i)` call in the application thread (each call
  timed with perf_counter_ns; median and p99 in µs) with only a NullHandler (the standard
  library's own cost), then with SidecarHandler attached while its sender thread is idle,
  busy sending a backlog to a live sidecar, or retrying against a sidecar that is down; and
  `handler.emit(record)` alone (turning the record into a LogEntry and queueing it);
- throughput: records logged as fast as one or four threads can, delivered to a live sidecar
  (bench.common.Server: the real gunicorn with default settings), from the first call until
  `flush()` returns.
"""
import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import TOKEN, Server, free_port, percentile, print_table  # noqa: E402
from sidecar.client import SidecarHandler  # noqa: E402

EXTRA = {"order_id": 1234, "customer": "c-981", "amount": 42.5, "trace_id": "4bf92f3577b34da6",
         "items": ["A-17", "B-2"]}


def make_logger(name, handler):
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def time_calls(call, count, between=None, round_size=1000):
    """Per-call durations in µs: `count` calls in rounds of `round_size`, `between()` (untimed)
    after each round."""
    clock = time.perf_counter_ns
    durations = []
    done = 0
    while done < count:
        for i in range(done, min(done + round_size, count)):
            started = clock()
            call(i)
            durations.append(clock() - started)
        done += round_size
        if between is not None:
            between()
    return [d / 1000 for d in durations]


def row(label, durations):
    return [label, len(durations), "{:.2f}".format(percentile(durations, 0.5)),
            "{:.2f}".format(percentile(durations, 0.99))]


def call_costs(server_url, calls):
    rows = []
    null_logger = make_logger("bench.null", logging.NullHandler())
    rows.append(row("NullHandler only (stdlib's own cost)",
                    time_calls(lambda i: null_logger.info("order %s placed", i), calls)))
    rows.append(row("NullHandler only, 5 extra fields",
                    time_calls(lambda i: null_logger.info("order %s placed", i, extra=EXTRA), calls)))

    # idle: the sender sends between the timed rounds (flush), never during them
    idle = SidecarHandler(service="bench-idle", url=server_url, token=TOKEN, flush_interval=3600,
                          batch_size=100_000)
    log = make_logger("bench.idle", idle)
    flush = lambda: idle.flush(60)  # noqa: E731
    rows.append(row("SidecarHandler, sender idle",
                    time_calls(lambda i: log.info("order %s placed", i), calls, flush)))
    rows.append(row("SidecarHandler, sender idle, 5 extra fields",
                    time_calls(lambda i: log.info("order %s placed", i, extra=EXTRA), calls, flush)))
    record = log.makeRecord("bench.idle", logging.INFO, __file__, 1, "order %s placed", (1,), None)
    rows.append(row("handler.emit(record) alone, sender idle",
                    time_calls(lambda i: idle.emit(record), calls, flush)))
    idle.close()

    # busy: a backlog of 100,000 records is being sent while the calls are timed
    busy = SidecarHandler(service="bench-busy", url=server_url, token=TOKEN, max_queue=1_000_000)
    log = make_logger("bench.busy", busy)
    for i in range(100_000):
        log.info("backlog %s", i, extra=EXTRA)
    time.sleep(0.2)
    sending = busy.stats()["batches"]
    durations = time_calls(lambda i: log.info("order %s placed", i), calls)
    assert busy.stats()["queued"] > 0 and busy.stats()["batches"] > sending, "the sender was not busy throughout"
    rows.append(row("SidecarHandler, sender busy sending a backlog", durations))
    busy.flush(120)
    busy.close()

    # down: nothing listens at the URL; the sender retries with backoff, the queue fills
    down = SidecarHandler(service="bench-down", url="http://127.0.0.1:{}".format(free_port()), token=TOKEN,
                          max_queue=1_000_000, backoff_base=0.01, backoff_cap=0.05, close_timeout=0.5)
    log = make_logger("bench.down", down)
    rows.append(row("SidecarHandler, sidecar down (sender retrying)",
                    time_calls(lambda i: log.info("order %s placed", i), calls)))
    assert down.stats()["retries"] > 0
    full = SidecarHandler(service="bench-full", url="http://127.0.0.1:{}".format(free_port()), token=TOKEN,
                          max_queue=10, close_timeout=0.5)
    log = make_logger("bench.full", full)
    rows.append(row("SidecarHandler, queue full (drop_new)",
                    time_calls(lambda i: log.info("order %s placed", i), calls)))
    down.close()
    full.close()
    return rows


def throughput(server_url, records, threads, **settings):
    handler = SidecarHandler(service="bench-throughput", url=server_url, token=TOKEN, max_queue=records,
                             **settings)
    log = make_logger("bench.throughput.{}".format(time.monotonic_ns()), handler)
    per_thread = records // threads

    def produce():
        for i in range(per_thread):
            log.info("order %s placed", i, extra=EXTRA)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    logged = time.perf_counter() - started
    flushed = handler.flush(600)
    elapsed = time.perf_counter() - started
    stats = handler.stats()
    handler.close()
    assert flushed and stats["sent"] == per_thread * threads and stats["dropped_total"] == 0, stats
    return [threads, settings.get("batch_size", 500), "{:,}".format(stats["sent"]), "{:.2f}".format(logged),
            "{:.2f}".format(elapsed), "{:,.0f}".format(stats["sent"] / elapsed), stats["batches"],
            stats["retries"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 timed calls and 50,000 records")
    args = parser.parse_args()
    calls = 20_000 if args.quick else 100_000
    records = 50_000 if args.quick else 200_000
    data_dir = tempfile.mkdtemp(prefix="bench-client-")
    server = Server(data_dir)
    try:
        print("Python {}, {} cores, {}; sidecar: default settings".format(
            platform.python_version(), os.cpu_count(), platform.platform(terse=True)))
        print()
        print("Cost of one logger.info() call in the application thread (µs)")
        print_table(["case", "calls", "median µs", "p99 µs"], call_costs(server.url, calls))
        print()
        print("Throughput to a live sidecar: {:,} records, 5 extra fields each".format(records))
        print_table(["threads", "batch", "records", "logged s", "delivered s", "records/s", "batches", "retries"],
                    [throughput(server.url, records, 1),
                     throughput(server.url, records, 4),
                     throughput(server.url, records, 1, batch_size=2000)])
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
