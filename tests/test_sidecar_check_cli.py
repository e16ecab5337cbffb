"""`python -m sidecar check` against a live gunicorn: exit 0 healthy, 1 degraded with --strict, 2 unhealthy
or unreachable. The sidecar's one dependency is a real HTTP server on loopback whose answer the test changes."""
import http.server
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, free_port

ADMIN = "admin-token-0123456789abcdef"


class Switchable(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        mode = self.server.mode
        if mode == "slow":
            time.sleep(0.8)
        body = b"ok"
        try:
            self.send_response(500 if mode == "error" else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Switchable)
    server.daemon_threads = True
    server.mode = "ok"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def check(*args, env=None):
    """The real command line, in a subprocess: (exit code, its one line)."""
    result = subprocess.run([sys.executable, "-m", "sidecar", "check"] + list(args), cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, **(env or {})))
    lines = result.stdout.splitlines()
    assert len(lines) == 1, (result.stdout, result.stderr)
    return result.returncode, lines[0]


def run_check(*args, env=None):
    """The same command in this process (faster): (exit code, its one line)."""
    import io
    from unittest import mock

    from sidecar.__main__ import main
    out = io.StringIO()
    with mock.patch.dict(os.environ, env or {}), mock.patch("sys.stdout", out):
        code = main(["check"] + list(args))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, out.getvalue()
    return code, lines[0]


def test_exit_codes_against_a_live_sidecar(live_server, upstream):
    server = live_server(admin_tokens=ADMIN, environment="ci",
                         dependency_urls="upstream=http://127.0.0.1:{}/health?key=upstream-secret".format(
                             upstream.server_address[1]),
                         dependency_latency_degraded_ms=400, dependency_check_interval_s=3600)
    deep = ["--url", server.url, "--deep", "--token", ADMIN]

    code, line = check(*deep, "--strict")
    assert code == 0 and line.startswith("healthy {} (deep) version=".format(server.url)), line
    assert "environment=ci" in line
    code, line = check("--url", server.url)
    assert code == 0 and line.startswith("healthy "), line

    upstream.mode = "slow"
    code, line = check(*deep, "--strict")
    assert code == 1 and line.startswith("degraded ") and "upstream degraded (answered 200 in" in line, line
    assert run_check(*deep)[0] == 0  # degraded passes without --strict
    # The token may come from the environment instead of the command line.
    assert run_check("--url", server.url, "--deep", "--strict", env={"SIDECAR_CHECK_TOKEN": ADMIN})[0] == 1

    upstream.mode = "error"
    code, line = check(*deep)
    assert code == 2 and line.startswith("unhealthy ") and "upstream unhealthy (answered 500, expected 2xx)" in line
    assert "upstream-secret" not in line and ADMIN not in line

    code, line = run_check("--url", server.url, "--deep", "--token", "not-the-admin-token-000")
    assert code == 2 and "HTTP 401" in line, line
    code, line = run_check("--url", server.url, "--deep", env={"SIDECAR_CHECK_TOKEN": ""})
    assert code == 2 and "needs an admin token" in line, line


def test_unreachable_is_exit_2():
    url = "http://127.0.0.1:{}".format(free_port())
    code, line = check("--url", url, "--strict")
    assert code == 2 and line == "unhealthy {}: unreachable: connection refused".format(url), line


def test_wait_until_the_deploy_answers(data_dir, tmp_path):
    """--wait: nothing listens yet (a deploy rolling out); the check keeps trying until gunicorn answers."""
    import io

    from conftest import LiveServer
    from sidecar.check_cli import run
    port = free_port()
    server = LiveServer(data_dir, tmp_path, port=port)  # SIDECAR_PORT wins over the fixture's PORT
    starter = threading.Timer(1.0, server.start, kwargs={"wait": False})
    starter.start()
    out = io.StringIO()
    try:
        code = run("http://127.0.0.1:{}".format(port), wait=30, out=out)
        assert code == 0 and out.getvalue().startswith("healthy "), out.getvalue()
        out = io.StringIO()
        assert run("http://127.0.0.1:{}".format(port), expect_version="not-this-one", out=out) == 2
        assert "not-this-one expected" in out.getvalue()
    finally:
        starter.join()
        server.stop()
