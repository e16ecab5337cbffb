"""Seeded, realistic log entries for the benchmarks.

Mixed levels, 60-160 character messages from 14 templates, 3-8 metadata keys,
about 500 bytes an entry as JSON, as the ingest issue describes its workload
(it measured ~508); most entries carry a trace_id shared by a few neighbours.
Until 2026-12-07 there were 7 templates, so messages were 81 characters on
average, and no user_agent key: 434 bytes an entry (docs/benchmarks.md).
"""
import random
import uuid
from datetime import datetime, timedelta, timezone

SERVICES = ["api", "web", "worker", "billing", "auth", "search"]
LEVELS = ["debug"] * 20 + ["info"] * 60 + ["warn"] * 12 + ["error"] * 7 + ["critical"]
WORDS = ("request user order payment cache timeout retry connection database query "
         "handler session token upstream response latency queue job worker batch "
         "invoice account profile image upload download index shard replica").split()
TEMPLATES = [
    "GET /api/v1/{w}/{n} completed with status {s} in {d} ms for user {u}",
    "Processing {w} {n} for account {u}: {w2} step finished after {d} ms",
    "Failed to connect to {w} at 10.0.{a}.{b}:5432 after {n} retries, giving up",
    "Cache miss for key {w}:{n}:{w2}, falling back to {w} lookup ({d} ms)",
    "User {u} updated {w} settings; {n} fields changed, {w2} notification queued",
    "Job {j} of type {w} picked by worker-{a} with priority {n} and payload {w2}",
    "Slow query on {w} table took {d} ms, rows scanned {n}, plan uses {w2} index",
    # Longer ones, so that lengths spread over 60-160 characters (103 on average).
    "Rendered {w} page for user {u} in {d} ms (template {w2}.html, {n2} queries, cache hit ratio 0.{a})",
    "Deadline exceeded calling {w}.{w2}Service/Get after {d} ms (timeout {d2} ms) for user {u} on shard {a}",
    "Received webhook {j} from {w} provider with {n2} events; signature verified, {a} duplicates dropped, "
    "queued for {w2}",
    "Payment {j} for account {u} declined by the provider: issuer code {s}, attempt {b} of 5, next retry "
    "in {d} ms",
    "Connection pool for {w} exhausted: {a} connections in use, {n2} requests waiting, the oldest for {d} ms; "
    "consider a larger pool",
    "POST /api/v1/{w}/{n}/{w2} returned {s} after {d} ms; upstream 10.0.{a}.{b}:8080 answered slowly, "
    "{n2} retries left in the budget",
    "Worker-{a} finished {w} job {j} in {d} ms: {n} items processed, {n2} skipped, {b} failed validation and "
    "were moved to the dead-letter queue",
]


USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "python-requests/2.32.3",
    "okhttp/4.12.0",
]


def _message(rng):
    text = rng.choice(TEMPLATES).format(
        w=rng.choice(WORDS), w2=rng.choice(WORDS), n=rng.randint(1, 99999), n2=rng.randint(0, 999),
        s=rng.choice([200, 201, 204, 400, 404, 500]), d=rng.randint(1, 5000), d2=rng.choice([1000, 2000, 5000]),
        u=rng.randint(1000, 99999), a=rng.randint(0, 255), b=rng.randint(0, 255),
        j=uuid.UUID(int=rng.getrandbits(128)).hex[:12])
    while len(text) < 60:
        text += " " + rng.choice(WORDS)
    return text[:160]


def _metadata(rng):
    keys = ["http_method", "route", "status", "duration_ms", "region", "pod",
            "request_id", "attempt", "user_agent"]
    chosen = rng.sample(keys, rng.randint(3, 8))
    values = {
        "http_method": lambda: rng.choice(["GET", "POST", "PUT", "DELETE"]),
        "route": lambda: "/api/v1/" + rng.choice(WORDS) + "/{id}",
        "status": lambda: rng.choice([200, 201, 204, 400, 404, 500]),
        "duration_ms": lambda: round(rng.uniform(0.5, 900.0), 2),
        "region": lambda: rng.choice(["eu-west-1", "us-east-1", "ap-south-1"]),
        "pod": lambda: "pod-" + uuid.UUID(int=rng.getrandbits(128)).hex[:10],
        "request_id": lambda: str(uuid.UUID(int=rng.getrandbits(128))),
        "attempt": lambda: rng.randint(1, 5),
        "user_agent": lambda: rng.choice(USER_AGENTS),
    }
    return {key: values[key]() for key in chosen}


def entries(count, seed=42, start=None, span_s=3600):
    """Yield `count` entry dicts with timestamps spread over `span_s` seconds."""
    rng = random.Random(seed)
    start = start or datetime.now(timezone.utc) - timedelta(seconds=span_s)
    trace_id, trace_left = None, 0
    for i in range(count):
        if trace_left == 0:
            trace_id = uuid.UUID(int=rng.getrandbits(128)).hex if rng.random() < 0.7 else None
            trace_left = rng.randint(1, 12)
        trace_left -= 1
        ts = start + timedelta(seconds=span_s * i / max(count, 1))
        entry = {
            "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": rng.choice(LEVELS),
            "service": rng.choice(SERVICES),
            "message": _message(rng),
            "metadata": _metadata(rng),
            "host": "host-%d" % rng.randint(1, 8),
            "environment": "production",
            "release": "1.4.%d" % rng.randint(0, 9),
        }
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = uuid.UUID(int=rng.getrandbits(128)).hex[:16]
        if rng.random() < 0.3:
            entry["user_id"] = "user-%d" % rng.randint(1, 50000)
        yield entry


def error_storm(entries_, seed=42, frames=20):
    """The same entries as errors with a `frames`-deep stack trace each (about 2,850 bytes an
    entry as JSON): an outage where every request fails, for the tracker's memory bound."""
    rng = random.Random(seed)
    for entry in entries_:
        entry["level"] = "error"
        kind = rng.choice(["TimeoutError", "ConnectionError", "KeyError", "ValueError"])
        entry["exception"] = {
            "type": kind, "value": entry["message"][:80],
            "stacktrace": [{"filename": "app/%s/%s.py" % (rng.choice(WORDS), rng.choice(WORDS)),
                            "function": "%s_%s" % (rng.choice(WORDS), rng.choice(WORDS)),
                            "lineno": rng.randint(1, 900), "module": "app.%s" % rng.choice(WORDS),
                            "in_app": depth >= frames // 2}
                           for depth in range(frames)]}
        yield entry


def free_text_errors(entries_, seed=43):
    """The same entries, each error's message followed by a few words of free text (what an
    app that puts a user's input or an upstream's reply in its error messages sends): messages
    no template gathers, so every service's template miner fills up with thousands."""
    rng = random.Random(seed)
    for entry in entries_:
        if entry["level"] in ("error", "critical"):
            tail = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            entry["message"] = (entry["message"] + ": " + tail)[:160]
        yield entry
