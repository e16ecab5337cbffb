"""Logging for an operation retried in a loop while it keeps failing (a full disk): the first
failure of a run, then one line per interval with the count, and the recovery. A retry every
second would otherwise fill the log, which may live on the same full disk."""
import time


class FailureLog:
    def __init__(self, logger, interval_s=60.0):
        self.logger = logger
        self.interval_s = interval_s
        self.failures = 0  # in a row
        self._logged_at = None

    def failed(self, message, *args):
        """Count a failure; log it if it is the run's first or the interval has passed."""
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1 or now - self._logged_at >= self.interval_s:
            self._logged_at = now
            self.logger.error(message + " (failed attempts in a row: %d)", *args, self.failures)

    def succeeded(self, message, *args):
        """End a run of failures; log `message` with the count when there was one."""
        if self.failures:
            self.logger.info(message + " (failed attempts before: %d)", *args, self.failures)
        self.failures = 0
