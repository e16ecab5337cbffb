"""The standard library's logging to the sidecar, configured with `logging.config.dictConfig`.

    SIDECAR_URL=http://127.0.0.1:8080 SIDECAR_TOKEN=$(cat data/dev-token) .venv/bin/python examples/logging_dictconfig.py

Records go to the console and to the sidecar (service "shop"); what is still queued at exit
is flushed within `close_timeout` seconds.
"""
import logging
import logging.config
import os
import sys

# Only so that the example runs from a checkout: an app has `sidecar` (or its own copy of
# sidecar/client.py) on its path already.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "console": {"format": "%(asctime)s %(levelname)-8s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "console", "level": "INFO"},
        "sidecar": {
            "class": "sidecar.client.SidecarHandler",
            "level": "INFO",
            "service": "shop",
            # "url" and "token" default to $SIDECAR_URL and $SIDECAR_TOKEN
            "environment": "production",
            "release": "shop@1.4.2",
            "max_queue": 10000,
            "queue_full": "drop_new",
            "batch_size": 500,
            "flush_interval": 1.0,
            "close_timeout": 5.0,
        },
    },
    "root": {"level": "INFO", "handlers": ["console", "sidecar"]},
}


def main():
    logging.config.dictConfig(LOGGING)
    log = logging.getLogger("shop.checkout")
    log.debug("not sent: below the handler's level")
    log.info("order %s placed", 1234, extra={"order_id": 1234, "amount": 42.5, "trace_id": "4bf92f3577b34da6",
                                             "user_id": "u-42"})
    log.warning("stock low", extra={"sku": "A-17", "left": 3})
    try:
        charge(1234)
    except RuntimeError:
        log.exception("payment failed", extra={"order_id": 1234})
    # nothing else to do: an atexit hook flushes the queue within close_timeout


def charge(order_id):
    try:
        {}["card"]
    except KeyError as error:
        raise RuntimeError("no card on file for order {}".format(order_id)) from error


if __name__ == "__main__":
    main()
