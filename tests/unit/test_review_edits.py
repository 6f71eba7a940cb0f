"""A reviewer's decision applied to a real extraction Bundle: results made final on release, and
findings of every kind added, mapped and coded as the pipeline maps and codes extracted ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fhir_profiles import BundleContext, build_bundle
from fhir_profiles.extraction import (
    Diagnosis,
    Encounter,
    Extraction,
    LabResult,
    Medication,
    PatientFacts,
    ReviewReason,
    TextFact,
)
from server.errors import InvalidRequest
from server.review.edits import AddedFinding, Decision, FieldEdit, Reviewer, apply_decision, parse_code
from server.review.service import code_additions
from terminology import TerminologyService
from terminology.embed import MiniLmEmbedder

BASE = "http://example.test/fhir"
REVIEWER = Reviewer(username="reviewer", fhir_user="Practitioner/rev-1")
RECORDED = "2026-12-06T09:00:00.000Z"


def lab_report(flagged: bool = True, document_type: Any = "lab-report") -> dict[str, Any]:
    """A lab report's Bundle as the pipeline makes it: a preliminary DiagnosticReport when flagged."""
    extraction = Extraction(
        document_type=document_type,
        document_date=TextFact(value="2026-11-30"),
        patient=PatientFacts(name=TextFact(value="Jane Smith"), given=("Jane",), family="Smith"),
        diagnoses=(Diagnosis(text="Essential hypertension"),),
        medications=(Medication(name="Metformin", text="Metformin 500 mg", dose_value=500, dose_unit="mg"),),
        labs=(
            LabResult(test="Sodium", value=139, unit="mmol/L"),
            LabResult(test="Creatinine", value=88, unit="umol/L"),
        ),
        review_reasons=(ReviewReason(code="low-ocr-confidence", message="Part of a page was hard to read."),)
        if flagged
        else (),
    )
    context = BundleContext(
        bundle_id="b-1",
        id_seed="job-1",
        document_reference_id="doc-1",
        fhir_base_url=BASE,
        recorded="2026-12-01T10:00:00.000Z",
        software="paperchart test",
    )
    return build_bundle(extraction, context)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


NOTHING = Decision()


def release(bundle: dict[str, Any], decision: Decision = NOTHING, **options: Any) -> dict[str, Any]:
    versions = {f"{e['resource']['resourceType']}/{e['resource']['id']}": 1 for e in bundle["entry"]}
    return apply_decision(bundle, decision, REVIEWER, versions, RECORDED, BASE, **options).bundle


def status_changes(bundle: dict[str, Any], reference: str) -> list[tuple[str, str]]:
    """(was, now) of each status change a Provenance in ``bundle`` records for ``reference``."""
    found = []
    for provenance in resources(bundle, "Provenance"):
        if provenance["target"] != [{"reference": reference}]:
            continue
        for entity in provenance.get("entity", []):
            for change in entity.get("extension", []):
                parts = {p["url"]: p.get("valueString") for p in change.get("extension", [])}
                if parts.get("field") == "status":
                    found.append((parts.get("was", ""), parts.get("now", "")))
    return found


def test_releasing_makes_the_results_final() -> None:
    bundle = lab_report()
    assert {o["status"] for o in resources(bundle, "Observation")} == {"preliminary"}
    released = release(bundle)
    report = resources(released, "DiagnosticReport")[0]
    assert report["status"] == "final"
    assert {o["status"] for o in resources(released, "Observation")} == {"final"}
    # the reviewer's Provenance says what the release changed
    assert status_changes(released, f"DiagnosticReport/{report['id']}") == [("preliminary", "final")]

    # released again: unchanged results stay final; an edited one is amended
    sodium = resources(released, "Observation")[0]
    again = release(
        released, Decision(edits=(FieldEdit(reference=f"Observation/{sodium['id']}", field="value", value="141"),))
    )
    by_id = {o["id"]: o for o in resources(again, "Observation")}
    assert by_id[sodium["id"]]["status"] == "amended" and by_id[sodium["id"]]["valueQuantity"]["value"] == 141
    assert [o["status"] for i, o in by_id.items() if i != sodium["id"]] == ["final"]


def test_a_rejected_result_stays_entered_in_error() -> None:
    bundle = lab_report()
    creatinine = resources(bundle, "Observation")[1]
    released = release(bundle, Decision(rejected=(f"Observation/{creatinine['id']}",)))
    statuses = {o["id"]: o["status"] for o in resources(released, "Observation")}
    assert statuses[creatinine["id"]] == "entered-in-error"
    assert list(statuses.values()).count("final") == 1


