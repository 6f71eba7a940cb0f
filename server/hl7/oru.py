"""Released results as an HL7 v2.5.1 ORU^R01, for the system that sent the document.

One message per released Bundle: PID from the Patient the sender's PID made (its identifiers,
with their assigning authorities, are what the EHR matches on), one OBR for the document (OBR-3
its unique number, OBR-4 its type) and one OBX per result:

- Observation: OBX-3 its code, OBX-14 when it was taken; NM with UCUM units (OBX-6), reference
  range and abnormal flag for a quantity, CWE for a coded value, ST for text; a panel (blood
  pressure) one OBX per component, the panel's number in OBX-4;
- Condition: CWE under LOINC 29548-5 (Diagnosis), the code in OBX-5;
- MedicationStatement / MedicationRequest: CWE under LOINC 10160-0 (History of medication use);
- AllergyIntolerance: CWE under LOINC 48765-2 (Allergies and adverse reactions).

Result status (OBR-25, OBX-11) is F, or C when results for the document were delivered before
(a re-extraction or a second release replaces them). Other resources (Provenance, the
Composition, Encounter...) do not travel; the FHIR API has everything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, Final

from server.hl7.er7 import Encoding, escape

# HL7 Table 0396: coding system names
_CODING_SYSTEMS: Final = {
    "http://loinc.org": "LN",
    "http://hl7.org/fhir/sid/icd-10-cm": "I10C",
    "http://hl7.org/fhir/sid/icd-10": "I10",
    "http://snomed.info/sct": "SCT",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXN",
    "http://unitsofmeasure.org": "UCUM",
    "http://terminology.hl7.org/CodeSystem/v2-0270": "HL70270",  # document type, as TXA-2 gave it
}
_GENDER: Final = {"female": "F", "male": "M", "other": "O", "unknown": "U"}
_NARRATIVE_CODES: Final = {
    "Condition": ("29548-5", "Diagnosis"),
    "MedicationStatement": ("10160-0", "History of medication use"),
    "MedicationRequest": ("10160-0", "History of medication use"),
    "AllergyIntolerance": ("48765-2", "Allergies and adverse reactions"),
}
_PROGRESS_NOTE: Final = ("11506-3", "Progress note", "LN")
_ENCODING: Final = Encoding()


def _ts(value: str | None) -> str:
    """FHIR date/dateTime/instant -> HL7 DTM (to the second, with the offset when there is one)."""
    if not value:
        return ""
    if len(value) <= 10:
        return value.replace("-", "")
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.strftime("%Y%m%d%H%M%S") + (moment.strftime("%z") if moment.tzinfo else "")


def _e(text: object) -> str:
    return escape(str(text), _ENCODING)


def _cwe(concept: dict[str, Any] | None) -> str:
    """CodeableConcept -> CWE: identifier^text^coding system of its first coding, else ^text."""
    if not concept:
        return ""
    for coding in concept.get("coding", []):
        if coding.get("code"):
            name = _CODING_SYSTEMS.get(coding.get("system", ""), "")
            text = coding.get("display") or concept.get("text") or ""
            return f"{_e(coding['code'])}^{_e(text)}^{name}"
    return f"^{_e(concept.get('text', ''))}" if concept.get("text") else ""


def _pid(patient: dict[str, Any]) -> str:
    identifiers = []
    for identifier in patient.get("identifier", []):
        if not identifier.get("value"):
            continue
        authority = identifier.get("assigner", {}).get("display", "")
        if not authority and identifier.get("system") == "https://fhir.nhs.uk/Id/nhs-number":
            authority = "NHS"
        type_code = next((c.get("code", "") for c in identifier.get("type", {}).get("coding", [])), "")
        identifiers.append(f"{_e(identifier['value'])}^^^{_e(authority)}^{_e(type_code)}")
    name = (patient.get("name") or [{}])[0]
    given = name.get("given", [])
    xpn = "^".join([_e(name.get("family", "")), _e(given[0] if given else ""), _e(" ".join(given[1:]))]).rstrip("^")
    gender = _GENDER.get(patient.get("gender", ""), "")
    return f"PID|1||{'~'.join(identifiers)}||{xpn}||{_ts(patient.get('birthDate'))}|{gender}"


def _observation(resource: dict[str, Any]) -> tuple[str, str, str, str, str, str] | None:
    """(value type, OBX-3, OBX-5, OBX-6, OBX-7, OBX-8) of an Observation, or None without a value."""
    code = _cwe(resource.get("code"))
    flag = next((c.get("code", "") for i in resource.get("interpretation", []) for c in i.get("coding", [])), "")
    if "valueQuantity" in resource:
        quantity = resource["valueQuantity"]
        unit = quantity.get("code") or quantity.get("unit") or ""
        units = f"{_e(unit)}^{_e(quantity.get('unit', unit))}^UCUM" if unit else ""
        ranges = resource.get("referenceRange", [])
        reference = ""
        if ranges:
            low, high = ranges[0].get("low", {}).get("value"), ranges[0].get("high", {}).get("value")
            reference = _e(ranges[0].get("text") or f"{'' if low is None else low}-{'' if high is None else high}")
        return "NM", code, _e(quantity.get("value", "")), units, reference, _e(flag)
    if "valueCodeableConcept" in resource:
        return "CWE", code, _cwe(resource["valueCodeableConcept"]), "", "", _e(flag)
    if "valueString" in resource:
        return "ST", code, _e(resource["valueString"]), "", "", _e(flag)
    return None


def _coded(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The coded thing a Condition, medication or allergy is about."""
    if resource["resourceType"] in ("MedicationStatement", "MedicationRequest"):
        return resource.get("medicationCodeableConcept")
    return resource.get("code")


