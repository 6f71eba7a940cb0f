"""Extraction → FHIR R4 Bundle: Patient, Condition, MedicationStatement (or MedicationRequest),
Observation, AllergyIntolerance, Procedure, CarePlan (follow-up actions), FamilyMemberHistory,
DiagnosticReport, Provenance.

Resource ids are derived from ``BundleContext.id_seed`` so the same job always produces the
same ids: re-running a job after a crash replaces its Bundle instead of adding a second one.
Every resource gets a Provenance whose entity is the source DocumentReference and whose
extension says on which page, in which box and at which characters the evidence was read.
Every resource is validated (``fhir_profiles.validate``) before the Bundle is returned.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

import msgspec

from fhir_profiles.extraction import (
    Allergy,
    Diagnosis,
    DocumentType,
    Encounter,
    Evidence,
    Extraction,
    FollowUp,
    LabResult,
    Medication,
    Procedure,
    Vital,
)
from fhir_profiles.validate import validate_resource
from terminology.labs import DIASTOLIC, SYSTOLIC, VITAL_CODES
from terminology.model import LOINC, SNOMED, UCUM

Resource = dict[str, Any]

ID_NAMESPACE: Final = uuid.UUID("6f1c5a9e-2a47-4c1e-9a53-0d7c1b8e4f21")
PAPERCHART_BASE: Final = "http://paperchart.org/fhir"
EVIDENCE_EXTENSION: Final = f"{PAPERCHART_BASE}/StructureDefinition/evidence"
REVIEW_TAG_SYSTEM: Final = f"{PAPERCHART_BASE}/CodeSystem/review-status"
REVIEW_REASON_EXTENSION: Final = f"{PAPERCHART_BASE}/StructureDefinition/review-reason"
REVIEW_REASON_SYSTEM: Final = f"{PAPERCHART_BASE}/CodeSystem/review-reason"
NHS_NUMBER_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_ROLE_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
DIAGNOSTIC_SERVICE: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
# who had it, for FamilyMemberHistory.relationship (HL7 v3 RoleCode, the R4 binding's code system)
RELATIONSHIPS: Final[dict[str, tuple[str, str]]] = {
    "mother": ("MTH", "mother"),
    "father": ("FTH", "father"),
    "sister": ("SIS", "sister"),
    "brother": ("BRO", "brother"),
    "grandmother": ("GRMTH", "grandmother"),
    "grandfather": ("GRFTH", "grandfather"),
    "aunt": ("AUNT", "aunt"),
    "uncle": ("UNCLE", "uncle"),
    "family": ("FAMMEMB", "family member"),
}
INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PROVENANCE_AGENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ALLERGY_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
# SNOMED CT situations for a recorded absence of allergies (as the IPS uses them)
NO_KNOWN_DRUG_ALLERGY: Final = ("409137002", "No known drug allergy")
NO_KNOWN_ALLERGY: Final = ("716186003", "No known allergy")


# SNOMED CT route of administration qualifier values.
ROUTE_CODES: Final[dict[str, tuple[str, str]]] = {
    "oral": ("26643006", "Oral route"),
    "subcutaneous": ("34206005", "Subcutaneous route"),
    "intravenous": ("47625008", "Intravenous route"),
    "intramuscular": ("78421000", "Intramuscular route"),
    "inhaled": ("447694001", "Respiratory tract route"),
    "sublingual": ("37839007", "Sublingual route"),
    "rectal": ("37161004", "Rectal route"),
    "topical": ("6064005", "Topical route"),
}
INTERPRETATION_DISPLAY: Final = {"N": "Normal", "H": "High", "L": "Low", "HH": "Critical high", "LL": "Critical low"}
VERIFICATION_BY_ASSERTION: Final = {
    "present": "confirmed",
    "historical": "confirmed",
    "uncertain": "provisional",
    "negated": "refuted",
}


class BundleContext(msgspec.Struct, frozen=True, kw_only=True):
    bundle_id: str
    id_seed: str  # same seed, same resource ids
    document_reference_id: str
    fhir_base_url: str  # absolute, e.g. http://127.0.0.1:8080/fhir
    recorded: str  # FHIR instant
    software: str  # e.g. "paperchart 0.1.0"
    ocr_engine: str | None = None
    # The document's subject when the sender said who it is (e.g. HL7 PID): used as the Bundle's
    # Patient instead of demographics read off the page, which only confirm it.
    patient: dict[str, Any] | None = None
    # US Core consumers expect medications as MedicationRequest (PAPERCHART_MEDICATION_RESOURCE)
    medication_resource: Literal["MedicationStatement", "MedicationRequest"] = "MedicationStatement"
    # when the document's findings hold (its date): Observation.effectiveDateTime, which vital
    # signs must have; None when the sender did not say
    effective: str | None = None
    # the namespace of the MRNs printed on this deployment's documents (PAPERCHART_MRN_SYSTEM)
    mrn_system: str | None = None


def resource_id(seed: str, kind: str, index: int) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{seed}/{kind}/{index}"))


def needs_review(resource: Mapping[str, Any]) -> bool:
    """Whether the Bundle (or resource) carries the requires-review tag: not to be released as it is."""
    return any(t.get("code") == "requires-review" for t in resource.get("meta", {}).get("tag", []))


def _review_meta(requires_review: bool) -> dict[str, Any]:
    code, display = (
        ("requires-review", "Requires human review")
        if requires_review
        else ("machine-extracted", "Machine extracted, no review needed")
    )
    return {"tag": [{"system": REVIEW_TAG_SYSTEM, "code": code, "display": display}]}


def _quantity(value: float, ucum: str | None, written: str | None = None) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if ucum:
        # the UCUM code doubles as the human-readable unit: OCR can garble the written form
        quantity.update(unit=ucum, system=UCUM, code=ucum)
    elif written:
        quantity["unit"] = written
    return quantity


def _patient(extraction: Extraction, patient_id: str, mrn_system: str | None) -> Resource:
    facts = extraction.patient
    resource: Resource = {"resourceType": "Patient", "id": patient_id}
    identifiers: list[dict[str, Any]] = []
    for identifier in facts.identifiers:
        if identifier.kind == "nhs":
            identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": identifier.value})
        else:
            mrn: dict[str, Any] = {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "MR", "display": "Medical record number"}]},
            }
            if mrn_system:
                mrn["system"] = mrn_system
            mrn["value"] = identifier.value
            identifiers.append(mrn)
    if identifiers:
        resource["identifier"] = identifiers
    if facts.name is not None:
        name: dict[str, Any] = {"use": "official", "text": facts.name.value}
        if facts.family:
            name["family"] = facts.family
        if facts.given:
            name["given"] = list(facts.given)
        resource["name"] = [name]
    if facts.sex is not None:
        resource["gender"] = facts.sex.value
    if facts.birth_date is not None:
        resource["birthDate"] = facts.birth_date.value
    telecom = []
    if facts.phone is not None:
        telecom.append({"system": "phone", "value": facts.phone.value})
    if facts.email is not None:
        telecom.append({"system": "email", "value": facts.email.value})
    if telecom:
        resource["telecom"] = telecom
    if facts.address is not None:
        address: dict[str, Any] = {"text": facts.address.value}
        if facts.postal_code:
            address["postalCode"] = facts.postal_code
        resource["address"] = [address]
    return resource


def _condition(
    diagnosis: Diagnosis, condition_id: str, patient_ref: str, document_type: str, author: str | None
) -> Resource:
    category = "problem-list-item" if document_type in ("clinic-letter", "referral") else "encounter-diagnosis"
    if diagnosis.assertion == "negated":
        category = "encounter-diagnosis"  # a refuted finding is not a problem-list entry
    resource: Resource = {
        "resourceType": "Condition",
        "id": condition_id,
        "verificationStatus": {
            "coding": [{"system": CONDITION_VERIFICATION, "code": VERIFICATION_BY_ASSERTION[diagnosis.assertion]}]
        },
        "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": category}]}],
        "code": {"text": diagnosis.text},
        "subject": {"reference": patient_ref},
    }
    if diagnosis.assertion != "negated":
        status = "resolved" if diagnosis.assertion == "historical" else "active"
        resource["clinicalStatus"] = {"coding": [{"system": CONDITION_CLINICAL, "code": status}]}
    if diagnosis.codings:
        resource["code"]["coding"] = [msgspec.to_builtins(c) for c in diagnosis.codings]
    if author:  # the letter's author made the statement
        resource["asserter"] = {"display": author}
    return resource


def _family_history(diagnosis: Diagnosis, history_id: str, patient_ref: str) -> Resource:
    """A relative's condition ("mother had breast cancer") is FamilyMemberHistory, not the patient's Condition."""
    code, display = RELATIONSHIPS.get(diagnosis.relative or "family", RELATIONSHIPS["family"])
    condition: dict[str, Any] = {"code": {"text": diagnosis.text}}
    if diagnosis.codings:
        condition["code"]["coding"] = [msgspec.to_builtins(c) for c in diagnosis.codings]
    return {
        "resourceType": "FamilyMemberHistory",
        "id": history_id,
        "status": "completed",
        "patient": {"reference": patient_ref},
        "relationship": {"coding": [{"system": V3_ROLE_CODE, "code": code, "display": display}]},
        "condition": [condition],
    }


def _lab_report(report_id: str, patient_ref: str, results: list[str], issued: str, requires_review: bool) -> Resource:
    """A lab report's results grouped as one DiagnosticReport, as an EHR files them."""
    return {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "preliminary" if requires_review else "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB", "display": "Laboratory"}
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "11502-2", "display": "Laboratory report"}]},
        "subject": {"reference": patient_ref},
        "issued": issued,
        "result": [{"reference": reference} for reference in results],
    }


