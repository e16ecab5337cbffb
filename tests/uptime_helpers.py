"""Real servers on loopback for the uptime tests: HTTP (up, down, slow, keyword), HTTPS with a
self-signed certificate made here, TCP; an injected clock."""
import datetime as dt
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOW = dt.datetime(2026, 3, 1, 12, 0, 30, tzinfo=dt.timezone.utc)


class Clock:
    def __init__(self, moment=NOW):
        self.moment = moment

    def __call__(self):
        return self.moment

    def advance(self, **delta):
        self.moment += dt.timedelta(**delta)


class Site:
    """GET /ok 200 "service ok", /fail 500, /slow (200 after `slow_s`), /toggle (answers `code`),
    /hook (records POSTed JSON: an apprise json:// receiver). Records each request's headers."""

    def __init__(self, tls_context=None):
        self.code, self.slow_s, self.requests, self.posts = 200, 0.5, [], []
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, code, body=b""):
                self.send_response(code)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                site.requests.append({"path": self.path, "headers": dict(self.headers)})
                path = self.path.split("?")[0]
                if path == "/ok":
                    self._answer(200, b"<html><body>service ok</body></html>")
                elif path == "/fail":
                    self._answer(500, b"internal error")
                elif path == "/slow":
                    time.sleep(site.slow_s)
                    self._answer(200, b"service ok, slowly")
                elif path == "/toggle":
                    self._answer(site.code, b"toggle " + str(site.code).encode())
                elif path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/ok")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._answer(404, b"not found")

            do_HEAD = do_GET

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                site.posts.append(json.loads(body))
                self._answer(200)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls_context is not None:
            self.server.socket = tls_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls_context is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path):
        return "{}://127.0.0.1:{}{}".format(self.scheme, self.port, path)

    @property
    def hook(self):
        return "json://127.0.0.1:{}/hook".format(self.port)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def self_signed(tmp_path, days=30):
    """(cert.pem path, key.pem path, notAfter) of a new self-signed certificate for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    not_after = now + dt.timedelta(days=days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path), not_after, cert.public_bytes(serialization.Encoding.DER)


def tls_context(cert_path, key_path):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


class Listener:
    """A TCP port that accepts connections (and closes them)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                conn.close()
            except (socket.timeout, OSError):
                continue

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()
