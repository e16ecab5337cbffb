"""An error storm, a kill -9 while the error groups lag behind it, and a restart.

    .venv/bin/python bench/storm_restart.py                  # 150,000 entries
    .venv/bin/python bench/storm_restart.py --entries 300000

Sends bench/workload.error_storm entries (every entry an error with a 20-frame
stack trace, nearly every one a group of its own) in batches of 1000 from 4
clients to the real gunicorn server, kills the whole server with SIGKILL as
soon as the last batch is acknowledged, starts it again on the same data
directory and prints one table: ingest events/s, the events folded into
error groups at the kill, the time from the restart to the first answer of
/api/health, and to the groups counting every acknowledged event.
"""
import argparse
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time

import orjson
import psutil
import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from bench.common import TOKEN, Server, print_table  # noqa: E402

HEADERS = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}


def send(server, bodies, clients=4):
    """POST every body from `clients` threads; return the entries acknowledged."""
    acked = []

    def client(part):
        session = requests.Session()
        for body in part:
            response = session.post(server.url + "/api/logs", data=body, headers=HEADERS, timeout=120)
            if response.status_code == 200:
                acked.append(response.json()["accepted"])

    threads = [threading.Thread(target=client, args=(bodies[i::clients],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(acked)


def kill_tree(pid):
    processes = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)


def folded(data_dir):
    con = sqlite3.connect("file:{}?mode=ro".format(os.path.join(data_dir, "meta.db")), uri=True, timeout=30)
    try:
        return con.execute("SELECT coalesce(sum(count), 0) FROM error_groups").fetchone()[0]
    finally:
        con.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=150_000)
    args = parser.parse_args()
    entries = list(workload.error_storm(workload.entries(args.entries)))
    bodies = [orjson.dumps(entries[i:i + 1000]) for i in range(0, len(entries), 1000)]
    del entries
    data_dir = tempfile.mkdtemp(prefix="bench-storm-")
    try:
        server = Server(data_dir)
        started = time.perf_counter()
        acked = send(server, bodies)
        ingest_s = time.perf_counter() - started
        kill_tree(server.proc.pid)
        at_kill = folded(data_dir)
        restarted = time.perf_counter()
        server = Server(data_dir)
        health_s = time.perf_counter() - restarted
        deadline = restarted + 900
        while folded(data_dir) < acked and time.perf_counter() < deadline:
            time.sleep(0.1)
        caught_up_s = time.perf_counter() - restarted
        complete = folded(data_dir)
        server.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print("{:,} entries, error storm, batches of 1000, 4 clients".format(args.entries))
    print_table(["acknowledged", "events/s", "folded at kill", "health after s", "groups complete after s",
                 "folded at the end"],
                [["{:,}".format(acked), "{:,.0f}".format(acked / ingest_s), "{:,}".format(at_kill),
                  "{:.1f}".format(health_s), "{:.1f}".format(caught_up_s), "{:,}".format(complete)]])


if __name__ == "__main__":
    main()
