"""The coding stage: look each extracted mention up in the terminology index.

Every mention (diagnosis, medication, allergy substance, procedure) gets ranked candidates from
the index. Which of them, if any, becomes the code:

- without a chooser (the rules extractor): the top candidate, only when the match is trustworthy —
  an exact designation match, or a semantic similarity of at least ``ACCEPT_SIMILARITY``
  (``PAPERCHART_CODE_ACCEPT_SIMILARITY``: higher sends more mentions to review and releases fewer
  wrong codes; ``bench/terminology.py`` measures both at several thresholds);
- with a chooser (the LLM extractor): an exact match is taken as it is; otherwise the top
  ``CANDIDATES`` go to the chooser, which may pick one of them or none (retrieval-augmented
  coding: the model sees the index's candidates and can only choose among them, never invent a
  code). If the chooser is unavailable, the threshold rule above decides instead.

A diagnosis left without a code is flagged ``code-unresolved`` for review: the pipeline never
guesses a code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Final, Protocol, TypeVar

import msgspec

from fhir_profiles.extraction import Coding, Extraction, ReviewReason
from terminology import Candidate, TerminologyService
from terminology.model import ICD10CM, RXNORM, SNOMED

logger = logging.getLogger(__name__)
ACCEPT_SIMILARITY: Final = 0.8  # the default of Settings.code_accept_similarity
CANDIDATES: Final = 5  # shown to a chooser per mention


class CodeQuestion(msgspec.Struct, frozen=True, kw_only=True):
    """One mention and the index's candidates for it, in one code system."""

    mention: str
    kind: str  # "diagnosis", "medication", "allergy", "procedure"
    system: str
    candidates: tuple[Candidate, ...]


class ChooserUnavailable(Exception):
    """The chooser could not answer (its model is down, or the answer was unusable)."""


class CodeChooser(Protocol):
    """Picks, for each question, one of its candidates' codes, or None when none fits."""

    name: str

    def choose(self, questions: Sequence[CodeQuestion]) -> list[str | None]: ...


def accepted(candidate: Candidate, threshold: float = ACCEPT_SIMILARITY) -> bool:
    return candidate.exact or (candidate.similarity is not None and candidate.similarity >= threshold)


class _Slot(msgspec.Struct, frozen=True):
    family: str  # the Extraction field
    index: int
    system: str
    text: str
    semantic_types: tuple[str, ...]


_KIND: Final = {
    "diagnoses": "diagnosis",
    "medications": "medication",
    "allergies": "allergy",
    "procedures": "procedure",
}


def drug_system(systems: set[str]) -> str | None:
    """The code system medications are coded in: RxNorm once imported, else SNOMED CT's products."""
    return RXNORM if RXNORM in systems else SNOMED if SNOMED in systems else None


def _slots(extraction: Extraction, systems: set[str]) -> Iterator[_Slot]:
    for i, diagnosis in enumerate(extraction.diagnoses):
        if ICD10CM in systems:
            yield _Slot("diagnoses", i, ICD10CM, diagnosis.text, ())
        if SNOMED in systems:
            yield _Slot("diagnoses", i, SNOMED, diagnosis.text, ("disorder", "finding"))
    drugs = drug_system(systems)
    for i, medication in enumerate(extraction.medications):
        if drugs:
            yield _Slot("medications", i, drugs, medication.name, ("substance", "drug"))
    for i, allergy in enumerate(extraction.allergies):
        # "no known allergies" has fixed codes, chosen in the FHIR mapping
        if SNOMED in systems and not allergy.none_known:
            yield _Slot("allergies", i, SNOMED, allergy.substance, ("substance", "drug"))
    for i, procedure in enumerate(extraction.procedures):
        if SNOMED in systems:
            yield _Slot("procedures", i, SNOMED, procedure.text, ("procedure",))


def _coding(candidate: Candidate) -> Coding:
    return Coding(system=candidate.system, code=candidate.code, display=candidate.display)


