"""What `make run` prints once the server listens: where, and how to send a first entry."""
import os
import sys

from .token_files import ADMIN_TOKEN_FILE, DEV_TOKEN_FILE, ensure_dev_token


def print_banner(settings, addresses, stream=None):
    stream = stream or sys.stderr
    url = addresses[0] if addresses else "http://{}:{}".format(settings["host"], settings["port"])
    if settings["ingest_tokens"]:
        token, origin = "$SIDECAR_TOKEN", "one of SIDECAR_INGEST_TOKENS"
    else:
        token = ensure_dev_token(os.path.abspath(settings["data_dir"]))
        origin = "local dev token, kept in {}".format(os.path.join(settings["data_dir"], DEV_TOKEN_FILE))
    if settings["admin_tokens"]:
        admin, admin_origin = "$SIDECAR_ADMIN_TOKEN", "one of SIDECAR_ADMIN_TOKENS"
    else:
        admin = ensure_dev_token(os.path.abspath(settings["data_dir"]), ADMIN_TOKEN_FILE)
        admin_origin = "local dev admin token, kept in {}".format(os.path.join(settings["data_dir"], ADMIN_TOKEN_FILE))
    stream.write(
        "\nlog sidecar listening on {url} (data in {data})\n"
        "ingest token: {token}  ({origin})\n"
        "admin token:  {admin}  ({admin_origin})\n"
        "try it:\n"
        "  curl -sS -X POST {url}/api/logs -H 'Authorization: Bearer {token}' "
        "-H 'Content-Type: application/json' "
        "-d '{{\"service\": \"demo\", \"level\": \"error\", \"message\": \"hello from curl\"}}'\n"
        "  curl -sS {url}/api/errors -H 'Authorization: Bearer {admin}'\n"
        "Sentry SDK DSN: http://{token}@{hostport}/1\n"
        "health: {url}/api/health\n"
        "datasette: {url}/datasette/  search: {url}/search  ({access})\n\n".format(url=url, data=os.path.abspath(settings["data_dir"]),
                                              token=token, origin=origin, admin=admin, admin_origin=admin_origin,
                                              hostport=url.split("://", 1)[-1], access=_access(settings, addresses)))
    stream.flush()


def _access(settings, addresses):
    from .settings import is_loopback
    hosts = [address.split("://", 1)[-1].rsplit(":", 1)[0] for address in addresses] or [settings["host"]]
    if settings["datasette_password_hash"]:
        return "login required: user {}".format(settings["datasette_user"])
    if all(is_loopback(host) for host in hosts):
        return "OPEN to anyone on this machine: no SIDECAR_DATASETTE_PASSWORD_HASH set; fine on a laptop"
    return "closed: set SIDECAR_DATASETTE_PASSWORD_HASH to log in; admin tokens work"
