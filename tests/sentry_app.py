"""A tiny app that reports to the sidecar with the official sentry-sdk (run by the Sentry tests).

    python sentry_app.py DSN [--no-brotli]
Prints one JSON line: the event ids it sent, by name.
"""
import json
import logging
import sys

if "--no-brotli" in sys.argv:
    sys.modules["brotli"] = None  # the SDK falls back to gzip when brotli cannot be imported

import sentry_sdk  # noqa: E402
from sentry_sdk.integrations.logging import LoggingIntegration  # noqa: E402


def charge(card, amount):
    if amount < 0:
        raise ValueError("negative amount {}".format(amount))  # the same bug...
    raise ValueError("amount {} too large for card".format(amount))  # ...raised from another line


def divide(a, b):
    return a / b


def capture(name, function, *args):
    try:
        function(*args)
    except Exception:
        sent[name] = sentry_sdk.capture_exception()


sent = {}
sentry_sdk.init(dsn=sys.argv[1], release="shop@1.2.3", environment="test", traces_sample_rate=1.0,
                integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)])
sentry_sdk.set_user({"id": "user-7", "email": "seven@example.com"})
sentry_sdk.set_tag("service", "shop")
with sentry_sdk.start_transaction(name="checkout"):  # a transaction item the sidecar skips
    capture("charge_negative", charge, "4111 1111 1111 1111", -5)
    capture("charge_large", charge, "4111 1111 1111 1111", 10**6)
    capture("divide", divide, 1, 0)
sent["message"] = sentry_sdk.capture_message("Payment provider timeout after 3000 ms", level="error")
logging.getLogger("shop.payments").error("Refund %s failed for order %s", "R-17", 981, extra={"password": "hunter2"})
sentry_sdk.flush(30)
print(json.dumps(sent))
