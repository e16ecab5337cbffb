"""GET /status (server-rendered HTML, inline SVG, no script) and GET /api/status (JSON).

Public by default; with `SIDECAR_STATUS_PAGE_PUBLIC=false` both need a reader
(an admin token or a Datasette login; the page sends others to the login).
Neither shows a monitor's URL, host or headers: only its name, description
and kind, and error messages the sidecar wrote itself.
"""
import math
import threading
import time
from datetime import timedelta

from flask import Blueprint, current_app, render_template, url_for

from ingest import catalog

from .errors import json_response
from .search_api import _login_redirect, _page_reader
from .uptime_report import CHART_BUCKET_MINUTES, parse_ts, status_report

bp = Blueprint("status_page", __name__, template_folder="templates")
STATE_LABELS = {"up": "Up", "pending": "Check failed, retrying", "down": "Down", "maintenance": "Maintenance",
                "unknown": "Not checked yet"}
CACHE_S = 5.0
_cache_lock = threading.Lock()
CHART = {"width": 480, "height": 150, "left": 56, "right": 20, "top": 10, "bottom": 26}


def _sidecar():
    return current_app.extensions["sidecar"]


def _report():
    """The report and its time, computed at most once per CACHE_S per process (a public page on a
    tenth of a CPU: 10 monitors checked every 30 s cost about 50 ms to report)."""
    sidecar = _sidecar()
    runner = sidecar.uptime
    with _cache_lock:
        cached = runner.status_cache
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1], cached[2]
    now = sidecar.clock()
    report = status_report(runner.config, catalog.connect_meta_cached(sidecar.data_dir), now)
    with _cache_lock:
        runner.status_cache = (time.monotonic(), report, now)
    return report, now


@bp.get("/api/status")
def status_json():
    sidecar = _sidecar()
    if not sidecar.settings["status_page_public"]:
        sidecar.readers.require()
    report, _now = _report()
    return json_response(report, headers={"Cache-Control": "no-cache"})


@bp.get("/status")
def status_page():
    sidecar = _sidecar()
    if not sidecar.settings["status_page_public"] and _page_reader() is None:
        return _login_redirect()
    report, now = _report()
    intervals = {monitor.name: monitor.interval_s for monitor in sidecar.uptime.config.monitors}
    charts = {monitor["name"]: chart(monitor["response_times"], now, intervals[monitor["name"]])
              for monitor in report["monitors"]}
    return render_template("status.html", report=report, charts=charts, states=STATE_LABELS, percent=format_percent,
                           when=format_time, duration=format_duration, ms=format_ms,
                           json_url=url_for("status_page.status_json")), 200, {"Cache-Control": "no-cache"}


# -- formatting ----------------------------------------------------------------------------

def format_percent(value):
    if value is None:
        return "no data"
    return ("%.3f" % value).rstrip("0").rstrip(".") + "%"


def format_time(text):
    """"2026-03-01T12:00:30.000Z" -> "2026-03-01 12:00 UTC"."""
    return text[:10] + " " + text[11:16] + " UTC" if text else ""


def format_duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return "{} s".format(seconds)
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return "{} min {} s".format(minutes, seconds) if seconds else "{} min".format(minutes)
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return "{} h {} min".format(hours, minutes) if minutes else "{} h".format(hours)
    days, hours = divmod(hours, 24)
    return "{} d {} h".format(days, hours) if hours else "{} d".format(days)


def format_ms(value):
    if value is None:
        return ""
    if value >= 1000:
        return ("%.2f" % (value / 1000)).rstrip("0").rstrip(".") + " s"
    return "{:g} ms".format(round(value)) if value >= 10 else "{:g} ms".format(round(value, 1))


def nice_ceiling(value):
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above value (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # not reached


def chart(points, now, interval_s):
    """Geometry of a response-time chart of the last 24 hours (an SVG the template draws): polylines
    of the 10-minute averages, broken where checks are missing, red marks where a check failed,
    and labelled axes."""
    c = CHART
    plot_w = c["width"] - c["left"] - c["right"]
    plot_h = c["height"] - c["top"] - c["bottom"]
    start = now - timedelta(hours=24)
    span = timedelta(hours=24).total_seconds()
    values = [point["avg_ms"] for point in points if point["avg_ms"] is not None]
    top = nice_ceiling(max(values)) if values else 100
    half_bucket = timedelta(minutes=CHART_BUCKET_MINUTES / 2)
    gap = max(2 * CHART_BUCKET_MINUTES * 60, 2 * interval_s)  # seconds between points that still join

    def x(moment):
        return round(c["left"] + plot_w * min(max((moment - start).total_seconds() / span, 0), 1), 1)

    def y(ms):
        return round(c["top"] + plot_h * (1 - ms / top), 1)

    lines, current, previous = [], [], None
    down = []
    for point in points:
        moment = parse_ts(point["t"]) + half_bucket
        if point["down"]:
            down.append(x(moment))
        if point["avg_ms"] is None:
            continue
        if previous is not None and (moment - previous).total_seconds() > gap and current:
            lines.append(current)
            current = []
        current.append((x(moment), y(point["avg_ms"])))
        previous = moment
    if current:
        lines.append(current)
    y_ticks = [{"y": y(value), "label": format_ms(value) if value else "0"} for value in (0, top / 2, top)]
    first = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    x_ticks = []
    moment = first
    while moment <= now:
        if moment.hour % 6 == 0:
            x_ticks.append({"x": x(moment), "label": moment.strftime("%H:%M")})
        moment += timedelta(hours=1)
    return dict(c, bottom_y=c["height"] - c["bottom"], right_x=c["width"] - c["right"],
                polylines=[" ".join("{},{}".format(*xy) for xy in line) for line in lines if len(line) > 1],
                dots=[line[0] for line in lines if len(line) == 1], down=down, y_ticks=y_ticks, x_ticks=x_ticks,
                empty=not values, top_label=format_ms(top))
