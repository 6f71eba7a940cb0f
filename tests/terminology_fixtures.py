"""A small real terminology index for tests: a slice of each built-in code system."""

from __future__ import annotations

from pathlib import Path

from terminology.embed import MiniLmEmbedder
from terminology.importers.builtin import LoincBuiltinImporter, UcumBuiltinImporter
from terminology.importers.icd10cm import Icd10cmBuiltinImporter
from terminology.importers.snomed import SnomedGpsImporter
from terminology.index import build_index

# ICD-10-CM chapters the generated documents' diagnoses (and some neighbours) fall in
ICD_PREFIXES = (
    "E11",
    "E78",
    "I10",
    "I48",
    "I50",
    "J44",
    "J45",
    "J18",
    "K21",
    "N18",
    "F32",
    "M17",
    "D64",
    "E03",
    "R07",
    "R06",
    "R50",
    "I26",
)
SNOMED_CODES = frozenset(
    {
        "38341003",  # Hypertensive disorder
        "44054006",  # Diabetes mellitus type 2
        "195967001",  # Asthma
        "49436004",  # Atrial fibrillation
        "29857009",  # Chest pain
        "267036007",  # Dyspnea
        "386661006",  # Fever
        "59282003",  # Pulmonary embolism
        "13645005",  # Chronic obstructive lung disease
        "109081006",  # Product containing metformin
        "27658006",  # Product containing amoxicillin
    }
)


def build_test_index(path: Path, embedder: MiniLmEmbedder) -> Path:
    build_index(
        path,
        embedder,
        [
            Icd10cmBuiltinImporter(prefixes=ICD_PREFIXES),
            SnomedGpsImporter(codes=SNOMED_CODES),
            LoincBuiltinImporter(),
            UcumBuiltinImporter(),
        ],
        fresh=True,
    )
    return path
