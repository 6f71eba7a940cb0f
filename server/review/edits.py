"""A reviewer's decision applied to an extraction Bundle: edits, rejections, additions, Provenance.

Pure functions over FHIR JSON: the HTTP layer collects the decision from the form, the store
writes the result in one transaction. Each changed or added resource gets a Provenance naming
the reviewer (agent type ``verifier``), the previous version as ``entity`` (role ``revision``)
and, per field, what it was and what it became.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import msgspec

from fhir_profiles import FhirValidationError, validate_resource
from fhir_profiles.bundle import (
    EVIDENCE_EXTENSION,
    PAPERCHART_BASE,
    REVIEW_TAG_SYSTEM,
    Fact,
    fact_resource,
    is_lab_result,
)
from fhir_profiles.extraction import Allergy, Coding, Diagnosis, LabResult, Medication, Procedure, Vital
from fhir_profiles.retract import mark_entered_in_error
from server.errors import InvalidRequest
from server.pipeline.extract.rules import lab_codings, read_vital
from terminology.labs import find_lab_test
from terminology.model import UCUM
from terminology.units import normalize_unit

NHS_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
CHANGE_EXTENSION: Final = f"{PAPERCHART_BASE}/StructureDefinition/review-change"
REVIEWED_TAG: Final = {"system": REVIEW_TAG_SYSTEM, "code": "human-reviewed", "display": "Reviewed by a person"}
ASSERTIONS: Final = {"confirmed", "refuted", "provisional", "differential", "unconfirmed"}
_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CODING_PARTS: Final = ("system", "code", "display")


class FieldEdit(msgspec.Struct, frozen=True, kw_only=True):
    reference: str  # "Condition/<id>"
    field: str
    value: str


AddedKind = Literal["Condition", "MedicationStatement", "Observation", "VitalSign", "AllergyIntolerance", "Procedure"]
# what a reviewer may add, and what the page calls each
ADDED_KINDS: Final[dict[str, str]] = {
    "Condition": "Condition",
    "MedicationStatement": "Medication",
    "Observation": "Lab result",
    "VitalSign": "Vital sign",
    "AllergyIntolerance": "Allergy",
    "Procedure": "Procedure",
}


class AddedFinding(msgspec.Struct, frozen=True, kw_only=True):
    kind: AddedKind
    text: str  # what it is called: the condition, medication, test, substance or procedure
    assertion: str = "confirmed"  # a condition's verification status
    value: float | None = None  # a medication's dose, a lab result's or vital sign's value
    diastolic: float | None = None  # a blood pressure's second value ("120/80")
    unit: str | None = None
    codings: tuple[Coding, ...] = ()  # the reviewer's code, else those the lookup is sure of
    page: int | None = None
    box: tuple[float, float, float, float] | None = None  # normalized x0, y0, x1, y1


def parse_code(value: str) -> Coding:
    """A code as the page writes it, ``system|code|display``."""
    system, _, rest = value.strip().partition("|")
    code, _, display = rest.partition("|")
    if not system or not code:
        raise InvalidRequest("code must be system|code|display", expression="code")
    return Coding(system=system, code=code, display=display or None)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    edits: tuple[FieldEdit, ...] = ()
    rejected: tuple[str, ...] = ()
    added: tuple[AddedFinding, ...] = ()


class Reviewer(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    fhir_user: str | None = None


class ReleasePlan(msgspec.Struct, frozen=True, kw_only=True):
    bundle: dict[str, Any]
    resources: list[dict[str, Any]]  # every resource to store as a new version (the Bundle last)
    changed: dict[str, list[tuple[str, str, str]]]  # reference -> (field, was, now)


# --- the editable fields of each resource type: how to read and how to write them -------------

Getter = Callable[[Mapping[str, Any]], str]
Setter = Callable[[dict[str, Any], str], None]


def _dig(resource: Mapping[str, Any], *path: str | int) -> Any:
    value: Any = resource
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: str, field: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise InvalidRequest(f"{field} must be a number", expression=field) from None


def _set_name(patient: dict[str, Any], value: str) -> None:
    parts = value.split()
    name: dict[str, Any] = {"use": "official", "text": value.strip()}
    if parts:
        name["family"] = parts[-1]
        if len(parts) > 1:
            name["given"] = parts[:-1]
    patient["name"] = [name]


def _identifier(patient: Mapping[str, Any], system: str) -> str:
    return next((_text(i.get("value")) for i in patient.get("identifier", []) if i.get("system") == system), "")


def _set_identifier(patient: dict[str, Any], system: str, value: str) -> None:
    others = [i for i in patient.get("identifier", []) if i.get("system") != system]
    patient["identifier"] = [*others, {"system": system, "value": re.sub(r"\s", "", value)}] if value else others


def _set_assertion(condition: dict[str, Any], value: str) -> None:
    if value not in ASSERTIONS:
        raise InvalidRequest(f"assertion must be one of {', '.join(sorted(ASSERTIONS))}", expression="assertion")
    condition["verificationStatus"] = {"coding": [{"system": _VERIFICATION, "code": value}]}


def _set_code(condition: dict[str, Any], value: str) -> None:
    condition.setdefault("code", {})["coding"] = [_coding_json(parse_code(value))]


def _coding_json(coding: Coding) -> dict[str, str]:
    return {k: v for k, v in (("system", coding.system), ("code", coding.code), ("display", coding.display)) if v}


def _dosage_key(medication: Mapping[str, Any]) -> str:
    """MedicationStatement.dosage, MedicationRequest.dosageInstruction: the same Dosage type."""
    return "dosageInstruction" if medication.get("resourceType") == "MedicationRequest" else "dosage"


def _dose_quantity(statement: dict[str, Any]) -> dict[str, Any]:
    dosage = statement.setdefault(_dosage_key(statement), [{}])
    rate = dosage[0].setdefault("doseAndRate", [{}])
    quantity: dict[str, Any] = rate[0].setdefault("doseQuantity", {})
    return quantity


def _set_unit(quantity: dict[str, Any], value: str) -> None:
    ucum = normalize_unit(value)
    quantity.pop("system", None)
    quantity.pop("code", None)
    if ucum:
        quantity.update(unit=ucum, system=UCUM, code=ucum)
    else:
        quantity["unit"] = value.strip()


def _component(observation: dict[str, Any], loinc: str) -> dict[str, Any]:
    for component in observation.get("component", []):
        if any(c.get("code") == loinc for c in component.get("code", {}).get("coding", [])):
            quantity: dict[str, Any] = component.setdefault("valueQuantity", {})
            return quantity
    raise InvalidRequest("this observation has no such component", expression="component")


def _reaction(allergy: dict[str, Any]) -> dict[str, Any]:
    reactions = allergy.setdefault("reaction", [{"manifestation": [{"text": "reaction not stated"}]}])
    reaction: dict[str, Any] = reactions[0]
    return reaction


def _set_severity(allergy: dict[str, Any], value: str) -> None:
    if value not in ("mild", "moderate", "severe"):
        raise InvalidRequest("severity is mild, moderate or severe", expression="severity")
    _reaction(allergy)["severity"] = value


def _set_action(plan: dict[str, Any], value: str) -> None:
    plan["description"] = value
    for activity in plan.get("activity", []):
        activity.setdefault("detail", {})["description"] = value


PARTIAL_DATE: Final = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


def _set_performed(procedure: dict[str, Any], value: str) -> None:
    if not PARTIAL_DATE.fullmatch(value):
        raise InvalidRequest("the date is YYYY, YYYY-MM or YYYY-MM-DD", expression="performedDateTime")
    procedure["performedDateTime"] = value


def _period_setter(end: Literal["start", "end"]) -> Setter:
    """Sets one end of an Encounter's period (empty: removes it); the start stays before the end (per-1)."""

    def setter(encounter: dict[str, Any], value: str) -> None:
        period = encounter.setdefault("period", {})
        if not value:
            period.pop(end, None)
        elif not PARTIAL_DATE.fullmatch(value):
            raise InvalidRequest("the date is YYYY, YYYY-MM or YYYY-MM-DD", expression=f"period.{end}")
        else:
            period[end] = value
        start, finish = period.get("start", ""), period.get("end", "")
        shared = min(len(start), len(finish))
        if shared and start[:shared] > finish[:shared]:
            raise InvalidRequest("the encounter ends before it starts", expression="period")
        if not period:
            encounter.pop("period")

    return setter


