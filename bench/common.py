"""Helpers the benchmarks share: a real gunicorn server, RSS sampling, tables."""
import os
import socket
import subprocess
import sys
import threading
import time

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "bench-token-0123456789abcdef"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn with the repo's gunicorn.conf.py on a loopback port."""

    def __init__(self, data_dir, **settings):
        self.port = free_port()
        env = dict(os.environ, SIDECAR_DATA_DIR=data_dir, PORT=str(self.port),
                   SIDECAR_INGEST_TOKENS=TOKEN)
        env.update({"SIDECAR_" + key.upper(): str(value) for key, value in settings.items()})
        self.proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-c", "gunicorn.conf.py"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = "http://127.0.0.1:{}".format(self.port)
        deadline = time.time() + 300  # a big store takes a while to reconcile at start
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/api/health", timeout=5).status_code in (200, 503):
                    return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


class PeakRss:
    """Samples the RSS of a process tree every 100 ms: `peak` is the largest sum over
    the tree (master and workers), `peak_process` the largest single process."""

    def __init__(self, pid):
        self.root = psutil.Process(pid)
        self.peak = 0
        self.peak_process = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            try:
                sizes = [proc.memory_info().rss for proc in [self.root] + self.root.children(recursive=True)]
                self.peak = max(self.peak, sum(sizes))
                self.peak_process = max(self.peak_process, max(sizes))
            except psutil.Error:
                pass
            self._stop.wait(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).rjust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
