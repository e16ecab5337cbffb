"""An engineer's session in headless Chromium against the real server: log in, dashboard, search, error group.

Uses Debian's chromium (/usr/bin/chromium) through Playwright; no browser is
downloaded. Screenshots go to test-output/browser/. Any console error, page
error or 5xx answer fails the test.
"""
import os
import shutil
import time

import pytest
import requests
from datasette_auth_passwords.utils import hash_password

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.path.join(ROOT, "test-output", "browser")
ADMIN = "browser-admin-token-0123456789"
PASSWORD = "correct horse battery"

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium (see .ci/run)")
    # Reason: a laptop without Debian's chromium package cannot run a browser; CI installs it (.ci/run).
    pytest.skip("needs Debian's chromium: apt-get install chromium", allow_module_level=True)

from playwright import sync_api  # noqa: E402 (after the chromium check)


def sample_entries():
    entries = []
    for n in range(60):
        entries.append({"service": ["api", "web", "worker"][n % 3], "level": ["info", "debug", "warn"][n % 3],
                        "message": "GET /orders/{} completed in {} ms".format(n, 20 + n),
                        "trace_id": "trace{:04d}".format(n // 6), "metadata": {"duration_ms": 20 + n}})
    for n in range(8):
        entries.append({"service": "api", "level": "error", "message": "payment failed for order {}".format(n),
                        "user_id": "user-{}".format(n % 3), "trace_id": "trace0001",
                        "exception": {"type": "CardDeclined", "value": "declined {}".format(n),
                                      "stacktrace": [{"filename": "billing.py", "function": "charge",
                                                      "lineno": 10 + n, "module": "billing", "in_app": True}]}})
    return entries


@pytest.fixture
def server(live_server):
    server = live_server(datasette_password_hash=hash_password(PASSWORD, iterations=1000), admin_tokens=ADMIN)
    assert server.post(sample_entries()).status_code == 200
    deadline = time.time() + 10  # the tracker folds groups and rollups a few times a second
    while time.time() < deadline:
        rows = requests.get(server.url + "/datasette/meta.json?sql=select+count(*)+as+n+from+error_groups"
                            "&_shape=array", headers={"Authorization": "Bearer " + ADMIN}, timeout=30).json()
        if rows[0]["n"]:
            break
        time.sleep(0.2)
    return server


def test_engineer_session(server):
    os.makedirs(SHOTS, exist_ok=True)
    problems = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: msg.type == "error" and problems.append("console: " + msg.text))
        page.on("pageerror", lambda error: problems.append("page error: {}".format(error)))
        page.on("response", lambda response: response.status >= 500 and problems.append(
            "{} {}".format(response.status, response.url)))

        page.goto(server.url + "/datasette/-/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.screenshot(path=os.path.join(SHOTS, "01-login.png"))
        page.click("input[type=submit]")
        page.wait_for_load_state("networkidle")
        assert page.url.rstrip("/").endswith("/datasette")
        assert page.locator("text=meta").first.is_visible()

        page.goto(server.url + "/datasette/-/dashboards/overview")
        page.wait_for_load_state("networkidle")
        page.wait_for_selector("#chart-events-by-level canvas, #chart-events-by-level svg", timeout=15000)
        page.wait_for_selector("#chart-top-groups table", timeout=15000)
        page.screenshot(path=os.path.join(SHOTS, "02-dashboard.png"), full_page=True)
        assert "CardDeclined" in page.inner_text("#chart-top-groups")

        page.goto(server.url + "/search?q=completed&service=api")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=os.path.join(SHOTS, "03-search.png"), full_page=True)
        assert "GET /orders/" in page.content()
        page.click("a:text-is('trace') >> nth=0")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=os.path.join(SHOTS, "04-trace.png"), full_page=True)
        assert "/traces/" in page.url

        page.goto(server.url + "/datasette/-/dashboards/overview")
        page.wait_for_selector("#chart-top-groups table a", timeout=15000)
        page.click("#chart-top-groups table a >> nth=0")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=os.path.join(SHOTS, "05-error-group.png"), full_page=True)
        assert "/datasette/meta/error_groups/" in page.url
        assert "CardDeclined" in page.content()
        page.click("a:text-is('events') >> nth=0")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=os.path.join(SHOTS, "06-group-events.png"), full_page=True)
        assert page.content().count("payment failed for order") == 8
        browser.close()
    assert problems == []