def _results(bundle: dict[str, Any]) -> Iterator[tuple[str, str, str, str, str, str, str, str]]:
    """(value type, OBX-3, OBX-4 sub-id, OBX-5, OBX-6, OBX-7, OBX-8, OBX-14) for each result."""
    counts: dict[str, int] = {}
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        kind = resource.get("resourceType", "")
        if resource.get("status") == "entered-in-error":
            continue
        if kind == "Observation":
            # a panel such as blood pressure: one OBX per component, numbered by the panel in OBX-4
            parts = [
                {**part, "interpretation": resource.get("interpretation", [])} for part in resource.get("component", [])
            ]
            counts["panel"] = counts.get("panel", 0) + bool(parts)
            for part in parts or [resource]:
                observation = _observation(part)
                if observation is not None:
                    value_type, code, value, units, reference, flag = observation
                    sub_id = str(counts["panel"]) if parts else ""
                    when = _ts(resource.get("effectiveDateTime"))
                    yield value_type, code, sub_id, value, units, reference, flag, when
        elif kind in _NARRATIVE_CODES:
            concept = _coded(resource)
            if not concept:
                continue
            loinc, text = _NARRATIVE_CODES[kind]
            counts[loinc] = counts.get(loinc, 0) + 1  # OBX-4 tells the repeated OBX-3 apart
            yield "CWE", f"{loinc}^{text}^LN", str(counts[loinc]), _cwe(concept), "", "", "", ""


def build_oru(
    *,
    control_id: str,
    receiver: tuple[str, str],
    patient: dict[str, Any],
    document: dict[str, Any],
    bundle: dict[str, Any],
    correction: bool,
    now: dt.datetime | None = None,
) -> str:
    """The ORU^R01 carrying ``bundle``'s results for ``document`` about ``patient``."""
    status = "C" if correction else "F"
    timestamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")
    application, facility = receiver
    number = document.get("masterIdentifier", {}).get("value") or document.get("id", "")
    document_type = _cwe(document.get("type")) or "^".join(_PROGRESS_NOTE)
    segments = [
        f"MSH|^~\\&|PAPERCHART|PAPERCHART|{_e(application)}|{_e(facility)}|{timestamp}||ORU^R01^ORU_R01|"
        f"{_e(control_id)}|P|2.5.1",
        _pid(patient),
        f"OBR|1||{_e(number)}^PAPERCHART|{document_type}|||{_ts(document.get('date'))}"
        + "|" * 15
        + f"{timestamp}|||{status}",
    ]
    for index, (value_type, code, sub_id, value, units, reference, flag, when) in enumerate(_results(bundle), 1):
        segments.append(
            f"OBX|{index}|{value_type}|{code}|{sub_id}|{value}|{units}|{reference}|{flag}|||{status}|||{when}".rstrip(
                "|"
            )
        )
    return "\r".join(segments) + "\r"
