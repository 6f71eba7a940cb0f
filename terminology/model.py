"""The terminology data model: code systems, concepts with designations, lookup candidates."""

from __future__ import annotations

from typing import Literal

import msgspec

SemanticType = Literal[
    "disorder",
    "finding",
    "procedure",
    "substance",
    "drug",
    "lab-test",
    "observable",
    "unit",
    "body-structure",
    "organism",
    "other",
]
DesignationKind = Literal["preferred", "synonym", "inclusion", "abbreviation", "fsn"]

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SYSTEM_ALIASES: dict[str, str] = {
    "icd10cm": ICD10CM,
    "icd-10-cm": ICD10CM,
    "snomed": SNOMED,
    "sct": SNOMED,
    "rxnorm": RXNORM,
    "loinc": LOINC,
    "ucum": UCUM,
}


def resolve_system(name: str) -> str:
    """A system URI from a short name ("icd10cm") or the URI itself."""
    return SYSTEM_ALIASES.get(name.lower(), name)


class CodeSystemInfo(msgspec.Struct, frozen=True, kw_only=True):
    system: str
    name: str
    version: str
    licence: str
    source: str


class ConceptRow(msgspec.Struct, frozen=True, kw_only=True):
    """One concept, or one more designation of a concept already seen (same code)."""

    code: str
    display: str | None = None
    semantic_type: SemanticType | None = None
    designations: tuple[tuple[str, DesignationKind], ...] = ()


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    system: str
    code: str
    display: str
    semantic_type: str | None
    score: float  # hybrid: re-rank score (cosine + trigram overlap, exact matches first); else RRF
    matched: str  # the designation that matched best
    lexical_rank: int | None = None
    semantic_rank: int | None = None
    exact: bool = False  # a designation equals the mention (residual qualifiers aside)
    similarity: float | None = None  # best cosine similarity of the mention to a designation


class ConceptDetail(msgspec.Struct, frozen=True, kw_only=True):
    system: str
    code: str
    display: str
    semantic_type: str | None
    version: str
    designations: tuple[tuple[str, str], ...]


class TerminologyImportError(Exception):
    """A source file cannot be imported; names the file and line, never prints row content."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        where = f"{source}, line {line}" if line is not None else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem
