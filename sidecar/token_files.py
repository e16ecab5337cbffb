"""Secrets kept as files in the data directory: the local dev tokens and the session secret.

Without Flask: gunicorn's master prints the start-up banner (sidecar/banner.py) with the dev
token, and everything the master imports stays in the worker's memory too, counted in both
processes' RSS.
"""
import os
import secrets

DEV_TOKEN_FILE = "dev-token"
ADMIN_TOKEN_FILE = "dev-admin-token"
SESSION_SECRET_FILE = "session-secret"


def ensure_dev_token(data_dir, filename=DEV_TOKEN_FILE):
    """A local dev token: generated once, kept in `<data_dir>/<filename>` (mode 0600)."""
    path = os.path.join(data_dir, filename)
    os.makedirs(data_dir, exist_ok=True)
    try:
        with open(path) as handle:
            token = handle.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    prefixes = {ADMIN_TOKEN_FILE: "dev-admin-", SESSION_SECRET_FILE: ""}
    token = prefixes.get(filename, "dev-") + secrets.token_urlsafe(32 if filename == SESSION_SECRET_FILE else 24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token
