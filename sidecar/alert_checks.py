"""What each kind of alert rule looks at.

State kinds answer `{key: Finding}`: the keys (a service, a route, "all")
whose condition holds now. Kinds over per-minute rollups (error_rate,
latency_p95) look at the last `for_minutes` complete minutes themselves
(the condition must hold in each), so they are `WINDOWED`: the engine fires
them at once. The others are samples of now, and the engine waits
`for_minutes` of them before firing.

Event kinds answer `(events, position)`: the events past the rule's cursor
in meta.db (error_groups' rowid, regressed_at, sidecar_events' id), each
`(key, summary, details)`, and where the cursor goes next.
"""
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import orjson

from ingest.entries import format_ts
from retention import job as retention_job

WINDOWED = ("error_rate", "latency_p95")
EVENT_LIMIT = 1000  # events taken per rule per evaluation; the rest wait for the next one
RANK = {"healthy": 0, "degraded": 1, "unhealthy": 2}
ALL = "all"


@dataclass
class Finding:
    summary: str
    details: dict = field(default_factory=dict)


def minute_of(moment):
    return format_ts(moment)[:16]


def window(ctx, minutes):
    """The last `minutes` complete minutes before now, oldest first (at least one)."""
    return [minute_of(ctx.now - timedelta(minutes=back)) for back in range(max(minutes, 1), 0, -1)]


def error_rate(ctx, rule):
    p = rule.params
    minutes = window(ctx, rule.for_minutes)
    sql = ("SELECT minute, service, sum(entries) FROM volume_minute WHERE minute >= ? AND minute <= ? "
           "AND level IN ({}){} GROUP BY minute, service".format(
               ", ".join("?" * len(p["levels"])), " AND service = ?" if p["service"] else ""))
    args = [minutes[0], minutes[-1], *p["levels"]] + ([p["service"]] if p["service"] else [])
    counts = defaultdict(lambda: defaultdict(int))
    for minute, service, entries in ctx.meta.execute(sql, args):
        counts[service if p["per_service"] else ALL][minute] += entries
    found = {}
    for key, per_minute in counts.items():
        series = [per_minute.get(minute, 0) for minute in minutes]
        if all(count > p["threshold_per_minute"] for count in series):
            scope = "all services" if key == ALL else key
            found[key] = Finding(
                "{}: more than {:g} {} entries a minute for {} minute(s) (up to {})".format(
                    scope, p["threshold_per_minute"], "/".join(p["levels"]), len(minutes), max(series)),
                {"service": None if key == ALL else key, "per_minute": dict(zip(minutes, series)),
                 "threshold_per_minute": p["threshold_per_minute"]})
    return found


def latency_p95(ctx, rule):
    """p95 of `metadata.duration_ms` (ingest/latency.py rollups) above threshold_ms in each of the
    last for_minutes complete minutes, each with at least min_count durations."""
    from ingest import latency
    p = rule.params
    minutes = window(ctx, rule.for_minutes)
    ends = minutes[1:] + [minute_of(ctx.now)]
    filters = [(column, p[column]) for column in ("service", "route") if p[column] is not None]
    if p["per"] == "all":
        keys = [(p["service"], p["route"])]
    else:
        columns = "service, route" if p["per"] == "route" else "service, NULL"
        try:
            keys = [tuple(row) for row in ctx.meta.execute(
                "SELECT DISTINCT {} FROM latency_minute WHERE minute >= ? AND minute < ?{}".format(
                    columns, "".join(" AND {} = ?".format(column) for column, _ in filters)),
                [minutes[0], ends[-1]] + [value for _, value in filters])]
        except sqlite3.OperationalError:  # no latency rollups in this meta.db yet
            return {}
        if p["per"] == "service" and p["route"] is not None:
            keys = [(service, p["route"]) for service, _ in keys]
    found = {}
    for service, route in keys:
        series = []
        for minute, end in zip(minutes, ends):
            stats = latency.percentiles(ctx.meta, minute, end, service=service, route=route, quantiles=(0.95,))
            if stats["count"] < p["min_count"] or stats["p95"] is None or stats["p95"] <= p["threshold_ms"]:
                break
            series.append(stats["p95"])
        if len(series) < len(minutes):
            continue
        key = " ".join(part if part else "(no route)" for part in (service, route) if part is not None) or ALL
        found[key] = Finding(
            "{}: p95 latency above {:g} ms in each of the last {} minute(s) (up to {:g} ms)".format(
                "all services" if key == ALL else key, p["threshold_ms"], len(minutes), max(series)),
            {"service": service, "route": route, "p95_ms_per_minute": dict(zip(minutes, series)),
             "threshold_ms": p["threshold_ms"]})
    return found


