"""One check of one monitor: HTTP(S) (status, optional keyword) or a TCP connect; and the days
left on an HTTPS server's certificate.

Messages are written here, never copied from an exception: errors from
`requests` and `ssl` name hosts, users and query strings, and a monitor's URL
may hold a token. Everything is bounded by the monitor's `timeout_ms`.
"""
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone

from .dependencies import network_reason
from .uptime_config import is_ip

USER_AGENT = "log-sidecar uptime monitor"
MAX_BODY_BYTES = 1024 * 1024  # read at most this much of a body looking for the keyword


@dataclass
class Outcome:
    ok: bool
    response_ms: float = None
    http_status: int = None
    error: str = None


def _ms(seconds):
    return round(seconds * 1000, 1)


def _read_body(response, deadline):
    """Up to MAX_BODY_BYTES of the body, decoded; None when the deadline passes first."""
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=16384):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY_BYTES:
            break
        if time.perf_counter() > deadline:
            return None
    data = b"".join(chunks)[:MAX_BODY_BYTES]
    return data.decode(response.encoding or "utf-8", errors="replace")


def check_http(monitor):
    import requests
    if not monitor.verify_tls:  # asked for in the monitors file: no warning on every check
        import urllib3
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    timeout = monitor.timeout_ms / 1000
    headers = {"User-Agent": USER_AGENT}
    headers.update(monitor.headers)
    started = time.perf_counter()
    deadline = started + timeout
    try:
        with requests.request(monitor.method, monitor.url, headers=headers, timeout=(timeout, timeout),
                              allow_redirects=monitor.follow_redirects, verify=monitor.verify_tls,
                              stream=True) as response:
            code = response.status_code
            text = None
            if monitor.keyword is not None and monitor.status_expected(code) and monitor.method != "HEAD":
                text = _read_body(response, deadline)
                if text is None:
                    return Outcome(False, None, code, "body not read within {} ms".format(monitor.timeout_ms))
            elapsed = _ms(time.perf_counter() - started)
    except requests.Timeout:
        return Outcome(False, None, None, "no answer within {} ms".format(monitor.timeout_ms))
    except requests.exceptions.SSLError as error:
        verify_failed = "certificate_verify_failed" in str(error).lower()  # inspected, never shown
        return Outcome(False, None, None, "TLS certificate not valid (verification failed)" if verify_failed
                       else "TLS handshake failed")
    except requests.TooManyRedirects:
        return Outcome(False, None, None, "too many redirects")
    except requests.RequestException as error:
        return Outcome(False, None, None, network_reason(error))
    if elapsed > monitor.timeout_ms:
        return Outcome(False, elapsed, code, "answered after {} ms (timeout {} ms)".format(elapsed, monitor.timeout_ms))
    if not monitor.status_expected(code):
        return Outcome(False, elapsed, code, "HTTP {}, expected {}".format(code, monitor.expected_text))
    if text is not None and monitor.keyword not in text:
        return Outcome(False, elapsed, code, "keyword not found in the response")
    return Outcome(True, elapsed, code)


def check_tcp(monitor):
    started = time.perf_counter()
    try:
        with socket.create_connection((monitor.host, monitor.port), timeout=monitor.timeout_ms / 1000):
            elapsed = _ms(time.perf_counter() - started)
    except (socket.timeout, TimeoutError):
        return Outcome(False, None, None, "no connection within {} ms".format(monitor.timeout_ms))
    except OSError as error:
        return Outcome(False, None, None, network_reason(error))
    return Outcome(True, elapsed)


def check(monitor):
    try:
        return check_http(monitor) if monitor.kind == "http" else check_tcp(monitor)
    except Exception as error:  # a check must never take the runner down
        return Outcome(False, None, None, "check failed ({})".format(type(error).__name__))


# -- certificates ---------------------------------------------------------------------------

def _tlv(data, position):
    """(tag, start of content, end of content) of the DER element at `position`."""
    tag, length = data[position], data[position + 1]
    position += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[position:position + count], "big")
        position += count
    return tag, position, position + length


def _der_time(tag, raw):
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280)
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("not a certificate time")
    return datetime.strptime(text.rstrip("Z")[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def not_after(der):
    """The notAfter of a DER X.509 certificate (stdlib only: reads the few fields before it)."""
    _tag, position, _end = _tlv(der, 0)              # Certificate
    _tag, position, _end = _tlv(der, position)       # tbsCertificate
    tag, _start, end = _tlv(der, position)
    if tag == 0xA0:                                  # [0] version
        position = end
    for _field in ("serialNumber", "signature", "issuer"):
        position = _tlv(der, position)[2]
    _tag, position, _end = _tlv(der, position)       # validity
    _tag, _start, position = _tlv(der, position)     # notBefore
    tag, start, end = _tlv(der, position)            # notAfter
    return _der_time(tag, der[start:end])


def fetch_not_after(host, port, timeout_s):
    """The notAfter of the certificate `host:port` presents, read from a TLS handshake that does
    not verify it (an expired or self-signed certificate still tells its date)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        with context.wrap_socket(sock, server_hostname=None if is_ip(host) else host) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise ValueError("no certificate presented")
    return not_after(der)


def url_endpoint(url):
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port or 443


def days_left(expiry, now):
    return round((expiry - now).total_seconds() / 86400, 2)