def _dosage(medication: Medication) -> dict[str, Any]:
    dosage: dict[str, Any] = {"text": medication.text}
    timing = medication.timing
    if timing is not None:
        repeat: dict[str, Any] = {}
        if timing.frequency is not None:
            repeat["frequency"] = timing.frequency
        if timing.period is not None and timing.period_unit is not None:
            repeat.update(period=timing.period, periodUnit=timing.period_unit)
        if timing.when:
            repeat["when"] = list(timing.when)
        if repeat:
            dosage["timing"] = {"repeat": repeat}
        if timing.as_needed:
            dosage["asNeededBoolean"] = True
    if medication.route in ROUTE_CODES:
        code, display = ROUTE_CODES[medication.route]
        dosage["route"] = {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": medication.route}
    if medication.dose_value is not None:
        dosage["doseAndRate"] = [{"doseQuantity": _quantity(medication.dose_value, medication.dose_unit)}]
    return dosage


def _medication_concept(medication: Medication) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": medication.name}
    if medication.codings:
        concept["coding"] = [msgspec.to_builtins(c) for c in medication.codings]
    return concept


def _medication_statement(medication: Medication, statement_id: str, patient_ref: str) -> Resource:
    statement: Resource = {
        "resourceType": "MedicationStatement",
        "id": statement_id,
        "status": medication.status,
        "medicationCodeableConcept": _medication_concept(medication),
        "subject": {"reference": patient_ref},
        "dosage": [_dosage(medication)],
    }
    if medication.changed:  # R4 has no "changed" status: the medication stays active, and says why
        statement["statusReason"] = [{"text": "dose or regimen changed in this document"}]
    return statement


# MedicationStatement.status → MedicationRequest.status (R4 value sets)
_REQUEST_STATUS: Final = {"active": "active", "stopped": "stopped", "on-hold": "on-hold", "unknown": "unknown"}


def _medication_request(medication: Medication, request_id: str, patient_ref: str) -> Resource:
    """The US Core form of a medication on a list: an order, ``reported`` because it was read off a
    document rather than placed here (US Core MedicationRequest: status, intent, medication,
    subject, reported[x], dosageInstruction)."""
    return {
        "resourceType": "MedicationRequest",
        "id": request_id,
        "status": _REQUEST_STATUS[medication.status],
        "intent": "order",
        "reportedBoolean": True,
        "medicationCodeableConcept": _medication_concept(medication),
        "subject": {"reference": patient_ref},
        "dosageInstruction": [_dosage(medication)],
    }


def _allergy_intolerance(allergy: Allergy, allergy_id: str, patient_ref: str) -> Resource:
    code: dict[str, Any] = {"text": allergy.substance}
    if allergy.none_known:
        drugs_only = "drug" in allergy.substance.lower() or allergy.substance.upper().startswith("NKDA")
        snomed, display = NO_KNOWN_DRUG_ALLERGY if drugs_only else NO_KNOWN_ALLERGY
        code["coding"] = [{"system": SNOMED, "code": snomed, "display": display}]
    elif allergy.codings:
        code["coding"] = [msgspec.to_builtins(c) for c in allergy.codings]
    resource: Resource = {
        "resourceType": "AllergyIntolerance",
        "id": allergy_id,
        "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active", "display": "Active"}]},
        "verificationStatus": {
            "coding": [{"system": ALLERGY_VERIFICATION, "code": "confirmed", "display": "Confirmed"}]
        },
        "code": code,
        "patient": {"reference": patient_ref},
    }
    if allergy.category is not None:
        resource["category"] = [allergy.category]
    if allergy.reaction is not None or allergy.severity is not None:
        reaction: dict[str, Any] = {"manifestation": [{"text": allergy.reaction or "reaction not stated"}]}
        if allergy.severity is not None:
            reaction["severity"] = allergy.severity
        resource["reaction"] = [reaction]
    return resource