def disk_budget(ctx, rule):
    budget = ctx.sidecar.retention_policy.budget_bytes
    if not budget:
        return {}
    used = retention_job.store_bytes(ctx.sidecar.data_dir)
    percent = round(100.0 * used / budget, 1)
    if percent < rule.params["threshold_percent"]:
        return {}
    return {"store": Finding("the store uses {}% of its disk budget ({} of {} MiB; alert from {:g}%)".format(
        percent, round(used / 1048576, 1), round(budget / 1048576, 1), rule.params["threshold_percent"]),
        {"used_bytes": used, "budget_bytes": budget, "percent": percent})}


def memory(ctx, rule):
    check = ctx.health["services"]["memory"]
    if check["percent"] < rule.params["threshold_percent"]:
        return {}
    return {"process": Finding("memory (RSS) at {}% of the {} MiB limit (alert from {:g}%)".format(
        check["percent"], round(check["limit"] / 1048576), rule.params["threshold_percent"]),
        {"used_bytes": check["used"], "limit_bytes": check["limit"], "percent": check["percent"]})}


def health(ctx, rule):
    status = ctx.health["status"]
    if RANK.get(status, 2) < RANK[rule.params["status"]]:
        return {}
    failing = {}
    for name, check in ctx.health["services"].items():
        for item in check if isinstance(check, list) else [check]:  # external_apis is a list
            if isinstance(item, dict) and item.get("status") not in (None, "healthy"):
                failing[name if item is check else "{} {}".format(name, item.get("name", "?"))] = item["status"]
    return {"sidecar": Finding("health is {} ({})".format(status, ", ".join(
        "{}: {}".format(name, value) for name, value in sorted(failing.items())) or "no detail"),
        {"status": status, "failing": failing})}


def _monitors(ctx, rule):
    """The configured uptime monitors (sidecar/uptime.py) the rule looks at, by name."""
    uptime = getattr(ctx.sidecar, "uptime", None)
    monitors = uptime.monitors if uptime is not None else {}
    wanted = rule.params["monitor"]
    return {name: monitor for name, monitor in monitors.items() if wanted is None or name == wanted}


def uptime_down(ctx, rule):
    """Monitors with an open uptime incident; key: the monitor's name."""
    from .uptime import open_incidents
    monitors = _monitors(ctx, rule)
    return {name: Finding("uptime monitor {} is down since {}: {}".format(name, row["started_at"],
                                                                         row["cause"] or "check failed"),
                          {"monitor": name, "incident_id": row["id"], "started_at": row["started_at"],
                           "cause": row["cause"]})
            for name, row in open_incidents(ctx.meta).items() if name in monitors}


def cert_expiry(ctx, rule):
    """HTTPS monitors whose certificate has fewer than threshold_days left; key: the monitor's name."""
    from .uptime import latest_cert_days
    found, threshold = {}, rule.params["threshold_days"]
    for name, monitor in _monitors(ctx, rule).items():
        days = latest_cert_days(ctx.meta, name, ctx.now) if monitor.https else None
        if days is not None and days < threshold:
            found[name] = Finding("the TLS certificate of uptime monitor {} {} (alert below {:g} days)".format(
                name, "has expired" if days < 0 else "expires in {:.1f} days".format(days), threshold),
                {"monitor": name, "days_left": days, "threshold_days": threshold})
    return found


def _group_events(rows, summary):
    return [(row["fingerprint"], summary(row), {
        "fingerprint": row["fingerprint"], "title": row["title"], "service": row["service"],
        "count": row["count"], "first_seen": row["first_seen"], "regressed_at": row["regressed_at"]})
        for row in rows]


