"""Exception handlers: every error leaves as an OperationOutcome, never as a stack trace."""

from __future__ import annotations

import json
import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from fhir_profiles import operation_outcome
from server.errors import Forbidden, MissingToken, PaperchartError, Unauthorized

logger = logging.getLogger(__name__)

_ISSUE_BY_STATUS = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    503: "transient",
}


def _outcome(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=json.dumps(body).encode(), status_code=status, media_type="application/fhir+json", headers=headers or {}
    )


def paperchart_error_handler(_: Request[Any, Any, Any], exc: PaperchartError) -> Response[bytes]:
    if exc.http_status >= 500:
        logger.error("%s: %s", type(exc).__name__, exc.message)
    headers = {}
    # RFC 6750 §3: no error code when the request carried no token at all
    if isinstance(exc, MissingToken):
        headers["WWW-Authenticate"] = 'Bearer realm="paperchart"'
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = (
            f'Bearer realm="paperchart", error="invalid_token", error_description="{exc.message}"'
        )
    elif isinstance(exc, Forbidden):
        headers["WWW-Authenticate"] = 'Bearer realm="paperchart", error="insufficient_scope"'
    return _outcome(
        exc.http_status,
        operation_outcome(exc.fhir_issue_code, exc.message, diagnostics=exc.diagnostics, expression=exc.expression),
        headers,
    )


def validation_error_handler(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    # Litestar's own message names the parameter and what was wrong with it, not its value
    fields = ", ".join(str(e.get("key", "")) for e in (exc.extra or []) if isinstance(e, dict) and e.get("key"))
    text = f"invalid request parameter(s): {fields}" if fields else "invalid request"
    return _outcome(400, operation_outcome("invalid", text))


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    text = {
        404: "no such endpoint",
        405: "method not allowed on this endpoint",
        413: "request body is larger than the upload limit",
    }.get(status, exc.detail or "request failed")
    return _outcome(status, operation_outcome(_ISSUE_BY_STATUS.get(status, "exception"), text), dict(exc.headers or {}))


def unexpected_error_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # the type only: library messages can quote request content (PHI)
    logger.error("unexpected %s while handling a request", type(exc).__name__)
    return _outcome(500, operation_outcome("exception", "internal server error"))