def _procedure(procedure: Procedure, procedure_id: str, patient_ref: str) -> Resource:
    code: dict[str, Any] = {"text": procedure.text}
    if procedure.codings:
        code["coding"] = [msgspec.to_builtins(c) for c in procedure.codings]
    resource: Resource = {
        "resourceType": "Procedure",
        "id": procedure_id,
        "status": "completed",
        "code": code,
        "subject": {"reference": patient_ref},
    }
    if procedure.date is not None:
        resource["performedDateTime"] = procedure.date
    return resource


# Encounter.class (v3 ActCode) by kind of visit
ENCOUNTER_CLASS: Final = {
    "inpatient": ("IMP", "inpatient encounter"),
    "outpatient": ("AMB", "ambulatory"),
    "emergency": ("EMER", "emergency"),
}


def _encounter(encounter: Encounter, encounter_id: str, patient_ref: str) -> Resource:
    code, display = ENCOUNTER_CLASS[encounter.kind]
    ongoing = encounter.kind == "inpatient" and encounter.end is None
    resource: Resource = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "status": "in-progress" if ongoing else "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display},
        "subject": {"reference": patient_ref},
    }
    period = {k: v for k, v in (("start", encounter.start), ("end", encounter.end)) if v}
    if period:
        resource["period"] = period
    if encounter.department:
        resource["serviceType"] = {"text": encounter.department}
    if encounter.practitioner:
        resource["participant"] = [{"individual": {"display": encounter.practitioner}}]
    return resource


