"""FHIR OperationOutcome: how every error leaves paperchart over FHIR REST."""

from __future__ import annotations

from typing import Any, Literal

Severity = Literal["fatal", "error", "warning", "information"]


def operation_outcome(
    code: str, text: str, *, severity: Severity = "error", diagnostics: str | None = None, expression: str | None = None
) -> dict[str, Any]:
    """An OperationOutcome with one issue; ``code`` is from http://hl7.org/fhir/issue-type."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "details": {"text": text}}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
