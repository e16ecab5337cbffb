"""Where prometheus_client keeps the counts of several worker processes.

gunicorn.conf.py calls `prepare()` in the master, before forking: the
workers inherit PROMETHEUS_MULTIPROC_DIR and, importing prometheus_client
after it is set, count into memory-mapped files there. This module must not
import prometheus_client itself.
"""
import hashlib
import os
import shutil

from ingest.locks import pid_alive

ENV = "PROMETHEUS_MULTIPROC_DIR"
BASE = "prometheus"  # <data_dir>/prometheus/<master pid>/ where there is no SHM_ROOT
# The files are memory-mapped and sparse: a page first written on a full disk kills the worker
# with SIGBUS instead of raising, and a data disk fills with logs. Kept in memory (tmpfs), they
# share nothing with it; a count lost at a reboot is what a restarted server starts from anyway.
SHM_ROOT = "/dev/shm"


def _alive(pid):
    return pid_alive(pid)


def base_dir(data_dir, shm_root=SHM_ROOT):
    """/dev/shm/sidecar-metrics-<hash of the data dir>, or <data_dir>/prometheus without one."""
    data_dir = os.path.abspath(data_dir)
    if shm_root and os.path.isdir(shm_root) and os.access(shm_root, os.W_OK):
        # One directory per data dir: two servers on one machine never read each other's counts.
        return os.path.join(shm_root, "sidecar-metrics-" + hashlib.sha256(data_dir.encode()).hexdigest()[:16])
    return os.path.join(data_dir, BASE)


def prepare(data_dir, pid=None, shm_root=SHM_ROOT):
    """Make a fresh directory for this server start, remove those of servers that are gone,
    and set PROMETHEUS_MULTIPROC_DIR to it; return its path."""
    pid = os.getpid() if pid is None else pid
    base = base_dir(data_dir, shm_root)
    os.makedirs(base, exist_ok=True)
    for name in os.listdir(base):
        if not name.isdigit() or (int(name) != pid and not _alive(int(name))):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    path = os.path.join(base, str(pid))
    shutil.rmtree(path, ignore_errors=True)  # a reused pid: start from zero
    os.makedirs(path)
    os.environ[ENV] = path
    return path


def remove(path):
    """The server is stopping: drop its directory, and the base when no other server uses it."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:  # another server's directory is still there
        pass


def worker_gone(pid):
    """Gunicorn's child_exit: drop the dead worker's live gauges (its counters stay counted)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)