def _set_department(encounter: dict[str, Any], value: str) -> None:
    if value:
        encounter["serviceType"] = {"text": value}
    else:
        encounter.pop("serviceType", None)


def _code_text(label: str) -> tuple[str, Getter, Setter]:
    """The field that edits a resource's ``code.text`` (what a condition, allergy or procedure is called)."""
    return label, lambda r: _text(_dig(r, "code", "text")), lambda r, v: r.setdefault("code", {}).__setitem__("text", v)


# the first coding of ``code``, as the page writes it (system|code|display), picked from the type-ahead
_CODE: Final[tuple[str, Getter, Setter]] = (
    "Code",
    lambda r: "|".join(_text(_dig(r, "code", "coding", 0, k)) for k in ("system", "code", "display")).strip("|"),
    _set_code,
)

_MEDICATION_FIELDS: Final[dict[str, tuple[str, Getter, Setter]]] = {
    "name": (
        "Medication",
        lambda r: _text(_dig(r, "medicationCodeableConcept", "text")),
        lambda r, v: r.setdefault("medicationCodeableConcept", {}).__setitem__("text", v),
    ),
    "dose": (
        "Dose",
        lambda r: _text(_dig(r, _dosage_key(r), 0, "doseAndRate", 0, "doseQuantity", "value")),
        lambda r, v: _dose_quantity(r).__setitem__("value", _number(v, "dose")),
    ),
    "unit": (
        "Unit",
        lambda r: _text(_dig(r, _dosage_key(r), 0, "doseAndRate", 0, "doseQuantity", "unit")),
        lambda r, v: _set_unit(_dose_quantity(r), v),
    ),
    "instructions": (
        "Instructions",
        lambda r: _text(_dig(r, _dosage_key(r), 0, "text")),
        lambda r, v: r.setdefault(_dosage_key(r), [{}])[0].__setitem__("text", v),
    ),
}


