"""The coding stage: look each extracted mention up in the terminology index.

A code is attached only when the match is trustworthy: an exact designation match, or a
semantic similarity above ``ACCEPT_SIMILARITY``. Otherwise the mention keeps its text only and
the extraction is flagged ``code-unresolved`` for review — the pipeline never guesses a code.
"""

from __future__ import annotations

from typing import Final

import msgspec

from fhir_profiles.extraction import Allergy, Coding, Diagnosis, Extraction, Medication, Procedure, ReviewReason
from terminology import Candidate, TerminologyService
from terminology.model import ICD10CM, RXNORM, SNOMED

ACCEPT_SIMILARITY: Final = 0.8


def accepted(candidate: Candidate) -> bool:
    return candidate.exact or (candidate.similarity is not None and candidate.similarity >= ACCEPT_SIMILARITY)


def _best(terminology: TerminologyService, text: str, system: str, semantic_types: tuple[str, ...]) -> Coding | None:
    for candidate in terminology.lookup(text, systems=[system], semantic_types=semantic_types, limit=1):
        if accepted(candidate):
            return Coding(system=candidate.system, code=candidate.code, display=candidate.display)
    return None


def _code_diagnosis(terminology: TerminologyService, diagnosis: Diagnosis, systems: set[str]) -> Diagnosis:
    codings = list(diagnosis.codings)
    if ICD10CM in systems:
        icd = _best(terminology, diagnosis.text, ICD10CM, ())
        if icd:
            codings.append(icd)
    if SNOMED in systems:
        snomed = _best(terminology, diagnosis.text, SNOMED, ("disorder", "finding"))
        if snomed:
            codings.append(snomed)
    return msgspec.structs.replace(diagnosis, codings=tuple(codings))


def _code_medication(terminology: TerminologyService, medication: Medication, systems: set[str]) -> Medication:
    if RXNORM in systems:
        coding = _best(terminology, medication.name, RXNORM, ("substance", "drug"))
    elif SNOMED in systems:
        coding = _best(terminology, medication.name, SNOMED, ("substance", "drug"))
    else:
        coding = None
    return msgspec.structs.replace(medication, codings=(*medication.codings, coding) if coding else medication.codings)


def _code_allergy(terminology: TerminologyService, allergy: Allergy, systems: set[str]) -> Allergy:
    if allergy.none_known or SNOMED not in systems:
        return allergy  # "no known allergies" has fixed codes, chosen in the FHIR mapping
    coding = _best(terminology, allergy.substance, SNOMED, ("substance", "drug"))
    return msgspec.structs.replace(allergy, codings=(*allergy.codings, coding)) if coding else allergy


def _code_procedure(terminology: TerminologyService, procedure: Procedure, systems: set[str]) -> Procedure:
    coding = _best(terminology, procedure.text, SNOMED, ("procedure",)) if SNOMED in systems else None
    return msgspec.structs.replace(procedure, codings=(*procedure.codings, coding)) if coding else procedure


def code_extraction(extraction: Extraction, terminology: TerminologyService) -> Extraction:
    systems = {summary.info.system for summary in terminology.code_systems()}
    diagnoses = tuple(_code_diagnosis(terminology, d, systems) for d in extraction.diagnoses)
    medications = tuple(_code_medication(terminology, m, systems) for m in extraction.medications)
    allergies = tuple(_code_allergy(terminology, a, systems) for a in extraction.allergies)
    procedures = tuple(_code_procedure(terminology, p, systems) for p in extraction.procedures)
    reasons = list(extraction.review_reasons)
    unresolved = sum(1 for d in diagnoses if d.assertion == "present" and not d.codings)
    if unresolved:
        reasons.append(
            ReviewReason(
                code="code-unresolved", message=f"{unresolved} diagnosis/diagnoses could not be coded with confidence."
            )
        )
    return msgspec.structs.replace(
        extraction,
        diagnoses=diagnoses,
        medications=medications,
        allergies=allergies,
        procedures=procedures,
        review_reasons=tuple(reasons),
    )
