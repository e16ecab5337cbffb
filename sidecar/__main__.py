"""Command line: `python -m sidecar settings-doc` prints docs/settings.md;
`python -m sidecar password-hash` makes the hash for SIDECAR_DATASETTE_PASSWORD_HASH;
`python -m sidecar check --url URL [--deep] [--token T] [--strict]` checks a running sidecar's health;
`python -m sidecar keep-warm --url URL [--once] [--plan]` keeps a free instance awake (scripts/keep_warm.py);
`python -m sidecar backup run|list|restore [--to DIR]` backs up, lists or restores (docs/backups.md)."""
import argparse
import getpass
import sys

from .settings import settings_markdown

SETTINGS_DOC_HEAD = """# Settings

Every setting is read from an environment variable at start-up and checked
before the server listens; a bad value stops the start with a message that
names the variable. This table is generated from `sidecar/settings.py`
(`.venv/bin/python -m sidecar settings-doc > docs/settings.md`).

"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sidecar")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("settings-doc", help="print the settings reference (docs/settings.md)")
    password = commands.add_parser("password-hash", help="hash a login password for SIDECAR_DATASETTE_PASSWORD_HASH")
    password.add_argument("--stdin", action="store_true", help="read the password from standard input")
    check = commands.add_parser("check", help="check a running sidecar's health: exit 0 healthy, 1 degraded "
                                              "with --strict, 2 unhealthy or unreachable")
    from . import check_cli
    check_cli.add_arguments(check)
    keep_warm_parser = commands.add_parser(
        "keep-warm", help="ping /api/health every 10-14 min to keep a free instance awake, report cold starts; "
                          "--once for cron, --plan for the monthly free hours (docs/free-tier.md)")
    from . import keep_warm
    keep_warm.add_arguments(keep_warm_parser)
    backup_parser = commands.add_parser("backup", help="back up to S3-compatible storage now, list the backup, "
                                                       "or restore it into an empty data dir (docs/backups.md)")
    from . import backup
    backup.add_arguments(backup_parser)
    args = parser.parse_args(argv)
    if args.command == "settings-doc":
        sys.stdout.write(SETTINGS_DOC_HEAD + settings_markdown())
    elif args.command == "password-hash":
        return _password_hash(args.stdin)
    elif args.command == "check":
        return check_cli.run(args.url, deep=args.deep, token=args.token, strict=args.strict, timeout=args.timeout,
                             wait=args.wait, expect_version=args.expect_version)
    elif args.command == "keep-warm":
        keep_warm.check_arguments(keep_warm_parser, args)
        return keep_warm.run(args)
    elif args.command == "backup":
        return backup.main(args)
    return 0


def _password_hash(from_stdin):
    from datasette_auth_passwords.utils import hash_password
    if from_stdin:
        secret = sys.stdin.readline().rstrip("\n")
    else:
        secret = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != secret:
            sys.stderr.write("the two passwords differ\n")
            return 2
    if len(secret) < 8:
        sys.stderr.write("use at least 8 characters\n")
        return 2
    print(hash_password(secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