def _decide(
    slots: Sequence[_Slot], found: Sequence[Sequence[Candidate]], chooser: CodeChooser | None, threshold: float
) -> tuple[list[Coding | None], list[ReviewReason]]:
    """The coding for each slot, and any review reasons the deciding raised."""
    decided: list[Coding | None] = [None] * len(slots)
    asked: list[int] = []
    for i, candidates in enumerate(found):
        if not candidates:
            continue
        if chooser is None or candidates[0].exact:
            decided[i] = _coding(candidates[0]) if accepted(candidates[0], threshold) else None
        else:
            asked.append(i)
    if not asked or chooser is None:
        return decided, []
    questions = [
        CodeQuestion(
            mention=slots[i].text,
            kind=_KIND[slots[i].family],
            system=slots[i].system,
            candidates=tuple(found[i]),  # looked up with limit=CANDIDATES
        )
        for i in asked
    ]
    try:
        answers = chooser.choose(questions)
    except ChooserUnavailable:
        logger.warning("the code chooser %s is unavailable; codes decided by similarity instead", chooser.name)
        for i in asked:
            decided[i] = _coding(found[i][0]) if accepted(found[i][0], threshold) else None
        reason = ReviewReason(
            code="code-chooser-unavailable",
            message="The model that chooses codes did not answer; codes were decided by similarity alone.",
        )
        return decided, [reason]
    for i, question, answer in zip(asked, questions, answers, strict=True):
        # a code that was not offered is never used, whatever the chooser says
        chosen = next((c for c in question.candidates if c.code == answer), None)
        decided[i] = _coding(chosen) if chosen is not None else None
    return decided, []


def decide_diagnosis_codes(
    mentions: Sequence[str],
    system: str,
    found: Sequence[Sequence[Candidate]],
    chooser: CodeChooser | None,
    threshold: float = ACCEPT_SIMILARITY,
) -> list[Coding | None]:
    """The code the pipeline gives each diagnosis mention in ``system`` from its candidates (the
    same rule as for a document: an exact match kept, the rest to the chooser, similarity if it is
    down). For measuring the coding outside a document (``bench/terminology.py --llm-url``)."""
    slots = [_Slot("diagnoses", i, system, text, ()) for i, text in enumerate(mentions)]
    return _decide(slots, found, chooser, threshold)[0]


class _HasCodings(Protocol):
    @property
    def codings(self) -> tuple[Coding, ...]: ...


_Coded = TypeVar("_Coded", bound=_HasCodings)


def _with_codes(added: dict[tuple[str, int], list[Coding]], family: str, items: Sequence[_Coded]) -> tuple[_Coded, ...]:
    """``items`` with the codings decided for them appended."""
    return tuple(
        msgspec.structs.replace(item, codings=(*item.codings, *added[family, i]))  # type: ignore[type-var]
        if (family, i) in added
        else item
        for i, item in enumerate(items)
    )


def code_extraction(
    extraction: Extraction,
    terminology: TerminologyService,
    chooser: CodeChooser | None = None,
    threshold: float = ACCEPT_SIMILARITY,
) -> Extraction:
    """``extraction`` with the codes decided for its mentions; ``threshold``: the similarity at
    which a top candidate is taken without a chooser (see the module's docstring)."""
    systems = {summary.info.system for summary in terminology.code_systems()}
    slots = list(_slots(extraction, systems))
    limit = CANDIDATES if chooser is not None else 1
    found = [
        terminology.lookup(slot.text, systems=[slot.system], semantic_types=slot.semantic_types, limit=limit)
        for slot in slots
    ]
    decided, reasons = _decide(slots, found, chooser, threshold)
    added: dict[tuple[str, int], list[Coding]] = {}
    for slot, coding in zip(slots, decided, strict=True):
        if coding is not None:
            added.setdefault((slot.family, slot.index), []).append(coding)

    coded = msgspec.structs.replace(
        extraction,
        diagnoses=_with_codes(added, "diagnoses", extraction.diagnoses),
        medications=_with_codes(added, "medications", extraction.medications),
        allergies=_with_codes(added, "allergies", extraction.allergies),
        procedures=_with_codes(added, "procedures", extraction.procedures),
    )
    unresolved = sum(1 for d in coded.diagnoses if d.assertion == "present" and not d.codings)
    if unresolved:
        reasons.append(
            ReviewReason(
                code="code-unresolved", message=f"{unresolved} diagnosis/diagnoses could not be coded with confidence."
            )
        )
    return msgspec.structs.replace(coded, review_reasons=(*extraction.review_reasons, *reasons))
