"""Command line: `python -m sidecar settings-doc` prints docs/settings.md."""
import argparse
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
    args = parser.parse_args(argv)
    if args.command == "settings-doc":
        sys.stdout.write(SETTINGS_DOC_HEAD + settings_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
