"""Importers, one module per source format; each streams ``ConceptRow``s for one code system.

An importer is any object with ``info: CodeSystemInfo`` and ``rows() -> Iterator[ConceptRow]``.
``create_importer(format, path)`` picks one for ``paperchart terminology import``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from terminology.model import CodeSystemInfo, ConceptRow, TerminologyImportError


class Importer(Protocol):
    info: CodeSystemInfo

    def rows(self) -> Iterator[ConceptRow]: ...


FORMATS = ("icd10cm-order", "icd10cm-tabular", "snomed-rf2", "rxnorm-rrf", "loinc-csv", "fhir-json")


def create_importer(format_: str, path: Path) -> Importer:
    from terminology.importers.fhir_json import FhirJsonImporter
    from terminology.importers.icd10cm import Icd10cmOrderFileImporter
    from terminology.importers.icd10cm_tabular import Icd10cmTabularImporter
    from terminology.importers.loinc import LoincCsvImporter
    from terminology.importers.rxnorm import RxNormRrfImporter
    from terminology.importers.snomed import SnomedRf2Importer

    importers: dict[str, type] = {
        "icd10cm-order": Icd10cmOrderFileImporter,
        "icd10cm-tabular": Icd10cmTabularImporter,
        "snomed-rf2": SnomedRf2Importer,
        "rxnorm-rrf": RxNormRrfImporter,
        "loinc-csv": LoincCsvImporter,
        "fhir-json": FhirJsonImporter,
    }
    if format_ not in importers:
        raise TerminologyImportError(str(path), None, f"unknown format {format_!r}; use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise TerminologyImportError(str(path), None, "file or folder does not exist")
    importer: Importer = importers[format_](path)
    return importer


__all__ = ["FORMATS", "Importer", "create_importer"]
