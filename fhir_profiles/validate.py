"""Validation of FHIR R4 JSON with the fhir.resources models before anything leaves paperchart.

fhir.resources ships R4B models; for the resources paperchart emits they match R4 (4.0.1).
A failure here is a bug in our mapping, reported as ``FhirValidationError`` with the paths
of the offending elements (never their values, which may be PHI).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from functools import cache
from typing import Any, Final

from pydantic import ValidationError


class FhirValidationError(Exception):
    def __init__(self, resource_type: str, problems: list[str]) -> None:
        super().__init__(f"{resource_type} failed FHIR validation: {'; '.join(problems)}")
        self.resource_type = resource_type
        self.problems = problems


# Elements with a *required* binding in R4 that fhir.resources types only as ``code``. The models
# check structure; these sets check the codes (value sets from http://hl7.org/fhir/R4/valueset-*.html).
_REQUIRED_CODES: Final[dict[tuple[str, str], frozenset[str]]] = {
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Observation", "status"): frozenset(
        {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
    ),
    ("MedicationStatement", "status"): frozenset(
        {"active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown", "not-taken"}
    ),
    ("DocumentReference", "status"): frozenset({"current", "superseded", "entered-in-error"}),
    ("MedicationRequest", "status"): frozenset(
        {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"}
    ),
    ("MedicationRequest", "intent"): frozenset(
        {"proposal", "plan", "order", "original-order", "reflex-order", "filler-order", "instance-order", "option"}
    ),
    ("Procedure", "status"): frozenset(
        {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error", "unknown"}
    ),
    ("AllergyIntolerance", "type"): frozenset({"allergy", "intolerance"}),
    ("CarePlan", "status"): frozenset(
        {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
    ),
    ("CarePlan", "intent"): frozenset({"proposal", "plan", "order", "option"}),
    ("Encounter", "status"): frozenset(
        {
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("AllergyIntolerance", "criticality"): frozenset({"low", "high", "unable-to-assess"}),
    ("Bundle", "type"): frozenset(
        {
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        }
    ),
}
_REQUIRED_CODINGS: Final[dict[tuple[str, str], tuple[str, frozenset[str]]]] = {
    ("Condition", "clinicalStatus"): (
        "http://terminology.hl7.org/CodeSystem/condition-clinical",
        frozenset({"active", "recurrence", "relapse", "inactive", "remission", "resolved"}),
    ),
    ("Condition", "verificationStatus"): (
        "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        frozenset({"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}),
    ),
    ("AllergyIntolerance", "clinicalStatus"): (
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
        frozenset({"active", "inactive", "resolved"}),
    ),
    ("AllergyIntolerance", "verificationStatus"): (
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
        frozenset({"unconfirmed", "confirmed", "refuted", "entered-in-error"}),
    ),
}
_ALLERGY_CATEGORIES: Final = frozenset({"food", "medication", "environment", "biologic"})
_SEVERITIES: Final = frozenset({"mild", "moderate", "severe"})


def _binding_problems(resource: dict[str, Any]) -> list[str]:
    resource_type = resource.get("resourceType", "")
    problems = []
    for (type_, element), allowed in _REQUIRED_CODES.items():
        if type_ == resource_type and element in resource and resource[element] not in allowed:
            problems.append(f"{element}: code not in required value set")
    for (type_, element), (system, codes) in _REQUIRED_CODINGS.items():
        if type_ != resource_type or element not in resource:
            continue
        codings = [c for c in resource[element].get("coding", []) if c.get("system") == system]
        if not codings or any(c.get("code") not in codes for c in codings):
            problems.append(f"{element}: code not in required value set")
    if resource_type == "AllergyIntolerance":
        if any(c not in _ALLERGY_CATEGORIES for c in resource.get("category", [])):
            problems.append("category: code not in required value set")
        if any(r.get("severity", "mild") not in _SEVERITIES for r in resource.get("reaction", [])):
            problems.append("reaction.severity: code not in required value set")
    return problems


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


class _RecentlyValid:
    """Digests of resources validated lately. Validation depends on the content alone, and the
    same content comes back often (every HL7 message about a patient repeats its PID and PV1), so
    content seen valid before is not run through the models again."""

    SIZE: Final = 8192

    def __init__(self) -> None:
        self._digests: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def digest(resource: dict[str, Any], deep: bool) -> bytes | None:
        try:  # the stdlib encoder takes JSON types only: a datetime or bytes is not remembered
            encoded = json.dumps(resource, sort_keys=True, separators=(",", ":")).encode()
        except (TypeError, ValueError):
            return None
        return hashlib.blake2b(encoded, digest_size=20, person=b"deep" if deep else b"shell").digest()

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            if digest in self._digests:
                self._digests.move_to_end(digest)
                return True
            return False

    def add(self, digest: bytes) -> None:
        with self._lock:
            self._digests[digest] = None
            if len(self._digests) > self.SIZE:
                self._digests.popitem(last=False)


_recently_valid = _RecentlyValid()


def validate_resource(resource: dict[str, Any], *, deep: bool = True) -> None:
    """Raise FhirValidationError unless ``resource`` is valid R4 JSON.

    ``deep=False`` validates a Bundle's shell only, for when every entry was validated already.
    """
    digest = _recently_valid.digest(resource, deep)
    if digest is not None and digest in _recently_valid:
        return
    _validate(resource, deep=deep)
    if digest is not None:
        _recently_valid.add(digest)


def _validate(resource: dict[str, Any], *, deep: bool) -> None:
    resource_type = str(resource.get("resourceType", ""))
    model = _model(resource_type)
    if model is None:
        raise FhirValidationError(resource_type or "(none)", ["unknown resourceType"])
    data = resource
    if not deep and resource_type == "Bundle":
        data = {
            **resource,
            "entry": [{k: v for k, v in e.items() if k != "resource"} for e in resource.get("entry", [])],
        }
    try:
        model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in error['loc'])}: {error['type']}" for error in exc.errors()[:10]]
        raise FhirValidationError(resource_type, problems) from None
    problems = _binding_problems(resource)
    if problems:
        raise FhirValidationError(resource_type, problems)
