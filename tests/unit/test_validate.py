"""The checks that send an extraction to human review: one test per rule, each reason PHI-free."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fhir_profiles.extraction import (
    Allergy,
    Coding,
    Evidence,
    Extraction,
    Identifier,
    LabResult,
    Medication,
    PatientFacts,
    TextFact,
    Timing,
    Vital,
)
from server.pipeline.validate import daily_dose_mg, review_reasons, with_review

TODAY = dt.date(2026, 11, 23)
NAME = TextFact(value="Jane Smith")
LOINC = "http://loinc.org"


def codes(extraction: Extraction, threshold: float = 0.75) -> list[str]:
    return [r.code for r in review_reasons(extraction, confidence_threshold=threshold, today=TODAY)]


def patient(**facts: object) -> Extraction:
    return Extraction(patient=PatientFacts(name=NAME, **facts))  # type: ignore[arg-type]


def test_a_clean_extraction_needs_no_review() -> None:
    assert codes(patient(birth_date=TextFact(value="1956-03-14"))) == []


def test_missing_name_and_bad_nhs_number() -> None:
    assert codes(Extraction()) == ["patient-name-missing"]
    wrong = patient(identifiers=(Identifier(kind="nhs", value="9434765918", valid=False),))
    assert codes(wrong) == ["nhs-number-check-digit"]


@pytest.mark.parametrize(
    ("born", "reason"), [("2027-01-01", "birth-date-future"), ("1890-05-01", "birth-date-implausible")]
)
def test_implausible_birth_dates(born: str, reason: str) -> None:
    assert codes(patient(birth_date=TextFact(value=born))) == [reason]


def test_implausible_vital() -> None:
    extraction = Extraction(patient=PatientFacts(name=NAME), vitals=(Vital(kind="heart_rate", value=400, unit="/min"),))
    assert codes(extraction) == ["vital-implausible"]


@pytest.mark.parametrize(
    ("kind", "unit", "plausible", "misread"),
    [("body_weight", "[lb_av]", 154, 1540), ("body_height", "[in_i]", 67, 670), ("body_height", "m", 1.7, 17)],
)
def test_us_and_metre_units_have_plausible_ranges_too(kind: Any, unit: str, plausible: float, misread: float) -> None:
    for value, expected in ((plausible, []), (misread, ["vital-implausible"])):
        extraction = Extraction(patient=PatientFacts(name=NAME), vitals=(Vital(kind=kind, value=value, unit=unit),))
        assert codes(extraction) == expected


def test_lab_units_unrecognised_or_wrong_for_the_test() -> None:
    sodium = Coding(system=LOINC, code="2951-2")
    unknown = LabResult(test="Sodium", value=140, unit=None, unit_text="mmo/L", codings=(sodium,))
    wrong = LabResult(test="Sodium", value=140, unit="g/L", codings=(sodium,))
    assert codes(Extraction(patient=PatientFacts(name=NAME), labs=(unknown,))) == ["lab-unit-unrecognised"]
    assert codes(Extraction(patient=PatientFacts(name=NAME), labs=(wrong,))) == ["lab-unit-mismatch"]


def test_critical_values_are_flagged_hh_ll_and_reviewed_once() -> None:
    potassium = Coding(system=LOINC, code="2823-3")
    labs = (
        LabResult(test="Potassium", value=7.1, unit="mmol/L", low=3.5, high=5.3, flag="H", codings=(potassium,)),
        LabResult(test="Potassium", value=2.1, unit="mmol/L", low=3.5, high=5.3, flag="L", codings=(potassium,)),
        LabResult(test="Potassium", value=5.9, unit="mmol/L", low=3.5, high=5.3, flag="H", codings=(potassium,)),
    )
    reviewed = with_review(Extraction(patient=PatientFacts(name=NAME), labs=labs), confidence_threshold=0.75)
    assert [lab.flag for lab in reviewed.labs] == ["HH", "LL", "H"]
    assert [r.code for r in reviewed.review_reasons] == ["lab-critical"]


@pytest.mark.parametrize(
    ("medication", "daily", "flagged"),
    [
        (Medication(name="Paracetamol", text="", dose_value=5000, dose_unit="mg"), 5000, True),
        (
            Medication(
                name="Paracetamol",
                text="",
                dose_value=1,
                dose_unit="g",
                timing=Timing(frequency=4, period=1, period_unit="d"),
            ),
            4000,
            False,
        ),
        (
            Medication(
                name="Paracetamol",
                text="",
                dose_value=1000,
                dose_unit="mg",
                timing=Timing(frequency=1, period=4, period_unit="h"),
            ),
            6000,
            True,
        ),
        (Medication(name="Levothyroxine", text="", dose_value=100, dose_unit="ug"), 0.1, False),
        (Medication(name="Unlisteddrug", text="", dose_value=9000, dose_unit="mg"), 9000, False),
    ],
)
def test_doses_above_the_usual_maximum(medication: Medication, daily: float, flagged: bool) -> None:
    assert daily_dose_mg(medication) == pytest.approx(daily)
    extraction = Extraction(patient=PatientFacts(name=NAME), medications=(medication,))
    assert ("dose-above-maximum" in codes(extraction)) is flagged


def test_low_ocr_confidence_on_any_evidence_word() -> None:
    shaky = Evidence(page=2, start=0, end=10, text="Penicillin", ocr_confidence=0.41)
    extraction = Extraction(
        patient=PatientFacts(name=NAME), allergies=(Allergy(substance="Penicillin", evidence=shaky),)
    )
    reasons = review_reasons(extraction, confidence_threshold=0.75, today=TODAY)
    assert [r.code for r in reasons] == ["low-ocr-confidence"]
    assert "page 2" in reasons[0].message and "Penicillin" not in reasons[0].message
