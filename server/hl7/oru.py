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
from typing import Any, Final, NamedTuple

from server.hl7.er7 import Encoding, escape
from server.hl7.mapping import NHS_NUMBER_SYSTEM, V2_0270
from terminology.model import ICD10CM, LOINC, RXNORM, SNOMED, UCUM

# HL7 Table 0396: coding system names
_CODING_SYSTEMS: Final = {
    LOINC: "LN",
    ICD10CM: "I10C",
    "http://hl7.org/fhir/sid/icd-10": "I10",
    SNOMED: "SCT",
    RXNORM: "RXN",
    UCUM: "UCUM",
    V2_0270: "HL70270",  # document type, as TXA-2 gave it
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
        if not authority and identifier.get("system") == NHS_NUMBER_SYSTEM:
            authority = "NHS"
        type_code = next((c.get("code", "") for c in identifier.get("type", {}).get("coding", [])), "")
        identifiers.append(f"{_e(identifier['value'])}^^^{_e(authority)}^{_e(type_code)}")
    name = (patient.get("name") or [{}])[0]
    given = name.get("given", [])
    xpn = "^".join([_e(name.get("family", "")), _e(given[0] if given else ""), _e(" ".join(given[1:]))]).rstrip("^")
    gender = _GENDER.get(patient.get("gender", ""), "")
    return f"PID|1||{'~'.join(identifiers)}||{xpn}||{_ts(patient.get('birthDate'))}|{gender}"


class _Obx(NamedTuple):
    """The fields of one OBX segment that vary (OBX-2 to OBX-8, OBX-14)."""

    value_type: str
    code: str
    sub_id: str = ""
    value: str = ""
    units: str = ""
    reference: str = ""
    flag: str = ""
    taken: str = ""


def _observation(resource: dict[str, Any], sub_id: str, taken: str) -> _Obx | None:
    """The OBX of an Observation (or of one component of a panel), or None without a value."""
    code = _cwe(resource.get("code"))
    flag = _e(next((c.get("code", "") for i in resource.get("interpretation", []) for c in i.get("coding", [])), ""))
    if "valueQuantity" in resource:
        quantity = resource["valueQuantity"]
        unit = quantity.get("code") or quantity.get("unit") or ""
        units = f"{_e(unit)}^{_e(quantity.get('unit', unit))}^UCUM" if unit else ""
        ranges = resource.get("referenceRange", [])
        reference = ""
        if ranges:
            low, high = ranges[0].get("low", {}).get("value"), ranges[0].get("high", {}).get("value")
            reference = _e(ranges[0].get("text") or f"{'' if low is None else low}-{'' if high is None else high}")
        return _Obx("NM", code, sub_id, _e(quantity.get("value", "")), units, reference, flag, taken)
    if "valueCodeableConcept" in resource:
        return _Obx("CWE", code, sub_id, _cwe(resource["valueCodeableConcept"]), flag=flag, taken=taken)
    if "valueString" in resource:
        return _Obx("ST", code, sub_id, _e(resource["valueString"]), flag=flag, taken=taken)
    return None


def _coded(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The coded thing a Condition, medication or allergy is about."""
    if resource["resourceType"] in ("MedicationStatement", "MedicationRequest"):
        return resource.get("medicationCodeableConcept")
    return resource.get("code")


def _results(bundle: dict[str, Any]) -> Iterator[_Obx]:
    """An OBX for each result in the Bundle."""
    counts: dict[str, int] = {}
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        kind = resource.get("resourceType", "")
        if resource.get("status") == "entered-in-error":
            continue
        if kind == "Observation":
            taken = _ts(resource.get("effectiveDateTime"))
            components = resource.get("component", [])
            if not components:
                if (obx := _observation(resource, "", taken)) is not None:
                    yield obx
                continue
            # a panel such as blood pressure: one OBX per component, numbered by the panel in OBX-4
            counts["panel"] = counts.get("panel", 0) + 1
            interpretation = resource.get("interpretation", [])
            for component in components:
                part = {**component, "interpretation": interpretation}
                if (obx := _observation(part, str(counts["panel"]), taken)) is not None:
                    yield obx
        elif kind in _NARRATIVE_CODES:
            concept = _coded(resource)
            if not concept:
                continue
            loinc, text = _NARRATIVE_CODES[kind]
            counts[loinc] = counts.get(loinc, 0) + 1  # OBX-4 tells the repeated OBX-3 apart
            yield _Obx("CWE", f"{loinc}^{text}^LN", str(counts[loinc]), _cwe(concept))


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
    for index, obx in enumerate(_results(bundle), start=1):
        fields = (obx.value_type, obx.code, obx.sub_id, obx.value, obx.units, obx.reference, obx.flag)
        segments.append(f"OBX|{index}|{'|'.join(fields)}|||{status}|||{obx.taken}".rstrip("|"))
    return "\r".join(segments) + "\r"
