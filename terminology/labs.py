"""Built-in table of common laboratory tests with LOINC codes, for coding lab results offline.

Source: LOINC (https://loinc.org), codes and long common names as published by Regenstrief.
Licence: "This material contains content from LOINC (http://loinc.org). LOINC is copyright ©
Regenstrief Institute, Inc. and the Logical Observation Identifiers Names and Codes (LOINC)
Committee and is available at no cost under the license at http://loinc.org/license." Codes may be
redistributed with this notice. The full LOINC table is imported from the user's own release.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from typing import Final

import msgspec

# FHIR R4 vital-signs profile codes (http://hl7.org/fhir/R4/observation-vitalsigns.html).
VITAL_CODES: Final[dict[str, tuple[str, str]]] = {
    "blood_pressure": ("85354-9", "Blood pressure panel with all children optional"),
    "heart_rate": ("8867-4", "Heart rate"),
    "respiratory_rate": ("9279-1", "Respiratory rate"),
    "body_temperature": ("8310-5", "Body temperature"),
    "oxygen_saturation": ("2708-6", "Oxygen saturation in Arterial blood"),
    "body_weight": ("29463-7", "Body weight"),
    "body_height": ("8302-2", "Body height"),
    "bmi": ("39156-5", "Body mass index (BMI) [Ratio]"),
}
SYSTOLIC: Final = ("8480-6", "Systolic blood pressure")
DIASTOLIC: Final = ("8462-4", "Diastolic blood pressure")


class LabTest(msgspec.Struct, frozen=True, kw_only=True):
    code: str  # LOINC
    display: str  # LOINC long common name
    names: tuple[str, ...]  # how the test is written on reports, lower case
    units: tuple[str, ...]  # UCUM units this code is measured in


_LAB_TESTS: tuple[LabTest, ...] = (
    LabTest(
        code="718-7",
        display="Hemoglobin [Mass/volume] in Blood",
        names=("haemoglobin", "hemoglobin", "hb", "hgb"),
        units=("g/L", "g/dL"),
    ),
    LabTest(
        code="6690-2",
        display="Leukocytes [#/volume] in Blood by Automated count",
        names=("white cell count", "white blood cells", "wbc", "wcc", "leukocytes"),
        units=("10*9/L", "10*3/uL"),
    ),
    LabTest(
        code="777-3",
        display="Platelets [#/volume] in Blood by Automated count",
        names=("platelets", "platelet count", "plt"),
        units=("10*9/L", "10*3/uL"),
    ),
    LabTest(
        code="2951-2", display="Sodium [Moles/volume] in Serum or Plasma", names=("sodium", "na"), units=("mmol/L",)
    ),
    LabTest(
        code="2823-3",
        display="Potassium [Moles/volume] in Serum or Plasma",
        names=("potassium", "k"),
        units=("mmol/L",),
    ),
    LabTest(
        code="14682-9",
        display="Creatinine [Moles/volume] in Serum or Plasma",
        names=("creatinine", "creat"),
        units=("umol/L",),
    ),
    LabTest(
        code="2160-0",
        display="Creatinine [Mass/volume] in Serum or Plasma",
        names=("creatinine", "creat"),
        units=("mg/dL",),
    ),
    LabTest(code="22664-7", display="Urea [Moles/volume] in Serum or Plasma", names=("urea",), units=("mmol/L",)),
    LabTest(
        code="3094-0",
        display="Urea nitrogen [Mass/volume] in Serum or Plasma",
        names=("bun", "urea nitrogen"),
        units=("mg/dL",),
    ),
    LabTest(
        code="14749-6",
        display="Glucose [Moles/volume] in Serum or Plasma",
        names=("glucose", "blood glucose"),
        units=("mmol/L",),
    ),
    LabTest(
        code="2345-7",
        display="Glucose [Mass/volume] in Serum or Plasma",
        names=("glucose", "blood glucose"),
        units=("mg/dL",),
    ),
    LabTest(
        code="59261-8",
        display="Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol",
        names=("hba1c", "haemoglobin a1c", "hemoglobin a1c", "a1c"),
        units=("mmol/mol",),
    ),
    LabTest(
        code="4548-4",
        display="Hemoglobin A1c/Hemoglobin.total in Blood",
        names=("hba1c", "haemoglobin a1c", "hemoglobin a1c", "a1c"),
        units=("%",),
    ),
    LabTest(
        code="14647-2",
        display="Cholesterol [Moles/volume] in Serum or Plasma",
        names=("total cholesterol", "cholesterol"),
        units=("mmol/L",),
    ),
    LabTest(
        code="2093-3",
        display="Cholesterol [Mass/volume] in Serum or Plasma",
        names=("total cholesterol", "cholesterol"),
        units=("mg/dL",),
    ),
    LabTest(
        code="1742-6",
        display="Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        names=("alt", "alanine aminotransferase", "alanine transaminase"),
        units=("U/L",),
    ),
    LabTest(
        code="1988-5",
        display="C reactive protein [Mass/volume] in Serum or Plasma",
        names=("crp", "c-reactive protein", "c reactive protein"),
        units=("mg/L",),
    ),
    LabTest(
        code="3016-3",
        display="Thyrotropin [Units/volume] in Serum or Plasma",
        names=("tsh", "thyroid stimulating hormone", "thyrotropin"),
        units=("m[IU]/L",),
    ),
)


def lab_tests() -> tuple[LabTest, ...]:
    return _LAB_TESTS


@cache
def _name_pattern() -> re.Pattern[str]:
    names = sorted({name for test in _LAB_TESTS for name in test.names}, key=len, reverse=True)
    return re.compile(r"^\s*(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)


def lab_test_by_code(code: str) -> LabTest | None:
    return next((test for test in _LAB_TESTS if test.code == code), None)


def _without_accents(text: str) -> str:
    """Each accented letter as its base letter, one character for one ("Sodíum" → "Sodium").

    OCR of a noisy scan reads specks over letters as accents; report names here are English.
    """
    out = []
    for char in text:
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        out.append(base if len(base) == 1 else char)
    return "".join(out)


def find_lab_test(text: str, unit: str | None = None) -> tuple[LabTest, str] | None:
    """The lab test whose name starts ``text`` (longest name wins) and the name as written.

    Where one name has several LOINC codes (mass vs molar), the UCUM ``unit`` picks one; with
    no unit or no match on unit, the first listed is returned.
    """
    match = _name_pattern().match(_without_accents(text))
    if not match:
        return None
    name = match.group(1).lower()
    candidates = [test for test in _LAB_TESTS if name in test.names]
    for test in candidates:
        if unit and unit in test.units:
            return test, text[match.start(1) : match.end(1)]
    return candidates[0], text[match.start(1) : match.end(1)]
