"""An extraction Bundle as a FHIR ``document`` Bundle: a Composition first, then what it cites.

FHIR R4 §3.3 (Documents): ``type`` document, an ``identifier`` and a ``timestamp``, the
Composition as the first entry, every reference resolvable inside the Bundle. The Composition
is authored by a Device (this software), titled after the source document, and has one section
per kind of finding (LOINC section codes from the C-CDA/IPS section set), each with a narrative.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Mapping
from typing import Any, Final

from fhir_profiles.bundle import Resource, needs_review
from fhir_profiles.validate import validate_resource
from terminology.model import LOINC

NOTE: Final = ("34109-9", "Note")
LAB_REPORT: Final = ("11502-2", "Laboratory report")
# (section LOINC, title, resource types it lists, a filter on the resource)
_SECTIONS: Final = (
    ("11450-4", "Problem list", ("Condition",)),
    ("10160-0", "History of medication use", ("MedicationStatement", "MedicationRequest")),
    ("48765-2", "Allergies and adverse reactions", ("AllergyIntolerance",)),
    ("47519-4", "History of procedures", ("Procedure",)),
    ("18776-5", "Plan of care", ("CarePlan",)),
    ("8716-3", "Vital signs", ("Observation:vital-signs",)),
    ("30954-2", "Relevant diagnostic tests and/or laboratory data", ("Observation:laboratory", "DiagnosticReport")),
    ("10157-6", "Family history", ("FamilyMemberHistory",)),
)


def _kind(resource: Mapping[str, Any]) -> str:
    kind = str(resource["resourceType"])
    if kind == "Observation":
        categories = [c.get("code") for cat in resource.get("category", []) for c in cat.get("coding", [])]
        return f"Observation:{categories[0]}" if categories else kind
    return kind


def _label(resource: Mapping[str, Any]) -> str:
    for key in ("code", "medicationCodeableConcept"):
        concept = resource.get(key)
        if isinstance(concept, dict):
            coding = (concept.get("coding") or [{}])[0]
            text = concept.get("text") or coding.get("display")
            if text:
                return str(text)
    if resource["resourceType"] == "FamilyMemberHistory":
        relative = resource["relationship"]["coding"][0].get("display", "relative")
        condition = (resource.get("condition") or [{}])[0].get("code", {}).get("text", "")
        return f"{relative}: {condition}"
    if resource.get("description"):  # CarePlan
        return str(resource["description"])
    return str(resource["resourceType"])


def _narrative(items: list[str]) -> dict[str, str]:
    rows = "".join(f"<li>{html.escape(item)}</li>" for item in items)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><ul>{rows}</ul></div>'}


def to_document(
    bundle: Resource, *, document_type: tuple[str, str] | None, title: str, fhir_base_url: str, software: str
) -> Resource:
    """The ``document`` form of an extraction Bundle (validated)."""
    entries = [e for e in bundle.get("entry", []) if e["resource"]["resourceType"] != "Provenance"]
    resources = [e["resource"] for e in entries]
    patient = next((r for r in resources if r["resourceType"] == "Patient"), None)
    if document_type is None:
        document_type = LAB_REPORT if any(r["resourceType"] == "DiagnosticReport" for r in resources) else NOTE
    device_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"paperchart-device/{software}"))
    device: Resource = {
        "resourceType": "Device",
        "id": device_id,
        "deviceName": [{"name": software, "type": "manufacturer-name"}],
        "type": {"text": "clinical document extraction software"},
    }
    sections = []
    for code, section_title, kinds in _SECTIONS:
        members = [r for r in resources if _kind(r) in kinds or r["resourceType"] in kinds]
        if not members:
            continue
        sections.append(
            {
                "title": section_title,
                "code": {"coding": [{"system": LOINC, "code": code, "display": section_title}]},
                "text": _narrative([_label(r) for r in members]),
                "entry": [{"reference": f"{r['resourceType']}/{r['id']}"} for r in members],
            }
        )
    reviewed = any(t.get("code") == "human-reviewed" for t in bundle.get("meta", {}).get("tag", []))
    composition: Resource = {
        "resourceType": "Composition",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"paperchart-composition/{bundle['id']}")),
        "status": "final" if reviewed or not needs_review(bundle) else "preliminary",
        "type": {"coding": [{"system": LOINC, "code": document_type[0], "display": document_type[1]}]},
        "date": bundle.get("timestamp") or bundle.get("meta", {}).get("lastUpdated"),
        "author": [{"reference": f"Device/{device_id}"}],
        "title": title,
        "section": sections or [{"title": "Findings", "text": _narrative(["Nothing was extracted."])}],
    }
    if patient is not None:
        composition["subject"] = {"reference": f"Patient/{patient['id']}"}
    document: Resource = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"paperchart-document/{bundle['id']}")),
        "identifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, bundle['id'])}",
        },
        "type": "document",
        "timestamp": composition["date"],
        "entry": [
            {"fullUrl": f"{fhir_base_url}/Composition/{composition['id']}", "resource": composition},
            {"fullUrl": f"{fhir_base_url}/Device/{device_id}", "resource": device},
            *({"fullUrl": e.get("fullUrl"), "resource": e["resource"]} for e in entries),
        ],
    }
    validate_resource(composition)
    validate_resource(device)
    validate_resource(document, deep=False)
    return document
