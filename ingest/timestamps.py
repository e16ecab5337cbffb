"""The stored form of a timestamp, without the ingest path's imports.

gunicorn's master formats times too (its start-up checks, its JSON log lines), and what it
imports before it forks stays in the worker's memory as well: msgspec and the entry checks
are the worker's alone.
"""


def format_ts(moment):
    """UTC, millisecond precision, so timestamps sort as text."""
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        moment.year, moment.month, moment.day, moment.hour, moment.minute,
        moment.second, moment.microsecond // 1000)