FIELDS: Final[dict[str, dict[str, tuple[str, Getter, Setter]]]] = {
    "Patient": {
        "name": ("Name", lambda r: _text(_dig(r, "name", 0, "text")), _set_name),
        "birthDate": ("Date of birth", lambda r: _text(r.get("birthDate")), lambda r, v: r.__setitem__("birthDate", v)),
        "gender": ("Sex", lambda r: _text(r.get("gender")), lambda r, v: r.__setitem__("gender", v)),
        "nhsNumber": (
            "NHS number",
            lambda r: _identifier(r, NHS_SYSTEM),
            lambda r, v: _set_identifier(r, NHS_SYSTEM, v),
        ),
    },
    "Condition": {
        "text": _code_text("Condition"),
        "code": _CODE,
        "assertion": ("Assertion", lambda r: _text(_dig(r, "verificationStatus", "coding", 0, "code")), _set_assertion),
    },
    "MedicationStatement": _MEDICATION_FIELDS,
    "MedicationRequest": _MEDICATION_FIELDS,
    "Observation": {
        "code": _CODE,  # a lab result's; a vital sign's is fixed by its kind
        "value": (
            "Value",
            lambda r: _text(_dig(r, "valueQuantity", "value")),
            lambda r, v: r.setdefault("valueQuantity", {}).__setitem__("value", _number(v, "value")),
        ),
        "unit": (
            "Unit",
            lambda r: _text(_dig(r, "valueQuantity", "unit")),
            lambda r, v: _set_unit(r.setdefault("valueQuantity", {}), v),
        ),
        "systolic": (
            "Systolic",
            lambda r: next(
                (_text(c["valueQuantity"].get("value")) for c in r.get("component", []) if _is(c, "8480-6")), ""
            ),
            lambda r, v: _component(r, "8480-6").__setitem__("value", _number(v, "systolic")),
        ),
        "diastolic": (
            "Diastolic",
            lambda r: next(
                (_text(c["valueQuantity"].get("value")) for c in r.get("component", []) if _is(c, "8462-4")), ""
            ),
            lambda r, v: _component(r, "8462-4").__setitem__("value", _number(v, "diastolic")),
        ),
    },
    "AllergyIntolerance": {
        "substance": _code_text("Substance"),
        "code": _CODE,
        "reaction": (
            "Reaction",
            lambda r: _text(_dig(r, "reaction", 0, "manifestation", 0, "text")),
            lambda r, v: _reaction(r).__setitem__("manifestation", [{"text": v}]),
        ),
        "severity": ("Severity", lambda r: _text(_dig(r, "reaction", 0, "severity")), _set_severity),
    },
    "Procedure": {
        "text": _code_text("Procedure"),
        "code": _CODE,
        "date": ("Date", lambda r: _text(r.get("performedDateTime")), _set_performed),
    },
    "CarePlan": {
        "action": ("Follow-up", lambda r: _text(r.get("description")), _set_action),
    },
    "Encounter": {
        "start": ("Start", lambda r: _text(_dig(r, "period", "start")), _period_setter("start")),
        "end": ("End", lambda r: _text(_dig(r, "period", "end")), _period_setter("end")),
        "department": ("Department", lambda r: _text(_dig(r, "serviceType", "text")), _set_department),
    },
    "FamilyMemberHistory": {
        "condition": (
            "Condition",
            lambda r: _text(_dig(r, "condition", 0, "code", "text")),
            lambda r, v: r.setdefault("condition", [{}])[0].setdefault("code", {}).__setitem__("text", v),
        ),
    },
}


