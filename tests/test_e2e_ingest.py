"""End to end: the real gunicorn process on a loopback port, real files, real clients."""
import gzip
import itertools
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest
import requests

from conftest import (ROOT, TOKEN, LiveServer, catalog_rows, entry, fill_disk, free_port, stored_rows,
                      with_queue_filled)


def test_json_ndjson_gzip_and_partial_acceptance(live_server, data_dir):
    server = live_server()
    assert server.post([entry(0), entry(1)]).json() == {"accepted": 2, "rejected": []}
    ndjson = b"\n".join(orjson.dumps(entry(i)) for i in (2, 3))
    response = server.post(data=gzip.compress(ndjson), headers={"Content-Type": "application/x-ndjson",
                                                                "Content-Encoding": "gzip"})
    assert response.json() == {"accepted": 2, "rejected": []}
    response = server.post([entry(4), {"message": "no service"}])
    assert response.status_code == 200 and response.json()["rejected"][0]["index"] == 1
    assert requests.post(server.url + "/api/logs", json=entry(9), timeout=10).status_code == 401
    assert [row["message"] for row in stored_rows(data_dir)] == ["entry {}".format(i) for i in range(5)]
    output = server.output()
    assert '"path":"/api/logs","status":200' in output and TOKEN not in output


def test_chunked_body_over_the_limit_is_413(live_server, data_dir):
    server = live_server(max_body_bytes=10_000)

    def chunks():
        for _ in range(30):
            yield b" " * 1000  # no Content-Length: the cap applies while reading
    response = server.post(data=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert server.post([entry(0)]).status_code == 200


def stream_batches(server, acked, stop, prefix, batch_size=50):
    session = requests.Session()
    for batch_number in itertools.count():
        if stop.is_set():
            return
        ids = ["{}-{}-{}".format(prefix, batch_number, i) for i in range(batch_size)]
        try:
            response = session.post(server.url + "/api/logs", json=[entry(0, message=i) for i in ids],
                                    headers={"Authorization": "Bearer " + TOKEN}, timeout=30)
        except requests.RequestException:
            return
        if response.status_code == 200:
            acked.update(ids)


def test_kill_9_loses_nothing_acknowledged(live_server, data_dir):
    server = live_server()
    acked, stop = set(), threading.Event()
    writers = [threading.Thread(target=stream_batches, args=(server, acked, stop, "t{}".format(n)))
               for n in range(3)]
    for thread in writers:
        thread.start()
    deadline = time.time() + 20
    while len(acked) < 3000 and time.time() < deadline:
        time.sleep(0.05)
    server.kill9()  # master and worker, mid-stream
    stop.set()
    for thread in writers:
        thread.join(30)
    assert len(acked) >= 3000
    restarted = live_server()
    stored = [row["message"] for row in stored_rows(data_dir, "message")]
    assert acked <= set(stored), "acknowledged entries lost: {}".format(len(acked - set(stored)))
    assert len(stored) == len(set(stored))  # nothing stored twice
    catalog = catalog_rows(data_dir)
    assert sum(row["row_count"] for row in catalog) == len(stored)
    assert restarted.post([entry(1)]).status_code == 200


def test_idempotency_keys_across_two_workers_and_a_kill_9(live_server, data_dir):
    """The same key sent at once to two worker processes is stored once; after a kill -9 and a
    restart, retries of acknowledged batches are answered again and stored nothing more."""
    server = live_server(workers=2)
    start, statuses = threading.Barrier(8), []

    def send_race():
        start.wait()
        statuses.append(server.post([entry(i, message="race {}".format(i)) for i in range(20)],
                                    headers={"Idempotency-Key": "race"}).status_code)

    racers = [threading.Thread(target=send_race) for _ in range(8)]
    for thread in racers:
        thread.start()
    for thread in racers:
        thread.join(60)
    assert set(statuses) <= {200, 409} and 200 in statuses and len(statuses) == 8
    keys = ["batch-{}".format(n) for n in range(10)]
    first = [server.post([entry(n, message=key)], headers={"Idempotency-Key": key}) for n, key in enumerate(keys)]
    assert [r.status_code for r in first] == [200] * 10
    server.kill9()
    restarted = live_server(workers=2)
    retries = [restarted.post([entry(n, message=key)], headers={"Idempotency-Key": key})
               for n, key in enumerate(keys)]
    retries.append(restarted.post([entry(i, message="race {}".format(i)) for i in range(20)],
                                  headers={"Idempotency-Key": "race"}))
    assert [(r.status_code, r.headers.get("Idempotent-Replayed")) for r in retries] == [(200, "true")] * 11
    # The body's hash came back from the segment too: the key with another batch stores nothing.
    other = restarted.post([entry(0, message="not batch-0")], headers={"Idempotency-Key": "batch-0"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    messages = [row["message"] for row in stored_rows(data_dir, "message")]
    assert sorted(messages) == sorted(keys + ["race {}".format(i) for i in range(20)])


def test_queue_full_is_429_with_retry_after(live_server, data_dir):
    server = live_server(max_batch_entries=10, queue_max_entries=10, commit_max_entries=10)
    batch = [entry(i) for i in range(10)]
    keyed = {"Idempotency-Key": "refused-when-full"}
    response, results = with_queue_filled(data_dir, lambda: server.post(batch),
                                          lambda: server.post(batch, headers=keyed))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1" and response.json()["error"]["code"] == "queue_full"
    assert [r.status_code for r in results] == [200, 200]
    assert len(stored_rows(data_dir)) == 20
    retried = server.post(batch, headers=keyed)  # the refused batch's key was freed
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
    assert len(stored_rows(data_dir)) == 30


def test_disk_full_is_503_and_recovers(live_server, data_dir):
    server = live_server()
    assert server.post([entry(i) for i in range(100)]).status_code == 200
    [worker] = server.worker_pids()
    unlimited = resource.prlimit(worker, resource.RLIMIT_FSIZE)
    resource.prlimit(worker, resource.RLIMIT_FSIZE, (1, unlimited[1]))  # every file write now fails
    try:
        response = server.post([entry(i) for i in range(100, 200)])
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "storage_unavailable" and "Retry-After" in response.headers
        keyed = server.post([entry(i) for i in range(300, 310)], headers={"Idempotency-Key": "while-full"})
        assert keyed.status_code == 503 and keyed.json()["error"]["code"] == "storage_unavailable"
        health = requests.get(server.url + "/api/health", timeout=10)
        assert health.json()["services"]["database"]["status"] == "unhealthy"
    finally:
        resource.prlimit(worker, resource.RLIMIT_FSIZE, unlimited)
    assert server.post([entry(i) for i in range(200, 300)]).status_code == 200
    retried = server.post([entry(i) for i in range(300, 310)], headers={"Idempotency-Key": "while-full"})
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
    assert requests.get(server.url + "/api/health", timeout=10).json()["status"] != "unhealthy"
    messages = {row["message"] for row in stored_rows(data_dir, "message")}
    assert messages == {"entry {}".format(i) for i in itertools.chain(range(100), range(200, 310))}


def wait_for_new_worker(server, old_pids, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [pid for pid in server.worker_pids() if pid not in old_pids]
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError("gunicorn started no new worker: " + server.output()[-2000:])


def test_worker_restarted_on_a_full_disk_serves_reads_and_recovers(tiny_disk, tmp_path):
    data_dir = os.path.join(tiny_disk, "data")
    os.mkdir(data_dir)
    server = LiveServer(data_dir, tmp_path).start()
    try:
        assert server.post([entry(i) for i in range(100)]).status_code == 200
        filler = fill_disk(tiny_disk)
        [worker] = server.worker_pids()
        os.kill(worker, signal.SIGKILL)  # gunicorn starts another, which must boot on the full disk
        wait_for_new_worker(server, [worker])
        server.wait_ready()
        response = server.post([entry(i) for i in range(100, 110)])
        assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
        assert "Retry-After" in response.headers
        health = requests.get(server.url + "/api/health", timeout=10).json()
        assert health["services"]["database"]["status"] == "unhealthy"
        hits = requests.get(server.url + "/api/logs/search", params={"q": "entry", "limit": 500}, timeout=10)
        assert hits.status_code == 200 and len(hits.json()["hits"]) == 100
        os.remove(filler)  # space is back: ingest recovers without a restart
        deadline, status = time.time() + 10, None
        while time.time() < deadline and status != 200:
            status = server.post([entry(i) for i in range(100, 110)]).status_code
            time.sleep(0.2 if status != 200 else 0)
        assert status == 200 and server.proc.poll() is None
        health = requests.get(server.url + "/api/health", timeout=10).json()
        assert health["services"]["database"]["status"] == "healthy"
        output = server.output()
        assert output.count("no head segment could be opened") == 1  # then one line a minute
        assert output.count("into error groups: ") <= 1
    finally:
        server.stop()
    assert {row["message"] for row in stored_rows(data_dir, "message")} == {"entry {}".format(i) for i in range(110)}


def test_an_empty_store_on_a_full_disk_refuses_to_start_with_a_clear_message(tiny_disk, tmp_path):
    fill_disk(tiny_disk)
    server = LiveServer(os.path.join(tiny_disk, "data"), tmp_path).start(wait=False)
    try:
        assert server.proc.wait(30) == 1
    finally:
        server.stop()
    assert "sidecar: cannot write to the data directory {}: No space left on device".format(
        os.path.join(tiny_disk, "data")) in server.output()


def test_several_workers_share_nothing_and_lose_nothing(live_server, data_dir):
    server = live_server(workers=2)
    acked, stop = set(), threading.Event()
    clients = [threading.Thread(target=stream_batches, args=(server, acked, stop, "w{}".format(n), 20))
               for n in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(3)
    stop.set()
    for thread in clients:
        thread.join(30)
    server.stop()
    stored = [row["message"] for row in stored_rows(data_dir, "message")]
    assert acked == set(stored) and len(stored) == len(acked) > 0
    assert len(catalog_rows(data_dir)) == 2  # one head segment per worker process
    assert "database is locked" not in server.output()


def test_rotation_by_size(live_server, data_dir):
    server = live_server(segment_max_bytes=300_000)
    for start in range(0, 3000, 500):
        assert server.post([entry(i, message="x" * 200 + str(i)) for i in range(start, start + 500)]).status_code == 200
    server.stop()
    catalog = catalog_rows(data_dir)
    assert len(catalog) >= 3
    assert all(row["closed_at"] for row in catalog[:-1]) and catalog[-1]["closed_at"] is None
    assert sum(row["row_count"] for row in catalog) == 3000 == len(stored_rows(data_dir, "id"))


def run_gunicorn(env_overrides, extra_args=(), timeout=20):
    env = dict(os.environ, PORT=str(free_port()), **env_overrides)
    env.pop("SIDECAR_INGEST_TOKENS", None)
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *extra_args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("env, args", [
    ({"SIDECAR_HOST": "0.0.0.0"}, ()),
    ({}, ("-b", "0.0.0.0:{}".format(free_port()))),  # an address given to gunicorn directly is checked too
])
def test_refuses_a_public_address_without_tokens(data_dir, env, args):
    result = run_gunicorn(dict(env, SIDECAR_DATA_DIR=data_dir), args)
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0 without ingest tokens" in result.stderr


def test_bad_setting_stops_the_start_with_a_message(data_dir):
    result = run_gunicorn({"SIDECAR_DATA_DIR": data_dir, "SIDECAR_MAX_BODY_BYTES": "lots"})
    assert result.returncode == 2 and "SIDECAR_MAX_BODY_BYTES must be a whole number" in result.stderr


def test_dev_token_is_generated_once_and_printed(data_dir, tmp_path):
    # Started by hand: LiveServer always configures a token.
    port = free_port()
    env = dict(os.environ, SIDECAR_DATA_DIR=data_dir, PORT=str(port))
    env.pop("SIDECAR_INGEST_TOKENS", None)
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            url = "http://127.0.0.1:{}".format(port)
            for _ in range(300):
                try:
                    requests.get(url + "/api/health", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.05)
            token = open(os.path.join(data_dir, "dev-token")).read().strip()
            response = requests.post(url + "/api/logs", json=entry(0), timeout=10,
                                     headers={"Authorization": "Bearer " + token})
            assert response.status_code == 200
        finally:
            proc.terminate()
            proc.wait(30)
    output = log_path.read_text()
    assert "ingest token: " + token in output and "curl -sS -X POST {}/api/logs".format(url) in output
    assert os.stat(os.path.join(data_dir, "dev-token")).st_mode & 0o077 == 0
    from sidecar.token_files import ensure_dev_token
    assert ensure_dev_token(data_dir) == token  # kept, not generated again


def _run_worker_hook_script(script, tmp_path):
    """Run `script` in a fresh interpreter from the repository root; return what it printed."""
    env = {key: val for key, val in os.environ.items() if not key.startswith(("SIDECAR_", "PROMETHEUS_"))}
    env["SIDECAR_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_worker_caps_malloc_arenas_and_hands_large_blocks_back(tmp_path):
    # What post_fork does to glibc malloc, in a fresh interpreter as in a worker: 16 threads
    # allocating at once share at most 8 arenas, and a 2 MiB block is mmapped (returned to the
    # system when freed) even after a 4 MiB one was freed, which would raise glibc's own threshold.
    script = (
        "import ctypes, ctypes.util, os, re, runpy, tempfile, threading\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "conf['post_fork'](None, None)\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "libc.fopen.restype = ctypes.c_void_p\n"
        "libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]\n"
        "libc.fclose.argtypes = [ctypes.c_void_p]\n"
        "barrier = threading.Barrier(16)\n"
        "def hold():\n"
        "    blocks = [libc.malloc(4096) for _ in range(64)]\n"
        "    barrier.wait()\n"
        "    for block in blocks: libc.free(block)\n"
        "threads = [threading.Thread(target=hold) for _ in range(16)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "def mmapped_blocks():\n"
        "    path = tempfile.mktemp()\n"
        "    stream = libc.fopen(path.encode(), b'w'); libc.malloc_info(0, stream); libc.fclose(stream)\n"
        "    xml = open(path).read(); os.unlink(path)\n"
        "    return len(re.findall(r'<heap nr=', xml)), int(re.findall(r'<total type=.mmap. count=.(\\d+)', xml)[-1])\n"
        "libc.free(libc.malloc(4 << 20))\n"
        "heaps, before = mmapped_blocks()\n"
        "block = libc.malloc(2 << 20)\n"
        "mmapped = mmapped_blocks()[1] - before\n"
        "print(heaps, mmapped)\n")
    heaps, mmapped = map(int, _run_worker_hook_script(script, tmp_path).split())
    assert 2 <= heaps <= 8 and mmapped == 1


def test_a_worker_keeps_a_request_s_worth_of_freed_memory(tmp_path):
    # A request thread frees its body and what was made from it (blocks under the 1 MiB mmap
    # threshold): the next request must find them in the arena, not fault fresh pages in.
    script = (
        "import ctypes, ctypes.util, resource, runpy, threading\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "conf['post_fork'](None, None)\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]\n"
        "def request():\n"
        "    blocks = [libc.malloc(256 << 10) for _ in range(12)]\n"
        "    for block in blocks: libc.memset(block, 1, 256 << 10)\n"
        "    for block in reversed(blocks): libc.free(block)\n"
        "faults = []\n"
        "def thread():\n"
        "    request()\n"
        "    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt\n"
        "    request()\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)\n"
        "worker = threading.Thread(target=thread); worker.start(); worker.join()\n"
        "print(faults[0])\n")
    faults = int(_run_worker_hook_script(script, tmp_path))
    assert faults < 100  # 3 MiB faulted in afresh would be 768 pages


def test_a_worker_stops_sqlite_counting_its_memory(tmp_path):
    # What post_fork does to SQLite, in a fresh interpreter as in a worker: its memory statistics
    # (a process-wide mutex taken on every allocation) are off, and SQLite still works.
    script = (
        "import ctypes, runpy, sqlite3\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "conf['post_fork'](None, None)\n"
        "con = sqlite3.connect(':memory:')\n"
        "con.execute('CREATE TABLE t (x)')\n"
        "con.executemany('INSERT INTO t VALUES (?)', [('x' * 1000,)] * 1000)\n"
        "rows, = con.execute('SELECT count(*) FROM t').fetchone()\n"
        "used, peak = ctypes.c_int64(), ctypes.c_int64()\n"
        "ctypes.CDLL('libsqlite3.so.0').sqlite3_status64(0, ctypes.byref(used), ctypes.byref(peak), 0)\n"
        "print(rows, used.value)\n")
    rows, memory_used = map(int, _run_worker_hook_script(script, tmp_path).split())
    assert rows == 1000 and memory_used == 0


def test_a_worker_freezes_the_loaded_app_and_collects_young_objects_less_often(tmp_path):
    # What post_worker_init does to the cyclic GC, in a fresh interpreter as in a worker.
    script = (
        "import gc, runpy\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] == 700\n"
        "conf['post_worker_init'](object())\n"
        "print(gc.get_freeze_count(), *gc.get_threshold())\n")
    frozen, *thresholds = map(int, _run_worker_hook_script(script, tmp_path).split())
    assert frozen > 1000 and thresholds == [100_000, 10, 10]
