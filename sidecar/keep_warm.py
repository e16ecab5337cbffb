"""`python -m sidecar keep-warm`: keep a free instance awake and report its cold starts.

The logic lives in `scripts/keep_warm.py`, which must run alone (any cron, or a
copy of that one file: the standard library and `requests`, no import of the
project). This module loads that file by path and re-exports it, so the
command, the script and the tests share one implementation. See
docs/free-tier.md.
"""
import importlib.util
import os
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "keep_warm.py")
_NAME = "sidecar_keep_warm_script"


def _load():
    module = sys.modules.get(_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_NAME, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return module


_script = _load()
TOKEN_ENV = _script.TOKEN_ENV
ActiveHours = _script.ActiveHours
Ping = _script.Ping
add_arguments = _script.add_arguments
check_arguments = _script.check_arguments
backoff_delay_s = _script.backoff_delay_s
jittered_interval_s = _script.jittered_interval_s
expected_cold_start = _script.expected_cold_start
plan = _script.plan
format_plan = _script.format_plan
run = _script.run
run_loop = _script.run_loop
run_once = _script.run_once
main = _script.main
