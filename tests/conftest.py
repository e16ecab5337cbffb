import glob
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": "Bearer " + TOKEN}


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return str(path)


@pytest.fixture
def app(data_dir):
    from sidecar import create_app
    application = create_app({"data_dir": data_dir, "ingest_tokens": [TOKEN]})
    yield application
    application.extensions["sidecar"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def wait_until(condition, timeout=10):
    """Poll `condition` until it holds or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The real gunicorn, with the repo's gunicorn.conf.py, on a loopback port."""

    def __init__(self, data_dir, tmp_path, **settings):
        self.data_dir = data_dir
        self.settings = settings
        self.log_path = str(tmp_path / "server-{}.log".format(time.monotonic_ns()))
        self.proc = None

    def start(self, wait=True):
        self.port = free_port()
        self.url = "http://127.0.0.1:{}".format(self.port)
        env = dict(os.environ, SIDECAR_DATA_DIR=self.data_dir, PORT=str(self.port), SIDECAR_INGEST_TOKENS=TOKEN)
        env.update({"SIDECAR_" + key.upper(): str(value) for key, value in self.settings.items()})
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=ROOT,
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + self.output())
            try:
                requests.get(self.url + "/api/health", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("gunicorn did not answer: " + self.output())

    def output(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode(errors="replace")

    def post(self, payload=None, data=None, headers=None, **kwargs):
        headers = dict(AUTH, **(headers or {}))
        return requests.post(self.url + "/api/logs", json=payload, data=data, headers=headers, timeout=60, **kwargs)

    def worker_pids(self):
        import psutil
        return [child.pid for child in psutil.Process(self.proc.pid).children()]

    def hang_up_kept_alive(self):
        """Shut down this process's connections to the server, as a client does at exit.

        A stopping gunicorn keeps a kept-alive connection open up to 2 s for a request that may be
        on its way; a response object a test still holds keeps its connection alive, and every stop
        would wait those 2 s. Only for a test that is over: a request in flight would be cut. The
        sockets stay the test's: they are shut down through a duplicate.
        """
        import psutil
        for conn in psutil.Process().net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == self.port and conn.fd >= 0:
                try:
                    with socket.socket(fileno=os.dup(conn.fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # closed meanwhile
                    pass

    def kill9(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self.proc:
            self.log.close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 MiB tmpfs: a data disk that really fills up (ENOSPC for every process on it, unlike
    RLIMIT_FSIZE, which also fails the writes a full data disk leaves alone, /dev/shm's)."""
    path = tmp_path / "tiny"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        # Reason: only root can mount the tiny filesystem (CI runs as root); elsewhere the
        # full-disk tests cannot make a disk that really fills.
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN): " + mounted.stderr.strip())
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(directory):
    """Write a file in `directory` until its filesystem is full; return the file's path."""
    path = os.path.join(directory, "filler")
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return path


@pytest.fixture
def live_server(data_dir, tmp_path):
    """Factory: live_server(**settings) starts gunicorn on `data_dir`; all are stopped at teardown."""
    servers = []

    def start(**settings):
        server = LiveServer(data_dir, tmp_path, **settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.hang_up_kept_alive()  # the test is over: nothing of it is in flight
        server.stop()


def segment_files(data_dir):
    return sorted(glob.glob(os.path.join(data_dir, "segments", "logs-*.db")))


def stored_rows(data_dir, columns="*"):
    """Every stored row, read straight from the segment files."""
    rows = []
    for path in segment_files(data_dir):
        con = sqlite3.connect("file:{}?mode=ro".format(path), uri=True)
        con.row_factory = sqlite3.Row
        rows.extend(dict(row) for row in con.execute("SELECT {} FROM logs ORDER BY id".format(columns)))
        con.close()
    return rows


def catalog_rows(data_dir):
    con = sqlite3.connect(os.path.join(data_dir, "meta.db"))
    con.row_factory = sqlite3.Row
    rows = [dict(row) for row in con.execute("SELECT * FROM segments ORDER BY day, seq")]
    con.close()
    return rows


def with_queue_filled(data_dir, send_waiting, send_last, waiting=2):
    """Hold the head segment's write lock so the writer blocks and the queue fills: run
    `send_waiting` in `waiting` threads, then return what `send_last()` answers (a 429, with
    a queue that small) and the waiting threads' results once the lock is released."""
    import threading
    [head] = [row["name"] for row in catalog_rows(data_dir) if row["closed_at"] is None]
    lock = sqlite3.connect(os.path.join(data_dir, "segments", head), timeout=0)
    lock.execute("BEGIN IMMEDIATE")
    results = []
    threads = [threading.Thread(target=lambda: results.append(send_waiting())) for _ in range(waiting)]
    try:
        for thread in threads:
            thread.start()
            time.sleep(0.5)
        last = send_last()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    for thread in threads:
        thread.join(60)
    return last, results


def entry(i=0, **fields):
    base = {"service": "api", "level": "info", "message": "entry {}".format(i), "metadata": {"n": i}}
    base.update(fields)
    return base
