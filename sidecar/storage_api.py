"""GET /api/storage (admin token): what the store holds against its budget."""
import os
from datetime import datetime

from flask import Blueprint, current_app

from ingest import catalog, segments
from ingest.entries import format_ts
from retention import job

from .errors import json_response
from .auth import bearer_token

bp = Blueprint("storage", __name__)


def _days_between(earlier, later):
    start = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
    end = datetime.fromisoformat(later.replace("Z", "+00:00"))
    return (end - start).total_seconds() / 86400


def storage_report(sidecar):
    meta = catalog.connect_meta_cached(sidecar.data_dir)
    now_text = format_ts(sidecar.clock())
    rows = [dict(row) for row in meta.execute(
        "SELECT name, created_at, closed_at, min_ts, max_ts, row_count FROM segments ORDER BY day, seq")]
    for row in rows:
        row["bytes"] = segments.file_bytes(job.segment_path(sidecar.data_dir, row["name"]))
        row["head"] = row.pop("closed_at") is None
    total = job.store_bytes(sidecar.data_dir)
    policy = sidecar.retention_policy
    percent, state = policy.budget_state(total)
    oldest = min((row["min_ts"] for row in rows if row["min_ts"]), default=None)
    first_created = min((row["created_at"] for row in rows), default=now_text)
    # The rate at which the store grew since its first segment; at least an hour of history.
    span_days = max(_days_between(first_created, now_text), 1 / 24)
    rate_per_day = sum(row["bytes"] for row in rows) / span_days
    days_left = None
    if policy.budget_bytes and rate_per_day > 0:
        days_left = round(max(policy.budget_bytes - total, 0) / rate_per_day, 1)
    return {"segments": rows, "segment_count": len(rows), "total_bytes": total,
            "meta_bytes": segments.file_bytes(os.path.join(sidecar.data_dir, "meta.db")),
            "budget_bytes": policy.budget_bytes or None,
            "budget_used_percent": None if percent is None else round(percent, 1), "budget_state": state,
            "oldest_entry": oldest, "bytes_per_day": round(rate_per_day), "days_until_budget_full": days_left,
            "retention_days": policy.ages_days}


@bp.get("/api/storage")
def storage():
    sidecar = current_app.extensions["sidecar"]
    sidecar.admin_tokens.require(bearer_token())
    return json_response(storage_report(sidecar))
