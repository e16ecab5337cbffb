"""Where prometheus_client keeps the counts of several worker processes.

gunicorn.conf.py calls `prepare()` in the master, before forking: the
workers inherit PROMETHEUS_MULTIPROC_DIR and, importing prometheus_client
after it is set, count into memory-mapped files there. This module must not
import prometheus_client itself.
"""
import os
import shutil

from ingest.locks import pid_alive

ENV = "PROMETHEUS_MULTIPROC_DIR"
BASE = "prometheus"  # <data_dir>/prometheus/<master pid>/


def _alive(pid):
    return pid_alive(pid)


def prepare(data_dir, pid=None):
    """Make a fresh directory for this server start, remove those of servers that are gone,
    and set PROMETHEUS_MULTIPROC_DIR to it; return its path."""
    pid = os.getpid() if pid is None else pid
    base = os.path.join(os.path.abspath(data_dir), BASE)
    os.makedirs(base, exist_ok=True)
    for name in os.listdir(base):
        if not name.isdigit() or (int(name) != pid and not _alive(int(name))):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    path = os.path.join(base, str(pid))
    shutil.rmtree(path, ignore_errors=True)  # a reused pid: start from zero
    os.makedirs(path)
    os.environ[ENV] = path
    return path


def worker_gone(pid):
    """Gunicorn's child_exit: drop the dead worker's live gauges (its counters stay counted)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)
