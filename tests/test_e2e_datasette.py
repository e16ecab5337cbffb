"""Datasette inside the real gunicorn server: loaded on first use, live segments, clean shutdown."""
import subprocess
import sys

import requests

from conftest import ROOT


def test_datasette_is_not_imported_until_first_used():
    code = ("import sys, tempfile; from sidecar import create_app; "
            "app = create_app({'data_dir': tempfile.mkdtemp()}); "
            "print('datasette' in sys.modules, 'a2wsgi' in sys.modules); app.extensions['sidecar'].close()")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[-2:] == ["False", "False"], out.stderr[-2000:]


def test_datasette_in_gunicorn(live_server):
    server = live_server(segment_max_bytes=200_000)
    for batch in range(4):
        entries = [{"service": "api", "level": "error" if n % 10 == 0 else "info",
                    "message": "request {} of batch {} handled".format(n, batch), "metadata": {"pad": "x" * 400}}
                   for n in range(300)]
        assert server.post(entries).status_code == 200
    session = requests.Session()
    assert session.get(server.url + "/datasette/", timeout=30).status_code == 200
    names = [db["name"] for db in session.get(server.url + "/datasette/-/databases.json", timeout=30).json()]
    segments = [name for name in names if name.startswith("logs-")]
    assert len(segments) >= 2, names  # rotated by size; every segment is there
    total = sum(session.get("{}/datasette/{}.json?sql=select+count(*)+as+n+from+logs&_shape=array".format(
        server.url, name), timeout=30).json()[0]["n"] for name in segments)
    assert total == 1200
    assert session.get(server.url + "/datasette/-/dashboards/overview", timeout=30).status_code == 200
    server.stop()
    assert "Traceback" not in server.output() and "Task was destroyed" not in server.output()
