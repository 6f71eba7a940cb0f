"""Which patient's compartment a resource belongs to (FHIR R4 CompartmentDefinition patient).

Used to index resources by patient and to hold ``patient/`` scopes to their launch patient.
A Bundle we produce belongs to the patient it carries (one document, one patient).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# the reference elements that put each of our resource types in a patient's compartment
_PATIENT_ELEMENTS: Final = ("subject", "patient")


def patient_of(resource: Mapping[str, Any]) -> str | None:
    kind = resource.get("resourceType")
    if kind == "Patient":
        return str(resource["id"]) if resource.get("id") else None
    if kind == "Bundle":
        for entry in resource.get("entry", []):
            if entry.get("resource", {}).get("resourceType") == "Patient":
                return patient_of(entry["resource"])
        return None
    for element in _PATIENT_ELEMENTS:
        value = resource.get(element)
        reference = value.get("reference", "") if isinstance(value, dict) else ""
        if reference.startswith("Patient/"):
            return str(reference.removeprefix("Patient/"))
    return None
