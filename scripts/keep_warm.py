#!/usr/bin/env python3
"""Keep a free instance that sleeps after 15 idle minutes awake, and report its cold starts.

Pings the sidecar's GET /api/health every 10-14 minutes (random jitter), only
inside --active-hours when given, backs off exponentially while it fails, and
prints one line per ping with its latency. An answer slower than --slow-ms
(default 5000) is reported to the sidecar as a `sidecar.cold_start` event
(POST /api/events/cold-start with an ingest token), which the alert rule
`cold_start` turns into a notification.

Standalone on purpose: the standard library and `requests` only, no import of
the project, so any cron (or a copy of this one file) can run it:

    python scripts/keep_warm.py --url https://logs.example.com --once          # one ping, for cron
    python scripts/keep_warm.py --url https://logs.example.com \\
        --active-hours 07:00-23:00 --timezone Europe/Paris                      # a loop of its own
    python scripts/keep_warm.py --plan --active-hours 07:00-23:00 --services 2  # the free hours it uses

The token is read from --token or, better (it stays out of the process list
and the crontab), from the KEEP_WARM_TOKEN variable. `python -m sidecar
keep-warm` runs this very file. See docs/free-tier.md.
"""
import argparse
import math
import os
import random
import sys
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import requests

TOKEN_ENV = "KEEP_WARM_TOKEN"
HEALTH_PATH = "/api/health"
EVENT_PATH = "/api/events/cold-start"
USER_AGENT = "sidecar-keep-warm/1"
IDLE_SLEEP_MIN = 15             # the free instance sleeps after this many minutes without a request
FREE_HOURS_PER_MONTH = 750      # free instance hours per workspace per month
DAYS_PER_MONTH = 31             # the longest month: the budget must hold in every month
BACKOFF_BASE_S = 30             # first retry after a failed ping
BACKOFF_CAP_S = 3600            # longest wait between retries while the sidecar keeps failing
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# --- scheduling: pure functions -------------------------------------------------------------------

def parse_clock(text, allow_24=False):
    """'07:30' -> 450 (minutes after midnight); '24:00' only as the end of a window."""
    hours, sep, minutes = text.strip().partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError("{!r} is not a time as HH:MM".format(text))
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > (1440 if allow_24 else 1439):
        raise ValueError("{!r} is not a time of day".format(text))
    return value