def _care_plan(follow_up: FollowUp, plan_id: str, patient_ref: str) -> Resource:
    """A follow-up action the document asks for, as a one-activity CarePlan (not yet started)."""
    return {
        "resourceType": "CarePlan",
        "id": plan_id,
        "status": "active",
        "intent": "plan",
        "subject": {"reference": patient_ref},
        "description": follow_up.text,
        "activity": [{"detail": {"status": "not-started", "description": follow_up.text}}],
    }


def _observation_status(requires_review: bool) -> str:
    return "preliminary" if requires_review else "final"


def _vital(vital: Vital, observation_id: str, patient_ref: str, requires_review: bool) -> Resource:
    code, display = VITAL_CODES[vital.kind]
    resource: Resource = {
        "resourceType": "Observation",
        "id": observation_id,
        "status": _observation_status(requires_review),
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": patient_ref},
    }
    if vital.kind == "blood_pressure":
        resource["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": SYSTOLIC[0], "display": SYSTOLIC[1]}]},
                "valueQuantity": _quantity(vital.value, vital.unit),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": DIASTOLIC[0], "display": DIASTOLIC[1]}]},
                "valueQuantity": _quantity(vital.diastolic if vital.diastolic is not None else 0, vital.unit),
            },
        ]
    else:
        resource["valueQuantity"] = _quantity(vital.value, vital.unit)
    return resource


