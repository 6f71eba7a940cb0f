"""ORU^R01 built from a released Bundle: read back by our parser and by hl7apy, field by field."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from server.hl7.er7 import parse_er7
from server.hl7.oru import build_oru

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {
            "value": "MRN7001",
            "system": "http://paperchart.org/fhir/NamingSystem/hl7-assigning-authority/RIVERSIDE",
            "assigner": {"display": "RIVERSIDE"},
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        },
        {"value": "9434765919", "system": "https://fhir.nhs.uk/Id/nhs-number"},
    ],
    "name": [{"family": "Okafor", "given": ["Grace", "A"]}],
    "birthDate": "1956-03-14",
    "gender": "female",
}
DOCUMENT = {
    "resourceType": "DocumentReference",
    "id": "d1",
    "masterIdentifier": {"value": "DOC-1"},
    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0270", "code": "CN"}], "text": "Note"},
    "date": "2026-11-20T09:30:00+00:00",
}


def entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource}


BUNDLE = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        entry(PATIENT),
        entry(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
                "valueQuantity": {
                    "value": 7.8,
                    "unit": "mmol/L",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/L",
                },
                "interpretation": [{"coding": [{"code": "H"}]}],
                "referenceRange": [{"low": {"value": 3.9}, "high": {"value": 5.6}}],
                "effectiveDateTime": "2026-11-19T08:15:00+01:00",
            }
        ),
        entry(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "Blood pressure"},
                "component": [
                    {
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
                        "valueQuantity": {"value": 132, "unit": "mmHg", "code": "mm[Hg]"},
                    },
                    {
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic"}]},
                        "valueQuantity": {"value": 84, "unit": "mmHg", "code": "mm[Hg]"},
                    },
                ],
            }
        ),
        entry(
            {
                "resourceType": "Condition",
                "code": {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/sid/icd-10-cm",
                            "code": "E11.9",
                            "display": "Type 2 diabetes mellitus without complications",
                        }
                    ]
                },
            }
        ),
        entry(
            {
                "resourceType": "Condition",
                "code": {"text": "Hypertension | poorly controlled ^ at night"},  # encoding characters
            }
        ),
        entry(
            {
                "resourceType": "MedicationStatement",
                "status": "active",
                "medicationCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "860975",
                            "display": "metformin 500 MG Oral Tablet",
                        }
                    ]
                },
            }
        ),
        entry({"resourceType": "Condition", "status": "entered-in-error", "code": {"text": "withdrawn"}}),
        entry({"resourceType": "Provenance", "target": []}),
    ],
}


def oru(correction: bool = False) -> str:
    return build_oru(
        control_id="PCR7",
        receiver=("EPIC", "RIVERSIDE"),
        patient=PATIENT,
        document=DOCUMENT,
        bundle=BUNDLE,
        correction=correction,
        now=dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC),
    )


def test_the_oru_carries_the_patient_the_document_and_each_result() -> None:
    message = parse_er7(oru())
    msh, pid, obr = message.msh, message.first("PID"), message.first("OBR")
    assert pid is not None and obr is not None
    assert message.message_type == ("ORU", "R01") and message.control_id == "PCR7" and message.version == "2.5.1"
    assert (msh.value(5), msh.value(6), msh.value(7)) == ("EPIC", "RIVERSIDE", "20261123120000")
    assert pid.repetitions(3) == ["MRN7001^^^RIVERSIDE^MR", "9434765919^^^NHS^"]
    assert pid.components(5) == ["Okafor", "Grace", "A"]
    assert (pid.value(7), pid.value(8)) == ("19560314", "F")
    assert obr.components(3) == ["DOC-1", "PAPERCHART"]
    assert obr.components(4) == ["CN", "Note", "HL70270"] and obr.value(7) == "20261120093000+0000"
    assert obr.value(25) == "F"
    rows = [
        (o.value(2), o.components(3)[0], o.value(4), o.components(5), o.value(6), o.value(7), o.value(8))
        for o in message.all("OBX")
    ]
    assert rows == [
        ("NM", "2345-7", "", ["7.8"], "mmol/L", "3.9-5.6", "H"),
        ("NM", "8480-6", "1", ["132"], "mm[Hg]", "", ""),
        ("NM", "8462-4", "1", ["84"], "mm[Hg]", "", ""),
        ("CWE", "29548-5", "1", ["E11.9", "Type 2 diabetes mellitus without complications", "I10C"], "", "", ""),
        ("CWE", "29548-5", "2", ["", "Hypertension | poorly controlled ^ at night"], "", "", ""),
        ("CWE", "10160-0", "1", ["860975", "metformin 500 MG Oral Tablet", "RXN"], "", "", ""),
    ]
    assert {o.value(11) for o in message.all("OBX")} == {"F"}
    assert [o.value(14) for o in message.all("OBX")][:2] == ["20261119081500+0100", ""]
    assert "withdrawn" not in oru()  # entered-in-error results do not travel


def test_a_second_delivery_for_a_document_is_a_correction() -> None:
    message = parse_er7(oru(correction=True))
    assert message.first("OBR").value(25) == "C"  # type: ignore[union-attr]
    assert {o.value(11) for o in message.all("OBX")} == {"C"}


def test_hl7apy_reads_it_as_an_oru_r01() -> None:
    parsed = parse_message(oru(), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
    assert parsed.name == "ORU_R01"
    result = parsed.oru_r01_patient_result
    assert result.oru_r01_patient.pid.pid_3[0].cx_1.value == "MRN7001"
    observations = result.oru_r01_order_observation
    assert observations.obr.obr_3.ei_1.value == "DOC-1"
    assert len(observations.oru_r01_observation) == 6
