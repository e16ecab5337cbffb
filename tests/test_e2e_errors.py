"""Error groups stay exact across a kill -9 of the live server."""
import collections
import os
import threading
import time

import requests

from conftest import TOKEN, stored_rows, wait_until


def test_group_counts_equal_stored_events_after_kill_9(live_server, data_dir):
    server = live_server()
    stop, acked = threading.Event(), []

    def stream():
        session = requests.Session()
        n = 0
        while not stop.is_set():
            batch = [{"service": "api", "level": "error", "user_id": "u{}".format(i % 5),
                      "message": ["Upstream auth returned {} after {} ms".format(500 + i % 3, i),
                                  "Payment for order {} declined by the bank".format(i)][i % 2]}
                     for i in range(n, n + 40)]
            n += 40
            try:
                response = session.post(server.url + "/api/logs", json=batch, timeout=30,
                                        headers={"Authorization": "Bearer " + TOKEN})
            except requests.RequestException:
                return
            if response.status_code == 200:
                acked.append(len(batch))

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 20
    while sum(acked) < 2000 and time.time() < deadline:
        time.sleep(0.05)
    server.kill9()
    stop.set()
    for thread in threads:
        thread.join(30)
    restarted = live_server()
    stored = collections.Counter(row["fingerprint"] for row in stored_rows(data_dir, "fingerprint"))
    assert sum(stored.values()) >= sum(acked) >= 2000 and len(stored) == 2
    token = open(os.path.join(data_dir, "dev-admin-token")).read().strip()

    def groups():
        return requests.get(restarted.url + "/api/errors", headers={"Authorization": "Bearer " + token},
                            timeout=10).json()["groups"]
    # The restarted server folds what the kill left unfolded in the background, at once.
    assert wait_until(lambda: {group["fingerprint"]: group["count"] for group in groups()} == dict(stored))
    groups = groups()
    assert all(group["users_affected"] == 5 for group in groups)
