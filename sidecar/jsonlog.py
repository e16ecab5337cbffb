"""The sidecar's own logs: one JSON line per event on stdout, in the LogEntry shape.

Callers pass only what is safe to print: never a token, a query string or a body.
"""
import logging
import socket
import sys
import threading
from datetime import datetime, timezone

import orjson

from ingest.timestamps import format_ts

_lock = threading.Lock()
dropped_lines = 0
_HOST = socket.gethostname()


def emit(level, message, stream=None, **metadata):
    line = orjson.dumps({
        "timestamp": format_ts(datetime.now(timezone.utc)),
        "level": level,
        "service": "sidecar",
        "message": message,
        "host": _HOST,
        "metadata": metadata,
    }) + b"\n"
    stream = stream or sys.stdout
    global dropped_lines
    with _lock:
        try:
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                buffer.write(line)
            else:
                stream.write(line.decode())
            stream.flush()
        except (OSError, ValueError):
            # stdout may be a file on a full disk: a lost log line must never fail a request.
            dropped_lines += 1


class JsonLogHandler(logging.Handler):
    """Routes the `sidecar.*` loggers (writer, recovery, Flask's app logger) into the JSON lines."""

    LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "critical"}

    def emit(self, record):
        fields = {"logger": record.name}
        if record.exc_info:
            fields["exception"] = logging.Formatter().formatException(record.exc_info)
        emit(self.LEVELS.get(record.levelname, "info"), record.getMessage(), **fields)


def install():
    logger = logging.getLogger("sidecar")
    if not any(isinstance(handler, JsonLogHandler) for handler in logger.handlers):
        logger.addHandler(JsonLogHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
