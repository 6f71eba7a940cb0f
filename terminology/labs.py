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


def _test(code: str, display: str, names: tuple[str, ...], units: tuple[str, ...]) -> LabTest:
    return LabTest(code=code, display=display, names=names, units=units)


_BILIRUBIN: Final = ("bilirubin", "total bilirubin", "bilirubin total", "bili")
_HDL: Final = ("hdl", "hdl cholesterol", "hdl-c", "hdl-cholesterol")
_LDL: Final = ("ldl", "ldl cholesterol", "ldl-c", "ldl-cholesterol")
_TRIGLYCERIDE: Final = ("triglycerides", "triglyceride", "trig", "tg")
_PHOSPHATE: Final = ("phosphate", "phosphorus", "phos")
_FREE_T4: Final = ("free t4", "ft4", "free thyroxine")

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
        code="2951-2",
        display="Sodium [Moles/volume] in Serum or Plasma",
        names=("sodium", "na"),
        units=("mmol/L", "meq/L"),
    ),
    LabTest(
        code="2823-3",
        display="Potassium [Moles/volume] in Serum or Plasma",
        names=("potassium", "k"),
        units=("mmol/L", "meq/L"),
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
    # The tests of the usual panels (renal and bone profile, liver function, lipids, full blood
    # count, thyroid, coagulation, cardiac) that reports print by these names. Where a name has a
    # mass and a molar code, the unit picks one. Displays as the FHIR R4 examples and the IPS carry
    # them; none of the names is the start of another test's ("calcium" is left out, since
    # "calcium, adjusted" is a test of its own: such a result stays uncoded, for review).
    _test("2075-0", "Chloride [Moles/volume] in Serum or Plasma", ("chloride",), ("mmol/L", "meq/L")),
    _test("1963-8", "Bicarbonate [Moles/volume] in Serum", ("bicarbonate", "bicarb", "hco3"), ("mmol/L", "meq/L")),
    _test(
        "2028-9",
        "Carbon dioxide, total [Moles/volume] in Serum or Plasma",
        ("total co2", "co2", "carbon dioxide"),
        ("mmol/L", "meq/L"),
    ),
    _test("1751-7", "Albumin [Mass/volume] in Serum or Plasma", ("albumin",), ("g/dL", "g/L")),
    _test("2885-2", "Protein [Mass/volume] in Serum or Plasma", ("total protein",), ("g/dL", "g/L")),
    _test(
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        ("ast", "aspartate aminotransferase", "sgot"),
        ("U/L",),
    ),
    _test(
        "6768-6",
        "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
        ("alp", "alk phos", "alkaline phosphatase"),
        ("U/L",),
    ),
    _test(
        "2324-2",
        "Gamma glutamyl transferase [Enzymatic activity/volume] in Serum or Plasma",
        ("ggt", "gamma gt", "gamma-gt", "gamma glutamyl transferase"),
        ("U/L",),
    ),
    _test("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", _BILIRUBIN, ("mg/dL",)),
    _test("14631-6", "Bilirubin.total [Moles/volume] in Serum or Plasma", _BILIRUBIN, ("umol/L",)),
    _test("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", _HDL, ("mg/dL",)),
    _test("14646-4", "Cholesterol in HDL [Moles/volume] in Serum or Plasma", _HDL, ("mmol/L",)),
    _test("13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", _LDL, ("mg/dL",)),
    _test("22748-8", "Cholesterol in LDL [Moles/volume] in Serum or Plasma", _LDL, ("mmol/L",)),
    _test("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", _TRIGLYCERIDE, ("mg/dL",)),
    _test("14927-8", "Triglyceride [Moles/volume] in Serum or Plasma", _TRIGLYCERIDE, ("mmol/L",)),
    _test("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", ("magnesium",), ("mg/dL",)),
    _test("2601-3", "Magnesium [Moles/volume] in Serum or Plasma", ("magnesium",), ("mmol/L",)),
    _test("2777-1", "Phosphate [Mass/volume] in Serum or Plasma", _PHOSPHATE, ("mg/dL",)),
    _test("14879-1", "Phosphate [Moles/volume] in Serum or Plasma", _PHOSPHATE, ("mmol/L",)),
    _test("3084-1", "Urate [Mass/volume] in Serum or Plasma", ("uric acid", "urate"), ("mg/dL",)),
    _test("14933-6", "Urate [Moles/volume] in Serum or Plasma", ("uric acid", "urate"), ("umol/L", "mmol/L")),
    _test(
        "4544-3",
        "Hematocrit [Volume Fraction] of Blood by Automated count",
        ("hematocrit", "haematocrit", "hct", "pcv"),
        ("%", "L/L"),
    ),
    _test(
        "787-2",
        "Erythrocyte mean corpuscular volume [Entitic volume] by Automated count",
        ("mcv", "mean cell volume", "mean corpuscular volume"),
        ("fL",),
    ),
    _test(
        "789-8",
        "Erythrocytes [#/volume] in Blood by Automated count",
        ("rbc", "red cell count", "red blood cells", "red blood cell count"),
        ("10*12/L", "10*6/uL"),
    ),
    _test(
        "751-8",
        "Neutrophils [#/volume] in Blood by Automated count",
        ("neutrophils", "neutrophil count", "neut"),
        ("10*9/L", "10*3/uL"),
    ),
    _test(
        "731-0",
        "Lymphocytes [#/volume] in Blood by Automated count",
        ("lymphocytes", "lymphocyte count"),
        ("10*9/L", "10*3/uL"),
    ),
    _test("3024-7", "Thyroxine (T4) free [Mass/volume] in Serum or Plasma", _FREE_T4, ("ng/dL",)),
    _test("14920-3", "Thyroxine (T4) free [Moles/volume] in Serum or Plasma", _FREE_T4, ("pmol/L",)),
    _test("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", ("ferritin",), ("ng/mL", "ug/L")),
    _test(
        "2132-9",
        "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma",
        ("vitamin b12", "b12", "cobalamin"),
        ("pg/mL", "ng/L"),
    ),
    _test("2284-8", "Folate [Mass/volume] in Serum or Plasma", ("folate", "serum folate"), ("ng/mL", "ug/L")),
    _test("6301-6", "INR in Platelet poor plasma by Coagulation assay", ("inr",), ("{INR}",)),
    _test(
        "33762-6",
        "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma",
        ("nt-probnp", "nt probnp", "ntprobnp"),
        ("pg/mL", "ng/L"),
    ),
    _test("30934-4", "Natriuretic peptide B [Mass/volume] in Serum or Plasma", ("bnp",), ("pg/mL", "ng/L")),
    _test(
        "10839-9",
        "Troponin I.cardiac [Mass/volume] in Serum or Plasma",
        ("troponin i", "trop i", "tni"),
        ("ng/mL", "ug/L"),
    ),
    _test(
        "2157-6",
        "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma",
        ("creatine kinase", "ck", "cpk"),
        ("U/L",),
    ),
    _test("1798-8", "Amylase [Enzymatic activity/volume] in Serum or Plasma", ("amylase",), ("U/L",)),
    _test("3040-3", "Lipase [Enzymatic activity/volume] in Serum or Plasma", ("lipase",), ("U/L",)),
    _test("2524-7", "Lactate [Moles/volume] in Serum or Plasma", ("lactate", "lactic acid"), ("mmol/L",)),
    _test(
        "2857-1",
        "Prostate specific Ag [Mass/volume] in Serum or Plasma",
        ("psa", "prostate specific antigen"),
        ("ng/mL", "ug/L"),
    ),
    _test(
        "30341-2",
        "Erythrocyte sedimentation rate",
        ("esr", "sed rate", "erythrocyte sedimentation rate"),
        ("mm/h",),
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


# A word after a test's name that makes it another test ("Bilirubin, direct", "CK-MB", "Calcium
# (adjusted)", "Glucose, urine"), or a second name after a slash ("Albumin/creatinine ratio").
_ANOTHER_TEST: Final = re.compile(
    r"^(?:[\s,/(\-]*(?:direct|indirect|conjugated|unconjugated|adjusted|corrected|ionised|ionized|mb|urine|urinary"
    r"|ratio|fraction)\b|\s*/\s*[a-z])",
    re.IGNORECASE,
)


def find_lab_test(text: str, unit: str | None = None) -> tuple[LabTest, str] | None:
    """The lab test whose name starts ``text`` (longest name wins) and the name as written; None
    where a word after the name makes it another test ("Bilirubin, direct").

    Where one name has several LOINC codes (mass vs molar), the UCUM ``unit`` picks one; with
    no unit or no match on unit, the first listed is returned.
    """
    match = _name_pattern().match(_without_accents(text))
    if not match or _ANOTHER_TEST.match(text[match.end(1) :]):
        return None
    name = match.group(1).lower()
    candidates = [test for test in _LAB_TESTS if name in test.names]
    for test in candidates:
        if unit and unit in test.units:
            return test, text[match.start(1) : match.end(1)]
    return candidates[0], text[match.start(1) : match.end(1)]
