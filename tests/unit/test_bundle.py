"""Extraction → FHIR Bundle: valid R4, the right codes and units, a Provenance per resource."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from fhir.resources.R4B.bundle import Bundle

from fhir_profiles import BundleContext, FhirValidationError, build_bundle, validate_resource
from fhir_profiles.bundle import EVIDENCE_EXTENSION, REVIEW_TAG_SYSTEM
from fhir_profiles.extraction import (
    Allergy,
    Box,
    Coding,
    Diagnosis,
    Evidence,
    Extraction,
    FollowUp,
    Identifier,
    LabResult,
    Medication,
    PatientFacts,
    Procedure,
    ReviewReason,
    TextFact,
    Timing,
    Vital,
)

EVIDENCE = Evidence(
    page=2,
    start=10,
    end=25,
    text="Metformin 500 mg",
    boxes=(Box(x0=0.1, y0=0.2, x1=0.3, y1=0.22),),
    ocr_confidence=0.97,
)
CONTEXT = BundleContext(
    bundle_id="b-1",
    id_seed="job-1",
    document_reference_id="doc-1",
    fhir_base_url="http://example.test/fhir",
    recorded="2026-11-23T10:00:00.000Z",
    software="paperchart 0.1.0",
    ocr_engine="rapidocr-ppocr",
)


def extraction(**extra: Any) -> Extraction:
    return Extraction(
        document_type="clinic-letter",
        patient=PatientFacts(
            name=TextFact(value="Jane Smith", evidence=EVIDENCE),
            given=("Jane",),
            family="Smith",
            birth_date=TextFact(value="1956-03-14"),
            sex=TextFact(value="female"),
            identifiers=(Identifier(kind="nhs", value="9434765919"), Identifier(kind="mrn", value="MRN1234567")),
        ),
        diagnoses=(
            Diagnosis(text="Essential hypertension", evidence=EVIDENCE),
            Diagnosis(text="chest pain", assertion="negated"),
        ),
        medications=(
            Medication(
                name="Metformin",
                text="Metformin 500 mg PO BID",
                dose_value=500,
                dose_unit="mg",
                route="oral",
                timing=Timing(frequency=2, period=1, period_unit="d", code="BID"),
                evidence=EVIDENCE,
            ),
        ),
        vitals=(
            Vital(kind="blood_pressure", value=142, diastolic=88, unit="mm[Hg]"),
            Vital(kind="heart_rate", value=72, unit="/min"),
        ),
        labs=(LabResult(test="Haemoglobin", value=112, unit="g/L", unit_text="g/L", low=130, high=180, flag="L"),),
        **extra,
    )


def by_type(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def test_bundle_is_valid_r4_and_round_trips() -> None:
    bundle = build_bundle(extraction(), CONTEXT)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection" and parsed.id == "b-1"
    assert all(e["fullUrl"].startswith("http://example.test/fhir/") for e in bundle["entry"])


def test_patient_identifiers_and_name() -> None:
    patient = by_type(build_bundle(extraction(), CONTEXT), "Patient")[0]
    assert patient["name"][0] == {"use": "official", "text": "Jane Smith", "family": "Smith", "given": ["Jane"]}
    assert {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"} in patient["identifier"]
    mrn = next(i for i in patient["identifier"] if i.get("type"))
    assert mrn["type"]["coding"][0]["code"] == "MR" and mrn["value"] == "MRN1234567"
    assert (patient["gender"], patient["birthDate"]) == ("female", "1956-03-14")


def test_conditions_follow_assertions() -> None:
    conditions = {c["code"]["text"]: c for c in by_type(build_bundle(extraction(), CONTEXT), "Condition")}
    present, refuted = conditions["Essential hypertension"], conditions["chest pain"]
    assert present["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert present["clinicalStatus"]["coding"][0]["code"] == "active"
    assert refuted["verificationStatus"]["coding"][0]["code"] == "refuted"
    assert "clinicalStatus" not in refuted


def test_medication_dosage() -> None:
    statement = by_type(build_bundle(extraction(), CONTEXT), "MedicationStatement")[0]
    dosage = statement["dosage"][0]
    assert statement["medicationCodeableConcept"]["text"] == "Metformin"
    assert dosage["timing"]["repeat"] == {"frequency": 2, "period": 1.0, "periodUnit": "d"}
    assert dosage["route"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "26643006",
        "display": "Oral route",
    }
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 500,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }


def test_observations_vitals_and_labs() -> None:
    observations = by_type(build_bundle(extraction(), CONTEXT), "Observation")
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations if "coding" in o["code"]}
    bp = by_code["85354-9"]
    components = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in bp["component"]}
    assert components == {"8480-6": 142, "8462-4": 88}
    assert by_code["8867-4"]["valueQuantity"]["code"] == "/min"
    lab = next(o for o in observations if o["code"]["text"] == "Haemoglobin")
    assert lab["valueQuantity"]["value"] == 112
    assert lab["referenceRange"][0]["low"]["value"] == 130
    assert lab["interpretation"][0]["coding"][0]["code"] == "L"
    assert lab["category"][0]["coding"][0]["code"] == "laboratory"


def test_every_resource_has_a_provenance_pointing_at_the_page() -> None:
    bundle = build_bundle(extraction(), CONTEXT)
    provenances = by_type(bundle, "Provenance")
    targets = {p["target"][0]["reference"] for p in provenances}
    others = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
        if e["resource"]["resourceType"] != "Provenance"
    }
    assert targets == others
    medication = by_type(bundle, "MedicationStatement")[0]
    provenance = next(p for p in provenances if p["target"][0]["reference"].endswith(medication["id"]))
    entity = provenance["entity"][0]
    assert entity["what"]["reference"] == "DocumentReference/doc-1"
    evidence = {e["url"]: e for e in entity["extension"][0]["extension"]}
    assert entity["extension"][0]["url"] == EVIDENCE_EXTENSION
    assert evidence["page"]["valueInteger"] == 2
    assert evidence["box"]["valueString"] == "0.1,0.2,0.3,0.22"
    assert "rules extractor" in provenance["agent"][0]["who"]["display"]


def test_ids_are_stable_for_a_job_so_reruns_replace() -> None:
    first = [e["resource"]["id"] for e in build_bundle(extraction(), CONTEXT)["entry"]]
    second = [e["resource"]["id"] for e in build_bundle(extraction(), CONTEXT)["entry"]]
    assert first == second and len(set(first)) == len(first)


def test_review_flag_is_a_tag_and_makes_observations_preliminary() -> None:
    flagged = extraction(review_reasons=(ReviewReason(code="low-ocr-confidence", message="..."),))
    bundle = build_bundle(flagged, CONTEXT)
    assert bundle["meta"]["tag"][0] == {
        "system": REVIEW_TAG_SYSTEM,
        "code": "requires-review",
        "display": "Requires human review",
    }
    assert {o["status"] for o in by_type(bundle, "Observation")} == {"preliminary"}
    clean = build_bundle(extraction(), CONTEXT)
    assert {o["status"] for o in by_type(clean, "Observation")} == {"final"}


def test_invalid_fhir_is_refused() -> None:
    with pytest.raises(FhirValidationError) as caught:
        validate_resource({"resourceType": "Patient", "gender": "sometimes"})
    assert "gender" in str(caught.value) and "sometimes" not in str(caught.value)
    with pytest.raises(FhirValidationError, match="birthDate"):
        validate_resource({"resourceType": "Patient", "birthDate": "14/03/1956"})
    with pytest.raises(FhirValidationError, match="code"):
        validate_resource({"resourceType": "Observation", "status": "final"})
    with pytest.raises(FhirValidationError, match="verificationStatus"):
        validate_resource(
            {
                "resourceType": "Condition",
                "subject": {"reference": "Patient/1"},
                "verificationStatus": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "maybe"}
                    ]
                },
            }
        )
    with pytest.raises(FhirValidationError):
        validate_resource({"resourceType": "NotAThing"})


def test_family_history_becomes_family_member_history_not_a_condition() -> None:
    bundle = build_bundle(
        msgspec.structs.replace(
            extraction(),
            diagnoses=(Diagnosis(text="breast cancer", assertion="family", relative="mother", evidence=EVIDENCE),),
        ),
        CONTEXT,
    )
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert "Condition" not in kinds
    history = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "FamilyMemberHistory")
    assert history["relationship"]["coding"][0]["code"] == "MTH"
    assert history["condition"][0]["code"]["text"] == "breast cancer"
    assert history["patient"]["reference"].startswith("Patient/")
    validate_resource(history)


def test_a_lab_report_groups_its_results_in_a_diagnostic_report() -> None:
    labs = (LabResult(test="Haemoglobin", value=120, unit="g/L"), LabResult(test="Sodium", value=140, unit="mmol/L"))
    bundle = build_bundle(msgspec.structs.replace(extraction(), document_type="lab-report", labs=labs), CONTEXT)
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    observations = {
        f"Observation/{e['resource']['id']}"
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["text"] in ("Haemoglobin", "Sodium")
    }
    assert {r["reference"] for r in report["result"]} == observations
    assert report["code"]["coding"][0]["code"] == "11502-2" and report["status"] == "final"
    letter = build_bundle(
        msgspec.structs.replace(extraction(), labs=labs), CONTEXT
    )  # a letter quoting results files no report
    assert "DiagnosticReport" not in {e["resource"]["resourceType"] for e in letter["entry"]}


def test_allergies_become_allergy_intolerances() -> None:
    allergies = (
        Allergy(
            substance="Penicillin",
            reaction="anaphylaxis",
            severity="severe",
            category="medication",
            codings=(Coding(system="http://snomed.info/sct", code="764146007", display="Penicillin"),),
            evidence=EVIDENCE,
        ),
        Allergy(substance="Latex", category="environment"),
    )
    bundle = build_bundle(msgspec.structs.replace(extraction(), allergies=allergies), CONTEXT)
    penicillin, latex = by_type(bundle, "AllergyIntolerance")
    assert penicillin["code"] == {
        "text": "Penicillin",
        "coding": [{"system": "http://snomed.info/sct", "code": "764146007", "display": "Penicillin"}],
    }
    assert penicillin["reaction"] == [{"manifestation": [{"text": "anaphylaxis"}], "severity": "severe"}]
    assert penicillin["category"] == ["medication"] and penicillin["patient"]["reference"].startswith("Patient/")
    assert penicillin["clinicalStatus"]["coding"][0]["code"] == "active"
    assert "reaction" not in latex and latex["category"] == ["environment"]
    provenance_targets = {p["target"][0]["reference"] for p in by_type(bundle, "Provenance")}
    assert f"AllergyIntolerance/{penicillin['id']}" in provenance_targets


@pytest.mark.parametrize(
    ("written", "code"), [("NKDA", "409137002"), ("No known drug allergies", "409137002"), ("Nil known", "716186003")]
)
def test_no_known_allergies_has_the_ips_codes(written: str, code: str) -> None:
    bundle = build_bundle(
        msgspec.structs.replace(extraction(), allergies=(Allergy(substance=written, none_known=True),)), CONTEXT
    )
    (allergy,) = by_type(bundle, "AllergyIntolerance")
    assert allergy["code"]["coding"][0]["code"] == code and allergy["code"]["text"] == written


def test_procedures_are_completed_with_their_date() -> None:
    procedures = (Procedure(text="Appendicectomy", date="2015"), Procedure(text="Colonoscopy"))
    bundle = build_bundle(msgspec.structs.replace(extraction(), procedures=procedures), CONTEXT)
    appendix, colonoscopy = by_type(bundle, "Procedure")
    assert (appendix["status"], appendix["performedDateTime"], appendix["code"]["text"]) == (
        "completed",
        "2015",
        "Appendicectomy",
    )
    assert "performedDateTime" not in colonoscopy


def test_medications_as_us_core_medication_requests_on_request() -> None:
    context = msgspec.structs.replace(CONTEXT, medication_resource="MedicationRequest")
    bundle = build_bundle(extraction(), context)
    assert by_type(bundle, "MedicationStatement") == []
    (request,) = by_type(bundle, "MedicationRequest")
    assert (request["status"], request["intent"], request["reportedBoolean"]) == ("active", "order", True)
    assert request["dosageInstruction"][0]["timing"]["repeat"] == {"frequency": 2, "period": 1, "periodUnit": "d"}
    assert request["medicationCodeableConcept"]["text"] == "Metformin"


def test_bad_allergy_codes_are_refused() -> None:
    allergy = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": "Patient/1"},
        "category": ["medicine"],
        "reaction": [{"manifestation": [{"text": "rash"}], "severity": "awful"}],
    }
    with pytest.raises(FhirValidationError) as caught:
        validate_resource(allergy)
    assert "category" in str(caught.value) and "reaction.severity" in str(caught.value)


def test_us_core_checks_name_what_is_missing() -> None:
    from fhir_profiles.us_core import VITAL_SIGNS, profile_for, us_core_problems

    bundle = build_bundle(extraction(), CONTEXT)
    vital = next(o for o in by_type(bundle, "Observation") if o["code"]["coding"][0]["code"] == "85354-9")
    assert profile_for(vital) == VITAL_SIGNS
    assert us_core_problems(vital) == ["effective[x]: required for vital signs (1..1)"]  # the document was undated
    dated = build_bundle(extraction(), msgspec.structs.replace(CONTEXT, effective="2026-11-02"))
    assert all(us_core_problems(o) == [] for o in by_type(dated, "Observation"))
    (patient,) = by_type(bundle, "Patient")
    assert us_core_problems(patient) == ["identifier[1].system: required by US Core (1..1)"]  # the MRN
    assert us_core_problems({"resourceType": "Procedure", "status": "completed", "code": {"text": "x"}}) == [
        "subject: required by US Core (1..)",
        "performed[x]: us-core-7 needs it when the procedure is completed",
    ]
    assert us_core_problems({"resourceType": "Patient"}, VITAL_SIGNS) == [
        "resourceType: us-core-vital-signs profiles Observation"
    ]


def test_follow_up_actions_become_care_plans() -> None:
    follow_ups = (FollowUp(text="Review in clinic in 6 weeks", evidence=EVIDENCE),)
    bundle = build_bundle(msgspec.structs.replace(extraction(), follow_ups=follow_ups), CONTEXT)
    (plan,) = by_type(bundle, "CarePlan")
    assert (plan["status"], plan["intent"], plan["description"]) == ("active", "plan", "Review in clinic in 6 weeks")
    assert plan["activity"] == [{"detail": {"status": "not-started", "description": "Review in clinic in 6 weeks"}}]
    assert any(p["target"][0]["reference"] == f"CarePlan/{plan['id']}" for p in by_type(bundle, "Provenance"))


def test_contact_details_document_date_and_author_reach_fhir() -> None:
    facts = msgspec.structs.replace(
        extraction().patient,
        address=TextFact(value="14 Mill Lane, Elmford ZZ3 4QX"),
        postal_code="ZZ3 4QX",
        phone=TextFact(value="0113 496 0123"),
        email=TextFact(value="jane@example.org"),
    )
    dated = msgspec.structs.replace(
        extraction(),
        patient=facts,
        document_date=TextFact(value="2026-11-02"),
        author=TextFact(value="Dr K. Mensah"),
    )
    bundle = build_bundle(dated, CONTEXT)
    (patient,) = by_type(bundle, "Patient")
    assert patient["address"] == [{"text": "14 Mill Lane, Elmford ZZ3 4QX", "postalCode": "ZZ3 4QX"}]
    assert patient["telecom"] == [
        {"system": "phone", "value": "0113 496 0123"},
        {"system": "email", "value": "jane@example.org"},
    ]
    assert {o["effectiveDateTime"] for o in by_type(bundle, "Observation")} == {"2026-11-02"}
    assert by_type(bundle, "Condition")[0]["asserter"] == {"display": "Dr K. Mensah"}
    # the sender's date wins over the one printed on the page
    sent = build_bundle(dated, msgspec.structs.replace(CONTEXT, effective="2026-10-30T09:00:00Z"))
    assert {o["effectiveDateTime"] for o in by_type(sent, "Observation")} == {"2026-10-30T09:00:00Z"}


def test_an_admission_becomes_an_encounter_and_a_changed_dose_says_so() -> None:
    from fhir_profiles.extraction import Encounter

    changed = msgspec.structs.replace(extraction().medications[0], changed=True)
    bundle = build_bundle(
        msgspec.structs.replace(
            extraction(),
            encounter=Encounter(
                kind="inpatient", start="2025-07-01", end="2025-07-05", department="Ward 12", practitioner="Dr F"
            ),
            medications=(changed,),
        ),
        CONTEXT,
    )
    (encounter,) = by_type(bundle, "Encounter")
    assert (encounter["status"], encounter["class"]["code"]) == ("finished", "IMP")
    assert encounter["period"] == {"start": "2025-07-01", "end": "2025-07-05"}
    assert encounter["serviceType"] == {"text": "Ward 12"}
    assert encounter["participant"] == [{"individual": {"display": "Dr F"}}]
    (statement,) = by_type(bundle, "MedicationStatement")
    assert statement["status"] == "active" and statement["statusReason"][0]["text"].startswith("dose")


def test_a_lab_result_holds_at_its_specimen_date() -> None:
    labs = (LabResult(test="Sodium", value=139, unit="mmol/L", specimen_date="2026-11-03"),)
    bundle = build_bundle(
        msgspec.structs.replace(extraction(), labs=labs), msgspec.structs.replace(CONTEXT, effective="2026-11-05")
    )
    sodium = next(o for o in by_type(bundle, "Observation") if o["code"]["text"] == "Sodium")
    assert sodium["effectiveDateTime"] == "2026-11-03"


def test_content_seen_valid_is_not_validated_again_and_changed_content_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from fhir_profiles import validate

    calls: list[str] = []
    real = validate._validate

    def counting(resource: dict[str, Any], *, deep: bool) -> None:
        calls.append(resource["resourceType"])
        real(resource, deep=deep)

    monkeypatch.setattr(validate, "_validate", counting)
    patient = {"resourceType": "Patient", "id": "seen-once", "gender": "female", "birthDate": "1956-03-14"}
    validate_resource(patient)
    validate_resource(dict(reversed(list(patient.items()))))  # the same content, keys in another order
    assert calls == ["Patient"]
    with pytest.raises(FhirValidationError, match="gender"):
        validate_resource({**patient, "gender": "sometimes"})
    with pytest.raises(FhirValidationError, match="gender"):  # a failure is never remembered as valid
        validate_resource({**patient, "gender": "sometimes"})
    validate_resource({"resourceType": "Bundle", "type": "collection"}, deep=False)
    validate_resource({"resourceType": "Bundle", "type": "collection"})  # a shell check is not a deep one
    assert calls == ["Patient", "Patient", "Patient", "Bundle", "Bundle"]