def test_an_added_lab_result_is_coded_dated_and_joins_the_report() -> None:
    finding = AddedFinding(
        kind="Observation", text="Potassium", value=5.1, unit="mmol/l", page=1, box=(0.1, 0.5, 0.4, 0.52)
    )
    released = release(lab_report(), Decision(added=(finding,)))
    potassium = next(o for o in resources(released, "Observation") if o["code"]["text"] == "Potassium")
    assert potassium["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "2823-3",
        "display": "Potassium [Moles/volume] in Serum or Plasma",
    }
    assert potassium["valueQuantity"]["code"] == "mmol/L" and potassium["valueQuantity"]["value"] == 5.1
    assert potassium["status"] == "final"
    assert potassium["category"][0]["coding"][0]["code"] == "laboratory"
    assert potassium["effectiveDateTime"] == resources(released, "Observation")[0]["effectiveDateTime"]
    assert potassium["subject"] == resources(released, "Observation")[0]["subject"]
    report = resources(released, "DiagnosticReport")[0]
    assert {"reference": f"Observation/{potassium['id']}"} in report["result"] and len(report["result"]) == 3
    assert report["status"] == "final"

    # a report already final is appended to, not amended
    more = AddedFinding(kind="Observation", text="Urea", value=6.2, unit="mmol/L")
    appended = release(released, Decision(added=(more,)))
    assert resources(appended, "DiagnosticReport")[0]["status"] == "appended"


def test_an_added_lab_result_needs_its_value() -> None:
    with pytest.raises(InvalidRequest, match="value"):
        release(lab_report(), Decision(added=(AddedFinding(kind="Observation", text="Potassium"),)))


def test_added_allergy_procedure_and_coded_condition_are_valid_fhir() -> None:
    added = (
        AddedFinding(kind="AllergyIntolerance", text="Penicillin"),
        AddedFinding(kind="Procedure", text="Appendectomy"),
        AddedFinding(
            kind="Condition",
            text="AF",
            codings=(parse_code("http://hl7.org/fhir/sid/icd-10-cm|I48.91|Unspecified atrial fibrillation"),),
        ),
    )
    released = release(lab_report(), Decision(added=added))  # apply_decision validates each resource
    allergy = resources(released, "AllergyIntolerance")[0]
    assert allergy["code"] == {"text": "Penicillin"} and allergy["clinicalStatus"]["coding"][0]["code"] == "active"
    assert allergy["patient"]["reference"].startswith("Patient/")
    assert resources(released, "Procedure")[0]["status"] == "completed"
    condition = next(c for c in resources(released, "Condition") if c["code"]["text"] == "AF")
    assert condition["code"]["coding"] == [
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I48.91", "display": "Unspecified atrial fibrillation"}
    ]
    assert condition["clinicalStatus"]["coding"][0]["code"] == "active"
    assert condition["verificationStatus"]["coding"][0]["code"] == "confirmed"
    # in the category of the document's other conditions
    assert condition["category"] == resources(released, "Condition")[0]["category"]
    with pytest.raises(InvalidRequest, match="system\\|code\\|display"):
        parse_code("I48.91")


