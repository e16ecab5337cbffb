"""The idempotency keys' own file (ingest/idempotency.py), on real SQLite files."""
import logging
import os
import sqlite3
from datetime import datetime, timezone

import pytest

from ingest import idempotency

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(data_dir):
    return idempotency.IdempotencyStore(data_dir, 86400, lambda: NOW)


def test_claim_answer_replay_in_the_keys_file(store, data_dir):
    assert store.claim("k") == ("claimed", None)
    assert store.claim("k") == ("busy", None)  # this process holds it: still in flight
    store.complete("k", '{"accepted": 1}')
    assert store.claim("k") == ("replay", '{"accepted": 1}')
    keys = sqlite3.connect(idempotency.keys_path(data_dir))
    assert keys.execute("SELECT key, state FROM idempotency_keys").fetchall() == [("k", "done")]
    assert not os.path.exists(os.path.join(data_dir, "meta.db"))  # nothing of it in meta.db


def test_released_key_can_be_claimed_again(store):
    assert store.claim("k") == ("claimed", None)
    store.release("k")
    assert store.claim("k") == ("claimed", None)


def _break_keys_file(data_dir):
    con = sqlite3.connect(idempotency.keys_path(data_dir))
    con.execute("DROP TABLE idempotency_keys")
    con.commit()
    con.close()


@pytest.mark.parametrize("call", ["complete", "release"])
def test_answer_and_release_failures_are_logged_not_raised(store, data_dir, caplog, call):
    """The batch is already committed (or already refused) when these run: the request's answer
    stands, and the next start rebuilds the keys from the segments."""
    assert store.claim("k") == ("claimed", None)
    _break_keys_file(data_dir)
    with caplog.at_level(logging.ERROR, logger="sidecar.idempotency"):
        getattr(store, call)(*(("k", '{"accepted": 1}') if call == "complete" else ("k",)))
    assert "idempotency key failed" in caplog.text and "no such table" in caplog.text


def test_claim_failure_raises(store, data_dir):
    assert store.claim("first") == ("claimed", None)
    _break_keys_file(data_dir)
    with pytest.raises(sqlite3.Error):
        store.claim("second")


def test_remove_keys_file(store, data_dir):
    store.claim("k")
    idempotency.remove_keys_file(data_dir)
    assert not [name for name in os.listdir(data_dir) if name.startswith(idempotency.KEYS_FILE)]
