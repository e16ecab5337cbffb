"""`python -m retention run [--dry-run] [--json] [--now RFC3339]`: one retention run now.

Reads the same SIDECAR_* settings as the server; waits for a run in progress
elsewhere (another process or the server's schedule) to finish first.
"""
import argparse
import os
import sys
from datetime import datetime, timezone

import orjson

from ingest.entries import EntryError, parse_timestamp
from sidecar.settings import SettingsError, level_days, load_settings

from . import job
from .policy import Policy
from .schedule import run_lock


def print_report(report, out):
    out.write("retention run{} at {} ({} ms)\n".format(" (dry run: nothing changed)" if report["dry_run"] else "",
                                                        report["started_at"], report["duration_ms"]))
    out.write("  segments dropped by age:    {}\n".format(", ".join(report["segments_dropped"]) or "none"))
    out.write("  segments dropped by budget: {}\n".format(", ".join(report["budget_drops"]) or "none"))
    deleted = ", ".join("{} {}".format(n, level) for level, n in report["rows_deleted"].items() if n)
    out.write("  rows deleted:               {}\n".format(deleted or "none"))
    out.write("  segments compacted:         {}\n".format(", ".join(report["compacted"]) or "none"))
    out.write("  bytes freed:                {:,}\n".format(report["bytes_freed"]))
    budget = "no budget" if report["budget_percent"] is None else "{}% of the budget ({})".format(
        report["budget_percent"], report["budget_state"])
    out.write("  store:                      {:,} bytes, {}\n".format(report["store_bytes"], budget))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m retention")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="apply the retention policy once")
    run.add_argument("--dry-run", action="store_true", help="report what would be deleted; change nothing")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--now", help="pretend it is this time (RFC 3339), e.g. to preview a later run")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        policy = Policy.from_settings(settings, level_days)
        now = parse_timestamp(args.now) if args.now else datetime.now(timezone.utc)
    except (SettingsError, EntryError) as error:
        sys.stderr.write("retention: {}\n".format(error))
        return 2
    data_dir = os.path.abspath(settings["data_dir"])
    if not os.path.isdir(os.path.join(data_dir, "segments")):
        sys.stderr.write("retention: no store in {}\n".format(data_dir))
        return 2
    with run_lock(data_dir, wait=True):
        report = job.run(data_dir, policy, now, dry_run=args.dry_run)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_report(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
