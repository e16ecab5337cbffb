"""Bearer tokens, compared in constant time; failed attempts become rate-limited security events."""
import hmac
import threading
import time

from flask import request

from .errors import ApiError
from . import jsonlog

SESSION_COOKIE = "ds_actor"  # Datasette's login cookie: one login for Datasette and the sidecar's pages


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


class ReaderAuth:
    """Who may read logs (search, trace view, Datasette): an admin token, or a logged-in engineer.

    The login is Datasette's (datasette-auth-passwords): its `ds_actor` cookie,
    signed with the session secret, is checked here too, so one login covers
    the sidecar's pages and Datasette. With `open_access` (loopback, no password
    configured) everyone may read.
    """

    def __init__(self, admin_tokens, secret, open_access):
        self.admin_tokens = admin_tokens
        self.secret = secret
        self.open_access = open_access

    def actor(self):
        """The reader of this request as a dict, or None."""
        token = bearer_token()
        if token and self.admin_tokens.matches(token):
            return {"id": "admin-token"}
        cookie = request.cookies.get(SESSION_COOKIE)
        return actor_from_cookie(cookie, self.secret) if cookie else None

    def require(self):
        actor = self.actor()
        if actor is not None:
            return actor
        if self.open_access:
            return {"id": "anonymous"}
        self.admin_tokens.require(bearer_token(), reason_if_missing="no admin token or login")
        return None  # not reached: require() raised


def actor_from_cookie(cookie, secret, now=None):
    """Decode Datasette's signed `ds_actor` cookie; None when forged or expired."""
    from itsdangerous import BadSignature, URLSafeSerializer
    try:
        decoded = URLSafeSerializer(secret, "actor").loads(cookie)
    except BadSignature:
        return None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("a"), dict):
        return None
    expires = decoded.get("e")
    if expires is not None:
        try:
            if _base62_decode(expires) < (now or time.time()):
                return None
        except (TypeError, ValueError):
            return None
    return decoded["a"]


_BASE62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz"  # datasette.utils.baseconv.base62


def _base62_decode(text):
    # Datasette writes the expiry of a cookie as base62 seconds (datasette.utils.baseconv).
    value = 0
    for char in text:
        value = value * 62 + _BASE62.index(char)
    return value
