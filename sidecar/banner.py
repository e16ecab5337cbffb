"""What `make run` prints once the server listens: where, and how to send a first entry."""
import os
import sys

from .auth import DEV_TOKEN_FILE, ensure_dev_token


def print_banner(settings, addresses, stream=None):
    stream = stream or sys.stderr
    url = addresses[0] if addresses else "http://{}:{}".format(settings["host"], settings["port"])
    if settings["ingest_tokens"]:
        token, origin = "$SIDECAR_TOKEN", "one of SIDECAR_INGEST_TOKENS"
    else:
        token = ensure_dev_token(os.path.abspath(settings["data_dir"]))
        origin = "local dev token, kept in {}".format(os.path.join(settings["data_dir"], DEV_TOKEN_FILE))
    stream.write(
        "\nlog sidecar listening on {url} (data in {data})\n"
        "ingest token: {token}  ({origin})\n"
        "try it:\n"
        "  curl -sS -X POST {url}/api/logs -H 'Authorization: Bearer {token}' "
        "-H 'Content-Type: application/json' "
        "-d '{{\"service\": \"demo\", \"level\": \"info\", \"message\": \"hello from curl\"}}'\n"
        "health: {url}/api/health\n\n".format(url=url, data=os.path.abspath(settings["data_dir"]),
                                              token=token, origin=origin))
    stream.flush()
