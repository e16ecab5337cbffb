"""What the status page shows: each monitor's state, uptime %, response times, incidents and
maintenance windows, read from meta.db (sidecar/uptime.py) with a few indexed queries.

Uptime % over a window = up checks / (up + down checks) in it: checks inside a
maintenance window count on neither side. Whole UTC hours come from
`uptime_hourly`, the partial hours at both ends from `uptime_results` (its
`ts` index), so the figure is exact at any boundary and 30 days cost at most
720 rows per monitor plus two hours of results.
"""
from collections import defaultdict
from datetime import datetime, timedelta

from ingest.entries import format_ts

from .uptime import latest_cert_days

WINDOWS = (("24h", timedelta(hours=24)), ("7d", timedelta(days=7)), ("30d", timedelta(days=30)))
CHART_BUCKET_MINUTES = 10  # the response-time chart's points: averages over 10 minutes (substr(ts, 1, 15))
INCIDENT_DAYS = 30
INCIDENT_LIMIT = 50
BANNERS = {"all_up": "All systems operational", "partial_outage": "Partial outage",
           "major_outage": "Major outage", "maintenance": "Under maintenance",
           "no_monitors": "No monitors configured"}


def parse_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _hour(moment):
    return moment.replace(minute=0, second=0, microsecond=0)


def _percent(up, down):
    return round(100.0 * up / (up + down), 3) if up + down else None


def counts(meta, since, now):
    """{monitor: {"up", "down", "maintenance"}} of the checks with since <= ts <= now."""
    totals = defaultdict(lambda: {"up": 0, "down": 0, "maintenance": 0})

    def add(rows):
        for monitor, up, down, maintenance in rows:
            for key, value in (("up", up), ("down", down), ("maintenance", maintenance)):
                totals[monitor][key] += value or 0

    def raw(low, high, closed):
        add(meta.execute(
            "SELECT monitor, sum(status = 'up'), sum(status = 'down'), sum(status = 'maintenance') FROM "
            "uptime_results WHERE ts >= ? AND ts {} ? GROUP BY monitor".format("<=" if closed else "<"),
            (format_ts(low), format_ts(high))).fetchall())

    first_full = _hour(since) if _hour(since) == since else _hour(since) + timedelta(hours=1)
    last = _hour(now)  # the hour under way: from the results
    if first_full >= last:
        raw(since, now, True)
    else:
        raw(since, first_full, False)
        add(meta.execute("SELECT monitor, sum(up), sum(down), sum(maintenance) FROM uptime_hourly "
                         "WHERE hour >= ? AND hour < ? GROUP BY monitor",
                         (format_ts(first_full)[:13], format_ts(last)[:13])).fetchall())
        raw(last, now, True)
    return totals


def uptime(meta, now):
    """{monitor: {window: {"percent", "up", "down", "maintenance"}}} for 24h, 7d and 30d."""
    found = defaultdict(dict)
    for label, length in WINDOWS:
        totals = counts(meta, now - length, now)
        for monitor, figures in totals.items():
            found[monitor][label] = dict(figures, percent=_percent(figures["up"], figures["down"]))
    return found


def response_series(meta, now):
    """{monitor: [{"t", "avg_ms", "checks", "down"}]}: the last 24 hours in 10-minute buckets."""
    series = defaultdict(list)
    rows = meta.execute(
        "SELECT monitor, substr(ts, 1, 15) AS bucket, avg(response_ms), count(*), sum(status = 'down') "
        "FROM uptime_results WHERE ts >= ? AND ts <= ? GROUP BY monitor, bucket ORDER BY monitor, bucket",
        (format_ts(now - timedelta(hours=24)), format_ts(now))).fetchall()
    for monitor, bucket, average, checks, down in rows:
        series[monitor].append({"t": bucket + "0:00Z", "avg_ms": None if average is None else round(average, 1),
                                "checks": checks, "down": down})
    return series


def _last_results(meta, names):
    found = {}
    for name in names:
        row = meta.execute("SELECT ts, status, response_ms, http_status, error FROM uptime_results "
                           "WHERE monitor = ? ORDER BY ts DESC LIMIT 1", (name,)).fetchone()
        if row is not None:
            found[name] = dict(row)
    return found


