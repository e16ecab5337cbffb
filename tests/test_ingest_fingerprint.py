import json
import subprocess
import sys

import pytest

from ingest.fingerprint import Fingerprinter

from conftest import ROOT


def frame(module, function, lineno=1, in_app=True):
    return {"module": module, "function": function, "lineno": lineno, "in_app": in_app, "filename": module + ".py"}


def exc(kind="ValueError", value="bad", frames=None):
    return {"type": kind, "value": value, "stacktrace": frames if frames is not None else
            [frame("app.views", "checkout"), frame("app.pay", "charge")]}


@pytest.fixture
def fp():
    return Fingerprinter()


def test_only_errors_and_exceptions_are_fingerprinted(fp):
    assert fp("api", "info", "hello") is None
    assert fp("api", "warn", "hello") is None
    assert fp("api", "info", "hello", exc()) is not None
    assert fp("api", "error", "hello") is not None and fp("api", "critical", "hello") is not None
    assert Fingerprinter(levels=("warn", "error"))("api", "warn", "hello") is not None


def test_line_numbers_and_values_do_not_count(fp):
    one = exc(value="amount 5", frames=[frame("app.views", "checkout", 10), frame("app.pay", "charge", 20)])
    two = exc(value="amount 9", frames=[frame("app.views", "checkout", 11), frame("app.pay", "charge", 99)])
    assert fp("api", "error", "x", one) == fp("api", "error", "y", two)


@pytest.mark.parametrize("other", [
    exc(kind="KeyError"),
    exc(frames=[frame("app.views", "checkout"), frame("app.pay", "refund")]),
    exc(frames=[frame("app.views", "cart"), frame("app.pay", "charge")]),
])
def test_type_and_frames_count(fp, other):
    assert fp("api", "error", "x", exc()) != fp("api", "error", "x", other)


def test_only_in_app_frames_count_when_there_are_some(fp):
    base = [frame("app.views", "checkout"), frame("app.pay", "charge")]
    with_library = [frame("gunicorn.workers", "handle", in_app=False)] + base
    assert fp("api", "error", "x", exc(frames=base)) == fp("api", "error", "x", exc(frames=with_library))
    library_only = [frame("lib.a", "f", in_app=False)]
    other_library = [frame("lib.b", "g", in_app=False)]
    assert fp("api", "error", "x", exc(frames=library_only)) != fp("api", "error", "x", exc(frames=other_library))


def test_file_basename_when_no_module(fp):
    one = exc(frames=[{"filename": "/srv/a/app.js", "function": "f"}])
    two = exc(frames=[{"filename": "/home/b/app.js", "function": "f"}])
    assert fp("web", "error", "x", one) == fp("web", "error", "x", two)


def test_every_exception_of_a_chain_counts(fp):
    cause = exc(kind="ConnectionError")
    assert fp("api", "error", "x", [cause, exc()]) != fp("api", "error", "x", [exc()])
    assert fp("api", "error", "x", [cause, exc()]) == fp("api", "error", "x", [cause, exc(value="other")])


def test_client_fingerprint_wins_and_default_splices(fp):
    custom = fp("api", "error", "x", exc(), ["payments", "stripe"])
    assert custom == fp("api", "error", "other", exc(kind="KeyError"), ["payments", "stripe"])
    spliced_a = fp("api", "error", "x", exc(), ["{{ default }}", "eu"])
    spliced_b = fp("api", "error", "x", exc(kind="KeyError"), ["{{ default }}", "eu"])
    assert spliced_a != spliced_b and spliced_a != fp("api", "error", "x", exc())


def test_messages_group_by_template(fp):
    first = fp("api", "error", "Connection to 10.0.0.1:5432 timed out after 3000 ms")
    second = fp("api", "error", "Connection to 10.0.0.7:5432 timed out after 150 ms")
    other = fp("api", "error", "User 42 not found in table accounts")
    assert first == second != other
    assert fp("billing", "error", "Connection to 10.0.0.1:5432 timed out after 3000 ms") != first


def test_state_survives_a_restart(data_dir):
    from ingest import catalog, groups
    meta = catalog.connect_meta(data_dir)
    catalog.ensure_schema(meta)
    groups.ensure_schema(meta)
    messages = ["Job {} failed on worker {} with code {}".format(i, i % 3, i % 7) for i in range(20)]
    first = Fingerprinter()
    before = [first("api", "error", message) for message in messages]
    first.save(meta, "2026-01-01T00:00:00.000Z")
    resumed = Fingerprinter.load(meta, ("error", "critical"))
    assert [resumed("api", "error", message) for message in messages] == before


def test_templates_not_saved_are_kept_for_the_next_save(data_dir):
    import os
    import sqlite3
    from ingest import catalog, groups
    meta = catalog.connect_meta(data_dir)
    catalog.ensure_schema(meta)
    groups.ensure_schema(meta)
    meta.close()
    fingerprinter = Fingerprinter()
    fingerprinter("api", "error", "Job 7 failed on worker 2")
    # A read-only connection fails the write as a full disk does.
    read_only = sqlite3.connect("file:{}?mode=ro".format(os.path.join(data_dir, "meta.db")), uri=True)
    with pytest.raises(sqlite3.OperationalError):
        fingerprinter.save(read_only, "2026-01-01T00:00:00.000Z")
    read_only.close()
    assert fingerprinter.dirty
    meta = catalog.connect_meta(data_dir)
    fingerprinter.save(meta, "2026-01-01T00:00:01.000Z")
    assert not fingerprinter.dirty
    assert meta.execute("SELECT count(*) FROM templates").fetchone()[0] == 1


def test_a_save_writes_the_changed_templates_only(data_dir):
    from ingest import catalog, groups
    meta = catalog.connect_meta(data_dir)
    catalog.ensure_schema(meta)
    groups.ensure_schema(meta)
    fingerprinter = Fingerprinter()
    shapes = ["".join(chr(97 + (n // 26 ** i) % 26) for i in range(3)) for n in range(300)]  # aaa, baa, ...
    for service in ("api", "worker"):
        for shape in shapes:
            fingerprinter(service, "error", "{} failed on the primary database host".format(shape))
    fingerprinter.save(meta, "2026-01-01T00:00:00.000Z")
    assert meta.execute("SELECT count(*) FROM templates").fetchone()[0] == 600
    fingerprinter("worker", "error", "faa failed on the primary database replica")  # generalises one
    fingerprinter("api", "error", "a new message entirely")
    fingerprinter.save(meta, "2026-01-01T00:00:01.000Z")
    saved = [tuple(row) for row in meta.execute(
        "SELECT service, template, size FROM templates WHERE updated_at = ? ORDER BY service",
        ("2026-01-01T00:00:01.000Z",))]
    assert saved == [("api", "a new message entirely", 1), ("worker", "faa failed on the primary database <*>", 2)]
    assert meta.execute("SELECT count(*) FROM templates").fetchone()[0] == 601


def test_command_line():
    lines = [{"service": "s", "level": "error", "message": "Disk /dev/sda{} is {}% full".format(i, 90 + i)}
             for i in range(3)] + [{"service": "s", "level": "info", "message": "hello"}, {"broken": True}]
    stdin = "\n".join(json.dumps(line) for line in lines) + "\n"
    result = subprocess.run([sys.executable, "-m", "ingest.fingerprint"], input=stdin, capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    output = result.stdout.split("\n")[:-1]
    assert result.returncode == 0 and len(output) == 5
    assert output[0] == output[1] == output[2] and len(output[0]) == 32
    assert output[3] == "" and output[4] == ""
