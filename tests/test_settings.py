import os
import re

import pytest

from sidecar.settings import SETTINGS, SettingsError, is_loopback, load_settings, settings_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults():
    settings = load_settings(environ={})
    assert settings["host"] == "127.0.0.1" and settings["port"] == 8080
    assert settings["data_dir"] == "./data" and settings["ingest_tokens"] == []


def test_environment_variables_and_port():
    settings = load_settings(environ={"PORT": "9000", "SIDECAR_INGEST_TOKENS": "a" * 16 + ", " + "b" * 16,
                                      "SIDECAR_SEGMENT_MAX_BYTES": "1000"})
    assert settings["port"] == 9000
    assert settings["ingest_tokens"] == ["a" * 16, "b" * 16]
    assert settings["segment_max_bytes"] == 1000
    assert load_settings(environ={"PORT": "9000", "SIDECAR_PORT": "9001"})["port"] == 9001


@pytest.mark.parametrize("environ, message", [
    ({"SIDECAR_PORT": "eighty"}, "SIDECAR_PORT must be a whole number"),
    ({"SIDECAR_PORT": "70000"}, "between 1 and 65535"),
    ({"SIDECAR_MAX_BODY_BYTES": "0"}, "SIDECAR_MAX_BODY_BYTES must be a positive"),
    ({"SIDECAR_SYNCHRONOUS": "off"}, "SIDECAR_SYNCHRONOUS must be one of full, normal"),
    ({"SIDECAR_HOST": "0.0.0.0"}, "refusing to listen on 0.0.0.0 without ingest tokens"),
    ({"SIDECAR_HOST": "10.1.2.3"}, "refusing to listen"),
    ({"SIDECAR_INGEST_TOKENS": "short"}, "at least 16 characters"),
    ({"SIDECAR_MAX_BATCH_ENTRIES": "100", "SIDECAR_QUEUE_MAX_ENTRIES": "50"}, "QUEUE_MAX_ENTRIES must be at least"),
    ({"SIDECAR_COMMIT_MAX_ENTRIES": "0"}, "SIDECAR_COMMIT_MAX_ENTRIES must be a positive"),
])
def test_bad_settings_fail_with_a_clear_message(environ, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)


def test_public_address_with_tokens_is_allowed():
    assert load_settings(environ={"SIDECAR_HOST": "0.0.0.0", "SIDECAR_INGEST_TOKENS": "x" * 20})["host"] == "0.0.0.0"


def test_unknown_override_is_refused():
    with pytest.raises(SettingsError, match="unknown setting"):
        load_settings({"no_such_thing": 1}, environ={})


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.2", False), ("example.com", False), ("", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_docs_settings_table_is_generated_from_the_settings():
    with open(os.path.join(ROOT, "docs", "settings.md")) as handle:
        text = handle.read()
    assert settings_markdown() in text, "regenerate with: .venv/bin/python -m sidecar settings-doc > docs/settings.md"
    for setting in SETTINGS:
        assert "`{}`".format(setting.env_name) in text


def test_every_route_is_documented():
    from sidecar import create_app
    import tempfile
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app({"data_dir": data_dir, "ingest_tokens": ["t" * 16]})
        try:
            routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule) for rule in app.url_map.iter_rules()
                      if rule.endpoint != "static"}
        finally:
            app.extensions["sidecar"].close()
    docs = ""
    for name in os.listdir(os.path.join(ROOT, "docs")):
        if not name.endswith(".md"):
            continue
        with open(os.path.join(ROOT, "docs", name)) as handle:
            docs += handle.read()
    missing = [route for route in routes if "`" + route not in docs and " " + route not in docs]
    assert not missing, "routes missing from docs/: {}".format(missing)
