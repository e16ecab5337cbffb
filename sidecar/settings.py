"""Every setting in one table: name, default, help.

Read from ``SIDECAR_<NAME>`` environment variables (``PORT`` is also read,
as free hosts set it), checked at start-up with a clear message.
``docs/settings.md`` is generated from this table (``python -m sidecar settings-doc``).
"""
import ipaddress
import os
from dataclasses import dataclass


class SettingsError(ValueError):
    """A setting has a value the sidecar cannot run with."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: object
    help: str
    kind: type = str  # str, int, float, bool, list (comma-separated)
    env: str = ""  # an extra variable read when SIDECAR_<NAME> is unset

    @property
    def env_name(self):
        return "SIDECAR_" + self.name.upper()


MiB = 1024 * 1024

SETTINGS = (
    Setting("host", "127.0.0.1", "Address gunicorn binds to. A non-loopback address requires ingest tokens."),
    Setting("port", 8080, "Port gunicorn binds to (the `PORT` variable set by hosts such as Render is read too).", int, env="PORT"),
    Setting("data_dir", "./data", "Directory for segments, `meta.db` and the local dev token."),
    Setting("backup_s3_bucket", "", "S3-compatible bucket that closed segments and `meta.db` snapshots are backed up to (docs/backups.md). Unset: no backups, no restore on boot."),
    Setting("backup_s3_prefix", "", "Key prefix inside the bucket (e.g. `sidecar/prod/`), one per store: a store never overwrites the backup of another one."),
    Setting("backup_s3_endpoint_url", "", "Endpoint of an S3-compatible service: Cloudflare R2 `https://<account id>.r2.cloudflarestorage.com`, Backblaze B2 `https://s3.<region>.backblazeb2.com`, MinIO `http://host:9000`. Unset: AWS S3."),
    Setting("backup_s3_region", "", "Region of the bucket (`auto` for R2, e.g. `us-west-004` for B2). Unset: boto3's default (`AWS_DEFAULT_REGION`, a profile)."),
    Setting("backup_s3_access_key_id", "", "Access key id for the bucket. Unset: boto3's default chain (`AWS_ACCESS_KEY_ID`, a profile, an instance role). Never logged or shown."),
    Setting("backup_s3_secret_access_key", "", "Secret access key for the bucket (with SIDECAR_BACKUP_S3_ACCESS_KEY_ID). Unset: boto3's default chain (`AWS_SECRET_ACCESS_KEY`, ...). Never logged or shown."),
    Setting("backup_interval_s", 900, "How often closed segments and a `meta.db` snapshot are backed up (in one process at a time); a failed run is retried after the same interval.", int),
    Setting("backup_restore_on_boot", True, "Restore the latest backup at start when the store is empty (no `meta.db`, no segment: a wiped disk), before the server listens. `false` starts empty.", bool),
    Setting("backup_restore_timeout_s", 300, "Longest a restore on boot may take; past it the sidecar starts with an empty store (the backup stays untouched).", int),
    Setting("backup_keep_meta_snapshots", 4, "`meta.db` snapshots kept in the bucket (the newest; older ones are deleted after each run).", int),
    Setting("ingest_tokens", [], "Comma-separated bearer tokens accepted by the ingest API. None on loopback: a dev token is generated once into `<data_dir>/dev-token`.", list),
    Setting("workers", 1, "Gunicorn worker processes. Each process owns its own head segment.", int),
    Setting("threads", 8, "Request threads per worker process.", int),
    Setting("environment", "development", "Environment name reported by the sidecar's own logs."),
    Setting("max_body_bytes", 5 * MiB, "Largest request body as sent (413 above).", int),
    Setting("max_decompressed_bytes", 50 * MiB, "Largest request body after decompression (413 above; decompression stops at this size).", int),
    Setting("max_batch_entries", 10_000, "Most entries in one request (413 above).", int),
    Setting("max_message_bytes", 64 * 1024, "Longer messages are truncated and flagged in `metadata._sidecar.truncated`.", int),
    Setting("max_metadata_bytes", 64 * 1024, "Larger metadata (as JSON) is truncated and flagged in `metadata._sidecar.truncated`.", int),
    Setting("max_metadata_depth", 20, "Entries whose metadata nests deeper are rejected.", int),
    Setting("max_future_s", 7 * 86400, "Entries timestamped further than this in the future are rejected.", int),
    Setting("segment_max_bytes", 256 * MiB, "The head segment rotates once its file and its WAL together pass this size (and at every UTC midnight). The size is looked at each time about 1/32 of this has been written (8 MiB at the default), so it may pass by up to that much; once closed, with its WAL folded in, a segment is often smaller than this (by up to the 32 MiB the WAL may hold).", int),
    Setting("queue_max_entries", 50_000, "Entries waiting for the writer before ingest answers 429 (each costs about 1 KiB of memory while it waits).", int),
    Setting("commit_max_entries", 1000, "The writer adds waiting batches to one transaction (group commit) up to this many entries; a bigger batch is committed alone.", int),
    Setting("synchronous", "full", "SQLite `synchronous` mode of segments: `full` (a 2xx survives power loss) or `normal` (a 2xx survives a crash of the process, not of the machine).", str),
    Setting("cache_bytes", 8 * MiB, "SQLite page cache of the head segment's writer connection. 8 MiB measured as fast as 16 MiB at 1M entries and 12 MB smaller (bench/ingest.py).", int),
    Setting("idempotency_ttl_s", 86400, "How long an `Idempotency-Key` is remembered.", int),
    Setting("request_timeout_s", 30, "How long a request waits for its batch to be committed before answering 503.", int),
    Setting("catalog_update_interval_ms", 1000, "How often the writer refreshes its head segment's row in the catalog. A refresh that finds meta.db busy is skipped until the next commit; after 10 intervals without one, the writer waits for it.", int),
    Setting("scrub", True, "Replace values under sensitive keys (password, token, cookie, ...) and credit-card numbers with `[Filtered]` before storing. `false` turns it off.", bool),
    Setting("fingerprint_levels", ["error", "critical"], "Levels whose entries are fingerprinted into error groups (entries with an exception always are); add `warn` to group warnings too.", list),
    Setting("admin_tokens", [], "Comma-separated bearer tokens for the read and admin API (`/api/errors`, ...). Separate from ingest tokens: an ingest token never reads. None on loopback: a dev admin token is generated once into `<data_dir>/dev-admin-token`.", list),
    Setting("retention_days", 7, "Age after which entries are deleted, for levels without an age of their own in SIDECAR_RETENTION_LEVEL_DAYS.", int),
    Setting("retention_level_days", ["debug=1", "warn=14", "error=30", "critical=30"], "Ages per level, as `level=days` pairs (comma-separated); levels not listed keep SIDECAR_RETENTION_DAYS.", list),
    Setting("disk_budget_bytes", 1024 * MiB, "Most bytes the store (segments, meta.db and idempotency.db) may use; over it the oldest closed segments are dropped, even inside their age. 0: no budget.", int),
    Setting("disk_budget_warn_percent", 80, "Budget use reported as a warning (and alerted on) from this percentage.", int),
    Setting("disk_budget_critical_percent", 95, "Budget use reported as critical from this percentage.", int),
    Setting("retention_interval_s", 600, "How often the retention job runs in the server (one process at a time).", int),
    Setting("retention_chunk_rows", 2000, "Rows deleted per transaction when pruning levels inside a segment, so nothing waits long.", int),
    Setting("monitors_file", "", "Uptime monitors file: YAML (`.yaml`, `.yml`) or TOML (`.toml`) with HTTP(S) and TCP monitors and maintenance windows, see docs/status.md. Unset: no monitors. A bad file stops the start with a message naming the monitor, key and line."),
    Setting("status_page_public", True, "`/status` and `/api/status` are open to anyone when true; `false` makes them need a reader (an admin token or a Datasette login; the page sends others to the login).", bool),
    Setting("uptime_retention_days", 90, "Uptime check results (and ended incidents) older than this are deleted, once an hour.", int),
    Setting("uptime_check_threads", 4, "Uptime checks that may run at the same time (threads of the one process that runs the monitors).", int),
    Setting("uptime_cert_check_interval_s", 3600, "How often an HTTPS monitor's certificate is read (one extra TLS handshake) for its days to expiry.", int),
    Setting("datasette_user", "admin", "User name engineers log in with at `/datasette/-/login` (and on the search page)."),
    Setting("datasette_password_hash", "", "PBKDF2 hash of the login password, made by `python -m sidecar password-hash`. Unset: Datasette and search are open to anyone on a loopback address, and closed (admin tokens only) on any other.", str),
    Setting("session_secret", "", "Secret that signs login cookies. Unset: generated once into `<data_dir>/session-secret`. Set it on hosts whose disk is wiped, so logins survive a restart.", str),
    Setting("search_max_limit", 1000, "Most hits one search request may ask for (`limit`).", int),
    Setting("dashboard_refresh_s", 60, "How often the Datasette dashboards reload themselves.", int),
    Setting("metrics_require_token", False, "`/metrics` requires an admin token (`Authorization: Bearer <token>`) when true. Open by default, like most Prometheus exporters: it shows counts and sizes, no log content.", bool),
    Setting("metrics_flush_interval_s", 5, "How often each worker process adds the durations of the sidecar's own requests (service `sidecar` in `latency_minute`) to `meta.db`.", int),
    Setting("memory_limit_bytes", 512 * MiB, "Memory the host allows the sidecar; `/api/health` reports RSS against it.", int),
    Setting("alerts_file", "", "Alert rules file: YAML (`.yaml`, `.yml`) or TOML (`.toml`), see docs/monitoring.md. Unset: the built-in rules. A bad file stops the start with a message naming the rule, key and line."),
    Setting("alert_urls", [], "Comma-separated apprise URLs (Slack, Discord, email, a JSON webhook, ...) alerts go to when a rule names no channels of its own. They hold secrets: never logged or shown, deliveries record a redacted form. None: alerts are only recorded in `meta.db`.", list),
    Setting("alert_interval_s", 30, "How often alert rules are evaluated (in one process at a time); each evaluation also records a health sample.", int),
    Setting("alert_retry_attempts", 3, "Retries of a failed delivery to one channel before it is recorded as failed; the waits grow 4x each time from SIDECAR_ALERT_RETRY_BASE_MS (1 s, 4 s, 16 s).", int),
    Setting("alert_retry_base_ms", 1000, "Wait before the first retry of a failed alert delivery.", int),
    Setting("alert_delivery_timeout_s", 30, "Longest one delivery attempt to one channel may take.", int),
    Setting("auth_log_interval_s", 10, "Failed authentication attempts are logged at most once per this interval per client address.", int),
    Setting("dependency_urls", [], "HTTP dependencies checked by `/api/health` (cached) and `/api/health/deep` (now): comma-separated `name=url` items, each optionally ending in `\\|status`, the expected status (`\\|204`, or a class such as `\\|3xx`; default any 2xx). Split on the first `=`; write a comma inside a URL as `%2C`. Redirects are not followed. Health answers show the name, never the URL.", list),
    Setting("dependency_postgres", [], "PostgreSQL databases checked like dependency URLs: comma-separated `name=dsn` items, `dsn` a `postgresql://` URI or libpq `key=value` pairs (split on the first `=`, so the DSN may hold `=`; no commas, so no multi-host URIs). Health answers show the name, never the DSN.", list),
    Setting("dependency_timeout_ms", 2000, "Longest wait for one dependency check (HTTP answer, PostgreSQL connect and each query; libpq connects in whole seconds, at least 2); slower is unhealthy. At most 30000.", int),
    Setting("dependency_latency_degraded_ms", 1000, "A dependency answering slower than this is degraded (PostgreSQL: `select 1`, or a connect slower than twice this). Below SIDECAR_DEPENDENCY_TIMEOUT_MS.", int),
    Setting("dependency_check_interval_s", 30, "How often each worker process's background checker refreshes the dependency results `/api/health` shows.", int),
    Setting("postgres_size_limit_bytes", 500_000_000, "Size a PostgreSQL dependency's database may reach (`pg_database_size`), such as a free tier's 500 MB: unhealthy at it, degraded from SIDECAR_POSTGRES_SIZE_WARN_PERCENT. 0: no limit.", int),
    Setting("postgres_size_warn_percent", 80, "PostgreSQL database size reported degraded from this percentage of SIDECAR_POSTGRES_SIZE_LIMIT_BYTES.", int),
    Setting("postgres_connections_warn_percent", 80, "PostgreSQL connections in use reported degraded from this percentage of those open to clients (`max_connections` minus the reserved ones); unhealthy when none is left.", int),
)
SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}
SYNCHRONOUS_MODES = ("full", "normal")


def _convert(setting, raw):
    if setting.kind is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if setting.kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError("{} must be true or false, got {!r}".format(setting.env_name, raw))
    if setting.kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError("{} must be a whole number, got {!r}".format(setting.env_name, raw)) from None
    return raw.strip()


def load_settings(overrides=None, environ=None):
    """Return a dict of every setting, from overrides, then the environment, then defaults."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    unknown = set(overrides) - set(SETTINGS_BY_NAME)
    if unknown:
        raise SettingsError("unknown setting(s): " + ", ".join(sorted(unknown)))
    values = {}
    for setting in SETTINGS:
        if setting.name in overrides:
            values[setting.name] = overrides[setting.name]
            continue
        raw = environ.get(setting.env_name)
        if raw is None and setting.env:
            raw = environ.get(setting.env)
        values[setting.name] = setting.default if raw is None else _convert(setting, raw)
    check_settings(values)
    return values