def _lab(lab: LabResult, observation_id: str, patient_ref: str, requires_review: bool) -> Resource:
    code: dict[str, Any] = {"text": lab.test}
    if lab.codings:
        code["coding"] = [msgspec.to_builtins(c) for c in lab.codings]
    value = _quantity(lab.value, lab.unit, lab.unit_text)
    if lab.comparator:
        value["comparator"] = lab.comparator
    resource: Resource = {
        "resourceType": "Observation",
        "id": observation_id,
        "status": _observation_status(requires_review),
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
        "code": code,
        "subject": {"reference": patient_ref},
        "valueQuantity": value,
    }
    if lab.low is not None or lab.high is not None:
        reference_range: dict[str, Any] = {}
        if lab.low is not None:
            reference_range["low"] = _quantity(lab.low, lab.unit, lab.unit_text)
        if lab.high is not None:
            reference_range["high"] = _quantity(lab.high, lab.unit, lab.unit_text)
        resource["referenceRange"] = [reference_range]
    if lab.flag is not None:
        resource["interpretation"] = [
            {"coding": [{"system": INTERPRETATION, "code": lab.flag, "display": INTERPRETATION_DISPLAY[lab.flag]}]}
        ]
    return resource


Fact = Diagnosis | Medication | LabResult | Vital | Allergy | Procedure


def fact_resource(
    fact: Fact,
    fact_id: str,
    patient_ref: str,
    *,
    document_type: DocumentType = "unknown",
    medication_resource: Literal["MedicationStatement", "MedicationRequest"] = "MedicationStatement",
) -> Resource:
    """One fact as the resource a Bundle carries it in, mapped as ``build_bundle`` maps it; a lab
    result or vital sign ``final`` (for a fact a person states, such as a reviewer's addition)."""
    if isinstance(fact, Diagnosis):
        return _condition(fact, fact_id, patient_ref, document_type, None)
    if isinstance(fact, Medication):
        if medication_resource == "MedicationRequest":
            return _medication_request(fact, fact_id, patient_ref)
        return _medication_statement(fact, fact_id, patient_ref)
    if isinstance(fact, LabResult):
        observation = _lab(fact, fact_id, patient_ref, requires_review=False)
        if fact.specimen_date:
            observation["effectiveDateTime"] = fact.specimen_date
        return observation
    if isinstance(fact, Vital):
        return _vital(fact, fact_id, patient_ref, requires_review=False)
    if isinstance(fact, Allergy):
        return _allergy_intolerance(fact, fact_id, patient_ref)
    return _procedure(fact, fact_id, patient_ref)


def is_lab_result(resource: Mapping[str, Any]) -> bool:
    """An Observation in the laboratory category (not a vital sign)."""
    return resource["resourceType"] == "Observation" and any(
        c.get("code") == "laboratory" for category in resource.get("category", []) for c in category.get("coding", [])
    )


def _evidence_extension(evidence: Evidence) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "page", "valueInteger": evidence.page},
        {"url": "charStart", "valueInteger": evidence.start},
        {"url": "charEnd", "valueInteger": evidence.end},
        {"url": "ocrConfidence", "valueDecimal": evidence.ocr_confidence},
    ]
    parts.extend({"url": "box", "valueString": f"{b.x0},{b.y0},{b.x1},{b.y1}"} for b in evidence.boxes)
    return {"url": EVIDENCE_EXTENSION, "extension": parts}


def _provenance(
    provenance_id: str, target_ref: str, evidence: Evidence | None, extraction: Extraction, context: BundleContext
) -> Resource:
    engine = f", OCR {context.ocr_engine}" if context.ocr_engine else ""
    entity: dict[str, Any] = {
        "role": "source",
        "what": {"reference": f"DocumentReference/{context.document_reference_id}"},
    }
    if evidence is not None:
        entity["extension"] = [_evidence_extension(evidence)]
    return {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": target_ref}],
        "recorded": context.recorded,
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_AGENT_TYPE, "code": "assembler", "display": "Assembler"}]},
                "who": {"display": f"{context.software} ({extraction.extractor} extractor{engine})"},
            }
        ],
        "entity": [entity],
    }


def _effective(observation: Resource, context: BundleContext, extraction: Extraction) -> Resource:
    """The sender's date for the document, else the date printed on it."""
    when = context.effective or (extraction.document_date.value if extraction.document_date else None)
    if when:
        observation["effectiveDateTime"] = when
    return observation


