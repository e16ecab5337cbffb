"""render.yaml (the Render Blueprint) and the keep-warm workflow: the essentials, and no secret committed."""
import os
import re

import yaml

from sidecar.settings import SETTINGS, load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|HASH|ACCESS_KEY|ALERT_URLS|BUCKET|ENDPOINT")


def load(*path):
    with open(os.path.join(ROOT, *path)) as handle:
        return yaml.safe_load(handle)


def test_render_blueprint():
    [service] = load("render.yaml")["services"]
    assert service["type"] == "web" and service["plan"] == "free" and service["runtime"] == "python"
    assert service["healthCheckPath"] == "/api/health"
    assert service["buildCommand"].startswith("pip install -r requirements.txt")
    start = service["startCommand"]
    assert start.startswith("gunicorn -c gunicorn.conf.py") and "0.0.0.0:$PORT" in start
    env = {item["key"]: item for item in service["envVars"]}
    assert env["PYTHON_VERSION"]["value"].startswith("3.11.")
    values = {key: item["value"] for key, item in env.items() if "value" in item}
    assert values["SIDECAR_HOST"] == "0.0.0.0" and values["SIDECAR_WORKERS"] == "1"
    assert int(values["SIDECAR_THREADS"]) <= 8 and values["SIDECAR_MEMORY_LIMIT_BYTES"] == "536870912"
    assert values["SIDECAR_DATA_DIR"]
    for key in ("SIDECAR_INGEST_TOKENS", "SIDECAR_ADMIN_TOKENS", "SIDECAR_SESSION_SECRET"):
        assert env[key] == {"key": key, "generateValue": True}
    for key in ("SIDECAR_ALERT_URLS", "SIDECAR_DATASETTE_PASSWORD_HASH", "SIDECAR_BACKUP_S3_BUCKET",
                "SIDECAR_BACKUP_S3_ACCESS_KEY_ID", "SIDECAR_BACKUP_S3_SECRET_ACCESS_KEY"):
        assert env[key] == {"key": key, "sync": False}
    # No secret value committed: every secret-like variable is generated or entered in the dashboard.
    for key, item in env.items():
        if SECRET.search(key):
            assert "value" not in item and (item.get("generateValue") is True or item.get("sync") is False), key
    # Every SIDECAR_ variable is a setting, and the committed values pass the settings' checks.
    known = {setting.env_name for setting in SETTINGS}
    assert {key for key in env if key.startswith("SIDECAR_")} <= known
    environ = {key: value for key, value in values.items() if key.startswith("SIDECAR_")}
    environ.update(PORT="10000", SIDECAR_INGEST_TOKENS="i" * 44, SIDECAR_ADMIN_TOKENS="a" * 44,
                   SIDECAR_SESSION_SECRET="s" * 44)
    settings = load_settings(environ=environ)
    assert settings["host"] == "0.0.0.0" and settings["port"] == 10000 and settings["workers"] == 1


def test_keep_warm_workflow():
    workflow = load(".github", "workflows", "keep-warm.yml")
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["schedule"] == [{"cron": "*/10 * * * *"}]
    [job] = workflow["jobs"].values()
    assert job["if"] == "vars.SIDECAR_URL != ''"
    assert job["env"]["KEEP_WARM_TOKEN"] == "${{ secrets.SIDECAR_INGEST_TOKEN }}"
    script = job["steps"][-1]["run"]
    assert "python scripts/keep_warm.py" in script and "--once" in script and '--url "$SIDECAR_URL"' in script
    assert "${{" not in script  # values reach the shell through env, never pasted into the script
