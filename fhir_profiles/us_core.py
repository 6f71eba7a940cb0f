"""US Core-style checks: the cardinality and must-support rules US Core (6.1) adds to R4.

``fhir_profiles.validate`` decides whether a resource is valid R4; this module says whether it
would also satisfy a US Core consumer, profile by profile. Only the rules that matter for what
paperchart emits are checked (mandatory elements, required categories, the vital-signs
effective[x] and value-or-absent-reason invariants); a full StructureDefinition validator (the
HL7 Java validator) is the authority where one is available. Problems name paths, never values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

US_CORE: Final = "http://hl7.org/fhir/us/core/StructureDefinition"
PATIENT: Final = f"{US_CORE}/us-core-patient"
CONDITION_PROBLEMS: Final = f"{US_CORE}/us-core-condition-problems-health-concerns"
CONDITION_ENCOUNTER: Final = f"{US_CORE}/us-core-condition-encounter-diagnosis"
OBSERVATION_LAB: Final = f"{US_CORE}/us-core-observation-lab"
VITAL_SIGNS: Final = f"{US_CORE}/us-core-vital-signs"
MEDICATION_REQUEST: Final = f"{US_CORE}/us-core-medicationrequest"
ALLERGY_INTOLERANCE: Final = f"{US_CORE}/us-core-allergyintolerance"
PROCEDURE: Final = f"{US_CORE}/us-core-procedure"

Resource = Mapping[str, Any]


def _categories(resource: Resource) -> set[str]:
    return {str(c.get("code")) for cat in resource.get("category", []) for c in cat.get("coding", [])}


def _missing(resource: Resource, *elements: str) -> list[str]:
    return [f"{element}: required by US Core (1..)" for element in elements if not resource.get(element)]


def _coded(resource: Resource, element: str) -> list[str]:
    concept = resource.get(element) or {}
    if not concept.get("coding") and not concept.get("text"):
        return [f"{element}: needs a coding or text"]
    return []


def _patient(resource: Resource) -> list[str]:
    problems = _missing(resource, "identifier", "name", "gender")
    for index, identifier in enumerate(resource.get("identifier", [])):
        if not identifier.get("system"):
            problems.append(f"identifier[{index}].system: required by US Core (1..1)")
        if not identifier.get("value"):
            problems.append(f"identifier[{index}].value: required by US Core (1..1)")
    for index, name in enumerate(resource.get("name", [])):
        if not name.get("family") and not name.get("given"):  # us-core-6 (or a data-absent-reason)
            problems.append(f"name[{index}]: us-core-6 needs family or given")
    return problems


def _condition(resource: Resource) -> list[str]:
    problems = _missing(resource, "category", "code", "subject") + _coded(resource, "code")
    if not _categories(resource) & {"problem-list-item", "health-concern", "encounter-diagnosis"}:
        problems.append("category: needs problem-list-item, health-concern or encounter-diagnosis")
    return problems


def _observation(resource: Resource) -> list[str]:
    problems = _missing(resource, "status", "category", "code", "subject")
    categories = _categories(resource)
    has_value = any(key.startswith("value") for key in resource) or bool(resource.get("component"))
    if not has_value and not resource.get("dataAbsentReason") and not resource.get("hasMember"):
        problems.append("value[x]: us-core-2 needs a value, components or a dataAbsentReason")
    if "vital-signs" in categories:
        effective = resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start")
        if not effective:
            problems.append("effective[x]: required for vital signs (1..1)")
        elif len(str(effective)) < 10:
            problems.append("effective[x]: vs-1 needs at least a day")
    elif "laboratory" not in categories:
        problems.append("category: a US Core lab result needs the laboratory category")
    return problems


def _medication_request(resource: Resource) -> list[str]:
    problems = _missing(resource, "status", "intent", "subject")
    if not resource.get("medicationCodeableConcept") and not resource.get("medicationReference"):
        problems.append("medication[x]: required by US Core (1..1)")
    if "reportedBoolean" not in resource and "reportedReference" not in resource and not resource.get("requester"):
        problems.append("requester: must be supported when the request is not reported[x]")
    return problems


def _allergy(resource: Resource) -> list[str]:
    return _missing(resource, "code", "patient") + _coded(resource, "code")


def _procedure(resource: Resource) -> list[str]:
    problems = _missing(resource, "status", "code", "subject") + _coded(resource, "code")
    if resource.get("status") == "completed" and not any(key.startswith("performed") for key in resource):
        problems.append("performed[x]: us-core-7 needs it when the procedure is completed")
    return problems


_CHECKS: Final[dict[str, tuple[str, Callable[[Resource], list[str]]]]] = {
    PATIENT: ("Patient", _patient),
    CONDITION_PROBLEMS: ("Condition", _condition),
    CONDITION_ENCOUNTER: ("Condition", _condition),
    OBSERVATION_LAB: ("Observation", _observation),
    VITAL_SIGNS: ("Observation", _observation),
    MEDICATION_REQUEST: ("MedicationRequest", _medication_request),
    ALLERGY_INTOLERANCE: ("AllergyIntolerance", _allergy),
    PROCEDURE: ("Procedure", _procedure),
}
PROFILES: Final = frozenset(_CHECKS)


def profile_for(resource: Resource) -> str | None:
    """The US Core profile a resource of ours would claim, if any."""
    kind = resource.get("resourceType")
    if kind == "Observation":
        return VITAL_SIGNS if "vital-signs" in _categories(resource) else OBSERVATION_LAB
    if kind == "Condition":
        return CONDITION_ENCOUNTER if "encounter-diagnosis" in _categories(resource) else CONDITION_PROBLEMS
    return next((url for url, (type_, _) in _CHECKS.items() if type_ == kind), None)


def us_core_problems(resource: Resource, profile: str | None = None) -> list[str]:
    """What keeps ``resource`` from conforming to ``profile`` (default: the one it would claim)."""
    profile = (profile or profile_for(resource) or "").split("|")[0]
    if profile not in _CHECKS:
        return []
    resource_type, check = _CHECKS[profile]
    if resource.get("resourceType") != resource_type:
        return [f"resourceType: {profile.rsplit('/', 1)[-1]} profiles {resource_type}"]
    return check(resource)
