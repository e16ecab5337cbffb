"""Datasette's metadata: who may look, canned queries, and the Overview dashboard.

Built from the settings when Datasette loads. Charts and canned queries read
meta.db's small tables (error groups, the per-minute rollups of
ingest/rollups.py, the segment catalog), never whole segments, so they stay
fast as the store grows.
"""

ADMIN_TOKEN_ACTOR = "admin-token"
SINCE_6H = "strftime('%Y-%m-%dT%H:%M', 'now', '-6 hours')"
SINCE_24H = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')"
ERRORS = "sum(CASE WHEN level IN ('error', 'critical') THEN entries ELSE 0 END)"


def html_text(expression):
    """SQL that HTML-escapes `expression`: dashboard tables render cells as HTML, and
    titles come from log messages, which anyone using the app can write."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#39;")):
        expression = "replace({}, '{}', '{}')".format(expression, char.replace("'", "''"), entity)
    return expression


def group_link(base):
    return ("'<a href=\"{}meta/error_groups/' || fingerprint || '\">' || {} || '</a>'"
            .format(base, html_text("title")))


def at_least_one_row(select, placeholder):
    """The dashboards plugin cannot draw a table without rows: show a placeholder row instead."""
    return "WITH found AS ({}) SELECT * FROM found UNION ALL SELECT {} WHERE NOT EXISTS (SELECT 1 FROM found)".format(
        select, placeholder)


def canned_queries():
    group_columns = ("fingerprint, title, service, count, users_affected, status, first_seen, last_seen, "
                     "last_release")
    return {
        "top_groups_by_count": {
            "title": "Top error groups by events",
            "description": "Unresolved error groups with the most events.",
            "sql": "SELECT {} FROM error_groups WHERE status = 'unresolved' ORDER BY count DESC LIMIT 50"
                   .format(group_columns)},
        "top_groups_by_users": {
            "title": "Top error groups by users affected",
            "description": "Unresolved error groups that reached the most distinct user_id values.",
            "sql": "SELECT {} FROM error_groups WHERE status = 'unresolved' ORDER BY users_affected DESC, "
                   "count DESC LIMIT 50".format(group_columns)},
        "new_groups_24h": {
            "title": "New error groups (last 24 hours)",
            "description": "Groups whose first event is less than a day old.",
            "sql": "SELECT {} FROM error_groups WHERE first_seen >= {} ORDER BY first_seen DESC"
                   .format(group_columns, SINCE_24H)},
        "regressed_groups": {
            "title": "Regressed error groups",
            "description": "Groups that were resolved and received a new event since.",
            "sql": "SELECT {}, regressed_at FROM error_groups WHERE regressed_at IS NOT NULL "
                   "ORDER BY regressed_at DESC LIMIT 100".format(group_columns)},
        "error_rate_per_minute": {
            "title": "Error rate per service per minute",
            "description": "Share of error and critical entries per service and minute, last :hours hours.",
            "sql": "SELECT minute, service, {errors} AS errors, sum(entries) AS entries, "
                   "round(100.0 * {errors} / sum(entries), 2) AS error_percent FROM volume_minute "
                   "WHERE minute >= strftime('%Y-%m-%dT%H:%M', 'now', '-' || coalesce(nullif(:hours, ''), 1) "
                   "|| ' hours') GROUP BY minute, service ORDER BY minute DESC, service".format(errors=ERRORS)},
        "error_rate_per_hour": {
            "title": "Error rate per service per hour",
            "description": "Share of error and critical entries per service and hour, last :days days.",
            "sql": "SELECT substr(minute, 1, 13) AS hour, service, {errors} AS errors, sum(entries) AS entries, "
                   "round(100.0 * {errors} / sum(entries), 2) AS error_percent FROM volume_minute "
                   "WHERE minute >= strftime('%Y-%m-%dT%H:%M', 'now', '-' || coalesce(nullif(:days, ''), 1) "
                   "|| ' days') GROUP BY hour, service ORDER BY hour DESC, service".format(errors=ERRORS)},
        "volume_by_level": {
            "title": "Volume by level per hour",
            "description": "Entries per level and hour (by event time), last 24 hours.",
            "sql": "SELECT substr(minute, 1, 13) AS hour, level, sum(entries) AS entries FROM volume_minute "
                   "WHERE minute >= strftime('%Y-%m-%dT%H:%M', 'now', '-1 day') GROUP BY hour, level "
                   "ORDER BY hour DESC, level"},
        "storage_per_segment": {
            "title": "Storage per segment",
            "description": "Every segment file: rows, bytes, time range; the head is still being written.",
            "sql": "SELECT name, CASE WHEN closed_at IS NULL THEN 'head' ELSE 'closed' END AS state, row_count, "
                   "bytes, round(bytes / 1048576.0, 1) AS mib, min_ts, max_ts, created_at, closed_at, generation "
                   "FROM segments ORDER BY day DESC, seq DESC"},
        "uptime_24h": {
            "title": "Uptime monitors, last 24 hours",
            "description": "Checks per monitor (maintenance counts on neither side of the uptime %), average "
                           "response time, last check, whether it is down now (docs/status.md).",
            "sql": "SELECT monitor, sum(status = 'up') AS up, sum(status = 'down') AS down, "
                   "sum(status = 'maintenance') AS maintenance, round(100.0 * sum(status = 'up') / "
                   "nullif(sum(status IN ('up', 'down')), 0), 3) AS uptime_percent, "
                   "round(avg(response_ms), 1) AS avg_response_ms, max(ts) AS last_check, "
                   "(SELECT count(*) FROM uptime_incidents i WHERE i.monitor = r.monitor AND i.ended_at IS NULL) "
                   "AS down_now FROM uptime_results r WHERE ts >= {} GROUP BY monitor ORDER BY monitor"
                   .format(SINCE_24H)},
        "uptime_incidents": {
            "title": "Uptime incidents",
            "description": "Down periods of the uptime monitors, newest first; ended_at is empty while it lasts.",
            "sql": "SELECT id, monitor, started_at, ended_at, CASE WHEN ended_at IS NULL THEN 'ongoing' "
                   "ELSE 'ended' END AS state, CAST(round((julianday(coalesce(ended_at, 'now')) - "
                   "julianday(started_at)) * 86400) AS INTEGER) AS duration_s, cause FROM uptime_incidents "
                   "ORDER BY started_at DESC LIMIT 200"},
        "boots": {
            "title": "Boots and cold starts",
            "description": "Each server start (sidecar.boot: time since the previous boot, seconds from process "
                           "start to ready) and each slow wake-up reported by keep-warm (sidecar.cold_start), "
                           "newest first: a free instance's sleep and wake cycles.",
            "sql": "SELECT id, ts, type, json_extract(details, '$.seconds_since_previous_boot') AS since_previous_s, "
                   "round(json_extract(details, '$.seconds_since_previous_boot') / 60.0, 1) AS since_previous_min, "
                   "json_extract(details, '$.start_to_ready_s') AS start_to_ready_s, "
                   "json_extract(details, '$.latency_ms') AS cold_start_ms, "
                   "json_extract(details, '$.store_empty_at_start') AS store_was_empty, "
                   "json_extract(details, '$.version') AS version, message FROM sidecar_events "
                   "WHERE type IN ('sidecar.boot', 'sidecar.cold_start') ORDER BY id DESC LIMIT 500"},
    }


def segment_queries():
    return {
        "slowest_requests": {
            "title": "Slowest requests",
            "description": "Entries of this segment with metadata.duration_ms, slowest first.",
            # ORDER BY spells out the expression of the logs_duration index that closed segments get.
            "sql": "SELECT id, ts, service, json_extract(metadata, '$.route') AS route, "
                   "json_extract(metadata, '$.status') AS status, "
                   "CAST(json_extract(metadata, '$.duration_ms') AS REAL) AS duration_ms, message FROM logs "
                   "WHERE json_extract(metadata, '$.duration_ms') IS NOT NULL "
                   "ORDER BY CAST(json_extract(metadata, '$.duration_ms') AS REAL) DESC LIMIT 100"},
    }


def latency_percentiles_sql(since, by_minute=False):
    """p50/p95/p99 per service (and minute) from latency_minute, interpolated inside each bucket
    as ingest.latency.percentiles() does; the open last bucket reports its lower bound."""
    keys = "service, minute" if by_minute else "service"
    return (
        "WITH per AS (SELECT {keys}, bucket, sum(count) AS n FROM latency_minute WHERE minute >= {since} "
        "GROUP BY {keys}, bucket), "
        "run AS (SELECT {keys}, bucket, n, sum(n) OVER (PARTITION BY {keys} ORDER BY bucket) AS upto, "
        "sum(n) OVER (PARTITION BY {keys}) AS total FROM per), "
        "q(q) AS (VALUES (0.5), (0.95), (0.99)), "
        "pick AS (SELECT {keys}, q, total, min(bucket) AS bucket FROM run, q WHERE upto >= q * total "
        "GROUP BY {keys}, q), "
        "est AS (SELECT pick.{first}, {minute_col} pick.q, pick.total, "
        "coalesce(low.le_ms, 0) + (coalesce(high.le_ms, coalesce(low.le_ms, 0)) - coalesce(low.le_ms, 0)) "
        "* (pick.q * pick.total - (run.upto - run.n)) / run.n AS ms "
        "FROM pick JOIN run USING ({keys}, bucket) JOIN latency_buckets high ON high.bucket = pick.bucket "
        "LEFT JOIN latency_buckets low ON low.bucket = pick.bucket - 1) "
        "SELECT {keys}, max(total) AS requests, round(max(CASE WHEN q = 0.5 THEN ms END), 1) AS p50_ms, "
        "round(max(CASE WHEN q = 0.95 THEN ms END), 1) AS p95_ms, "
        "round(max(CASE WHEN q = 0.99 THEN ms END), 1) AS p99_ms FROM est GROUP BY {keys} ORDER BY {keys}"
    ).format(keys=keys, since=since, first="service", minute_col="pick.minute," if by_minute else "")


def _time_chart(title, query, mark, y_field, y_title, color=None):
    encoding = {"x": {"field": "minute", "type": "temporal", "title": "minute (UTC)", "scale": {"type": "utc"},
                      "axis": {"format": "%H:%M"}},
                "y": {"field": y_field, "type": "quantitative", "title": y_title}}
    if color:
        encoding["color"] = {"field": color, "type": "nominal"}
    return {"title": title, "db": "meta", "query": query, "library": "vega-lite",
            "display": {"mark": {"type": mark, "tooltip": True}, "encoding": encoding}}


def overview_dashboard(settings, base):
    service_filter = "[[ AND service = :service ]]"
    budget = settings["disk_budget_bytes"]
    storage_query = ("SELECT round(100.0 * sum(bytes) / {}, 1) AS used FROM segments".format(budget) if budget
                     else "SELECT round(sum(bytes) / 1048576.0, 1) AS used FROM segments")
    top_groups = at_least_one_row(
        "SELECT {} AS error_group, service, count AS events, users_affected AS users, last_seen "
        "FROM error_groups WHERE status = 'unresolved' ORDER BY count DESC LIMIT 10".format(group_link(base)),
        "'no unresolved error group', '', 0, 0, ''")
    new_groups = at_least_one_row(
        "SELECT {} AS error_group, service, count AS events, first_seen FROM error_groups "
        "WHERE first_seen >= {} ORDER BY first_seen DESC LIMIT 10".format(group_link(base), SINCE_24H),
        "'no new error group in 24 hours', '', 0, ''")
    return {
        "title": "Overview",
        "description": "Log volume, errors, storage, ingest, health, latency and alerts of the last 6 hours "
                       "(UTC); reloads itself.",
        "settings": {"autorefresh": round(settings["dashboard_refresh_s"] / 60, 2), "allow_fullscreen": True},
        "layout": [["events-by-level", "events-by-level", "error-rate-now"],
                   ["error-rate", "error-rate", "storage-used"],
                   ["top-groups", "top-groups", "new-groups"],
                   ["ingest-rate", "ingest-rate", "new-groups"],
                   ["health", "health", "memory-used"],
                   ["latency-p95", "latency-p95", "latency-table"],
                   ["alerts", "alerts", "alerts"]],
        "filters": {"service": {"name": "Service", "type": "select", "db": "meta",
                                "query": "SELECT DISTINCT service FROM volume_minute WHERE minute >= "
                                         "strftime('%Y-%m-%dT%H:%M', 'now', '-1 day') ORDER BY service"}},
        "charts": {
            "events-by-level": _time_chart(
                "Events per minute by level",
                "SELECT minute || ':00Z' AS minute, level, sum(entries) AS entries FROM volume_minute "
                "WHERE minute >= {} {} GROUP BY minute, level ORDER BY minute".format(SINCE_6H, service_filter),
                "bar", "entries", "entries", color="level"),
            "error-rate": _time_chart(
                "Error rate per minute (% of entries at error or critical)",
                "SELECT minute || ':00Z' AS minute, round(100.0 * {} / sum(entries), 2) AS error_percent "
                "FROM volume_minute WHERE minute >= {} {} GROUP BY minute ORDER BY minute"
                .format(ERRORS, SINCE_6H, service_filter), "line", "error_percent", "% errors"),
            "error-rate-now": {
                "title": "Error rate, last hour", "db": "meta", "library": "metric",
                "query": "SELECT coalesce(round(100.0 * {} / sum(entries), 2), 0) AS rate FROM volume_minute "
                         "WHERE minute >= strftime('%Y-%m-%dT%H:%M', 'now', '-1 hour') {}"
                         .format(ERRORS, service_filter),
                "display": {"field": "rate", "suffix": "%"}},
            "storage-used": {
                "title": "Storage used" + (" of the {:.0f} MiB budget".format(budget / 1048576) if budget else ""),
                "db": "meta", "library": "metric", "query": storage_query,
                "display": {"field": "used", "suffix": "%" if budget else " MiB"}},
            "top-groups": {"title": "Top unresolved error groups", "db": "meta", "library": "table",
                           "query": top_groups},
            "new-groups": {"title": "New error groups (24 h)", "db": "meta", "library": "table",
                           "query": new_groups},
            "health": {
                "title": "Health over time (one sample per alert evaluation)", "db": "meta",
                "library": "vega-lite",
                "query": "SELECT ts AS minute, status FROM health_samples WHERE ts >= strftime('%Y-%m-%dT%H:%M', "
                         "'now', '-6 hours') ORDER BY ts",
                "display": {"mark": {"type": "tick", "tooltip": True, "thickness": 3},
                            "encoding": {"x": {"field": "minute", "type": "temporal", "title": "time (UTC)",
                                               "scale": {"type": "utc"}, "axis": {"format": "%H:%M"}},
                                         "y": {"field": "status", "type": "nominal", "title": None,
                                               "sort": ["healthy", "degraded", "unhealthy"]},
                                         "color": {"field": "status", "type": "nominal", "scale": {
                                             "domain": ["healthy", "degraded", "unhealthy"],
                                             "range": ["#2e7d32", "#f9a825", "#c62828"]}}}}},
            "memory-used": {
                "title": "Memory used of SIDECAR_MEMORY_LIMIT_BYTES (latest sample)", "db": "meta",
                "library": "metric",
                "query": "SELECT coalesce((SELECT json_extract(details, '$.memory.percent') FROM health_samples "
                         "ORDER BY ts DESC LIMIT 1), 0) AS used",
                "display": {"field": "used", "suffix": "%"}},
            "latency-p95": _time_chart(
                "p95 latency per service per minute (entries with metadata.duration_ms)",
                "SELECT minute || ':00Z' AS minute, service, p95_ms FROM ({}) WHERE 1 {}"
                .format(latency_percentiles_sql(SINCE_6H, by_minute=True), service_filter),
                "line", "p95_ms", "p95 ms", color="service"),
            "latency-table": {
                "title": "Latency per service, last hour", "db": "meta", "library": "table",
                "query": at_least_one_row(
                    "SELECT {} AS service, requests, p50_ms, p95_ms, p99_ms FROM ({})".format(
                        html_text("service"), latency_percentiles_sql(
                            "strftime('%Y-%m-%dT%H:%M', 'now', '-1 hour')")),
                    "'no durations in the last hour', 0, NULL, NULL, NULL")},
            "alerts": {
                "title": "Alerts: firing and recent", "db": "meta", "library": "table",
                "query": at_least_one_row(
                    "SELECT state, severity, {} AS rule, started_at, resolved_at, {} AS summary FROM alerts "
                    "ORDER BY state = 'firing' DESC, started_at DESC LIMIT 15".format(
                        html_text("rule"), html_text("summary")),
                    "'none', '', 'no alert yet', '', '', ''")},
            "ingest-rate": _time_chart(
                "Ingest rate (entries received per minute)",
                "SELECT minute || ':00Z' AS minute, entries FROM ingest_minute WHERE minute >= {} ORDER BY minute"
                .format(SINCE_6H), "line", "entries", "entries"),
        },
    }


def allowed_actors(sidecar):
    """None: everyone (loopback, no password); else the login user and the admin-token actor."""
    if sidecar.readers.open_access:
        return None
    actors = [ADMIN_TOKEN_ACTOR]
    if sidecar.settings["datasette_password_hash"]:
        actors.insert(0, sidecar.settings["datasette_user"])
    return {"id": actors}


def metadata(sidecar, base="/datasette/"):
    settings = sidecar.settings
    plugins = {"datasette-dashboards": {"overview": overview_dashboard(settings, base)}}
    if settings["datasette_password_hash"]:
        plugins["datasette-auth-passwords"] = {
            "{}_password_hash".format(settings["datasette_user"]): settings["datasette_password_hash"]}
    result = {
        "title": "Log sidecar",
        "description_html": ('Logs, error groups and storage. <a href="/search">Search logs</a> · '
                             '<a href="{}-/dashboards/overview">Overview dashboard</a>'.format(base)),
        "plugins": plugins,
        "databases": {"meta": {
            "title": "meta: error groups, rollups, catalog",
            "queries": canned_queries(),
            "tables": {"error_groups": {"label_column": "title", "sort_desc": "last_seen"},
                       "segments": {"sort_desc": "created_at"}}}},
    }
    actors = allowed_actors(sidecar)
    if actors is not None:
        result["allow"] = actors
    return result
