"""Retention policy: how long each level is kept, and the disk budget."""
from dataclasses import dataclass
from datetime import timedelta

from ingest.entries import LEVELS, format_ts


@dataclass(frozen=True)
class Policy:
    ages_days: dict          # level -> days
    budget_bytes: int        # 0: no budget
    warn_percent: int = 80
    critical_percent: int = 95
    chunk_rows: int = 2000

    @classmethod
    def from_settings(cls, settings, level_days):
        ages = {level: settings["retention_days"] for level in LEVELS}
        ages.update(level_days(settings["retention_level_days"]))
        return cls(ages, settings["disk_budget_bytes"], settings["disk_budget_warn_percent"],
                   settings["disk_budget_critical_percent"], settings["retention_chunk_rows"])

    def cutoffs(self, now):
        """Per level, the oldest timestamp kept: an entry exactly at its age stays, one past it goes."""
        return {level: format_ts(now - timedelta(days=days)) for level, days in self.ages_days.items()}

    def budget_state(self, used_bytes):
        if not self.budget_bytes:
            return None, "ok"
        percent = 100.0 * used_bytes / self.budget_bytes
        if percent >= self.critical_percent:
            return percent, "critical"
        return percent, "warning" if percent >= self.warn_percent else "ok"
