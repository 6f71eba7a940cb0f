"""Free-text de-identification: known values anywhere, Safe Harbor patterns, clinical words kept."""

from __future__ import annotations

import datetime as dt

import pytest

from server.deid import Deidentifier, leaked, scrub_text


@pytest.mark.parametrize(
    "text",
    [
        "Seen on 12/03/2024 at clinic",
        "DOB: 3 March 1956.",
        "Reviewed March 3, 2024",
        "Admitted 2024-03-12T10:00:00Z",
        "Call 020 7946 0958 or +44 20 7946 0958",
        "email grace.okafor@example.org",
        "NHS number 943 476 5919",
        "MRN: A1234567",
        "SSN 123-45-6789",
        "Lives at SW1A 1AA",
        "ZIP 90210-1234",
        "Letter from Dr Hannah Price to Mrs Okafor",
        "see https://portal.example.org/p/123",
        "Clinician: Dr K. Hannah",
        "Patient Name: Grace Okafor",
    ],
)
def test_safe_harbor_patterns_leave_no_digits_or_names(text: str) -> None:
    scrubbed = scrub_text(text)
    for token in (
        "2024",
        "1956",
        "7946",
        "grace",
        "5919",
        "A1234567",
        "6789",
        "SW1A",
        "90210",
        "Hannah",
        "Okafor",
        "portal",
    ):
        assert token not in scrubbed, (text, scrubbed)


def test_known_values_are_removed_across_case_and_line_breaks() -> None:
    known = ["Grace Okafor", "Okafor", "Grace", "MRN7001"]
    text = "GRACE\nOKAFOR (mrn7001) says Grace's inhaler helps"
    scrubbed = scrub_text(text, known)
    assert leaked(scrubbed, known) == [] and "inhaler" in scrubbed


def test_clinical_words_are_kept() -> None:
    text = "Type 2 diabetes mellitus; HbA1c 58 mmol/mol; Metformin 850 mg BD; BP 128/82; CRP 12 mg/L"
    assert scrub_text(text) == text


def test_date_shift_is_per_patient_and_never_zero() -> None:
    deid = Deidentifier(b"s" * 32, today=dt.date(2026, 11, 23))
    shifts = {deid.shift_days(f"urn:mrn|{n}") for n in range(200)}
    assert 0 not in shifts and all(-365 <= s <= 365 for s in shifts) and len(shifts) > 100
    assert deid.shift_days("urn:mrn|1") == Deidentifier(b"s" * 32).shift_days("urn:mrn|1")
    assert deid.pseudonym("Patient", "1") != Deidentifier(b"t" * 32).pseudonym("Patient", "1")


def test_ages_over_89_lose_the_birth_date_and_zip_codes_are_generalized() -> None:
    deid = Deidentifier(b"s" * 32, today=dt.date(2026, 11, 23))
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": "p1",
                    "birthDate": "1930-01-02",
                    "address": [
                        {"line": ["1 Main St"], "city": "Reno", "state": "NV", "postalCode": "89501"},
                        {"postalCode": "03601", "country": "US"},
                    ],
                }
            }
        ],
    }
    patient = deid.bundle(bundle)["entry"][0]["resource"]
    assert "birthDate" not in patient
    assert patient["address"] == [{"state": "NV", "postalCode": "895"}, {"country": "US", "postalCode": "000"}]
