"""Checks on an extraction that decide whether a person must review it before release.

Each finding is a ``ReviewReason``: a stable machine code and a sentence without PHI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Final

import msgspec

from fhir_profiles.extraction import (
    Diagnosis,
    Evidence,
    Extraction,
    Identifier,
    LabResult,
    Medication,
    ReviewReason,
    Vital,
)

# Plausible ranges for adult and paediatric vital signs; outside them a value is more likely
# an OCR or transcription error than a reading.
_VITAL_RANGES: Final[dict[tuple[str, str], tuple[float, float]]] = {
    ("blood_pressure", "mm[Hg]"): (40, 300),
    ("heart_rate", "/min"): (20, 250),
    ("respiratory_rate", "/min"): (4, 70),
    ("body_temperature", "Cel"): (30, 44),
    ("body_temperature", "[degF]"): (86, 111),
    ("oxygen_saturation", "%"): (50, 100),
    ("body_weight", "kg"): (0.3, 400),
    ("body_height", "cm"): (25, 250),
    ("bmi", "kg/m2"): (8, 100),
}
MAX_AGE_YEARS: Final = 125


def _evidences(extraction: Extraction) -> Iterator[Evidence]:
    patient = extraction.patient
    for fact in (patient.name, patient.birth_date, patient.sex):
        if fact is not None and fact.evidence is not None:
            yield fact.evidence
    items: tuple[Identifier | Diagnosis | Medication | Vital | LabResult, ...] = (
        *patient.identifiers,
        *extraction.diagnoses,
        *extraction.medications,
        *extraction.vitals,
        *extraction.labs,
    )
    for item in items:
        if item.evidence is not None:
            yield item.evidence


def review_reasons(
    extraction: Extraction, *, confidence_threshold: float, today: dt.date | None = None
) -> list[ReviewReason]:
    today = today or dt.date.today()
    reasons: list[ReviewReason] = []
    patient = extraction.patient
    if patient.name is None:
        reasons.append(ReviewReason(code="patient-name-missing", message="No patient name was found."))
    for identifier in patient.identifiers:
        if identifier.kind == "nhs" and not identifier.valid:
            reasons.append(
                ReviewReason(code="nhs-number-check-digit", message="The NHS number fails its Modulus 11 check digit.")
            )
    if patient.birth_date is not None:
        born = dt.date.fromisoformat(patient.birth_date.value)
        if born > today:
            reasons.append(ReviewReason(code="birth-date-future", message="The date of birth is in the future."))
        elif (today - born).days / 365.25 > MAX_AGE_YEARS:
            reasons.append(
                ReviewReason(
                    code="birth-date-implausible", message=f"The date of birth gives an age over {MAX_AGE_YEARS} years."
                )
            )
    for vital in extraction.vitals:
        bounds = _VITAL_RANGES.get((vital.kind, vital.unit))
        values = [vital.value] + ([vital.diastolic] if vital.diastolic is not None else [])
        if bounds and any(not bounds[0] <= v <= bounds[1] for v in values):
            reasons.append(
                ReviewReason(
                    code="vital-implausible",
                    message=f"A {vital.kind.replace('_', ' ')} value is outside the plausible range.",
                )
            )
    for lab in extraction.labs:
        if lab.unit is None:
            reasons.append(
                ReviewReason(
                    code="lab-unit-unrecognised", message="A lab result has a unit that is not a recognised UCUM unit."
                )
            )
    for medication in extraction.medications:
        if medication.dose_unit is None:
            reasons.append(
                ReviewReason(code="medication-unit-unrecognised", message="A medication dose has an unrecognised unit.")
            )
    low = [e for e in _evidences(extraction) if e.ocr_confidence < confidence_threshold]
    if low:
        pages = sorted({e.page for e in low})
        reasons.append(
            ReviewReason(
                code="low-ocr-confidence",
                message=f"{len(low)} extracted value(s) rest on words read with OCR confidence below "
                f"{confidence_threshold:.2f} (page {', '.join(map(str, pages))}).",
            )
        )
    return reasons


def with_review(extraction: Extraction, *, confidence_threshold: float) -> Extraction:
    """The extraction with every review reason the checks find added to its own."""
    reasons = review_reasons(extraction, confidence_threshold=confidence_threshold)
    existing = {(r.code, r.message) for r in extraction.review_reasons}
    merged = list(extraction.review_reasons) + [r for r in reasons if (r.code, r.message) not in existing]
    return msgspec.structs.replace(extraction, review_reasons=tuple(merged))
