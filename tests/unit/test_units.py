"""Units as written on paper become UCUM codes."""

from __future__ import annotations

import pytest

from terminology import find_lab_test, normalize_unit


@pytest.mark.parametrize(
    ("written", "ucum"),
    [
        ("mgs", "mg"),
        ("mcg", "ug"),
        ("µg", "ug"),
        ("mmHg", "mm[Hg]"),
        ("x10^9/L", "10*9/L"),
        ("x10~9/L", "10*9/L"),
        ("10*9/l", "10*9/L"),
        ("umol/L", "umol/L"),
        ("mU/L", "m[IU]/L"),
        ("bpm", "/min"),
        ("C", "Cel"),
        ("furlongs", None),
        ("", None),
    ],
)
def test_normalize_unit(written: str, ucum: str | None) -> None:
    assert normalize_unit(written) == ucum


def test_lab_name_and_unit_pick_the_loinc_code() -> None:
    molar = find_lab_test("Creatinine 88", "umol/L")
    mass = find_lab_test("Creatinine 1.0", "mg/dL")
    assert molar is not None and molar[0].code == "14682-9"
    assert mass is not None and mass[0].code == "2160-0"
    assert find_lab_test("Unobtainium 4") is None
