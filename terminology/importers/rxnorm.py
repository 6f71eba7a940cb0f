"""RxNorm from ``RXNCONSO.RRF`` (the user's own download from NLM; free with a UMLS licence).

Rows are pipe-delimited with 18 fields (RxNorm Technical Documentation, section 12.5):
RXCUI|LAT|TS|LUI|STT|SUI|ISPREF|RXAUI|SAUI|SCUI|SDUI|SAB|TTY|CODE|STR|SRL|SUPPRESS|CVF|
Only SAB=RXNORM, English, unsuppressed rows are used. One concept per RXCUI; its display is
the name of its most specific term type.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from terminology.importers.lines import read_lines
from terminology.model import RXNORM, CodeSystemInfo, ConceptRow, DesignationKind, SemanticType, TerminologyImportError

_FIELDS: Final = 18
# term types that name a concept (rather than being a synonym of it)
_NAMING_TYPES: Final[dict[str, SemanticType]] = {
    "IN": "substance",
    "PIN": "substance",
    "MIN": "substance",
    "SCD": "drug",
    "SBD": "drug",
    "GPCK": "drug",
    "BPCK": "drug",
    "BN": "drug",
    "SCDF": "drug",
    "SBDF": "drug",
    "SCDC": "drug",
    "SBDC": "drug",
    "DF": "other",
}
_SYNONYM_TYPES: Final = {"SY", "TMSY", "PSN", "SCDG", "SBDG", "ET"}
_SUPPRESSED: Final = {"O", "Y", "E"}


class RxNormRrfImporter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.info = CodeSystemInfo(
            system=RXNORM,
            name="RxNorm",
            version=path.parent.name or path.name,
            licence="UMLS Metathesaurus License (user's own release)",
            source=f"RRF {path.name}",
        )

    def rows(self) -> Iterator[ConceptRow]:
        seen = False
        for number, line in read_lines(self.path):
            if not line:
                continue
            fields = line.split("|")
            if len(fields) != _FIELDS + 1 or fields[-1] != "":
                raise TerminologyImportError(
                    str(self.path), number, f"expected {_FIELDS} pipe-terminated fields (RXNCONSO.RRF layout)"
                )
            rxcui, language, source, term_type, text, suppress = (
                fields[0],
                fields[1],
                fields[11],
                fields[12],
                fields[14],
                fields[16],
            )
            if not rxcui.isdigit():
                raise TerminologyImportError(str(self.path), number, "RXCUI must be numeric")
            seen = True
            if source != "RXNORM" or language != "ENG" or suppress in _SUPPRESSED:
                continue
            if term_type in _NAMING_TYPES:
                kind: DesignationKind = "preferred"
                yield ConceptRow(
                    code=rxcui, display=text, semantic_type=_NAMING_TYPES[term_type], designations=((text, kind),)
                )
            elif term_type in _SYNONYM_TYPES:
                yield ConceptRow(code=rxcui, designations=((text, "synonym"),))
        if not seen:
            raise TerminologyImportError(str(self.path), None, "file has no RxNorm rows")
