"""The search API, the trace view and the search pages through the Flask app: statuses, errors, auth, HTML."""
import html
import re

import orjson
import pytest
from itsdangerous import URLSafeSerializer

from conftest import AUTH, TOKEN

ADMIN = "admin-token-0123456789abcdef"
ADMIN_AUTH = {"Authorization": "Bearer " + ADMIN}
LOGIN = "/datasette/-/login"


def seed(app):
    """Three batches, three segments (segment_max_bytes=1 rotates before every commit), the last the head."""
    client = app.test_client()
    batches = [
        [{"service": "api", "level": "error", "message": "payment failed for order {}".format(n),
          "trace_id": "trace-a", "timestamp": "2024-05-01T10:00:0{}.000Z".format(n)} for n in range(3)],
        [{"service": "web", "level": "info", "message": "rendered <b>page</b> {}".format(n), "user_id": "u1",
          "timestamp": "2024-05-02T10:00:0{}.000Z".format(n)} for n in range(3)],
        [{"service": "worker", "level": "warn", "message": "job slow", "trace_id": "trace-a",
          "timestamp": "2024-05-03T10:00:00.250Z"}],
    ]
    for batch in batches:
        response = client.post("/api/logs", data=orjson.dumps(batch), headers=AUTH, content_type="application/json")
        assert response.status_code == 200
    app.extensions["sidecar"].writer.wait_closers()


def make_app(data_dir, **settings):
    from sidecar import create_app
    application = create_app(dict({"data_dir": data_dir, "ingest_tokens": [TOKEN], "admin_tokens": [ADMIN],
                                   "segment_max_bytes": 1, "search_max_limit": 50}, **settings))
    seed(application)
    return application


# The tests only read: one app of each kind per module.
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """Loopback, no password: open to every reader."""
    application = make_app(str(tmp_path_factory.mktemp("open")))
    yield application
    application.extensions["sidecar"].close()


@pytest.fixture(scope="module")
def closed_app(tmp_path_factory):
    """A login password is set: readers need an admin token or a login cookie."""
    from datasette_auth_passwords.utils import hash_password
    application = make_app(str(tmp_path_factory.mktemp("closed")),
                           datasette_password_hash=hash_password("pw", iterations=1000))
    yield application
    application.extensions["sidecar"].close()


def error_of(response):
    assert response.content_type == "application/json"
    return response.get_json()["error"]


def test_search_returns_hits_with_datasette_links(client):
    body = client.get("/api/logs/search").get_json()
    assert set(body) >= {"hits", "next_cursor", "segments_searched", "segments_skipped", "took_ms"}
    assert [hit["message"] for hit in body["hits"]][:2] == ["job slow", "rendered <b>page</b> 2"]
    assert body["next_cursor"] is None and body["segments_searched"] == 3
    for hit in body["hits"]:
        assert hit["url"] == "/datasette/{}/logs/{}".format(hit["segment"][:-3], hit["id"])
        assert hit["database"] == hit["segment"][:-3]