def test_an_added_medication_is_filed_as_the_deployment_files_them() -> None:
    finding = AddedFinding(kind="MedicationStatement", text="Ramipril", value=5, unit="mg")
    released = release(lab_report(), Decision(added=(finding,)), medication_resource="MedicationRequest")
    request = next(
        r for r in resources(released, "MedicationRequest") if r["medicationCodeableConcept"]["text"] == "Ramipril"
    )
    assert request["intent"] == "order" and request["reportedBoolean"] is True
    assert request["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["code"] == "mg"


@pytest.fixture(scope="module")
def service(terminology_index: Path, embedder: MiniLmEmbedder) -> TerminologyService:
    return TerminologyService(terminology_index, embedder)


def test_additions_are_coded_as_the_pipeline_codes_mentions(service: TerminologyService) -> None:
    given = parse_code("http://snomed.info/sct|49436004|Atrial fibrillation")
    decision = Decision(
        added=(
            AddedFinding(kind="Condition", text="Atrial fibrillation"),
            AddedFinding(kind="Condition", text="AF", codings=(given,)),  # the reviewer's code stands
            AddedFinding(kind="MedicationStatement", text="metformin"),
            AddedFinding(kind="Condition", text="zzqx florp"),  # nothing sure: left for the reviewer
            AddedFinding(kind="Observation", text="Potassium", value=4.0),  # coded from the LOINC table
        )
    )
    coded = code_additions(decision, service, threshold=0.8).added
    assert {(c.system, c.code) for c in coded[0].codings} == {
        ("http://hl7.org/fhir/sid/icd-10-cm", "I48.91"),
        ("http://snomed.info/sct", "49436004"),
    }
    assert coded[1].codings == (given,)
    assert [c.code for c in coded[2].codings] == ["109081006"]  # SNOMED CT until RxNorm is imported
    assert coded[3].codings == () and coded[4].codings == ()
    assert code_additions(decision, None, threshold=0.8) == decision  # no index: nothing coded


def test_an_encounter_and_a_family_history_are_edited_or_rejected_like_the_rest() -> None:
    extraction = Extraction(
        document_type="discharge-summary",
        patient=PatientFacts(name=TextFact(value="Jane Smith")),
        encounter=Encounter(kind="inpatient", start="2026-11-20", end="2026-11-25", department="Ward 7"),
        diagnoses=(
            Diagnosis(text="breast cancer", assertion="family", relative="mother"),
            Diagnosis(text="stroke", assertion="family", relative="father"),
        ),
    )
    context = BundleContext(
        bundle_id="b-2",
        id_seed="job-2",
        document_reference_id="doc-2",
        fhir_base_url=BASE,
        recorded=RECORDED,
        software="t",
    )
    bundle = build_bundle(extraction, context)
    encounter = resources(bundle, "Encounter")[0]
    mother, father = resources(bundle, "FamilyMemberHistory")
    enc, fmh = f"Encounter/{encounter['id']}", f"FamilyMemberHistory/{mother['id']}"
    released = release(
        bundle,
        Decision(
            edits=(
                FieldEdit(reference=enc, field="start", value="2026-11-21"),
                FieldEdit(reference=enc, field="department", value="Cardiology"),
                FieldEdit(reference=fmh, field="condition", value="ovarian cancer"),
            ),
            rejected=(f"FamilyMemberHistory/{father['id']}",),
        ),
    )
    edited = resources(released, "Encounter")[0]
    assert edited["period"] == {"start": "2026-11-21", "end": "2026-11-25"}
    assert edited["serviceType"] == {"text": "Cardiology"}
    histories = {h["id"]: h for h in resources(released, "FamilyMemberHistory")}
    assert histories[mother["id"]]["condition"][0]["code"]["text"] == "ovarian cancer"
    assert histories[father["id"]]["status"] == "entered-in-error"

    for value, problem in (("26/11/2026", "YYYY"), ("2026-11-30", "ends before it starts")):
        with pytest.raises(InvalidRequest, match=problem):
            release(bundle, Decision(edits=(FieldEdit(reference=enc, field="start", value=value),)))


def test_an_added_vital_sign_is_read_as_the_extractor_reads_one() -> None:
    added = (
        AddedFinding(kind="VitalSign", text="Pulse", value=88),
        AddedFinding(kind="VitalSign", text="BP", value=130, diastolic=85, unit="mmHg"),
        AddedFinding(kind="VitalSign", text="Temp", value=100.4, unit="F"),
    )
    released = release(lab_report(), Decision(added=added))
    vitals = [o for o in resources(released, "Observation") if o["category"][0]["coding"][0]["code"] == "vital-signs"]
    by_code = {o["code"]["coding"][0]["code"]: o for o in vitals}
    assert by_code["8867-4"]["valueQuantity"]["value"] == 88 and by_code["8867-4"]["valueQuantity"]["code"] == "/min"
    pressure = [c["valueQuantity"]["value"] for c in by_code["85354-9"]["component"]]
    assert pressure == [130, 85]
    assert by_code["8310-5"]["valueQuantity"]["code"] == "[degF]"
    assert {o["status"] for o in vitals} == {"final"}
    assert {o["effectiveDateTime"] for o in vitals} == {resources(released, "Observation")[0]["effectiveDateTime"]}
    report = resources(released, "DiagnosticReport")[0]
    assert len(report["result"]) == 2  # a vital sign is no lab result of the report

    for finding, problem in (
        (AddedFinding(kind="VitalSign", text="Mood", value=5), "not a vital sign"),
        (AddedFinding(kind="VitalSign", text="Weight", value=70), "not a vital sign"),  # kg or lb?
        (AddedFinding(kind="VitalSign", text="Pulse"), "needs its value"),
    ):
        with pytest.raises(InvalidRequest, match=problem):
            release(lab_report(), Decision(added=(finding,)))


def test_a_lab_result_allergy_or_procedure_is_given_a_code_by_the_reviewer() -> None:
    from server.review.edits import fields_of

    bundle = release(lab_report(), Decision(added=(AddedFinding(kind="VitalSign", text="Pulse", value=70),)))
    sodium = resources(bundle, "Observation")[0]
    pulse = next(o for o in resources(bundle, "Observation") if o["code"].get("text") == "Heart rate")
    assert "code" in [name for name, _, _ in fields_of(sodium)]
    assert "code" not in [name for name, _, _ in fields_of(pulse)]  # a vital sign's code is its kind's
    nkda = {"resourceType": "AllergyIntolerance", "code": {"coding": [{"code": "409137002"}]}}
    assert "code" not in [name for name, _, _ in fields_of(nkda)]
    potassium = "http://loinc.org|2823-3|Potassium [Moles/volume] in Serum or Plasma"
    edited = release(
        bundle, Decision(edits=(FieldEdit(reference=f"Observation/{sodium['id']}", field="code", value=potassium),))
    )
    recoded = next(o for o in resources(edited, "Observation") if o["id"] == sodium["id"])
    assert recoded["code"]["coding"] == [
        {"system": "http://loinc.org", "code": "2823-3", "display": "Potassium [Moles/volume] in Serum or Plasma"}
    ]
    assert recoded["status"] == "amended"
