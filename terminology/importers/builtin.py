"""Built-in code systems that come from tables in this package: LOINC (labs, vitals) and UCUM."""

from __future__ import annotations

from collections.abc import Iterator

from terminology.labs import VITAL_CODES, lab_tests
from terminology.model import LOINC, UCUM, CodeSystemInfo, ConceptRow, DesignationKind
from terminology.units import UCUM_NAMES, WRITTEN_TO_UCUM


class LoincBuiltinImporter:
    info = CodeSystemInfo(
        system=LOINC,
        name="LOINC (paperchart built-in subset)",
        version="built-in",
        licence="LOINC licence (https://loinc.org/license)",
        source="terminology/labs.py",
    )

    def rows(self) -> Iterator[ConceptRow]:
        for test in lab_tests():
            designations: list[tuple[str, DesignationKind]] = [(test.display, "preferred")]
            designations.extend((name, "synonym") for name in test.names if len(name) > 2)
            designations.extend((name, "abbreviation") for name in test.names if len(name) <= 2)
            yield ConceptRow(
                code=test.code, display=test.display, semantic_type="lab-test", designations=tuple(designations)
            )
        for code, display in VITAL_CODES.values():
            yield ConceptRow(
                code=code, display=display, semantic_type="observable", designations=((display, "preferred"),)
            )


class UcumBuiltinImporter:
    info = CodeSystemInfo(
        system=UCUM,
        name="UCUM (common units)",
        version="2.1",
        licence="UCUM, free to use (Regenstrief Institute)",
        source="terminology/units.py",
    )

    def rows(self) -> Iterator[ConceptRow]:
        written: dict[str, list[str]] = {}
        for text, code in WRITTEN_TO_UCUM.items():
            written.setdefault(code, []).append(text)
        for code, name in UCUM_NAMES.items():
            designations: list[tuple[str, DesignationKind]] = [(name, "preferred"), (code, "abbreviation")]
            designations.extend((text, "abbreviation") for text in written.get(code, []) if text != code)
            yield ConceptRow(code=code, display=name, semantic_type="unit", designations=tuple(designations))
