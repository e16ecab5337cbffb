"""The sidecar's own Datasette plugin: admin tokens as actors, segment metadata, links, read-only."""
from datasette import hookimpl

from .datasette_config import ADMIN_TOKEN_ACTOR, segment_queries

# Actions that change data; Datasette 0.65 only has them through plugins, but a
# future plugin or upgrade must not open a write path into the store.
WRITE_ACTIONS = frozenset(("insert-row", "delete-row", "update-row", "create-table", "alter-table",
                           "drop-table"))


def _sidecar(datasette):
    return getattr(datasette, "sidecar", None)


def _segment(database):
    return bool(database) and database.startswith("logs-")


@hookimpl
def actor_from_request(datasette, request):
    sidecar = _sidecar(datasette)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if sidecar is not None and scheme.lower() == "bearer" and sidecar.admin_tokens.matches(token.strip()):
        return {"id": ADMIN_TOKEN_ACTOR}
    return None


@hookimpl
def permission_allowed(action, actor):
    if action in WRITE_ACTIONS:
        return False
    return None


@hookimpl
def get_metadata(datasette, key, database, table):
    """Every segment's logs table: newest first, full-text search in raw FTS5 syntax.

    Datasette asks with or without a database (table_metadata() asks for the
    whole "databases" key), so every segment database is described each time.
    """
    logs = {"sort_desc": "id", "fts_table": "logs_fts", "fts_pk": "id", "searchmode": "raw",
            "label_column": "message"}
    return {"databases": {name: {"tables": {"logs": logs}} for name in datasette.databases if _segment(name)}}


@hookimpl
def canned_queries(datasette, database):
    if _segment(database):
        return segment_queries()
    return None


@hookimpl
def menu_links(datasette):
    return [{"href": "/search", "label": "Search logs (all segments)"},
            {"href": datasette.urls.path("/-/dashboards/overview"), "label": "Overview dashboard"}]


@hookimpl
def render_cell(value, column, database):
    """An error group's fingerprint links to its events, searched across every segment."""
    if database == "meta" and column == "fingerprint" and isinstance(value, str) and value:
        from urllib.parse import quote

        from markupsafe import Markup, escape
        return Markup('{} · <a href="/search?fingerprint={}">events</a>').format(escape(value), quote(value))
    return None
