"""UCUM unit normalisation: the way units are written on paper → the UCUM code FHIR wants.

UCUM codes per https://ucum.org/ucum (case-sensitive form, "c/s"); the common-units value set of
FHIR R4 (http://hl7.org/fhir/ValueSet/ucum-common) uses the same codes.
"""

from __future__ import annotations

import re

# Lower-cased written form (spaces removed) -> UCUM code.
WRITTEN_TO_UCUM: dict[str, str] = {
    "mg": "mg",
    "mgs": "mg",
    "milligram": "mg",
    "milligrams": "mg",
    "g": "g",
    "gm": "g",
    "gram": "g",
    "grams": "g",
    "mcg": "ug",
    "ug": "ug",
    "µg": "ug",
    "μg": "ug",
    "microgram": "ug",
    "micrograms": "ug",
    "ng": "ng",
    "kg": "kg",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "in": "[in_i]",
    "inch": "[in_i]",
    "inches": "[in_i]",
    "ml": "mL",
    "mls": "mL",
    "l": "L",
    "unit": "[iU]",
    "units": "[iU]",
    "iu": "[iU]",
    "u": "U",
    "mmhg": "mm[Hg]",
    "bpm": "/min",
    "/min": "/min",
    "beats/min": "/min",
    "breaths/min": "/min",
    "c": "Cel",
    "°c": "Cel",
    "degc": "Cel",
    "f": "[degF]",
    "°f": "[degF]",
    "%": "%",
    "cm": "cm",
    "m": "m",
    "kg/m2": "kg/m2",
    "kg/m^2": "kg/m2",
    "g/l": "g/L",
    "g/dl": "g/dL",
    "mg/dl": "mg/dL",
    "mg/l": "mg/L",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "μmol/l": "umol/L",
    "mmol/mol": "mmol/mol",
    "u/l": "U/L",
    "iu/l": "[IU]/L",
    "mu/l": "m[IU]/L",
    "miu/l": "m[IU]/L",
    "pmol/l": "pmol/L",
    "nmol/l": "nmol/L",
    "ng/ml": "ng/mL",
    "ng/dl": "ng/dL",
    "ng/l": "ng/L",
    "pg/ml": "pg/mL",
    "ug/l": "ug/L",
    "µg/l": "ug/L",
    "μg/l": "ug/L",
    "mcg/l": "ug/L",
    "meq/l": "meq/L",
    "mm/h": "mm/h",
    "mm/hr": "mm/h",
    "l/l": "L/L",
    "mg/mmol": "mg/mmol",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "ml/min/1.73m^2": "mL/min/{1.73_m2}",
    "ml/min/1.73": "mL/min/{1.73_m2}",
    "fl": "fL",
    "pg": "pg",
}
# Cell counts: "x10^9/L", "x 10*9/L", "10^9/l", "X10E9/L" -> "10*9/L".
_CELL_COUNT = re.compile(r"^(?:x|\u00d7)?\s*10\s*(?:\^|\*|e|~|\*\*)\s*(\d{1,2})\s*/\s*(l|ul|µl|mm3)$", re.IGNORECASE)


def normalize_unit(written: str | None) -> str | None:
    """Return the UCUM code for a unit as written, or None when it is not recognised."""
    if not written:
        return None
    key = written.strip().replace(" ", "").lower().rstrip(".")
    if key in WRITTEN_TO_UCUM:
        return WRITTEN_TO_UCUM[key]
    match = _CELL_COUNT.match(key)
    if match:
        exponent, volume = match.groups()
        volume_code = {"l": "L", "ul": "uL", "µl": "uL", "mm3": "mm3"}[volume.lower()]
        return f"10*{exponent}/{volume_code}"
    return None


# Display names of the UCUM codes above, for the built-in UCUM code system.
UCUM_NAMES: dict[str, str] = {
    "mg": "milligram",
    "g": "gram",
    "ug": "microgram",
    "ng": "nanogram",
    "kg": "kilogram",
    "[lb_av]": "pound",
    "mL": "milliliter",
    "L": "liter",
    "[iU]": "international unit",
    "U": "enzyme unit",
    "mm[Hg]": "millimeter of mercury",
    "/min": "per minute",
    "Cel": "degree Celsius",
    "[degF]": "degree Fahrenheit",
    "%": "percent",
    "cm": "centimeter",
    "m": "meter",
    "[in_i]": "inch",
    "kg/m2": "kilogram per square meter",
    "g/L": "gram per liter",
    "g/dL": "gram per deciliter",
    "mg/dL": "milligram per deciliter",
    "mg/L": "milligram per liter",
    "mmol/L": "millimole per liter",
    "umol/L": "micromole per liter",
    "mmol/mol": "millimole per mole",
    "U/L": "enzyme unit per liter",
    "[IU]/L": "international unit per liter",
    "m[IU]/L": "milli international unit per liter",
    "pmol/L": "picomole per liter",
    "nmol/L": "nanomole per liter",
    "ng/mL": "nanogram per milliliter",
    "fL": "femtoliter",
    "pg": "picogram",
    "10*9/L": "billion per liter",
    "10*12/L": "trillion per liter",
    "10*3/uL": "thousand per microliter",
    "10*6/uL": "million per microliter",
    "ng/dL": "nanogram per deciliter",
    "ng/L": "nanogram per liter",
    "pg/mL": "picogram per milliliter",
    "ug/L": "microgram per liter",
    "meq/L": "milliequivalent per liter",
    "mm/h": "millimeter per hour",
    "L/L": "liter per liter",
    "{INR}": "international normalized ratio",
    "mg/mmol": "milligram per millimole",
    "mL/min/{1.73_m2}": "milliliter per minute per 1.73 square meters",
}
