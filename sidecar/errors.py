"""Every error answers `{"error": {"code", "message", "details"}}` with the right status."""
from flask import Blueprint, Response
from werkzeug.exceptions import HTTPException
import orjson

bp = Blueprint("errors", __name__)


class ApiError(Exception):
    def __init__(self, status, code, message, details=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details or {}, headers or {}


def json_response(payload, status=200, headers=None):
    return Response(orjson.dumps(payload), status=status, headers=headers,
                    mimetype="application/json")


def error_response(status, code, message, details=None, headers=None):
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return json_response(body, status, headers)


@bp.app_errorhandler(ApiError)
def _api_error(error):
    return error_response(error.status, error.code, error.message, error.details, error.headers)


@bp.app_errorhandler(HTTPException)
def _http_error(error):
    code = (error.name or "error").lower().replace(" ", "_")
    headers = {}
    if error.code == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return error_response(error.code, code, error.description or error.name, headers=headers)


@bp.app_errorhandler(Exception)
def _unexpected(error):
    # The details stay in the server log; the client learns only that it was our fault.
    from flask import current_app
    current_app.logger.exception("unhandled error")
    return error_response(500, "internal_error", "the sidecar failed to handle this request")
