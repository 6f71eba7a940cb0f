"""Checks a reviewer sees while typing: numbers, units, plausible ranges, dates, check digits.

Each returns a short sentence (no PHI: it never repeats the value) or None when the value is fine.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

from server.pipeline.extract.rules import nhs_number_is_valid
from server.review.edits import ASSERTIONS, PARTIAL_DATE
from terminology.units import normalize_unit

_RANGES: Final = {
    ("Observation", "systolic"): (40.0, 300.0),
    ("Observation", "diastolic"): (20.0, 200.0),
    ("MedicationStatement", "dose"): (0.0, 100_000.0),
    ("MedicationRequest", "dose"): (0.0, 100_000.0),
}
_GENDERS: Final = {"male", "female", "other", "unknown"}


def _number(value: str) -> float | None:
    try:
        return float(value.strip())
    except ValueError:
        return None


def validate_field(kind: str, field: str, value: str, today: dt.date | None = None) -> str | None:
    value = value.strip()
    if field in ("dose", "value", "systolic", "diastolic"):
        number = _number(value)
        if number is None:
            return "Enter a number."
        low, high = _RANGES.get((kind, field), (float("-inf"), float("inf")))
        if not low < number <= high:
            return f"Outside the plausible range ({low:g} to {high:g})."
        return None
    if field == "unit":
        return None if normalize_unit(value) else "Not a unit paperchart recognises; it will be kept as written."
    if field == "birthDate":
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return "Use the form YYYY-MM-DD."
        try:
            born = dt.date.fromisoformat(value)
        except ValueError:
            return "Not a real date."
        if born > (today or dt.date.today()):
            return "The date of birth is in the future."
        return None
    if field in ("date", "start", "end") and value and not PARTIAL_DATE.fullmatch(value):
        return "Use the form YYYY, YYYY-MM or YYYY-MM-DD."
    if field == "nhsNumber":
        return None if nhs_number_is_valid(re.sub(r"\D", "", value)) else "The NHS number fails its check digit."
    if field == "gender":
        return None if value in _GENDERS else "Use male, female, other or unknown."
    if field == "assertion":
        return None if value in ASSERTIONS else "Not a known assertion."
    if field in ("name", "text") and not value:
        return "This cannot be empty."
    if field == "code" and value and value.count("|") < 1:
        return "Pick a code from the list."
    return None