def incidents(meta, names, now):
    """Incidents of the configured monitors that were open in the last 30 days, newest first."""
    if not names:
        return []
    rows = meta.execute(
        "SELECT id, monitor, started_at, ended_at, cause FROM uptime_incidents WHERE (ended_at IS NULL OR "
        "ended_at >= ?) AND monitor IN ({}) ORDER BY started_at DESC, id DESC LIMIT ?".format(
            ", ".join("?" * len(names))),
        [format_ts(now - timedelta(days=INCIDENT_DAYS))] + list(names) + [INCIDENT_LIMIT]).fetchall()
    found = []
    for row in rows:
        end = parse_ts(row["ended_at"]) if row["ended_at"] else now
        found.append({"id": row["id"], "monitor": row["monitor"], "started_at": row["started_at"],
                      "ended_at": row["ended_at"], "ongoing": row["ended_at"] is None,
                      "duration_s": max(0, round((end - parse_ts(row["started_at"])).total_seconds())),
                      "cause": row["cause"]})
    return found


def maintenance_windows(config, now):
    """Each window's occurrence under way, else its next one (one-off windows that are over are left
    out), soonest first."""
    found = []
    places = [(window, None) for window in config.maintenance]
    places += [(window, monitor.name) for monitor in config.monitors for window in monitor.maintenance]
    for window, monitor in places:
        occurrence = window.occurrence(now)
        if occurrence is None:
            continue
        start, end = occurrence
        found.append({"name": window.name, "monitors": "all" if monitor is None else [monitor],
                      "start": format_ts(start), "end": format_ts(end), "active": start <= now < end,
                      "repeat": window.repeat, "schedule": window.describe()})
    found.sort(key=lambda item: (item["start"], item["name"]))
    return found


def overall(states):
    """all_up, maintenance (none down, some in maintenance), partial_outage, major_outage (more than
    half of the monitors not in maintenance are down), or no_monitors."""
    if not states:
        return "no_monitors"
    active = [state for state in states if state != "maintenance"]
    down = active.count("down")
    if not down:
        return "maintenance" if len(active) < len(states) else "all_up"
    return "major_outage" if down * 2 > len(active) else "partial_outage"


def status_report(config, meta, now):
    """The /api/status body."""
    names = [monitor.name for monitor in config.monitors]
    from .uptime import open_incidents
    open_ = open_incidents(meta)
    last = _last_results(meta, names)
    figures = uptime(meta, now)
    series = response_series(meta, now)
    monitors = []
    for monitor in config.monitors:
        name = monitor.name
        in_window = config.in_maintenance(monitor, now)
        if in_window:
            state = "maintenance"
        elif name in open_:
            state = "down"
        elif name not in last:
            state = "unknown"
        else:  # a failed check short of `retries` is "pending": not down yet
            state = "pending" if last[name]["status"] == "down" else "up"
        since = None
        if state == "down":
            since = open_[name]["started_at"]
        elif state == "maintenance":
            since = min(format_ts(window.occurrence(now)[0]) for window in config.windows(monitor)
                        if window.active(now))
        elif state in ("up", "pending"):
            row = meta.execute("SELECT max(ended_at) FROM uptime_incidents WHERE monitor = ?", (name,)).fetchone()
            since = row[0]
        windows = figures.get(name, {})
        monitors.append({
            "name": name, "description": monitor.description, "kind": monitor.kind, "state": state,
            "since": since, "interval_s": monitor.interval_s, "last_check": last.get(name),
            "uptime_percent": {label: windows.get(label, {}).get("percent") for label, _ in WINDOWS},
            "checks": {label: {key: windows.get(label, {}).get(key, 0) for key in ("up", "down", "maintenance")}
                       for label, _ in WINDOWS},
            "cert_days_left": latest_cert_days(meta, name, now) if monitor.https else None,
            "down_cause": open_[name]["cause"] if name in open_ else None,
            "response_times": series.get(name, [])})
    status = overall([monitor["state"] for monitor in monitors])
    return {"status": status, "banner": BANNERS[status], "generated_at": format_ts(now), "monitors": monitors,
            "incidents": incidents(meta, names, now), "maintenance": maintenance_windows(config, now)}
