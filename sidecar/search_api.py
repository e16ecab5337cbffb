"""Log search and trace view: JSON API and server-rendered pages over `ingest.search`.

Readers only: an admin token, a Datasette login (`ds_actor` cookie), or open
access on loopback without a password. The HTML pages send a reader who is
none of these to the Datasette login page.
"""
from datetime import datetime

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from ingest import search as log_search
from ingest.entries import LEVELS

from .errors import ApiError, json_response

bp = Blueprint("search_api", __name__, template_folder="templates")
SEARCH_PARAMS = ("q", "level", "service", "trace_id", "user_id", "fingerprint", "since", "until", "limit", "cursor")
FORM_FIELDS = ("q", "service", "since", "until", "trace_id", "user_id", "fingerprint")
LOGIN_PATH = "/datasette/-/login"


def _sidecar():
    return current_app.extensions["sidecar"]


def _search_args():
    """The query string as `ingest.search.search` arguments; level and service may also be repeated."""
    args = {}
    for name in SEARCH_PARAMS:
        values = [value for value in request.args.getlist(name) if value.strip()]
        if name in ("level", "service"):
            args[name] = ",".join(values) or None
        else:
            args[name] = values[0] if values else None
    return args


def datasette_url(hit):
    return "{}/datasette/{}/logs/{}".format(request.script_root, hit["database"], hit["id"])


def _run_search(args):
    sidecar = _sidecar()
    result = log_search.search(sidecar.data_dir, now=sidecar.clock(),
                               max_limit=sidecar.settings["search_max_limit"], **args)
    for hit in result["hits"]:
        hit["url"] = datasette_url(hit)
    g.log_fields = {"hits": len(result["hits"]), "segments_searched": result["segments_searched"]}
    return result


def _ts_ms(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000


def _trace_view(trace_id):
    """The trace with services, duration and each entry's offset from the first; None when it has no entry."""
    result = log_search.trace(_sidecar().data_dir, trace_id)
    entries = result["entries"]
    if not entries:
        return None
    start = _ts_ms(entries[0]["ts"])
    services = []
    for entry in entries:
        entry["url"] = datasette_url(entry)
        entry["offset_ms"] = round(_ts_ms(entry["ts"]) - start, 3)
        if entry["service"] not in services:
            services.append(entry["service"])
    return {"trace_id": result["trace_id"], "entries": entries, "services": services,
            "duration_ms": entries[-1]["offset_ms"], "truncated": result["truncated"],
            "segments_searched": result["segments_searched"],
            "segments_unreadable": result["segments_unreadable"]}


def _no_trace(trace_id):
    return ApiError(404, "not_found", "no stored entry has trace_id {!r} (it may have passed its retention)"
                    .format(trace_id[:128]), {"trace_id": trace_id[:128]})


# -- JSON ---------------------------------------------------------------------------

@bp.get("/api/logs/search")
def search_logs():
    _sidecar().readers.require()
    try:
        result = _run_search(_search_args())
    except log_search.SearchError as error:
        raise ApiError(400, error.code, error.message, error.details) from None
    return json_response(result)


@bp.get("/api/traces/<path:trace_id>")
def show_trace(trace_id):
    _sidecar().readers.require()
    try:
        view = _trace_view(trace_id)
    except log_search.SearchError as error:
        raise ApiError(400, error.code, error.message, error.details) from None
    if view is None:
        raise _no_trace(trace_id)
    return json_response(view)


# -- HTML ---------------------------------------------------------------------------

def _page_reader():
    """The reader of an HTML page, or None when the request should go to the login page."""
    try:
        return _sidecar().readers.require()
    except ApiError as error:
        if error.status == 401:
            return None
        raise


def _login_redirect():
    return redirect(request.script_root + LOGIN_PATH, code=302)


def format_offset(ms):
    if ms < 1000:
        return "+{:g} ms".format(round(ms, 3))
    if ms < 60_000:
        return "+{:.3f} s".format(ms / 1000)
    seconds = ms / 1000
    return "+{}:{:02d}:{:06.3f}".format(int(seconds // 3600), int(seconds % 3600 // 60), seconds % 60)


@bp.get("/search")
def search_page():
    actor = _page_reader()
    if actor is None:
        return _login_redirect()
    args = _search_args()
    form = {name: args.get(name) or "" for name in FORM_FIELDS}
    selected_levels = [level for level in LEVELS if level in (args["level"] or "").split(",")]
    result, error, status = None, None, 200
    try:
        result = _run_search(args)
    except log_search.SearchError as failure:
        error, status = failure, 400
    links = {}
    if result is not None:
        kept = {name: value for name, value in args.items() if value and name != "cursor"}
        if result["next_cursor"]:
            links["older"] = url_for("search_api.search_page", **kept, cursor=result["next_cursor"])
        if args["cursor"]:
            links["newest"] = url_for("search_api.search_page", **kept)
    return render_template("search.html", actor=actor, form=form, levels=LEVELS, selected_levels=selected_levels,
                           limit=args["limit"] or "", result=result, error=error, links=links,
                           datasette=request.script_root + "/datasette/"), status


@bp.get("/traces/<path:trace_id>")
def trace_page(trace_id):
    actor = _page_reader()
    if actor is None:
        return _login_redirect()
    view, error, status = None, None, 200
    try:
        view = _trace_view(trace_id)
    except log_search.SearchError as failure:
        error, status = failure.message, 400
    if view is None and error is None:
        error, status = _no_trace(trace_id).message, 404
    if view is not None:
        for entry in view["entries"]:
            entry["offset"] = format_offset(entry["offset_ms"])
    return render_template("trace.html", actor=actor, trace_id=trace_id, view=view, error=error,
                           datasette=request.script_root + "/datasette/"), status
