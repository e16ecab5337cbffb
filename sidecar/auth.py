"""Bearer tokens, compared in constant time; failed attempts become rate-limited security events."""
import hmac
import os
import secrets
import threading
import time

from flask import request

from .errors import ApiError
from . import jsonlog

DEV_TOKEN_FILE = "dev-token"
ADMIN_TOKEN_FILE = "dev-admin-token"


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
    token = ("dev-admin-" if filename == ADMIN_TOKEN_FILE else "dev-") + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


class TokenChecker:
    def __init__(self, tokens, log_interval_s=10, kind="ingest"):
        self._tokens = [token.encode() for token in tokens]
        self.kind = kind
        self._log_interval_s = log_interval_s
        self._last_logged = {}
        self._suppressed = {}
        self._lock = threading.Lock()

    def matches(self, presented):
        presented = (presented or "").encode()
        found = False
        for token in self._tokens:  # no early exit: the time does not tell which token matched
            found |= hmac.compare_digest(presented, token)
        return found

    def require(self, presented, reason_if_missing="no bearer token"):
        if presented and self.matches(presented):
            return
        reason = "invalid token" if presented else reason_if_missing
        self._log_failure(reason)
        raise ApiError(401, "unauthorized",
                       "a valid {} token is required: send 'Authorization: Bearer <token>'".format(self.kind),
                       headers={"WWW-Authenticate": 'Bearer realm="sidecar"'})

    def _log_failure(self, reason):
        address = request.remote_addr or "unknown"
        now = time.monotonic()
        with self._lock:
            if now - self._last_logged.get(address, -1e9) < self._log_interval_s:
                self._suppressed[address] = self._suppressed.get(address, 0) + 1
                return
            self._last_logged[address] = now
            suppressed = self._suppressed.pop(address, 0)
            if len(self._last_logged) > 10_000:  # bound memory under a scan from many addresses
                self._last_logged.clear()
        jsonlog.emit("warn", "authentication failed", event="security.auth_failed", reason=reason, kind=self.kind,
                     remote_addr=address, method=request.method, path=request.path,
                     suppressed_since_last=suppressed)


def bearer_token():
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    return None