@dataclass(frozen=True)
class ActiveHours:
    """A daily window of local wall-clock time, [start, end), possibly across midnight (22:00-06:00)."""
    start_min: int
    end_min: int
    tz_name: str = "UTC"

    @classmethod
    def parse(cls, text, tz_name="UTC"):
        start, sep, end = (text or "").partition("-")
        if not sep:
            raise ValueError("active hours are written HH:MM-HH:MM, e.g. 07:00-23:00, got {!r}".format(text))
        window = cls(parse_clock(start), parse_clock(end, allow_24=True), tz_name)
        if window.start_min == window.end_min % 1440:
            raise ValueError("active hours {!r} are empty or the whole day (leave them out for the whole day)"
                             .format(text))
        window.tz  # an unknown time zone fails here
        return window

    @property
    def tz(self):
        if self.tz_name.upper() == "UTC":
            return timezone.utc
        from zoneinfo import ZoneInfo
        return ZoneInfo(self.tz_name)

    @property
    def hours_per_day(self):
        return ((self.end_min - self.start_min) % 1440 or 1440) / 60

    def __str__(self):
        return "{:02d}:{:02d}-{:02d}:{:02d} {}".format(self.start_min // 60, self.start_min % 60,
                                                       self.end_min // 60, self.end_min % 60, self.tz_name)

    def contains(self, when):
        local = when.astimezone(self.tz)
        minute = local.hour * 60 + local.minute + local.second / 60
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min  # across midnight

    def next_open(self, when):
        """The first instant at or after `when` inside the window (an aware datetime in UTC)."""
        if self.contains(when):
            return when.astimezone(timezone.utc)
        tz = self.tz
        local = when.astimezone(tz)
        for days in (0, 1, 2):  # 2: a DST jump may skip the start time itself
            day = local.date() + timedelta(days=days)
            candidate = datetime(day.year, day.month, day.day, self.start_min // 60, self.start_min % 60,
                                 tzinfo=tz).astimezone(timezone.utc)
            if candidate > when:
                return candidate
        raise AssertionError("unreachable: a daily window opens within two days")


def jittered_interval_s(rng, interval_min_min, interval_max_min):
    """The wait before the next ping of a healthy sidecar: uniform in [min, max] minutes."""
    return rng.uniform(interval_min_min * 60, interval_max_min * 60)


def backoff_delay_s(failures, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S):
    """The wait after `failures` failed pings in a row: base, 2x base, 4x base, ... at most cap."""
    if failures <= 0:
        raise ValueError("no failure, no backoff")
    return float(min(cap_s, base_s * 2 ** min(failures - 1, 32)))


def expected_cold_start(window, now):
    """A ping right after the active hours opened finds the instance asleep on purpose: nobody
    kept it awake in the IDLE_SLEEP_MIN minutes before."""
    return window is not None and not window.contains(now - timedelta(minutes=IDLE_SLEEP_MIN))


def plan(window=None, services=1, interval_max_min=14.0, days=DAYS_PER_MONTH, free_hours=FREE_HOURS_PER_MONTH,
         interval_min_min=10.0):
    """Instance hours a keep-warm schedule uses in a month (of `days` days), against the free hours.

    Pinged at most every 14 minutes inside the window, an instance is awake for the whole window
    and, after the last ping, until it has been idle for 15 minutes: window + 15 min a day (all
    day: 24 h). Real traffic outside the window wakes it too and costs more."""
    active_h = 24.0 if window is None else window.hours_per_day
    awake_h = min(24.0, active_h + IDLE_SLEEP_MIN / 60)
    per_service = awake_h * days
    total = per_service * services
    mean_interval_min = (interval_min_min + interval_max_min) / 2
    return {
        "active_hours_per_day": active_h,
        "awake_hours_per_day": awake_h,
        "days": days,
        "hours_per_service": per_service,
        "services": services,
        "hours_total": total,
        "free_hours": free_hours,
        "percent_of_free": 100.0 * total / free_hours,
        "fits": total <= free_hours,
        "hours_left": free_hours - total,
        "services_that_fit": int(free_hours // per_service) if per_service else None,
        # the day of the month the free hours run out (free services are then suspended until the 1st)
        "runs_out_on_day": math.ceil(free_hours / (awake_h * services)) if total > free_hours else None,
        "pings_per_month": int(round(active_h * 60 / mean_interval_min * days)) * services,
        "keeps_awake": interval_max_min < IDLE_SLEEP_MIN,
    }


def format_plan(result, window, interval_min_min, interval_max_min):
    lines = ["schedule: a ping every {:g}-{:g} min, {}".format(
        interval_min_min, interval_max_min, "active {}".format(window) if window else "all day")]
    if not result["keeps_awake"]:
        lines.append("warning: pings more than {} min apart let the instance sleep between them".format(
            IDLE_SLEEP_MIN))
    tail = result["awake_hours_per_day"] - result["active_hours_per_day"]
    lines.append("awake per day: {:.2f} h ({:.2f} h active{})".format(
        result["awake_hours_per_day"], result["active_hours_per_day"],
        " + {:.2f} h idle before it sleeps".format(tail) if tail else ""))
    lines.append("per service and month ({} days): {:.1f} instance hours = {:.1f}% of the {} free hours per "
                 "workspace".format(result["days"], result["hours_per_service"],
                                    100.0 * result["hours_per_service"] / result["free_hours"],
                                    result["free_hours"]))
    if result["fits"]:
        verdict = "fits, {:.1f} h left for other free services".format(result["hours_left"])
    else:
        verdict = ("does NOT fit: the free hours run out on day {} and every free service of the workspace is "
                   "suspended until the 1st".format(result["runs_out_on_day"]))
    lines.append("{} service(s): {:.1f} h a month: {}".format(result["services"], result["hours_total"], verdict))
    lines.append("services on this schedule that fit in {} h: {}".format(result["free_hours"],
                                                                         result["services_that_fit"]))
    lines.append("pings a month: about {:,}".format(result["pings_per_month"]))
    if window is not None and window.tz_name.upper() != "UTC":
        lines.append("(daylight saving changes move a local window by an hour against UTC twice a year)")
    return "\n".join(lines)


# --- HTTP -----------------------------------------------------------------------------------------

def base_url(url):
    url = url.strip().rstrip("/")
    return url[:-len(HEALTH_PATH)] if url.endswith(HEALTH_PATH) else url


def shown_url(url):
    """The URL as printed: no credentials, no query string."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = "{}:{}".format(host, parts.port)
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class Ping:
    ok: bool
    latency_ms: float
    status: int = None
    health: str = None
    error: str = None


def _reason(error, timeout_s):
    if isinstance(error, requests.Timeout):
        return "no answer within {:g} s".format(timeout_s)
    if isinstance(error, requests.ConnectionError):
        return "connection failed"
    return type(error).__name__


def ping(session, url, timeout_s):
    """GET <url>/api/health. Answered means awake: 200, or the sidecar's own 503 (unhealthy, but up).
    Anything else (a proxy's 502, a timeout, a refused connection) is a failure."""
    started = time.monotonic()
    try:
        response = session.get(base_url(url) + HEALTH_PATH, timeout=timeout_s,
                               headers={"User-Agent": USER_AGENT, "Cache-Control": "no-cache"})
    except requests.RequestException as error:
        return Ping(False, (time.monotonic() - started) * 1000, error=_reason(error, timeout_s))
    latency_ms = (time.monotonic() - started) * 1000
    health = None
    try:
        body = response.json()
        health = body.get("status") if isinstance(body, dict) else None
    except ValueError:
        pass
    answered = response.status_code == 200 or (response.status_code == 503 and health is not None)
    return Ping(answered, latency_ms, response.status_code, health,
                None if answered else "HTTP {}".format(response.status_code))


def report_cold_start(session, report_url, token, result, threshold_ms, expected, timeout_s=30):
    """POST the cold start to the sidecar; (event id or None, a note for the line)."""
    if not token:
        return None, "not reported: no token (--token or {})".format(TOKEN_ENV)
    body = {"latency_ms": round(result.latency_ms, 1), "threshold_ms": threshold_ms, "source": "keep-warm",
            "expected": expected, "health_status": result.status}
    try:
        response = session.post(base_url(report_url) + EVENT_PATH, json=body, timeout=timeout_s,
                                headers={"Authorization": "Bearer " + token, "User-Agent": USER_AGENT})
    except requests.RequestException as error:
        return None, "not reported: {}".format(_reason(error, timeout_s))
    if response.status_code not in (200, 201):
        return None, "not reported: HTTP {}".format(response.status_code)
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    event_id = answer.get("event_id")
    if answer.get("recorded") is False:
        return event_id, "already reported (event {})".format(event_id)
    return event_id, "reported (event {})".format(event_id)


# --- the two modes --------------------------------------------------------------------------------

def utc_now():
    return datetime.now(timezone.utc)


def _ts(when):
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _emit(out, text):
    out.write(text + "\n")
    out.flush()


def run_once(args, session, now, out):
    if args.window is not None and not args.window.contains(now):
        _emit(out, "{} skip: outside the active hours {}".format(_ts(now), args.window))
        return EXIT_OK
    result = ping(session, args.url, args.timeout_s)
    _print_result(args, session, now, out, result)
    return EXIT_OK if result.ok else EXIT_FAILED


def run_loop(args, session, out, clock=utc_now, sleep=time.sleep, rng=None, max_pings=None):
    """Ping forever (or `max_pings` times): jittered intervals while it answers, exponential backoff
    while it fails, and nothing outside the active hours. Returns the number of pings."""
    rng = rng or random.Random()
    failures = pings = 0
    while max_pings is None or pings < max_pings:
        now = clock()
        if args.window is not None and not args.window.contains(now):
            opens = args.window.next_open(now)
            _emit(out, "{} outside the active hours {}: next ping at {}".format(_ts(now), args.window, _ts(opens)))
            sleep(max(1.0, (opens - now).total_seconds()))
            continue
        pings += 1
        result = ping(session, args.url, args.timeout_s)
        failures = 0 if result.ok else failures + 1
        delay = backoff_delay_s(failures) if failures else jittered_interval_s(rng, args.interval_min,
                                                                               args.interval_max)
        _print_result(args, session, now, out, result, delay, failures)
        if max_pings is not None and pings >= max_pings:
            break
        sleep(delay)
    return pings


def _print_result(args, session, now, out, result, delay=None, failures=0):
    """The ping's line (with the wait that follows in a loop); reports a slow answer as a cold start."""
    line = "{} ping {} ".format(_ts(now), shown_url(base_url(args.url) + HEALTH_PATH))
    if result.ok:
        line += "status={} health={} latency_ms={:.0f}".format(result.status, result.health, result.latency_ms)
        if result.latency_ms > args.slow_ms:
            expected = expected_cold_start(args.window, now)
            _, note = report_cold_start(session, args.report_url or args.url, args.token, result, args.slow_ms,
                                        expected)
            line += " cold_start=yes (slower than {:g} ms{}): {}".format(
                args.slow_ms, ", expected: the active hours just opened" if expected else "", note)
        if delay is not None:
            line += " next_in_s={:.0f}".format(delay)
    else:
        line += "error=\"{}\" latency_ms={:.0f}".format(result.error, result.latency_ms)
        if delay is not None:
            line += " failures={} retry_in_s={:.0f}".format(failures, delay)
    _emit(out, line)


# --- command line ---------------------------------------------------------------------------------

def add_arguments(parser):
    parser.add_argument("--url", help="base URL of the sidecar (or its /api/health URL), e.g. "
                                      "https://logs.example.com")
    parser.add_argument("--interval-min", type=float, default=10.0, help="shortest wait between pings, in "
                                                                          "minutes (default 10)")
    parser.add_argument("--interval-max", type=float, default=14.0,
                        help="longest wait between pings, in minutes (default 14; under {}, or the instance "
                             "sleeps)".format(IDLE_SLEEP_MIN))
    parser.add_argument("--active-hours", metavar="HH:MM-HH:MM",
                        help="ping only inside this daily window, e.g. 07:00-23:00 (22:00-06:00 crosses "
                             "midnight); default: all day")
    parser.add_argument("--timezone", default="UTC", help="time zone of --active-hours, e.g. Europe/Paris "
                                                          "(default UTC)")
    parser.add_argument("--slow-ms", type=float, default=5000.0,
                        help="an answer slower than this is reported as a cold start (default 5000)")
    parser.add_argument("--token", help="an ingest token of the sidecar, to report cold starts (default: the {} "
                                        "variable)".format(TOKEN_ENV))
    parser.add_argument("--report-url", help="the sidecar that records cold starts (default: --url)")
    parser.add_argument("--timeout-s", type=float, default=90.0,
                        help="longest wait for an answer, in seconds (default 90: waking a free instance takes "
                             "up to about a minute)")
    parser.add_argument("--once", action="store_true", help="one ping, then exit (for cron): 0 answered or "
                                                            "outside the active hours, 1 failed")
    parser.add_argument("--plan", action="store_true",
                        help="print the monthly instance hours this schedule keeps a free instance awake, "
                             "against the {} free hours per workspace, and exit".format(FREE_HOURS_PER_MONTH))
    parser.add_argument("--services", type=int, default=1, help="with --plan: services kept warm on this "
                                                                "schedule (default 1)")


def check_arguments(parser, args):
    if args.interval_min <= 0 or args.interval_max < args.interval_min:
        parser.error("--interval-min must be positive and at most --interval-max")
    if args.slow_ms <= 0 or args.timeout_s <= 0:
        parser.error("--slow-ms and --timeout-s must be positive")
    if args.services < 1:
        parser.error("--services must be at least 1")
    try:
        args.window = ActiveHours.parse(args.active_hours, args.timezone) if args.active_hours else None
    except Exception as error:  # ValueError, ZoneInfoNotFoundError
        parser.error("--active-hours/--timezone: {}".format(error))
    if not args.plan and not args.url:
        parser.error("--url is required (or --plan)")
    if args.url and not base_url(args.url).startswith(("http://", "https://")):
        parser.error("--url must start with http:// or https://")
    args.token = args.token or os.environ.get(TOKEN_ENV) or None


def run(args, out=None, session=None):
    out = out or sys.stdout
    if args.plan:
        result = plan(args.window, args.services, args.interval_max, interval_min_min=args.interval_min)
        _emit(out, format_plan(result, args.window, args.interval_min, args.interval_max))
        return EXIT_OK
    if args.interval_max >= IDLE_SLEEP_MIN:
        sys.stderr.write("keep-warm: warning: --interval-max {:g} min lets a free instance sleep (it sleeps "
                         "after {} idle minutes)\n".format(args.interval_max, IDLE_SLEEP_MIN))
    session = session or requests.Session()
    if args.once:
        return run_once(args, session, utc_now(), out)
    try:
        run_loop(args, session, out)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
