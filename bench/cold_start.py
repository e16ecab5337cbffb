"""Cold start: the real gunicorn, from process start to the first 200 on /api/health.

    .venv/bin/python bench/cold_start.py                      # 5 starts on an empty and on a populated data dir
    .venv/bin/python bench/cold_start.py --runs 3 --cpu-limit 0.1   # the same, throttled to a tenth of one core

Each run starts `.venv/bin/gunicorn -c gunicorn.conf.py` (the settings a free
instance uses: one worker, 4 threads) from a copy of the project's code
compiled as render.yaml's build does it (`compileall`), and measures from just before the
process is spawned: the listening socket (a TCP connect succeeds), the first
200 on /api/health, the CPU seconds the process tree used until then, the
first /datasette/ request (Datasette is loaded on first use) and the RSS of
the tree (master + worker) after the first 200 and after Datasette.
Scenarios: `empty` (a new data dir each run, as after a free instance's disk
was wiped), `populated` (a copy of a store of --entries entries in several
segments, with error groups), `empty+alert-urls` (SIDECAR_ALERT_URLS set:
apprise validates the channels at start), and `empty-no-pyc` (the project's
code without compiled bytecode, as after a restart on a host whose build did
not run `compileall`: render.yaml's build does).

--cpu-limit F emulates a host's CPU quota (Render free: 0.1): the server is
pinned to one core and stopped/continued (SIGSTOP/SIGCONT) so that it runs F
of every 100 ms. Without it, `est. s at 0.1 CPU` is the CPU seconds divided
by 0.1: the wall time where start-up is CPU-bound.

Then the import-time top 10 of the start path (`python -X importtime`,
`create_app()` on an empty data dir, compiled code), summed per top-level package.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
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
from bench.common import ROOT, TOKEN, Server, dir_bytes, free_port, print_table  # noqa: E402

SERVER_ENV = {"SIDECAR_WORKERS": "1", "SIDECAR_THREADS": "4"}  # as render.yaml sets them
ALERT_URLS = "json://127.0.0.1:9/sidecar-alerts"


class Throttle:
    """Lets a process group run `fraction` of every `period_s` (SIGCONT ... SIGSTOP)."""

    def __init__(self, pgid, fraction, period_s=0.1):
        self.pgid, self.fraction, self.period_s = pgid, fraction, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _signal(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            self._stop.set()

    def _run(self):
        while not self._stop.is_set():
            self._signal(signal.SIGCONT)
            time.sleep(self.period_s * self.fraction)
            if self._stop.is_set():
                break
            self._signal(signal.SIGSTOP)
            time.sleep(self.period_s * (1 - self.fraction))
        self._signal(signal.SIGCONT)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._signal(signal.SIGCONT)


def tree(proc):
    try:
        root = psutil.Process(proc.pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def cpu_seconds(proc):
    total = 0.0
    for process in tree(proc):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def rss_mb(proc):
    sizes = []
    for process in tree(proc):
        try:
            sizes.append(process.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes) / 2**20, (max(sizes) if sizes else 0) / 2**20


def project_copy(directory, compiled):
    """The project's code as a host runs it: compiled by the build (render.yaml runs compileall), or
    without bytecode (a build of `pip install` alone: every module is compiled at each start, as a
    wiped disk loses what was written at run time)."""
    os.makedirs(directory)
    for name in ("sidecar", "ingest", "retention", "gunicorn.conf.py"):
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(directory, name), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, directory)
    if compiled:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash",
                        "sidecar", "ingest", "retention"], cwd=directory, check=True)
    return directory


def one_start(data_dir, cpu_limit=None, extra_env=None, cwd=ROOT):
    port = free_port()
    url = "http://127.0.0.1:{}".format(port)
    env = dict(os.environ, SIDECAR_DATA_DIR=data_dir, PORT=str(port), SIDECAR_INGEST_TOKENS=TOKEN,
               PYTHONDONTWRITEBYTECODE="1", **SERVER_ENV)  # every run starts from the same bytecode
    env.update(extra_env or {})
    preexec = (lambda: os.sched_setaffinity(0, {0})) if cpu_limit else None
    started = time.perf_counter()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-c", "gunicorn.conf.py"],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=preexec)
    throttle = Throttle(proc.pid, cpu_limit) if cpu_limit else None
    result = {}
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("gunicorn exited or did not listen")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.002)
        result["listen_ms"] = (time.perf_counter() - started) * 1000
        while True:  # the connection waits in the listen backlog until the worker is ready
            if time.time() > deadline:
                raise RuntimeError("no 200 on /api/health")
            try:
                response = requests.get(url + "/api/health", timeout=120)
                if response.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.01)
        result["first_200_ms"] = (time.perf_counter() - started) * 1000
        result["cpu_s"] = cpu_seconds(proc)
        result["rss_mb"], result["worker_rss_mb"] = rss_mb(proc)
        before = time.perf_counter()
        response = requests.get(url + "/datasette/", timeout=300)
        assert response.status_code == 200, response.status_code
        result["datasette_ms"] = (time.perf_counter() - before) * 1000
        before = time.perf_counter()
        requests.get(url + "/api/health", timeout=60)
        result["warm_health_ms"] = (time.perf_counter() - before) * 1000
        result["rss_datasette_mb"], _ = rss_mb(proc)
    finally:
        if throttle:
            throttle.stop()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return result


def populate(directory, entries):
    """A store of `entries` entries in several closed segments and a head, with error groups."""
    server = Server(directory, segment_max_bytes=16 * 2**20)
    headers = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}
    session = requests.Session()
    batch = []
    for entry in workload.entries(entries, seed=11, span_s=6 * 3600):
        batch.append(orjson.dumps(entry))
        if len(batch) == 1000:
            session.post(server.url + "/api/logs", data=b"[" + b",".join(batch) + b"]", headers=headers).raise_for_status()
            batch = []
    if batch:
        session.post(server.url + "/api/logs", data=b"[" + b",".join(batch) + b"]", headers=headers).raise_for_status()
    time.sleep(2)  # let the error-group tracker and the rollups catch up
    server.stop()
    return directory


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_top(code_dir, limit=10):
    """(package, self ms summed over its modules) for the start path, and the total."""
    code = ("import shutil, tempfile\nfrom sidecar import create_app\nd = tempfile.mkdtemp()\n"
            "app = create_app({'data_dir': d})\napp.extensions['sidecar'].close()\nshutil.rmtree(d)\n")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=code_dir, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    per_package, total = {}, 0
    for line in done.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        self_us, name = int(match.group(1)), match.group(4)
        package = name.split(".")[0]
        per_package[package] = per_package.get(package, 0) + self_us
        total += self_us
    top = sorted(per_package.items(), key=lambda item: -item[1])[:limit]
    return [(package, us / 1000) for package, us in top], total / 1000


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="starts per scenario (default 5)")
    parser.add_argument("--entries", type=int, default=300_000, help="entries in the populated store (default 300k)")
    parser.add_argument("--cpu-limit", type=float, default=None, help="emulate a CPU quota, e.g. 0.1")
    parser.add_argument("--scenarios", default="empty,populated,empty+alert-urls,empty-no-pyc")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    print("Python {}, {} cores, gunicorn: 1 worker x 4 threads, CPU: {}".format(
        sys.version.split()[0], os.cpu_count(),
        "{:g} of one core (SIGSTOP/SIGCONT every 100 ms)".format(args.cpu_limit) if args.cpu_limit else "unlimited"))
    work = tempfile.mkdtemp(prefix="bench-cold-")
    template = None
    rows = []
    try:
        build = project_copy(os.path.join(work, "build"), compiled=True)
        without_pyc = project_copy(os.path.join(work, "no-pyc"), compiled=False)
        if "populated" in scenarios:
            template = populate(os.path.join(work, "template"), args.entries)
            segment_count = len([n for n in os.listdir(os.path.join(template, "segments")) if n.endswith(".db")])
            print("populated store: {:,} entries, {} segment files, {:.0f} MB".format(
                args.entries, segment_count, dir_bytes(template) / 1e6))
        for scenario in scenarios:
            results = []
            for run in range(args.runs):
                data_dir = os.path.join(work, "{}-{}".format(scenario, run))
                if scenario == "populated":
                    shutil.copytree(template, data_dir)
                else:
                    os.makedirs(data_dir)
                extra = {"SIDECAR_ALERT_URLS": ALERT_URLS} if scenario.endswith("alert-urls") else {}
                code = without_pyc if scenario == "empty-no-pyc" else build
                results.append(one_start(data_dir, args.cpu_limit, extra, code))
                shutil.rmtree(data_dir)

            def col(key, fmt="{:.0f}"):
                values = [r[key] for r in results]
                return fmt.format(median(values)) if len(values) == 1 else "{} ({})".format(
                    fmt.format(median(values)), fmt.format(max(values)))
            cpu = median([r["cpu_s"] for r in results])
            rows.append([scenario, len(results), col("listen_ms"), col("first_200_ms"), "{:.2f}".format(cpu),
                         "{:.1f}".format(cpu / 0.1) if not args.cpu_limit else "-",
                         col("datasette_ms"), col("warm_health_ms", "{:.1f}"), col("rss_mb"), col("worker_rss_mb"),
                         col("rss_datasette_mb")])
        print("median (max) over the runs; ms from just before the process is spawned")
        print_table(["scenario", "runs", "listening ms", "first 200 ms", "CPU s to 200", "est. s at 0.1 CPU",
                     "1st /datasette/ ms", "warm health ms", "RSS MB", "worker RSS MB", "RSS after datasette MB"],
                    rows)
        top, total = import_top(build)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nimport time of the start path (create_app on an empty data dir): {:.0f} ms in all; top 10 packages "
          "by their modules' own time:".format(total))
    print_table(["package", "ms"], [[package, "{:.1f}".format(ms)] for package, ms in top])


if __name__ == "__main__":
    main()
