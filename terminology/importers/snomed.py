"""SNOMED CT: the Global Patient Set built in (CC BY 4.0), or an RF2 snapshot for licensed users."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Final

from terminology.importers.lines import read_lines
from terminology.model import SNOMED, CodeSystemInfo, ConceptRow, DesignationKind, SemanticType, TerminologyImportError

_SEMANTIC_TAG = re.compile(r"^(?P<term>.*\S)\s+\((?P<tag>[a-z /\-]+)\)$")
_TAG_TYPES: Final[dict[str, SemanticType]] = {
    "disorder": "disorder",
    "finding": "finding",
    "procedure": "procedure",
    "regime/therapy": "procedure",
    "substance": "substance",
    "product": "drug",
    "medicinal product": "drug",
    "medicinal product form": "drug",
    "clinical drug": "drug",
    "observable entity": "observable",
    "body structure": "body-structure",
    "organism": "organism",
    "situation": "finding",
    "event": "finding",
    "morphologic abnormality": "body-structure",
}
FSN: Final = "900000000000003001"
SYNONYM: Final = "900000000000013009"
PREFERRED: Final = "900000000000548007"


def split_fsn(fsn: str) -> tuple[str, SemanticType]:
    """("Asthma", "disorder") from "Asthma (disorder)"."""
    match = _SEMANTIC_TAG.match(fsn)
    if not match:
        return fsn, "other"
    return match.group("term"), _TAG_TYPES.get(match.group("tag"), "other")


_PRODUCT_PREFIX = re.compile(r"^Product containing (?:only |precisely )?", re.IGNORECASE)


def _designations(term: str) -> tuple[tuple[str, DesignationKind], ...]:
    """The preferred term, plus the bare ingredient for "Product containing X" products."""
    bare = _PRODUCT_PREFIX.sub("", term)
    if bare != term:
        return ((term, "preferred"), (bare, "synonym"))
    return ((term, "preferred"),)


class SnomedGpsImporter:
    """The SNOMED CT Global Patient Set shipped in ``terminology/data`` (see SOURCES.md)."""

    def __init__(self, *, limit: int | None = None, codes: frozenset[str] | None = None) -> None:
        self.limit = limit
        self.codes = codes
        self._valueset = json.loads(
            gzip.decompress(resources.files("terminology.data").joinpath("snomed-ct-gps.valueset.json.gz").read_bytes())
        )
        self.info = CodeSystemInfo(
            system=SNOMED,
            name="SNOMED CT Global Patient Set",
            version=str(self._valueset.get("version", "")),
            licence="CC BY 4.0, SNOMED International",
            source="npm hl7.terminology.r4 7.0.1, ValueSet snomed-intl-gps",
        )

    def rows(self) -> Iterator[ConceptRow]:
        count = 0
        for include in self._valueset["compose"]["include"]:
            for concept in include.get("concept", []):
                if self.codes is not None and concept["code"] not in self.codes:
                    continue
                term, semantic_type = split_fsn(concept["display"])
                yield ConceptRow(
                    code=concept["code"], display=term, semantic_type=semantic_type, designations=_designations(term)
                )
                count += 1
                if self.limit is not None and count >= self.limit:
                    return


class SnomedRf2Importer:
    """An RF2 snapshot folder: active concepts, their descriptions, preferred by the language refset.

    Streams the description file once; only the set of active concept ids and of preferred
    description ids are held in memory (integers), never the terms.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.concept_file = self._find("sct2_Concept_Snapshot")
        self.description_file = self._find("sct2_Description_Snapshot")
        self.language_file = self._find("der2_cRefset_LanguageSnapshot", required=False)
        version = re.search(r"_(\d{8})\.txt$", self.concept_file.name)
        self.info = CodeSystemInfo(
            system=SNOMED,
            name="SNOMED CT",
            version=version.group(1) if version else "",
            licence="SNOMED CT Affiliate Licence (user's own release)",
            source=f"RF2 snapshot {path.name}",
        )

    def _find(self, prefix: str, *, required: bool = True) -> Path:
        matches = sorted(self.path.rglob(f"{prefix}*.txt")) if self.path.is_dir() else []
        if not matches:
            if required:
                raise TerminologyImportError(str(self.path), None, f"no {prefix}*.txt file in this RF2 folder")
            return Path()
        return matches[0]

    def _table(self, path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
        header: list[str] | None = None
        for number, line in read_lines(path):
            fields = line.split("\t")
            if header is None:
                header = fields
                if tuple(header[: len(columns)]) != columns:
                    raise TerminologyImportError(str(path), number, f"RF2 header must start {'/'.join(columns)}")
                continue
            if len(fields) != len(header):
                raise TerminologyImportError(str(path), number, f"expected {len(header)} tab-separated fields")
            yield number, fields

    def rows(self) -> Iterator[ConceptRow]:
        active = {
            int(f[0]) for _, f in self._table(self.concept_file, ("id", "effectiveTime", "active")) if f[2] == "1"
        }
        preferred: set[int] = set()
        if self.language_file != Path():
            columns = (
                "id",
                "effectiveTime",
                "active",
                "moduleId",
                "refsetId",
                "referencedComponentId",
                "acceptabilityId",
            )
            preferred = {
                int(f[5]) for _, f in self._table(self.language_file, columns) if f[2] == "1" and f[6] == PREFERRED
            }
        description_columns = (
            "id",
            "effectiveTime",
            "active",
            "moduleId",
            "conceptId",
            "languageCode",
            "typeId",
            "term",
        )
        for _, fields in self._table(self.description_file, description_columns):
            if fields[2] != "1" or int(fields[4]) not in active:
                continue
            concept_id, type_id, term = fields[4], fields[6], fields[7]
            if type_id == FSN:
                _, semantic_type = split_fsn(term)
                yield ConceptRow(
                    code=concept_id, semantic_type=semantic_type, designations=((term, "fsn"),), display=None
                )
            else:
                kind: DesignationKind = "preferred" if int(fields[0]) in preferred else "synonym"
                yield ConceptRow(
                    code=concept_id, display=term if kind == "preferred" else None, designations=((term, kind),)
                )