def _is(component: Mapping[str, Any], loinc: str) -> bool:
    return loinc in _codes(component)


_NONE_KNOWN_CODES: Final = frozenset({"409137002", "716186003"})  # no known (drug) allergy


def _codes(resource: Mapping[str, Any]) -> set[str]:
    return {str(c.get("code")) for c in resource.get("code", {}).get("coding", [])}


def fields_of(resource: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(field, label, current value) of every editable field the resource has."""
    kind = str(resource.get("resourceType"))
    out = []
    for field, (label, getter, _) in FIELDS.get(kind, {}).items():
        value = getter(resource)
        if kind == "Observation" and field in ("systolic", "diastolic") and not resource.get("component"):
            continue
        if kind == "Observation" and field in ("value", "unit") and resource.get("component"):
            continue
        if kind == "Observation" and field == "code" and not is_lab_result(resource):
            continue
        if kind == "AllergyIntolerance" and field == "code" and _NONE_KNOWN_CODES & _codes(resource):
            continue  # "no known allergies" has its fixed code
        out.append((field, label, value))
    return out


# --- applying a decision -----------------------------------------------------------------------


def _tag_reviewed(resource: dict[str, Any]) -> None:
    meta = resource.setdefault("meta", {})
    tags = [t for t in meta.get("tag", []) if t.get("system") != REVIEW_TAG_SYSTEM]
    meta["tag"] = [*tags, dict(REVIEWED_TAG)]
    meta.pop("extension", None)  # review reasons are answered
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)


def _provenance(
    reference: str,
    previous_version: int | None,
    changes: list[tuple[str, str, str]],
    reviewer: Reviewer,
    recorded: str,
    document_reference: str | None,
    added: AddedFinding | None = None,
) -> dict[str, Any]:
    who: dict[str, Any] = {"display": reviewer.username}
    if reviewer.fhir_user:
        who["reference"] = reviewer.fhir_user
    entity: list[dict[str, Any]] = []
    if previous_version is not None:
        entity.append(
            {
                "role": "revision",
                "what": {"reference": f"{reference}/_history/{previous_version}"},
                "extension": [
                    {
                        "url": CHANGE_EXTENSION,
                        "extension": [
                            {"url": "field", "valueString": field},
                            *([{"url": "was", "valueString": was}] if was else []),
                            *([{"url": "now", "valueString": now}] if now else []),
                        ],
                    }
                    for field, was, now in changes
                ],
            }
        )
    if added is not None and document_reference is not None:
        source: dict[str, Any] = {"role": "source", "what": {"reference": document_reference}}
        if added.page is not None and added.box is not None:
            x0, y0, x1, y1 = added.box
            source["extension"] = [
                {
                    "url": EVIDENCE_EXTENSION,
                    "extension": [
                        {"url": "page", "valueInteger": added.page},
                        {"url": "box", "valueString": f"{x0:.4f},{y0:.4f},{x1:.4f},{y1:.4f}"},
                    ],
                }
            ]
        entity.append(source)
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": str(uuid.uuid4()),
        "target": [{"reference": reference}],
        "recorded": recorded,
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE" if added is not None else "UPDATE",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "verifier",
                            "display": "Verifier",
                        }
                    ]
                },
                "who": who,
            }
        ],
    }
    if entity:
        provenance["entity"] = entity
    return provenance


def added_type(finding: AddedFinding, medication_resource: str = "MedicationStatement") -> str:
    """The resource type an added finding becomes (a medication as the deployment files them)."""
    if finding.kind == "VitalSign":
        return "Observation"
    return medication_resource if finding.kind == "MedicationStatement" else finding.kind


def _siblings(resources: Mapping[str, Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [r for r in resources.values() if r["resourceType"] == kind and r.get("status") != "entered-in-error"]


def _new_finding(
    finding: AddedFinding,
    patient_reference: str,
    resources: Mapping[str, Mapping[str, Any]],
    medication_resource: Literal["MedicationStatement", "MedicationRequest"],
) -> dict[str, Any]:
    """The resource for a finding the reviewer adds, mapped as the pipeline maps one it extracts,
    beside ``resources`` (the Bundle's others, whose categories and dates it follows)."""
    text = finding.text.strip()
    new_id = str(uuid.uuid4())
    fact: Fact
    dates = [o["effectiveDateTime"] for o in _siblings(resources, "Observation") if "effectiveDateTime" in o]
    if finding.kind == "Condition":
        fact = Diagnosis(text=text, assertion="negated" if finding.assertion == "refuted" else "present")
    elif finding.kind == "MedicationStatement":
        fact = Medication(name=text, text=text, dose_value=finding.value)
    elif finding.kind == "Observation":
        if finding.value is None:
            raise InvalidRequest("an added lab result needs its value", expression="value")
        ucum = normalize_unit(finding.unit) if finding.unit else None
        codings = finding.codings
        if not codings and (hit := find_lab_test(text, ucum)) is not None:
            codings = lab_codings(hit[0])  # as the rules extractor codes a result it reads
        fact = LabResult(
            test=text,
            value=finding.value,
            unit=ucum,
            unit_text=finding.unit,
            specimen_date=dates[0] if dates else None,  # the same sample as the report's other results
            codings=codings,
        )
    elif finding.kind == "VitalSign":
        fact = _new_vital(finding, text)
    elif finding.kind == "AllergyIntolerance":
        fact = Allergy(substance=text)
    else:
        fact = Procedure(text=text)
    if not isinstance(fact, LabResult | Vital):
        fact = msgspec.structs.replace(fact, codings=finding.codings)
    resource = fact_resource(fact, new_id, patient_reference, medication_resource=medication_resource)
    if isinstance(fact, Vital) and dates:  # taken at the visit the document's other observations record
        resource["effectiveDateTime"] = dates[0]
    if finding.kind == "Condition":
        _set_assertion(resource, finding.assertion)
        problems = [c["category"] for c in _siblings(resources, "Condition") if "category" in c]
        if problems and finding.assertion != "refuted":  # on the problem list if the document's others are
            resource["category"] = copy.deepcopy(problems[0])
    if finding.kind == "MedicationStatement" and finding.value is not None and finding.unit:
        _set_unit(_dose_quantity(resource), finding.unit)  # a unit UCUM lacks is kept as written
    return resource


def _new_vital(finding: AddedFinding, text: str) -> Vital:
    """A vital sign the reviewer adds, read as the rules extractor reads one on a page: its name,
    value and unit make the line ("Pulse" 88 → "Pulse 88"; "BP" 120/80 mmHg)."""
    if finding.value is None:
        raise InvalidRequest("an added vital sign needs its value", expression="value")
    line = f"{text} {finding.value:g}" + (f"/{finding.diastolic:g}" if finding.diastolic is not None else "")
    vital = read_vital(f"{line} {finding.unit or ''}".strip())
    if vital is None:
        raise InvalidRequest(
            "not a vital sign paperchart reads: say pulse, blood pressure (value 120/80), respiratory rate,"
            " temperature, SpO2 (unit %), weight (kg or lb), height (cm or m) or BMI",
            expression="text",
        )
    return vital


def _finalise(resources: Mapping[str, dict[str, Any]], changed: dict[str, list[tuple[str, str, str]]]) -> None:
    """Results a person has now checked are no longer preliminary (FHIR ObservationStatus and
    DiagnosticReportStatus): ``preliminary`` becomes ``final``; a ``final`` one changed in this
    review becomes ``amended`` (a report given only more results, ``appended``)."""
    for reference, resource in resources.items():
        if resource["resourceType"] not in ("Observation", "DiagnosticReport"):
            continue
        was = resource.get("status")
        if was == "preliminary":
            now = "final"
        elif was == "final" and reference in changed:
            only_results = all(field == "result" for field, _, _ in changed[reference])
            now = "appended" if only_results and resource["resourceType"] == "DiagnosticReport" else "amended"
        else:
            continue
        resource["status"] = now
        changed.setdefault(reference, []).append(("status", was, now))


def apply_decision(
    bundle: Mapping[str, Any],
    decision: Decision,
    reviewer: Reviewer,
    versions: Mapping[str, int],
    recorded: str,
    fhir_base_url: str,
    medication_resource: Literal["MedicationStatement", "MedicationRequest"] = "MedicationStatement",
) -> ReleasePlan:
    """The released Bundle and the resources to store; ``versions``: current version of each entry.

    Releasing is what makes the Bundle's results final: preliminary Observations and
    DiagnosticReports become ``final`` (see ``_finalise``)."""
    released = copy.deepcopy(dict(bundle))
    entries: list[dict[str, Any]] = released.get("entry", [])
    by_reference = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
        for e in entries
        if e["resource"]["resourceType"] != "Provenance"
    }
    changed: dict[str, list[tuple[str, str, str]]] = {}
    for edit in decision.edits:
        resource = by_reference.get(edit.reference)
        kind = edit.reference.split("/", 1)[0]
        spec = FIELDS.get(kind, {}).get(edit.field)
        if resource is None or spec is None:
            raise InvalidRequest("an edit names a field this document does not have", expression=edit.field)
        _, getter, setter = spec
        was = getter(resource)
        if was == edit.value.strip():
            continue
        setter(resource, edit.value.strip())
        changed.setdefault(edit.reference, []).append((edit.field, was, getter(resource)))
    for reference in decision.rejected:
        resource = by_reference.get(reference)
        if resource is None:
            raise InvalidRequest("a rejection names a resource this document does not have")
        mark_entered_in_error(resource)
        changed.setdefault(reference, []).append(("status", "", "entered-in-error"))

    patient_reference = next((r for r in by_reference if r.startswith("Patient/")), None)
    document_reference = next(
        (
            entity["what"]["reference"]
            for e in entries
            if e["resource"]["resourceType"] == "Provenance"
            for entity in e["resource"].get("entity", [])
            if entity.get("what", {}).get("reference", "").startswith("DocumentReference/")
        ),
        None,
    )
    report = next((r for r in by_reference if r.startswith("DiagnosticReport/")), None)
    provenances = []
    added: dict[str, AddedFinding] = {}
    for finding in decision.added:
        if not finding.text.strip():
            raise InvalidRequest("an added finding needs its text", expression="text")
        if patient_reference is None:
            raise InvalidRequest("this document's Bundle names no patient to add a finding to")
        resource = _new_finding(finding, patient_reference, by_reference, medication_resource)
        reference = f"{resource['resourceType']}/{resource['id']}"
        if report is not None and finding.kind == "Observation":  # a lab report's results are its report's
            by_reference[report].setdefault("result", []).append({"reference": reference})
            changed.setdefault(report, []).append(("result", "", reference))
        by_reference[reference] = resource
        added[reference] = finding
        entries.append({"fullUrl": f"{fhir_base_url}/{reference}", "resource": resource})
        provenances.append(_provenance(reference, None, [], reviewer, recorded, document_reference, finding))
    _finalise({r: v for r, v in by_reference.items() if r not in added}, changed)
    for reference, changes in changed.items():
        provenances.append(
            _provenance(reference, versions.get(reference), changes, reviewer, recorded, document_reference)
        )
    for reference, finding in added.items():
        changed[reference] = [("added", "", finding.text.strip())]

    for resource in by_reference.values():
        _tag_reviewed(resource)
    for provenance in provenances:
        entries.append({"fullUrl": f"{fhir_base_url}/Provenance/{provenance['id']}", "resource": provenance})
    _tag_reviewed(released)
    try:
        for resource in [*by_reference.values(), *provenances]:
            validate_resource(resource)
        validate_resource(released, deep=False)
    except FhirValidationError as exc:
        raise InvalidRequest("the corrected values are not valid FHIR", diagnostics="; ".join(exc.problems)) from None
    resources = [*by_reference.values(), *provenances, released]
    return ReleasePlan(bundle=released, resources=resources, changed=changed)