def test_cursor_paging_through_the_api(client):
    everything = client.get("/api/logs/search").get_json()["hits"]
    seen, cursor = [], None
    while True:
        body = client.get("/api/logs/search", query_string={"limit": 2, "cursor": cursor}).get_json()
        assert len(body["hits"]) <= 2
        seen += [(hit["segment"], hit["id"]) for hit in body["hits"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == [(hit["segment"], hit["id"]) for hit in everything] and len(seen) == 7


@pytest.mark.parametrize("query, messages", [
    ("level=error&level=warn", 4),
    ("level=error,warn", 4),
    ("service=web&service=worker", 4),
    ("q=payment&level=error", 3),
    ('q="payment failed" 1', 1),
    ("q=rend*", 3),
    ("user_id=u1", 3),
    ("trace_id=trace-a", 4),
    ("since=2024-05-02&until=2024-05-02T23:59:59Z", 3),
    ("since=1h", 0),
    ("limit=1", 1),
    ("level=&service=&q=&cursor=", 7),  # empty form fields mean no filter
])
def test_filters(client, query, messages):
    response = client.get("/api/logs/search?" + query)
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["hits"]) == messages


@pytest.mark.parametrize("query, code, parameter, hint", [
    ("q=user@example.com", "invalid_query", "q", "double quotes"),
    ("q=payment-service", "invalid_query", "q", "column name"),
    ('q="open', "invalid_query", "q", "not closed"),
    ("q=OR", "invalid_query", "q", "upper case"),
    ("since=last+tuesday", "invalid_time", "since", "RFC 3339"),
    ("until=2024-02-30", "invalid_time", "until", "15m"),
    ("level=loud", "invalid_level", "level", "debug, info, warn, error, critical"),
    ("limit=0", "invalid_limit", "limit", "from 1 to 50"),
    ("limit=51", "invalid_limit", "limit", "from 1 to 50"),
    ("limit=many", "invalid_limit", "limit", "whole number"),
    ("cursor=abc", "invalid_cursor", "cursor", "next_cursor"),
])
def test_bad_input_is_a_400_that_says_what_to_fix(client, query, code, parameter, hint):
    response = client.get("/api/logs/search?" + query)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code and hint in error["message"] and error["details"]["parameter"] == parameter


def test_since_after_until_is_a_400(client):
    error = error_of(client.get("/api/logs/search?since=2024-05-02&until=2024-05-01"))
    assert error["code"] == "invalid_time" and "swap" in error["message"]


def test_trace_view(client):
    body = client.get("/api/traces/trace-a").get_json()
    assert body["trace_id"] == "trace-a" and body["services"] == ["api", "worker"]
    assert [entry["ts"] for entry in body["entries"]] == sorted(entry["ts"] for entry in body["entries"])
    assert len(body["entries"]) == 4 and body["duration_ms"] == 2 * 86400_000 + 250
    assert body["entries"][0]["url"].startswith("/datasette/logs-") and body["entries"][0]["offset_ms"] == 0
    assert len({entry["segment"] for entry in body["entries"]}) == 2  # a closed segment and the head


def test_unknown_trace_is_a_json_404(client):
    response = client.get("/api/traces/no-such-trace")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def cookie(app, actor=None, secret=None):
    """Datasette's login cookie, signed as datasette-auth-passwords signs it."""
    value = URLSafeSerializer(secret or app.extensions["sidecar"].session_secret, "actor").dumps(
        {"a": actor or {"id": "admin"}})
    return {"Cookie": "ds_actor=" + value}


def get_as(app, path, headers):
    client = app.test_client()
    headers = dict(headers)
    if "Cookie" in headers:  # the test client sends the cookies of its jar, not a Cookie header
        name, _, value = headers.pop("Cookie").partition("=")
        client.set_cookie(name, value)
    return client.get(path, headers=headers)


READERS = [
    ("nobody", lambda app: {}, False),
    ("ingest token", lambda app: AUTH, False),
    ("wrong token", lambda app: {"Authorization": "Bearer wrong-token-0123456789"}, False),
    ("forged cookie", lambda app: cookie(app, secret="not-the-session-secret-0123456789abcdef"), False),
    ("admin token", lambda app: ADMIN_AUTH, True),
    ("login cookie", lambda app: cookie(app), True),
]


@pytest.mark.parametrize("path", ["/api/logs/search", "/api/traces/trace-a"])
@pytest.mark.parametrize("reader, headers, allowed", READERS, ids=[r[0] for r in READERS])
def test_api_readers(closed_app, path, reader, headers, allowed):
    response = get_as(closed_app, path, headers(closed_app))
    if allowed:
        assert response.status_code == 200
    else:
        assert response.status_code == 401 and error_of(response)["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/search", "/traces/trace-a"])
@pytest.mark.parametrize("reader, headers, allowed", READERS, ids=[r[0] for r in READERS])
def test_pages_send_strangers_to_the_login(closed_app, path, reader, headers, allowed):
    response = get_as(closed_app, path, headers(closed_app))
    if allowed:
        assert response.status_code == 200 and response.content_type.startswith("text/html")
    else:
        assert response.status_code == 302 and response.headers["Location"].endswith(LOGIN)


def test_loopback_without_password_is_open(client):
    assert client.get("/api/logs/search").status_code == 200
    assert client.get("/search").status_code == 200


def page_text(response):
    return response.get_data(as_text=True)


def test_search_page_lists_hits_with_links(client):
    response = client.get("/search?limit=2")
    text = page_text(response)
    assert response.status_code == 200 and "<form" in text
    assert 'href="/search"' in text and 'href="/datasette/"' in text  # the nav
    assert "job slow" in text and "rendered &lt;b&gt;page&lt;/b&gt; 2" in text and "<b>page</b>" not in text
    rows = re.findall(r'href="(/datasette/logs-[^"]+/logs/\d+)"', text)
    assert len(rows) == 2
    assert 'href="/traces/trace-a"' in text  # only "job slow" has a trace
    older = re.search(r'href="([^"]+)" rel="next">Older', text).group(1)
    older_page = page_text(client.get(html.unescape(older)))
    assert "rendered &lt;b&gt;page&lt;/b&gt; 1" in older_page and "job slow" not in older_page
    assert "Newest" in older_page


def test_search_page_keeps_the_form_and_filters(client):
    text = page_text(client.get("/search?q=payment&level=error&level=warn&service=api"))
    assert 'value="payment"' in text and 'value="api"' in text
    assert re.search(r'value="error" checked', text) and re.search(r'value="warn" checked', text)
    assert not re.search(r'value="info" checked', text)
    assert text.count("payment failed for order") == 3


def test_search_page_shows_the_error(client):
    response = client.get("/search?q=user@example.com")
    text = page_text(response)
    assert response.status_code == 400 and 'role="alert"' in text and "double quotes" in text
    assert "&#34;user@example.com&#34;" in text or "&quot;user@example.com&quot;" in text  # the suggestion
    bad_time = client.get("/search?since=soon")
    assert bad_time.status_code == 400 and "is not a time" in page_text(bad_time)


def test_trace_page(client):
    response = client.get("/traces/trace-a")
    text = page_text(response)
    assert response.status_code == 200 and "api, worker" in text
    offsets = re.findall(r'<td class="time">(\+[^<]+)</td>', text)
    assert offsets == ["+0 ms", "+1.000 s", "+2.000 s", "+48:00:00.250"]
    assert text.index("payment failed for order 0") < text.index("job slow")
    missing = client.get("/traces/nope")
    assert missing.status_code == 404 and "no stored entry has trace_id" in page_text(missing)
