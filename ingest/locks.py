"""Process-level locks and liveness: which process runs a job that must run once (retention,
alerts, ...), and whether the process that owned something is still alive."""
import fcntl
import os
from contextlib import contextmanager


@contextmanager
def flock_held(path, wait=False):
    """Yield True when this process (this open file) holds the exclusive lock on `path`.

    The lock goes with the process: a killed holder frees it at once.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True
