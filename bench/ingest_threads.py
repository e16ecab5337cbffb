"""Where the server's CPU goes under the ingest load: CPU time per thread, read from /proc.

    .venv/bin/python bench/ingest_threads.py                      # 400k entries, batches of 1000, 4 clients
    .venv/bin/python bench/ingest_threads.py --entries 1000000 --server cache_bytes=8388608

Starts the real gunicorn server, sends the seeded workload of bench/ingest.py,
and prints events/s, p50/p99, the server's and the client's CPU µs an entry
(the client runs on the same two cores), then one row per
thread of the server's processes: its CPU time, and the share of the run it
spent on a CPU and runnable but waiting for one (from schedstat; the rest it
was blocked, e.g. on taking the GIL back). Thread names come from
`py-spy dump` when py-spy is on the PATH (the worker's writer, groups,
checkpointer and request threads); otherwise the rows show thread ids only.
"""
import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import orjson
import psutil
import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import workload  # noqa: E402
from bench.common import TOKEN, Server, percentile, print_table  # noqa: E402
from bench.ingest import make_bodies  # noqa: E402


def cpu_by_thread(root):
    """{(pid, tid): (seconds on a CPU, seconds runnable but waiting for one)} over the process
    tree of `root`, from /proc/<pid>/task/<tid>/schedstat. The rest of a thread's wall time
    it was blocked: on I/O, on a lock, on work, or on taking the GIL back."""
    times = {}
    for proc in [root] + root.children(recursive=True):
        try:
            for thread in proc.threads():
                with open("/proc/{}/task/{}/schedstat".format(proc.pid, thread.id)) as stat:
                    on_cpu, waiting = stat.read().split()[:2]
                times[(proc.pid, thread.id)] = (int(on_cpu) / 1e9, int(waiting) / 1e9)
        except (psutil.Error, OSError):
            pass
    return times


def thread_names(pids):
    """{tid: name} from py-spy dump, when py-spy is installed."""
    names = {}
    spy = shutil.which("py-spy")
    for pid in pids if spy else ():
        dump = subprocess.run([spy, "dump", "--nonblocking", "-p", str(pid)], capture_output=True, text=True)
        for line in dump.stdout.splitlines():
            if line.startswith("Thread "):  # Thread 5153 (idle): "sidecar-writer"
                names[int(line.split()[1], 0)] = line.rsplit(":", 1)[-1].strip().strip('"')
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--server", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    encoded = [orjson.dumps(e) for e in workload.entries(args.entries, seed=7)]
    bodies = make_bodies(encoded, args.batch)
    data_dir = tempfile.mkdtemp(prefix="bench-threads-")
    server = Server(data_dir, **dict(item.split("=", 1) for item in args.server))
    root = psutil.Process(server.proc.pid)
    counter, latencies = itertools.count(), []
    headers = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}

    def client():
        session = requests.Session()
        while (index := next(counter)) < len(bodies):
            started = time.perf_counter()
            response = session.post(server.url + "/api/logs", data=bodies[index], headers=headers)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()

    try:
        before = cpu_by_thread(root)
        names = {}
        namer = threading.Timer(2.0, lambda: names.update(thread_names([p.pid for p in root.children()])))
        namer.start()
        started, client_cpu = time.perf_counter(), time.process_time()
        clients = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        elapsed, client_cpu = time.perf_counter() - started, time.process_time() - client_cpu
        namer.join()
        after = cpu_by_thread(root)
    finally:
        server.stop()
        shutil.rmtree(data_dir)
    used = {key: tuple(now - then for now, then in zip(after[key], before.get(key, (0.0, 0.0)))) for key in after}
    total = sum(on_cpu for on_cpu, _ in used.values())
    print("{:,} entries, batches of {}, {} clients: {:,.0f} events/s, p50 {:.0f} ms, p99 {:.0f} ms, "
          "server CPU {:.1f} µs an entry ({:.2f} cores), client CPU {:.1f} µs an entry ({:.2f} cores)".format(
              args.entries, args.batch, args.clients, args.entries / elapsed, percentile(latencies, 0.5) * 1000,
              percentile(latencies, 0.99) * 1000, total / args.entries * 1e6, total / elapsed,
              client_cpu / args.entries * 1e6, client_cpu / elapsed))
    rows = [["master" if pid == root.pid else "worker {}".format(pid), tid, names.get(tid, "?"),
             "{:.2f}".format(on_cpu), "{:.1f}".format(on_cpu / args.entries * 1e6),
             "{:.0f}%".format(100 * on_cpu / elapsed), "{:.0f}%".format(100 * waiting / elapsed)]
            for (pid, tid), (on_cpu, waiting) in sorted(used.items(), key=lambda item: -item[1][0]) if on_cpu >= 0.05]
    print_table(["process", "thread id", "name", "CPU s", "µs an entry", "on a CPU", "waiting for one"], rows)


if __name__ == "__main__":
    main()
