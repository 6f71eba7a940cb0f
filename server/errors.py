"""The one exception tree of paperchart; each error knows how every protocol reports it.

    PaperchartError                     500 exception   AR
    ├── ConfigurationError              500 exception   AR   bad PAPERCHART_* setting
    ├── InvalidRequest                  400 invalid     AE   body is not JSON / not the FHIR resource expected
    │   └── UnsupportedResource         400 not-supported AE wrong resourceType for this endpoint
    ├── UnprocessableDocument           422 invalid     AE   document bytes unusable (corrupt, encrypted, lying type)
    ├── UnsupportedMediaType            415 not-supported AE a content type we do not read
    ├── TooLarge                        413 too-costly  AE   upload, page count or pixel count over the limit
    ├── Unauthorized                    401 login       AR   no token, or an invalid/expired/revoked one
    ├── Forbidden                       403 forbidden   AR   the token's scopes do not allow this
    ├── NotFound                        404 not-found   AE   no such resource or job
    ├── Conflict                        409 conflict    AE   state does not allow the operation
    ├── ProcessingFailed                500 exception   AR   a pipeline stage failed on valid input
    │   └── InvalidFhirOutput           500 invalid     AR   we built FHIR that does not validate (a bug)
    └── ServiceUnavailable              503 transient   AR   a dependency is down; retry later

Messages never contain PHI: no names, identifiers or document text, only what kind of problem
it was and where (field path, page number). ``diagnostics`` is for the same kind of detail.
MCP errors use JSON-RPC codes: -32602 invalid params for client faults, -32603 otherwise.
"""

from __future__ import annotations

from typing import ClassVar


class PaperchartError(Exception):
    http_status: ClassVar[int] = 500
    fhir_issue_code: ClassVar[str] = "exception"  # http://hl7.org/fhir/issue-type
    hl7_ack_code: ClassVar[str] = "AR"  # HL7 v2.5.1 Table 0008
    mcp_error_code: ClassVar[int] = -32603

    def __init__(self, message: str, *, diagnostics: str | None = None, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.diagnostics = diagnostics
        self.expression = expression


class ConfigurationError(PaperchartError):
    pass


class InvalidRequest(PaperchartError):
    http_status = 400
    fhir_issue_code = "invalid"
    hl7_ack_code = "AE"
    mcp_error_code = -32602


class UnsupportedResource(InvalidRequest):
    fhir_issue_code = "not-supported"


class UnprocessableDocument(PaperchartError):
    http_status = 422
    fhir_issue_code = "invalid"
    hl7_ack_code = "AE"
    mcp_error_code = -32602


class UnsupportedMediaType(PaperchartError):
    http_status = 415
    fhir_issue_code = "not-supported"
    hl7_ack_code = "AE"
    mcp_error_code = -32602


class TooLarge(PaperchartError):
    http_status = 413
    fhir_issue_code = "too-costly"
    hl7_ack_code = "AE"
    mcp_error_code = -32602


class NotFound(PaperchartError):
    http_status = 404
    fhir_issue_code = "not-found"
    hl7_ack_code = "AE"
    mcp_error_code = -32602


class Conflict(PaperchartError):
    http_status = 409
    fhir_issue_code = "conflict"
    hl7_ack_code = "AE"
    mcp_error_code = -32602


class ProcessingFailed(PaperchartError):
    fhir_issue_code = "exception"


class InvalidFhirOutput(ProcessingFailed):
    fhir_issue_code = "invalid"


class ServiceUnavailable(PaperchartError):
    http_status = 503
    fhir_issue_code = "transient"


class Unauthorized(PaperchartError):
    """No token, or one that is invalid, expired, revoked or meant for another server (RFC 6750 §3.1)."""

    http_status = 401
    fhir_issue_code = "login"
    hl7_ack_code = "AR"
    mcp_error_code = -32001


class MissingToken(Unauthorized):
    """The request carried no token at all (answered without an error code, RFC 6750 §3.1)."""


class LoginRequired(Unauthorized):
    """A browser page without a valid session: answered by sending the person to sign in."""


class Forbidden(PaperchartError):
    """A valid token whose scopes do not allow this interaction (RFC 6750 §3.1 insufficient_scope)."""

    http_status = 403
    fhir_issue_code = "forbidden"
    hl7_ack_code = "AR"
    mcp_error_code = -32003
