"""`python -m sidecar check`: one health check of a running sidecar, for deploy pipelines.

GET /api/health (or /api/health/deep with an admin token), print one line:
status, version, environment and what is not healthy. Exit 0 when healthy,
1 when degraded and --strict (0 without), 2 when unhealthy or unreachable.
Only `requests`: no app, no settings, no data directory.
"""
import os
import sys
import time
import urllib.parse

import requests

from .dependencies import network_reason

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_UNHEALTHY = 0, 1, 2
TOKEN_ENV = "SIDECAR_CHECK_TOKEN"
MESSAGE_CHARS = 100


def add_arguments(parser):
    parser.add_argument("--url", required=True, help="base URL of the sidecar, e.g. https://logs.example.com")
    parser.add_argument("--deep", action="store_true", help="run /api/health/deep (needs an admin token)")
    parser.add_argument("--token", help="admin token for --deep (default: the {} variable, which keeps it "
                                        "out of the process list)".format(TOKEN_ENV))
    parser.add_argument("--strict", action="store_true", help="exit 1 when degraded (default: 0)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="keep trying for up to this many seconds while the sidecar is unreachable (or "
                             "reports another version than --expect-version): for a deploy that is rolling out")
    parser.add_argument("--expect-version", help="the version the sidecar must report (with --wait: wait for it)")


def _shown_url(url):
    """The URL as printed: without credentials or a query string."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = "{}:{}".format(host, parts.port)
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _short(text):
    text = " ".join(str(text or "").split())
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 1] + "…"


def failing(body):
    """`name status (message)` for every service and check that is not healthy."""
    found = []
    services = body.get("services") or {}
    for name in ("database", "memory", "disk"):
        service = services.get(name) or {}
        if service.get("status", "healthy") != "healthy":
            detail = service.get("message") or "{}% of the limit".format(service.get("percent"))
            found.append("{} {} ({})".format(name, service["status"], _short(detail)))
    for dependency in services.get("external_apis") or []:
        if dependency.get("status") != "healthy":
            found.append("{} {} ({})".format(dependency.get("name"), dependency.get("status"),
                                             _short(dependency.get("message"))))
    for name, check in (body.get("checks") or {}).items():
        if isinstance(check, dict) and check.get("status") != "healthy":
            found.append("{} {} ({})".format(name, check.get("status"), _short(check.get("message"))))
    return found


def fetch(url, deep, token, timeout):
    """(body or None, problem or None)."""
    endpoint = url.rstrip("/") + ("/api/health/deep" if deep else "/api/health")
    headers = {"Accept": "application/json", "User-Agent": "log-sidecar check"}
    if token:
        headers["Authorization"] = "Bearer " + token
    try:
        response = requests.get(endpoint, headers=headers, timeout=timeout)
    except requests.Timeout:
        return None, "no answer within {} s".format(timeout)
    except requests.RequestException as error:
        return None, "unreachable: " + network_reason(error)
    if response.status_code == 401:
        return None, "HTTP 401: {} needs an admin token (--token or {})".format(
            "/api/health/deep" if deep else "/api/health", TOKEN_ENV)
    try:
        body = response.json()
    except ValueError:
        return None, "HTTP {} without a health answer".format(response.status_code)
    if not isinstance(body, dict) or body.get("status") not in ("healthy", "degraded", "unhealthy"):
        return None, "HTTP {} without a health answer".format(response.status_code)
    return body, None


def run(url, deep=False, token=None, strict=False, timeout=30.0, wait=0.0, expect_version=None,
        out=None, sleep=time.sleep):
    out = out or sys.stdout
    token = token or os.environ.get(TOKEN_ENV) or None
    where = _shown_url(url) + (" (deep)" if deep else "")
    if deep and not token:
        out.write("unhealthy {}: --deep needs an admin token (--token or {})\n".format(where, TOKEN_ENV))
        return EXIT_UNHEALTHY
    deadline = time.monotonic() + wait
    while True:
        body, problem = fetch(url, deep, token, timeout)
        if body is not None and expect_version and str(body.get("version")) != expect_version:
            problem = "version {} answered, {} expected".format(body.get("version"), expect_version)
        if problem is None or problem.startswith("HTTP 401") or time.monotonic() >= deadline:
            break
        sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if problem is not None:
        out.write("unhealthy {}: {}\n".format(where, problem))
        return EXIT_UNHEALTHY
    status = body["status"]
    line = "{} {} version={} environment={}".format(status, where, body.get("version"), body.get("environment"))
    problems = failing(body)
    if problems:
        line += ": " + "; ".join(problems)
    out.write(line + "\n")
    if status == "unhealthy":
        return EXIT_UNHEALTHY
    if status == "degraded" and strict:
        return EXIT_DEGRADED
    return EXIT_HEALTHY
