"""structlog through the standard library into the sidecar.

    SIDECAR_URL=http://127.0.0.1:8080 SIDECAR_TOKEN=$(cat data/dev-token) .venv/bin/python examples/structlog_setup.py

structlog's last processor, `ProcessorFormatter.wrap_for_formatter`, hands the event dict to
stdlib logging unrendered. `SidecarHandler` reads it: `event` becomes the message, every other
key (bound, contextvars, call arguments) metadata, and `trace_id`, `span_id`, `user_id`,
`environment`, `release` the entry's own fields. The console handler renders the same records
with structlog's `ProcessorFormatter`; plain `logging` records reach both handlers too.
"""
import logging
import logging.config
import os
import sys

import structlog

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

# Processors that both structlog and plain `logging` records go through before the console.
SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure():
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "console": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                               structlog.dev.ConsoleRenderer(colors=False)],
                "foreign_pre_chain": SHARED,
            },
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "console"},
            # no formatter: the handler sends structured fields, not rendered text
            "sidecar": {"class": "sidecar.client.SidecarHandler", "service": "billing",
                        "environment": "staging"},
        },
        "root": {"level": "INFO", "handlers": ["console", "sidecar"]},
    })
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *SHARED,
                    structlog.stdlib.PositionalArgumentsFormatter(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def main():
    configure()
    log = structlog.get_logger("billing.invoices")
    structlog.contextvars.bind_contextvars(request_id="req-7f3a", user_id="u-42")
    log = log.bind(invoice_id="inv-1001")
    log.info("invoice created", amount=99.5, currency="EUR", trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    log.warning("retrying charge", attempt=2)
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("charge failed", gateway="acme")
    logging.getLogger("billing.legacy").info("plain logging record", extra={"batch": 7})
    structlog.contextvars.clear_contextvars()


if __name__ == "__main__":
    main()
