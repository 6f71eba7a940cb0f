"""Code systems and lookup: importers, the hybrid FTS5 + sqlite-vec index, UCUM and LOINC tables.

Sources and licences of every built-in table are in ``terminology/data/SOURCES.md``.
"""

from terminology.labs import LabTest, find_lab_test, lab_tests
from terminology.lookup import TerminologyService
from terminology.model import Candidate, CodeSystemInfo, ConceptDetail, TerminologyImportError, resolve_system
from terminology.units import normalize_unit

__all__ = [
    "Candidate",
    "CodeSystemInfo",
    "ConceptDetail",
    "LabTest",
    "TerminologyImportError",
    "TerminologyService",
    "find_lab_test",
    "lab_tests",
    "normalize_unit",
    "resolve_system",
]
