"""GET /metrics: Prometheus text format. Open by default, like most exporters;
SIDECAR_METRICS_REQUIRE_TOKEN=true makes it require an admin token."""
from flask import Blueprint, current_app
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from . import metrics
from .auth import bearer_token

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    sidecar = current_app.extensions["sidecar"]
    if sidecar.settings["metrics_require_token"]:
        sidecar.admin_tokens.require(bearer_token())
    return current_app.response_class(metrics.render(sidecar), status=200, content_type=CONTENT_TYPE_PLAIN_0_0_4,
                                      headers={"Cache-Control": "no-store"})