def new_error_group(ctx, rule, position):
    service = rule.params["service"]
    rows = ctx.meta.execute(
        "SELECT rowid, fingerprint, title, service, count, first_seen, regressed_at FROM error_groups "
        "WHERE rowid > ?{} ORDER BY rowid LIMIT ?".format(" AND service = ?" if service else ""),
        [int(position)] + ([service] if service else []) + [EVENT_LIMIT]).fetchall()
    events = _group_events(rows, lambda row: "new error group in {}: {}".format(row["service"], row["title"]))
    return events, str(rows[-1]["rowid"]) if rows else position


def regression(ctx, rule, position):
    service = rule.params["service"]
    rows = ctx.meta.execute(
        "SELECT fingerprint, title, service, count, first_seen, regressed_at FROM error_groups "
        "WHERE regressed_at >= ?{} ORDER BY regressed_at LIMIT ?".format(" AND service = ?" if service else ""),
        [position] + ([service] if service else []) + [EVENT_LIMIT]).fetchall()
    # Folds of one round share a timestamp: take the cursor's own instant again, minus those seen.
    rows = [row for row in rows if not ctx.meta.execute(
        "SELECT 1 FROM alerts WHERE rule = ? AND key = ? AND json_extract(details, '$.regressed_at') = ?",
        (rule.name, row["fingerprint"], row["regressed_at"])).fetchone()]
    events = _group_events(rows, lambda row: "regression in {}: {}".format(row["service"], row["title"]))
    return events, rows[-1]["regressed_at"] if rows else position


def _sidecar_events(ctx, kind, position):
    rows = ctx.meta.execute("SELECT id, ts, message, details FROM sidecar_events WHERE type = ? AND id > ? "
                            "ORDER BY id LIMIT ?", (kind, int(position), EVENT_LIMIT)).fetchall()
    events = []
    for row in rows:
        try:
            details = orjson.loads(row["details"]) if row["details"] else {}
        except orjson.JSONDecodeError:
            details = {"raw": row["details"]}
        if isinstance(details, dict) and details.get("dry_run"):
            continue  # a dry run only reports what it would drop
        events.append((str(row["id"]), row["message"], {"event_id": row["id"], "ts": row["ts"], "event": details}))
    return events, str(rows[-1]["id"]) if rows else position


# Rule kinds that fire on a row of sidecar_events, and the row type each one watches.
SIDECAR_EVENT_TYPES = {"cold_start": "sidecar.cold_start", "retention_budget_drop": "retention.budget_drop",
                       "backup_failed": "backup.failed"}


def _sidecar_event_check(event_type):
    return lambda ctx, rule, position: _sidecar_events(ctx, event_type, position)


def initial_position(meta, kind, now):
    """Where a new cursor starts: groups and regressions from now on; sidecar events of the
    last 10 minutes too (a cold start is recorded while the process starts, maybe before this)."""
    if kind == "new_error_group":
        return str(meta.execute("SELECT coalesce(max(rowid), 0) FROM error_groups").fetchone()[0])
    if kind == "regression":
        return format_ts(now)
    recent = meta.execute("SELECT min(id) - 1 FROM sidecar_events WHERE ts >= ?",
                          (format_ts(now - timedelta(minutes=10)),)).fetchone()[0]
    if recent is None:
        recent = meta.execute("SELECT coalesce(max(id), 0) FROM sidecar_events").fetchone()[0]
    return str(recent)


STATE_CHECKS = {"error_rate": error_rate, "latency_p95": latency_p95, "disk_budget": disk_budget,
                "memory": memory, "health": health, "uptime_down": uptime_down, "cert_expiry": cert_expiry}
EVENT_CHECKS = {"new_error_group": new_error_group, "regression": regression,
                **{kind: _sidecar_event_check(event_type) for kind, event_type in SIDECAR_EVENT_TYPES.items()}}
NOUNS = {"new_error_group": ("new error group", "new error groups"),
         "regression": ("regressed error group", "regressed error groups"),
         "cold_start": ("cold start", "cold starts"),
         "retention_budget_drop": ("segment dropped to keep the disk budget",
                                   "segments dropped to keep the disk budget"),
         "backup_failed": ("failed backup", "failed backups")}
