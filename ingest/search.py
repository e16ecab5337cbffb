"""One search over every segment: full-text, filters, newest first, stable cursor paging, traces.

No Flask here: `sidecar/search_api.py` is a thin HTTP layer over `search()`
and `trace()`.

Order and paging. Hits are ordered by (ts DESC, segment ASC, id DESC): `ts`
is the event time as stored (text that sorts as time), `(segment, id)` names
an entry and breaks ties. A cursor is the position of the last hit served
(base64url JSON of its ts, segment and id); the next page holds what sorts
after that position, so entries that arrive later never shift a page already
served, whichever segment they land in.

Merge. Candidate segments come from the catalog in meta.db: every head
(being written; its catalog time range may lag, so it is never skipped on
time) and the closed segments whose [min_ts, max_ts] overlaps the range
asked for. Heads are visited first, then closed segments by descending
max_ts; each is asked for its best `limit + 1` hits after the cursor, the
best `limit + 1` overall are kept, and the walk stops once the worst kept
hit is newer than the next segment's max_ts. The extra hit tells whether
there is a next page.

Per-segment SQL (see `segment_query`, and the plans in docs/search.md):
- a trace_id in a closed segment: its `logs_trace_id` index;
- full text (q, or a trace_id in a head, as the FTS5 column filter
  `trace_id : "..."`): when the match set is small (counted up to a
  threshold), logs_fts drives and rows are fetched by rowid; when it is
  large, the time-ordered index drives and the matches are a rowid set;
- otherwise the (level, ts), (service, ts) or (ts) index drives
  ORDER BY ts DESC, id DESC and the scan stops at the limit.
Columns that must not drive a plan are written `+logs.col`, which keeps
SQLite from picking their index.
"""
import base64
import binascii
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson

from . import catalog, schema, segments
from .entries import LEVEL_ALIASES, LEVELS, format_ts

DEFAULT_LIMIT = 100
DEFAULT_MAX_LIMIT = 1000
MAX_QUERY_CHARS = 2000
FTS_JOIN_MIN_THRESHOLD = 2000  # matches in one segment up to which logs_fts drives the plan
READ_BUSY_TIMEOUT_S = 2  # a closed segment being pruned by retention is locked for one short chunk
COLUMNS = ("id",) + schema.LOG_COLUMNS
JSON_COLUMNS = ("metadata", "exception")
RARE_LEVELS = frozenset({"warn", "error", "critical"})
SELECT_COLUMNS = ", ".join("logs." + column for column in COLUMNS)
RELATIVE_TIME = re.compile(r"^(\d{1,9})\s*(s|m|h|d|w)$")
TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
QUOTING_HELP = ('wrap terms that contain punctuation in double quotes, e.g. "user@example.com" or "payment-service" '
                '(write "" for a double quote inside quotes)')