def is_loopback(host):
    if host == "localhost" or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_settings(values):
    positive = [s.name for s in SETTINGS if s.kind is int and s.name not in ("port", "disk_budget_bytes", "postgres_size_limit_bytes")]
    if not isinstance(values["disk_budget_bytes"], int) or values["disk_budget_bytes"] < 0:
        raise SettingsError("SIDECAR_DISK_BUDGET_BYTES must be 0 (no budget) or a positive whole number")
    level_days(values["retention_level_days"])
    if not values["disk_budget_warn_percent"] < values["disk_budget_critical_percent"] <= 100:
        raise SettingsError("SIDECAR_DISK_BUDGET_WARN_PERCENT must be below SIDECAR_DISK_BUDGET_CRITICAL_PERCENT, "
                            "which must be at most 100")
    for name in positive:
        if not isinstance(values[name], int) or values[name] <= 0:
            raise SettingsError("SIDECAR_{} must be a positive whole number, got {!r}".format(
                name.upper(), values[name]))
    if not 0 < values["port"] < 65536:
        raise SettingsError("PORT / SIDECAR_PORT must be between 1 and 65535, got {}".format(values["port"]))
    if values["synchronous"] not in SYNCHRONOUS_MODES:
        raise SettingsError("SIDECAR_SYNCHRONOUS must be one of {}, got {!r}".format(
            ", ".join(SYNCHRONOUS_MODES), values["synchronous"]))
    if values["max_decompressed_bytes"] < values["max_body_bytes"]:
        raise SettingsError("SIDECAR_MAX_DECOMPRESSED_BYTES must be at least SIDECAR_MAX_BODY_BYTES")
    if values["queue_max_entries"] < values["max_batch_entries"]:
        raise SettingsError("SIDECAR_QUEUE_MAX_ENTRIES must be at least SIDECAR_MAX_BATCH_ENTRIES")
    if not values["ingest_tokens"] and not is_loopback(values["host"]):
        raise SettingsError(
            "refusing to listen on {} without ingest tokens: set SIDECAR_INGEST_TOKENS "
            "(comma-separated), or bind to 127.0.0.1".format(values["host"]))
    for name in ("ingest_tokens", "admin_tokens"):
        if any(len(token) < 16 for token in values[name]):
            raise SettingsError("every token in SIDECAR_{} must be at least 16 characters long".format(name.upper()))
    if set(values["ingest_tokens"]) & set(values["admin_tokens"]):
        raise SettingsError("SIDECAR_ADMIN_TOKENS and SIDECAR_INGEST_TOKENS must not share a token")
    if values["datasette_password_hash"] and not values["datasette_password_hash"].startswith("pbkdf2_sha256$"):
        raise SettingsError("SIDECAR_DATASETTE_PASSWORD_HASH must be a pbkdf2_sha256$... hash: make one with "
                            "`python -m sidecar password-hash`")
    if values["session_secret"] and len(values["session_secret"]) < 32:
        raise SettingsError("SIDECAR_SESSION_SECRET must be at least 32 characters long")
    unknown_levels = set(values["fingerprint_levels"]) - {"debug", "info", "warn", "error", "critical"}
    if unknown_levels:
        raise SettingsError("SIDECAR_FINGERPRINT_LEVELS has unknown levels: " + ", ".join(sorted(unknown_levels)))
    from .dependencies import check_settings as check_dependency_settings
    check_dependency_settings(values)


def level_days(pairs):
    """Parse `level=days` pairs into a dict; raise SettingsError on a bad one."""
    levels = ("debug", "info", "warn", "error", "critical")
    ages = {}
    for pair in pairs:
        level, _, days = pair.partition("=")
        level = level.strip().lower()
        if level not in levels or not days.strip().isdigit() or int(days) < 1:
            raise SettingsError("SIDECAR_RETENTION_LEVEL_DAYS takes level=days pairs with a level among {} and "
                                "at least 1 day, got {!r}".format(", ".join(levels), pair))
        ages[level] = int(days)
    return ages


def settings_markdown():
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        default = setting.default
        if isinstance(default, list):
            default = ",".join(default) or "(none)"
        elif isinstance(default, bool):
            default = "true" if default else "false"
        extra = " (also `{}`)".format(setting.env) if setting.env else ""
        lines.append("| `{}`{} | `{}` | {} |".format(setting.env_name, extra, default, setting.help))
    return "\n".join(lines) + "\n"