def _facts(
    extraction: Extraction, patient_ref: str, context: BundleContext
) -> Iterator[tuple[str, Resource, Evidence | None]]:
    """(kind, resource without id, evidence) for every fact that becomes a resource."""
    review = extraction.requires_review
    author = extraction.author.value if extraction.author else None
    if extraction.encounter is not None:
        yield "Encounter", _encounter(extraction.encounter, "", patient_ref), extraction.encounter.evidence
    for diagnosis in extraction.diagnoses:
        if diagnosis.assertion == "hypothetical":
            continue  # "if fever develops": a plan, not a finding
        if diagnosis.assertion == "family":
            yield "FamilyMemberHistory", _family_history(diagnosis, "", patient_ref), diagnosis.evidence
            continue
        condition = _condition(diagnosis, "", patient_ref, extraction.document_type, author)
        yield "Condition", condition, diagnosis.evidence
    for medication in extraction.medications:
        if context.medication_resource == "MedicationRequest":
            yield "MedicationRequest", _medication_request(medication, "", patient_ref), medication.evidence
        else:
            yield "MedicationStatement", _medication_statement(medication, "", patient_ref), medication.evidence
    for vital in extraction.vitals:
        yield "Observation", _effective(_vital(vital, "", patient_ref, review), context, extraction), vital.evidence
    for lab in extraction.labs:
        observation = _effective(_lab(lab, "", patient_ref, review), context, extraction)
        if lab.specimen_date:  # when the sample was taken is when the result holds
            observation["effectiveDateTime"] = lab.specimen_date
        yield "Observation", observation, lab.evidence
    for allergy in extraction.allergies:
        yield "AllergyIntolerance", _allergy_intolerance(allergy, "", patient_ref), allergy.evidence
    for procedure in extraction.procedures:
        yield "Procedure", _procedure(procedure, "", patient_ref), procedure.evidence
    for follow_up in extraction.follow_ups:
        yield "CarePlan", _care_plan(follow_up, "", patient_ref), follow_up.evidence


def _patient_evidence(extraction: Extraction) -> Evidence | None:
    name = extraction.patient.name
    return name.evidence if name is not None else None


def build_bundle(extraction: Extraction, context: BundleContext) -> Resource:
    """A validated ``collection`` Bundle of everything in ``extraction``, each with a Provenance."""
    meta = _review_meta(extraction.requires_review)
    if context.patient is not None:
        patient = {k: v for k, v in context.patient.items() if k != "meta"}
        patient_id = str(patient["id"])
    else:
        patient_id = resource_id(context.id_seed, "Patient", 0)
        patient = _patient(extraction, patient_id, context.mrn_system)
    patient_ref = f"Patient/{patient_id}"
    items: list[tuple[Resource, Evidence | None]] = [(patient, _patient_evidence(extraction))]
    counters: dict[str, int] = {}
    for kind, resource, evidence in _facts(extraction, patient_ref, context):
        counters[kind] = counters.get(kind, 0) + 1
        resource["id"] = resource_id(context.id_seed, kind, counters[kind])
        items.append((resource, evidence))
    lab_results = [f"Observation/{r['id']}" for r, _ in items if is_lab_result(r)]
    if extraction.document_type == "lab-report" and lab_results:
        report_id = resource_id(context.id_seed, "DiagnosticReport", 1)
        items.append(
            (_lab_report(report_id, patient_ref, lab_results, context.recorded, extraction.requires_review), None)
        )

    entries = []
    for index, (resource, evidence) in enumerate(items):
        resource["meta"] = meta
        ref = f"{resource['resourceType']}/{resource['id']}"
        provenance = _provenance(resource_id(context.id_seed, "Provenance", index), ref, evidence, extraction, context)
        for item in (resource, provenance):
            validate_resource(item)
            entries.append(
                {"fullUrl": f"{context.fhir_base_url}/{item['resourceType']}/{item['id']}", "resource": item}
            )
    bundle_meta = dict(meta)
    if extraction.review_reasons:
        # why a person must look: what the review queue shows (codes and PHI-free sentences)
        bundle_meta["extension"] = [
            {
                "url": REVIEW_REASON_EXTENSION,
                "valueCoding": {"system": REVIEW_REASON_SYSTEM, "code": r.code, "display": r.message},
            }
            for r in extraction.review_reasons
        ]
    bundle: Resource = {
        "resourceType": "Bundle",
        "id": context.bundle_id,
        "meta": bundle_meta,
        "type": "collection",
        "timestamp": context.recorded,
        "entry": entries,
    }
    validate_resource(bundle, deep=False)
    return bundle