class SearchError(ValueError):
    """A search the caller must change: `code`, a `message` that says what to fix, `details`."""

    def __init__(self, code, message, details=None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


@dataclass(frozen=True)
class Query:
    """A validated search. Times are stored-form text (`YYYY-MM-DDTHH:MM:SS.mmmZ`), both bounds inclusive."""
    q: str = None
    levels: tuple = ()
    services: tuple = ()
    trace_id: str = None
    user_id: str = None
    fingerprint: str = None  # an error group's events
    since: str = None
    until: str = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple = None  # (ts, segment, id) of the last hit served


# -- parsing ------------------------------------------------------------------

def _text(value):
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    value = value.strip()
    return value or None


def _values(value):
    """Comma-separated text (or a list of such) as a tuple of distinct, non-empty values."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else [p for item in value for p in str(item).split(",")]
    seen = []
    for part in (p.strip() for p in parts):
        if part and part not in seen:
            seen.append(part)
    return tuple(seen)


def parse_levels(value):
    levels = []
    for name in _values(value):
        level = LEVEL_ALIASES.get(name.lower())
        if level is None:
            raise SearchError("invalid_level", "level {!r} is not one of {} (give several separated by commas, "
                              "e.g. level=error,critical)".format(name[:32], ", ".join(LEVELS)),
                              {"parameter": "level", "value": name[:64], "allowed": list(LEVELS)})
        if level not in levels:
            levels.append(level)
    return tuple(levels)


def parse_time(value, now, name="since"):
    """RFC 3339 (a date alone means its midnight UTC; no offset means UTC), `now`, or `15m`, `2h`, `7d`... ago."""
    text = _text(value)
    if text is None:
        return None
    relative = RELATIVE_TIME.match(text.lower())
    try:
        if text.lower() == "now":
            return format_ts(now)
        if relative:
            return format_ts(now - timedelta(seconds=int(relative.group(1)) * TIME_UNITS[relative.group(2)]))
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return format_ts(moment.astimezone(timezone.utc))
    except (ValueError, OverflowError):
        raise SearchError("invalid_time", "{} {!r} is not a time: use RFC 3339 (2024-05-01T12:00:00Z, "
                          "2024-05-01T14:00:00+02:00, 2024-05-01), or a time ago such as 30s, 15m, 2h, 7d, 2w"
                          .format(name, text[:64]), {"parameter": name, "value": text[:64]}) from None


def parse_limit(value, max_limit=DEFAULT_MAX_LIMIT):
    if value is None or (isinstance(value, str) and not value.strip()):
        return min(DEFAULT_LIMIT, max_limit)
    try:
        limit = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        limit = None
    if limit is None or not 1 <= limit <= max_limit:
        raise SearchError("invalid_limit", "limit must be a whole number from 1 to {}".format(max_limit),
                          {"parameter": "limit", "value": str(value)[:64], "max": max_limit})
    return limit


def encode_cursor(hit):
    raw = orjson.dumps([hit["ts"], hit["segment"], hit["id"]])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text):
    text = _text(text)
    if text is None:
        return None
    try:
        ts, segment, id_ = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not (isinstance(ts, str) and isinstance(segment, str) and type(id_) is int):
            raise TypeError
    except (ValueError, TypeError, binascii.Error):
        raise SearchError("invalid_cursor", "cursor is not one this API returned: pass next_cursor from the "
                          "previous response unchanged, or leave it out for the newest hits",
                          {"parameter": "cursor"}) from None
    return ts, segment, id_


_fts_check = threading.local()


def check_fts_query(q):
    """Raise SearchError when `q` is not valid FTS5 query syntax (checked against an empty table)."""
    con = getattr(_fts_check, "con", None)
    if con is None:
        con = _fts_check.con = sqlite3.connect(":memory:", check_same_thread=False)
        con.execute("CREATE VIRTUAL TABLE logs_fts USING fts5(message, trace_id)")
    try:
        con.execute("SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?", (q,)).fetchall()
    except sqlite3.Error as error:
        raise fts_error(q, str(error)) from None


def quote_terms(q):
    """Every whitespace-separated term as a quoted string: a query that is always valid."""
    return " ".join('"{}"'.format(term.replace('"', '""')) for term in q.split())


def fts_error(q, sqlite_message):
    details = {"parameter": "q", "sqlite_error": sqlite_message, "suggestion": quote_terms(q)}
    column = re.match(r"no such column: (.*)", sqlite_message)
    if column:
        message = ("q: {!r} is read as a column name (in FTS5, 'word:' and '-word' select a column; the columns "
                   "are message and trace_id): {}".format(column.group(1)[:64], QUOTING_HELP))
    elif sqlite_message.startswith("unterminated string"):
        message = 'q: a double quote is not closed: close the phrase with " (write "" for a double quote inside it)'
    elif sqlite_message.startswith("unknown special query"):
        message = "q: a query cannot start with * : put it after a prefix, e.g. pay*"
    elif sqlite_message.startswith("fts5: syntax error"):
        near = sqlite_message.partition("near")[2].strip()
        message = ("q is not valid FTS5 syntax (error near {}): {}; AND, OR, NOT are upper case and go between "
                   "two terms; close every parenthesis and quote".format(near or "the end", QUOTING_HELP))
    else:
        message = "q is not a valid full-text query ({}): {}".format(sqlite_message, QUOTING_HELP)
    return SearchError("invalid_query", message, details)


def parse_query(q=None, level=None, service=None, trace_id=None, user_id=None, since=None, until=None,
                limit=None, cursor=None, now=None, max_limit=DEFAULT_MAX_LIMIT, fingerprint=None):
    now = now or datetime.now(timezone.utc)
    q = _text(q)
    if q is not None:
        if len(q) > MAX_QUERY_CHARS:
            raise SearchError("invalid_query", "q is longer than {} characters".format(MAX_QUERY_CHARS),
                              {"parameter": "q"})
        check_fts_query(q)
    since, until = parse_time(since, now, "since"), parse_time(until, now, "until")
    if since and until and since > until:
        raise SearchError("invalid_time", "since ({}) is after until ({}): swap them".format(since, until),
                          {"since": since, "until": until})
    return Query(q=q, levels=parse_levels(level), services=_values(service), trace_id=_text(trace_id),
                 user_id=_text(user_id), fingerprint=_text(fingerprint), since=since, until=until,
                 limit=parse_limit(limit, max_limit), cursor=decode_cursor(cursor))


# -- one segment ----------------------------------------------------------------

def segment_path(data_dir, name):
    return os.path.join(segments.segments_dir(data_dir), name)


def connect_segment(path):
    """A read-only connection (the file is never written through it, nor created)."""
    return sqlite3.connect("file:{}?mode=ro".format(urllib.parse.quote(path)), uri=True,
                           timeout=READ_BUSY_TIMEOUT_S, check_same_thread=False)


def has_trace_index(con):
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'logs_trace_id'").fetchone() \
        is not None


def fts_phrase(column, value):
    return '{} : "{}"'.format(column, value.replace('"', '""'))


def _tokenizable(value):
    # unicode61 splits on everything but letters and digits: a value without any has no phrase to match.
    return any(char.isalnum() for char in value)


def fts_expression(query, trace_indexed):
    """The MATCH text: q, and in a segment without the trace_id index, the trace_id column filter."""
    parts = []
    if query.q is not None:
        parts.append(query.q)
    if query.trace_id is not None and not trace_indexed and _tokenizable(query.trace_id):
        parts.append(fts_phrase("trace_id", query.trace_id))
    if len(parts) == 2:
        return "({}) AND {}".format(*parts)
    return parts[0] if parts else None


def time_bounds(query, name, floor=None):
    """(lower, upper, upper_strict, tie) for segment `name`, or None when nothing there can be on this page.

    `floor` is the ts of the worst hit kept so far once there are enough:
    nothing older can make the page.
    """
    lower = max([bound for bound in (query.since, floor) if bound is not None], default=None)
    upper, strict, tie = query.until, False, None
    if query.cursor is not None:
        cursor_ts, cursor_segment, cursor_id = query.cursor
        if upper is None or cursor_ts <= upper:
            upper = cursor_ts
            if name < cursor_segment:  # same ts sorts before the cursor in an earlier-named segment
                strict = True
            elif name == cursor_segment:
                tie = (cursor_ts, cursor_id)
    if lower is not None and upper is not None and (lower > upper or (lower == upper and strict)):
        return None
    return lower, upper, strict, tie


def _filters(query, bounds, driving):
    """WHERE terms and parameters; columns not in `driving` are written `+logs.col` to keep their index out."""
    def col(name):
        return ("logs." if name in driving else "+logs.") + name

    terms, params = [], []
    if query.trace_id is not None:
        terms.append(col("trace_id") + " = ?")
        params.append(query.trace_id)
    for name, values in (("level", query.levels), ("service", query.services)):
        if values:
            terms.append("{} IN ({})".format(col(name), ", ".join("?" * len(values))))
            params.extend(values)
    if query.user_id is not None:
        terms.append("+logs.user_id = ?")
        params.append(query.user_id)
    if query.fingerprint is not None:
        terms.append(col("fingerprint") + " = ?")
        params.append(query.fingerprint)
    lower, upper, strict, tie = bounds
    if lower is not None:
        terms.append(col("ts") + " >= ?")
        params.append(lower)
    if upper is not None:
        terms.append(col("ts") + (" < ?" if strict else " <= ?"))
        params.append(upper)
    if tie is not None:
        terms.append("(+logs.ts < ? OR +logs.id < ?)")
        params.extend(tie)
    return terms, params


def _where(terms):
    return " AND ".join(terms) if terms else "1"


def fts_match_count(con, expression, cap):
    return con.execute("SELECT count(*) FROM (SELECT rowid FROM logs_fts WHERE logs_fts MATCH ? LIMIT ?)",
                       (expression, cap + 1)).fetchone()[0]


def segment_query(con, name, query, fetch, floor=None, descending=True, fts_join_threshold=None):
    """(plan, sql, params) for this segment's best `fetch` hits, or None when it cannot hold one.

    plan is "trace_index", "fts" or "index" (see the module docstring). Up to `fts_join_threshold`
    full-text matches in the segment (default: the larger of 2000 and 4 x fetch), logs_fts drives.
    """
    bounds = time_bounds(query, name, floor) if descending else (None, None, False, None)
    if bounds is None:
        return None
    order = " ORDER BY logs.ts {0}, logs.id {0} LIMIT ?".format("DESC" if descending else "ASC")
    trace_indexed = query.trace_id is not None and has_trace_index(con)
    expression = fts_expression(query, trace_indexed)
    if trace_indexed:
        terms, params = _filters(query, bounds, driving={"trace_id"})
        if query.q is not None:
            # Few rows per trace: probing logs_fts for each costs less than listing every match of q.
            terms.append("EXISTS (SELECT 1 FROM logs_fts WHERE logs_fts MATCH ? AND logs_fts.rowid = logs.id)")
            params.append(query.q)
        return "trace_index", "SELECT {} FROM logs WHERE {}{}".format(SELECT_COLUMNS, _where(terms), order), \
            params + [fetch]
    threshold = fts_join_threshold or max(FTS_JOIN_MIN_THRESHOLD, 4 * fetch)
    if expression is not None and fts_match_count(con, expression, threshold) <= threshold:
        # CROSS JOIN keeps logs_fts as the outer loop: each match is one rowid lookup, then a small sort.
        terms, params = _filters(query, bounds, driving={"ts", "level", "service", "trace_id"})
        sql = "SELECT {} FROM logs_fts CROSS JOIN logs ON logs.id = logs_fts.rowid WHERE logs_fts MATCH ?{}{}" \
            .format(SELECT_COLUMNS, "".join(" AND " + term for term in terms), order)
        return "fts", sql, [expression] + params + [fetch]
    # The time-ordered index drives and the scan stops at the limit. Levels other than warn, error and
    # critical are usually common: with a service filter as well, the service index drives.
    if query.fingerprint is not None:
        driving = {"fingerprint"}  # a group's events: its partial index, then a sort of that group only
    elif query.levels and (not query.services or set(query.levels) <= RARE_LEVELS):
        driving = {"level", "ts"}
    elif query.services:
        driving = {"service", "ts"}
    else:
        driving = {"ts"}
    terms, params = _filters(query, bounds, driving)
    if expression is not None:
        terms.append("+logs.id IN (SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?)")
        params.append(expression)
    return "index", "SELECT {} FROM logs WHERE {}{}".format(SELECT_COLUMNS, _where(terms), order), \
        params + [fetch]


def _hit(row, name):
    hit = dict(zip(COLUMNS, row))
    for column in JSON_COLUMNS:
        if hit[column] is not None:
            try:
                hit[column] = orjson.loads(hit[column])
            except orjson.JSONDecodeError:
                pass  # stored by an older writer as plain text: shown as it is
    hit["segment"] = name
    hit["database"] = name[:-3] if name.endswith(".db") else name
    return hit


def _query_segment(data_dir, name, query, fetch, floor=None, descending=True):
    """Hits of one segment, or None when the time bounds rule it out (it is then not opened)."""
    if descending and time_bounds(query, name, floor) is None:
        return None
    con = connect_segment(segment_path(data_dir, name))
    try:
        planned = segment_query(con, name, query, fetch, floor, descending)
        if planned is None:
            return None
        _, sql, params = planned
        return [_hit(row, name) for row in con.execute(sql, params)]
    finally:
        con.close()


# -- across segments ---------------------------------------------------------------

def _catalog(data_dir):
    meta = catalog.connect_meta_cached(data_dir)
    return [dict(row) for row in meta.execute("SELECT name, closed_at, min_ts, max_ts FROM segments")]


def _order_newest_first(hits):
    # (ts DESC, segment ASC, id DESC), by stable sorts from the last key to the first.
    hits.sort(key=lambda hit: hit["id"], reverse=True)
    hits.sort(key=lambda hit: hit["segment"])
    hits.sort(key=lambda hit: hit["ts"], reverse=True)
    return hits


def _might_hold(segment, query):
    """Whether a closed segment's catalog time range can hold a hit of this query."""
    if segment["min_ts"] is None or segment["max_ts"] is None:
        return False  # no rows
    if query.since is not None and segment["max_ts"] < query.since:
        return False
    upper = query.until
    if query.cursor is not None and (upper is None or query.cursor[0] < upper):
        upper = query.cursor[0]
    return upper is None or segment["min_ts"] <= upper


def search(data_dir, q=None, level=None, service=None, trace_id=None, user_id=None, since=None, until=None,
           limit=DEFAULT_LIMIT, cursor=None, now=None, max_limit=DEFAULT_MAX_LIMIT, fingerprint=None):
    """Hits newest first across every segment, with `next_cursor` (None on the last page).

    Returns {"hits", "next_cursor", "segments_searched", "segments_skipped" (not opened: outside the
    time range, or unable to beat the hits already kept), "segments_unreadable" (a count; such a
    segment is left out), "took_ms"}. Raises SearchError on bad input.
    """
    started = time.perf_counter()
    query = parse_query(q, level, service, trace_id, user_id, since, until, limit, cursor, now, max_limit,
                        fingerprint)
    fetch = query.limit + 1  # one more than asked: whether a next page exists
    rows = _catalog(data_dir)
    heads = sorted((row for row in rows if row["closed_at"] is None), key=lambda row: row["name"], reverse=True)
    closed = [row for row in rows if row["closed_at"] is not None]
    candidates = [row for row in closed if _might_hold(row, query)]
    skipped = len(closed) - len(candidates)
    candidates.sort(key=lambda row: row["name"])
    candidates.sort(key=lambda row: row["max_ts"], reverse=True)
    order = heads + candidates
    kept, searched, unreadable = [], 0, 0
    for position, segment in enumerate(order):
        full = len(kept) >= fetch
        if full and segment["closed_at"] is not None and kept[-1]["ts"] > segment["max_ts"]:
            skipped += len(order) - position  # every later one ends earlier still
            break
        try:
            found = _query_segment(data_dir, segment["name"], query, fetch, kept[-1]["ts"] if full else None)
        except (sqlite3.Error, OSError):
            # Deleted by retention since the catalog was read, or a hot journal left by a killed run.
            unreadable += 1
            continue
        if found is None:
            skipped += 1
            continue
        searched += 1
        if found:
            kept = _order_newest_first(kept + found)[:fetch]
    hits = kept[:query.limit]
    return {"hits": hits, "next_cursor": encode_cursor(hits[-1]) if len(kept) > query.limit else None,
            "segments_searched": searched, "segments_skipped": skipped, "segments_unreadable": unreadable,
            "took_ms": round((time.perf_counter() - started) * 1000, 2)}


def trace(data_dir, trace_id, limit=10000):
    """Every entry of one trace across segments, oldest first.

    Returns {"trace_id", "entries", "truncated" (more than `limit` entries), "segments_searched",
    "segments_unreadable"}.
    """
    trace_id = _text(trace_id)
    if trace_id is None:
        raise SearchError("invalid_trace_id", "trace_id must not be empty", {"parameter": "trace_id"})
    if type(limit) is not int or limit < 1:
        raise SearchError("invalid_limit", "limit must be a whole number of at least 1", {"parameter": "limit"})
    query = Query(trace_id=trace_id, limit=limit)
    entries, searched, unreadable = [], 0, 0
    for segment in _catalog(data_dir):
        try:
            found = _query_segment(data_dir, segment["name"], query, limit + 1, descending=False)
        except (sqlite3.Error, OSError):
            unreadable += 1
            continue
        searched += 1
        entries.extend(found or ())
    entries.sort(key=lambda hit: (hit["ts"], hit["segment"], hit["id"]))
    return {"trace_id": trace_id, "entries": entries[:limit], "truncated": len(entries) > limit,
            "segments_searched": searched, "segments_unreadable": unreadable}
