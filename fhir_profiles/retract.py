"""Withdrawing what was extracted: FHIR R4's way to mark each resource type we emit entered-in-error."""

from __future__ import annotations

from typing import Any


def mark_entered_in_error(resource: dict[str, Any]) -> None:
    """FHIR R4's way to withdraw each resource type we emit."""
    kind = resource["resourceType"]
    if kind == "Condition":
        resource.pop("clinicalStatus", None)  # con-5: no clinicalStatus when entered-in-error
        resource["verificationStatus"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}
            ]
        }
    elif kind in ("Observation", "MedicationStatement", "MedicationRequest", "Procedure", "DocumentReference"):
        resource["status"] = "entered-in-error"
    elif kind == "AllergyIntolerance":
        resource.pop("clinicalStatus", None)  # ait-2: no clinicalStatus when entered-in-error
        resource["verificationStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "entered-in-error",
                }
            ]
        }
    elif kind in ("FamilyMemberHistory", "CarePlan", "Encounter"):
        resource["status"] = "entered-in-error"
    elif kind == "Bundle":
        for entry in resource.get("entry", []):
            if entry["resource"]["resourceType"] not in ("Patient", "Provenance"):
                mark_entered_in_error(entry["resource"])
        resource.setdefault("meta", {})["tag"] = [
            {
                "system": "http://paperchart.org/fhir/CodeSystem/review-status",
                "code": "entered-in-error",
                "display": "Retracted",
            }
        ]
