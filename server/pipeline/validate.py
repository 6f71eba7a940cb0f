"""Checks on an extraction that decide whether a person must review it before release.

Each finding is a ``ReviewReason``: a stable machine code and a sentence without PHI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Final

import msgspec

from fhir_profiles.extraction import (
    Allergy,
    Diagnosis,
    Evidence,
    Extraction,
    FollowUp,
    Identifier,
    LabFlag,
    LabResult,
    Medication,
    Procedure,
    ReviewReason,
    Vital,
)
from terminology.labs import lab_test_by_code

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
    ("body_weight", "[lb_av]"): (0.7, 880),
    ("body_height", "cm"): (25, 250),
    ("body_height", "m"): (0.25, 2.5),
    ("body_height", "[in_i]"): (10, 100),
    ("bmi", "kg/m2"): (8, 100),
}
MAX_AGE_YEARS: Final = 125

# Usual adult maximum daily doses (BNF, oral unless noted), in mg. Above them a dose is more
# likely a misread (5000 mg paracetamol) than a prescription; a person checks either way.
MAX_DAILY_MG: Final[dict[str, float]] = {
    "paracetamol": 4000,
    "acetaminophen": 4000,
    "ibuprofen": 2400,
    "naproxen": 1500,
    "aspirin": 4000,
    "codeine": 240,
    "tramadol": 400,
    "metformin": 3000,
    "gliclazide": 320,
    "atorvastatin": 80,
    "simvastatin": 80,
    "rosuvastatin": 40,
    "lisinopril": 80,
    "ramipril": 10,
    "amlodipine": 10,
    "bisoprolol": 20,
    "omeprazole": 120,
    "lansoprazole": 120,
    "sertraline": 200,
    "citalopram": 40,
    "levothyroxine": 0.3,
    "amoxicillin": 6000,  # oral severe-infection dosing; the usual maximum is half that
}
_MG_PER_UNIT: Final = {"mg": 1.0, "g": 1000.0, "ug": 0.001}
_DAYS_PER_UNIT: Final = {"h": 1 / 24, "d": 1.0, "wk": 7.0}

# Typical adult critical ("phone now") limits by LOINC code and unit: (low, high), None where
# there is none. Laboratories set their own; these are the common ground, not any one lab's.
CRITICAL_LIMITS: Final[dict[tuple[str, str], tuple[float | None, float | None]]] = {
    ("2823-3", "mmol/L"): (2.5, 6.5),  # potassium
    ("2951-2", "mmol/L"): (120, 160),  # sodium
    ("14749-6", "mmol/L"): (2.5, 25),  # glucose
    ("2345-7", "mg/dL"): (45, 450),  # glucose
    ("718-7", "g/L"): (70, 200),  # haemoglobin
    ("718-7", "g/dL"): (7, 20),
    ("777-3", "10*9/L"): (20, 1000),  # platelets
    ("6690-2", "10*9/L"): (1.0, 50),  # white cells
}


def daily_dose_mg(medication: Medication) -> float | None:
    """The most the written SIG gives in a day, in mg (one dose when no frequency is written)."""
    if medication.dose_value is None or medication.dose_unit not in _MG_PER_UNIT:
        return None
    dose = medication.dose_value * _MG_PER_UNIT[medication.dose_unit]
    timing = medication.timing
    if timing is None or timing.frequency is None or timing.period is None or timing.period_unit is None:
        return dose
    return dose * timing.frequency / (timing.period * _DAYS_PER_UNIT[timing.period_unit])


def critical_flag(lab: LabResult) -> LabFlag | None:
    """HH or LL when the value is beyond the test's critical limit."""
    for coding in lab.codings:
        low, high = CRITICAL_LIMITS.get((coding.code, lab.unit or ""), (None, None))
        if high is not None and lab.value > high:
            return "HH"
        if low is not None and lab.value < low:
            return "LL"
    return None


def _evidences(extraction: Extraction) -> Iterator[Evidence]:
    patient = extraction.patient
    for fact in (patient.name, patient.birth_date, patient.sex):
        if fact is not None and fact.evidence is not None:
            yield fact.evidence
    items: tuple[Identifier | Diagnosis | Medication | Vital | LabResult | Allergy | Procedure | FollowUp, ...] = (
        *patient.identifiers,
        *extraction.diagnoses,
        *extraction.medications,
        *extraction.vitals,
        *extraction.labs,
        *extraction.allergies,
        *extraction.procedures,
        *extraction.follow_ups,
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
    uncoded = sum(1 for lab in extraction.labs if not lab.codings)
    if uncoded:  # kept as read rather than lost; a person codes it
        reasons.append(
            ReviewReason(
                code="lab-test-unknown",
                message=f"{uncoded} lab result(s) name a test paperchart does not know; check and code them.",
            )
        )
    for lab in extraction.labs:
        if lab.unit is None:
            reasons.append(
                ReviewReason(
                    code="lab-unit-unrecognised", message="A lab result has a unit that is not a recognised UCUM unit."
                )
            )
            continue
        tests = [t for c in lab.codings if (t := lab_test_by_code(c.code)) is not None]
        if tests and all(lab.unit not in t.units for t in tests):
            reasons.append(
                ReviewReason(
                    code="lab-unit-mismatch", message="A lab result's unit is not one its test is measured in."
                )
            )
        if lab.flag in ("HH", "LL"):
            reasons.append(ReviewReason(code="lab-critical", message="A lab result is beyond a critical limit."))
    for medication in extraction.medications:
        if medication.dose_unit is None:
            reasons.append(
                ReviewReason(code="medication-unit-unrecognised", message="A medication dose has an unrecognised unit.")
            )
        maximum = MAX_DAILY_MG.get(medication.name.lower())
        daily = daily_dose_mg(medication)
        if maximum is not None and daily is not None and daily > maximum * 1.0001:
            reasons.append(
                ReviewReason(
                    code="dose-above-maximum",
                    message="A medication's daily dose is above the usual adult maximum for that drug.",
                )
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
    """The extraction with critical lab values flagged HH/LL and every review reason the checks
    find added to its own."""
    labs = tuple(
        msgspec.structs.replace(lab, flag=critical) if (critical := critical_flag(lab)) else lab
        for lab in extraction.labs
    )
    extraction = msgspec.structs.replace(extraction, labs=labs)
    reasons = review_reasons(extraction, confidence_threshold=confidence_threshold)
    existing = {(r.code, r.message) for r in extraction.review_reasons}
    merged = list(extraction.review_reasons)
    for reason in reasons:  # one of each: three critical results are one reason to look
        if (reason.code, reason.message) not in existing:
            existing.add((reason.code, reason.message))
            merged.append(reason)
    return msgspec.structs.replace(extraction, review_reasons=tuple(merged))
