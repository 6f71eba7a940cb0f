"""ICD-10-CM: built in from ``simple-icd-10-cm``, or from CMS's official order file.

Only billable codes (leaves of the tabular list) are imported: those are the codes a claim or
a Condition may carry. Titles are preferred designations; tabular inclusion terms are
synonyms of the code they sit under.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from terminology.importers.lines import read_lines
from terminology.model import ICD10CM, CodeSystemInfo, ConceptRow, DesignationKind, TerminologyImportError

ICD10CM_LICENCE = "Public domain (US government work: CDC NCHS / CMS)"


class Icd10cmBuiltinImporter:
    """All billable ICD-10-CM codes with titles and inclusion terms from ``simple-icd-10-cm``.

    ``codes`` limits the import to codes starting with any of the given prefixes (tests and the
    benchmark build small indexes this way); ``with_inclusion_terms=False`` leaves inclusion
    terms out, so the benchmark can query with them as held-out variants.
    """

    def __init__(self, *, prefixes: tuple[str, ...] = (), with_inclusion_terms: bool = True) -> None:
        from importlib.metadata import version

        self.prefixes = prefixes
        self.with_inclusion_terms = with_inclusion_terms
        self.info = CodeSystemInfo(
            system=ICD10CM,
            name="ICD-10-CM",
            version=f"simple-icd-10-cm {version('simple-icd-10-cm')}",
            licence=ICD10CM_LICENCE,
            source="PyPI package simple-icd-10-cm",
        )

    def rows(self) -> Iterator[ConceptRow]:
        import simple_icd_10_cm as icd

        for code in icd.get_all_codes(with_dots=True):
            if not icd.is_leaf(code) or (self.prefixes and not code.startswith(self.prefixes)):
                continue
            title = icd.get_description(code)
            designations: list[tuple[str, DesignationKind]] = [(title, "preferred")]
            if self.with_inclusion_terms:
                designations.extend((term, "inclusion") for term in icd.get_inclusion_term(code))
            yield ConceptRow(code=code, display=title, semantic_type="disorder", designations=tuple(designations))


_ORDER_LINE = re.compile(r"^(\d{5}) ([A-Z0-9]{3,7})\s* ([01]) (.{1,60}?)\s* (.+)$")


def _dotted(code: str) -> str:
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


class Icd10cmOrderFileImporter:
    """CMS ``icd10cm_order_YYYY.txt``: fixed columns (order, code, billable flag, short and long title)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        year = re.search(r"(20\d\d)", path.name)
        self.info = CodeSystemInfo(
            system=ICD10CM,
            name="ICD-10-CM",
            version=year.group(1) if year else path.name,
            licence=ICD10CM_LICENCE,
            source=f"CMS order file {path.name}",
        )

    def rows(self) -> Iterator[ConceptRow]:
        seen = False
        for number, line in read_lines(self.path):
            if not line.strip():
                continue
            match = _ORDER_LINE.match(line)
            if match is None:
                raise TerminologyImportError(
                    str(self.path),
                    number,
                    "not an ICD-10-CM order file line (expected: order number, code, 0/1 flag, short and long title)",
                )
            seen = True
            _, code, billable, short, long = match.groups()
            if billable != "1":
                continue
            title = long.strip()
            designations: list[tuple[str, DesignationKind]] = [(title, "preferred")]
            if short.strip() and short.strip() != title:
                designations.append((short.strip(), "abbreviation"))
            yield ConceptRow(
                code=_dotted(code), display=title, semantic_type="disorder", designations=tuple(designations)
            )
        if not seen:
            raise TerminologyImportError(str(self.path), None, "file has no ICD-10-CM codes")
