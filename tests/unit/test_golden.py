"""Golden files: each resource type we emit, as hand-checked FHIR R4 JSON (tests/golden/).

The expected files were written from one fixed extraction and checked by hand against the
structure of the FHIR R4 examples for each type (element names, code systems, cardinality).
A change to the mapping that alters any of them fails here and must be checked again: rerun
with ``PAPERCHART_UPDATE_GOLDEN=1`` and review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fhir_profiles import BundleContext, build_bundle
from fhir_profiles.extraction import (
    Allergy,
    Box,
    Coding,
    Diagnosis,
    Encounter,
    Evidence,
    Extraction,
    FollowUp,
    Identifier,
    LabResult,
    Medication,
    PatientFacts,
    Procedure,
    TextFact,
    Timing,
    Vital,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
EVIDENCE = Evidence(
    page=1, start=120, end=143, text="Metformin 500 mg PO BID", boxes=(Box(x0=0.1, y0=0.4, x1=0.42, y1=0.42),)
)
CONTEXT = BundleContext(
    bundle_id="5f0c2a4e-0000-4000-8000-000000000001",
    id_seed="golden-job",
    document_reference_id="doc-golden",
    fhir_base_url="https://paperchart.example.org/fhir",
    recorded="2026-11-23T10:00:00.000Z",
    software="paperchart 0.1.0",
    ocr_engine="rapidocr-ppocr",
    effective="2026-11-02",
    mrn_system="urn:oid:2.16.840.1.113883.3.999.1",
)
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def golden_bundle(
    medication_resource: str = "MedicationStatement", document_type: str = "clinic-letter"
) -> dict[str, Any]:
    extraction = Extraction(
        document_type=document_type,  # type: ignore[arg-type]
        author=TextFact(value="Dr K. Mensah"),
        encounter=Encounter(kind="outpatient", start="2026-11-02", department="Diabetes", practitioner="Dr K. Mensah"),
        patient=PatientFacts(
            name=TextFact(value="Jane Smith"),
            given=("Jane",),
            family="Smith",
            birth_date=TextFact(value="1956-03-14"),
            sex=TextFact(value="female"),
            identifiers=(Identifier(kind="nhs", value="9434765919"), Identifier(kind="mrn", value="MRN1234567")),
            address=TextFact(value="14 Mill Lane, Elmford ZZ3 4QX"),
            postal_code="ZZ3 4QX",
            phone=TextFact(value="0113 496 0123"),
        ),
        diagnoses=(
            Diagnosis(
                text="Type 2 diabetes mellitus",
                codings=(
                    Coding(system=ICD10CM, code="E11.9", display="Type 2 diabetes mellitus without complications"),
                    Coding(system=SNOMED, code="44054006", display="Diabetes mellitus type 2"),
                ),
            ),
            Diagnosis(text="breast cancer", assertion="family", relative="mother"),
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
        vitals=(Vital(kind="blood_pressure", value=142, diastolic=88, unit="mm[Hg]"),),
        labs=(
            LabResult(
                test="Haemoglobin",
                value=112,
                unit="g/L",
                unit_text="g/L",
                low=130,
                high=180,
                flag="L",
                codings=(Coding(system="http://loinc.org", code="718-7", display="Hemoglobin [Mass/volume] in Blood"),),
            ),
        ),
        allergies=(
            Allergy(
                substance="Penicillin",
                reaction="anaphylaxis",
                severity="severe",
                category="medication",
                codings=(Coding(system=SNOMED, code="764146007", display="Penicillin"),),
            ),
        ),
        procedures=(Procedure(text="Appendicectomy", date="2015"),),
        follow_ups=(FollowUp(text="Review in clinic in 6 weeks"),),
    )
    from msgspec.structs import replace

    return build_bundle(extraction, replace(CONTEXT, medication_resource=medication_resource))


def _examples() -> dict[str, dict[str, Any]]:
    examples: dict[str, dict[str, Any]] = {}
    variants = (("MedicationStatement", "clinic-letter"), ("MedicationRequest", "lab-report"))
    for medication_resource, document_type in variants:
        for entry in golden_bundle(medication_resource, document_type)["entry"]:
            resource = entry["resource"]
            name = resource["resourceType"]
            if name == "Observation":
                name += "-" + resource["category"][0]["coding"][0]["code"]
            if name == "Provenance" and resource["target"][0]["reference"].split("/")[0] != "MedicationStatement":
                continue  # one Provenance is enough: the one with evidence boxes
            examples.setdefault(name, resource)
    return examples


EXAMPLES = _examples()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_resource_matches_its_golden_file(name: str) -> None:
    path = GOLDEN / f"{name}.json"
    produced = EXAMPLES[name]
    if os.environ.get("PAPERCHART_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(produced, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"no golden file for {name}: run with PAPERCHART_UPDATE_GOLDEN=1 and check it by hand"
    assert produced == json.loads(path.read_text())


def test_every_golden_file_is_still_produced() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} == set(EXAMPLES)
