"""What extraction found in a document: the input of the FHIR mapping.

These Structs are the contract between the pipeline (which fills them) and ``fhir_profiles``
(which turns them into FHIR). Every fact carries ``Evidence``: where on which page it was
read, so each FHIR resource can get a Provenance that points at the pixels.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Assertion = Literal["present", "negated", "hypothetical", "historical", "family", "uncertain"]
DocumentType = Literal[
    "clinic-letter", "discharge-summary", "lab-report", "medication-list", "prescription", "referral", "unknown"
]
VitalKind = Literal[
    "blood_pressure",
    "heart_rate",
    "respiratory_rate",
    "body_temperature",
    "oxygen_saturation",
    "body_weight",
    "body_height",
    "bmi",
]
IdentifierKind = Literal["mrn", "nhs"]
LabFlag = Literal["N", "H", "L", "HH", "LL"]
AllergyCategory = Literal["food", "medication", "environment", "biologic"]
Severity = Literal["mild", "moderate", "severe"]


class Box(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A rectangle on a page, normalized to 0..1 of page width and height (origin top-left)."""

    x0: float
    y0: float
    x1: float
    y1: float


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """Where a fact was read: page (1-based), character span in that page's text, word boxes."""

    page: int
    start: int
    end: int
    text: str
    boxes: tuple[Box, ...] = ()
    ocr_confidence: float = 1.0  # lowest confidence of the words in the span


class Coding(msgspec.Struct, frozen=True, kw_only=True):
    system: str
    code: str
    display: str | None = None


class ReviewReason(msgspec.Struct, frozen=True, kw_only=True):
    """Why a person must look before release: a stable machine code plus a PHI-free sentence."""

    code: str
    message: str


class TextFact(msgspec.Struct, frozen=True, kw_only=True):
    value: str
    evidence: Evidence | None = None


class Identifier(msgspec.Struct, frozen=True, kw_only=True):
    kind: IdentifierKind
    value: str
    valid: bool = True  # check digit passed (where the kind has one)
    evidence: Evidence | None = None


class PatientFacts(msgspec.Struct, frozen=True, kw_only=True):
    name: TextFact | None = None
    given: tuple[str, ...] = ()
    family: str | None = None
    birth_date: TextFact | None = None  # ISO 8601 date
    sex: TextFact | None = None  # FHIR administrative-gender code
    identifiers: tuple[Identifier, ...] = ()
    address: TextFact | None = None  # as written, one line
    postal_code: str | None = None  # UK postcode or US ZIP code found in the address
    phone: TextFact | None = None
    email: TextFact | None = None


class Diagnosis(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    assertion: Assertion = "present"
    relative: str | None = None  # for assertion "family": who had it ("mother", "brother", "family")
    codings: tuple[Coding, ...] = ()
    evidence: Evidence | None = None
    confidence: float = 1.0


class Timing(msgspec.Struct, frozen=True, kw_only=True):
    """FHIR Timing.repeat in miniature: ``frequency`` times per ``period`` ``period_unit``."""

    frequency: int | None = None
    period: float | None = None
    period_unit: Literal["h", "d", "wk"] | None = None
    when: tuple[str, ...] = ()  # FHIR event-timing codes, e.g. HS (at bedtime)
    as_needed: bool = False
    code: str | None = None  # the written abbreviation, e.g. BID


class Medication(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    text: str  # the line as written
    dose_value: float | None = None
    dose_unit: str | None = None  # UCUM
    route: str | None = None  # route key, e.g. oral
    timing: Timing | None = None
    codings: tuple[Coding, ...] = ()
    status: Literal["active", "stopped", "on-hold", "unknown"] = "active"
    changed: bool = False  # the document changes it ("increased to", "dose changed")
    evidence: Evidence | None = None
    confidence: float = 1.0


class Vital(msgspec.Struct, frozen=True, kw_only=True):
    kind: VitalKind
    value: float
    unit: str  # UCUM
    diastolic: float | None = None  # blood pressure only
    evidence: Evidence | None = None


class LabResult(msgspec.Struct, frozen=True, kw_only=True):
    test: str
    value: float
    unit: str | None = None  # UCUM
    unit_text: str | None = None  # as written
    low: float | None = None
    high: float | None = None
    flag: LabFlag | None = None
    comparator: Literal["<", "<=", ">=", ">"] | None = None
    specimen_date: str | None = None  # ISO 8601: when the sample was taken, when the report says
    codings: tuple[Coding, ...] = ()
    evidence: Evidence | None = None


class Allergy(msgspec.Struct, frozen=True, kw_only=True):
    """An allergy or intolerance, or the statement that there is none ("NKDA": ``none_known``)."""

    substance: str  # as written; for none_known the statement itself ("No known drug allergies")
    reaction: str | None = None  # manifestation as written ("rash", "anaphylaxis")
    severity: Severity | None = None
    category: AllergyCategory | None = None
    none_known: bool = False
    codings: tuple[Coding, ...] = ()
    evidence: Evidence | None = None


class Procedure(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    date: str | None = None  # ISO 8601 date or year, when written
    codings: tuple[Coding, ...] = ()
    evidence: Evidence | None = None


class FollowUp(msgspec.Struct, frozen=True, kw_only=True):
    """An action the document asks for ("Review in clinic in 6 weeks", "Repeat HbA1c in 3 months")."""

    text: str
    evidence: Evidence | None = None


EncounterClass = Literal["inpatient", "outpatient", "emergency"]


class Encounter(msgspec.Struct, frozen=True, kw_only=True):
    """The visit the document is about: an admission (with its dates and ward) or a clinic visit."""

    kind: EncounterClass
    start: str | None = None  # ISO 8601 date
    end: str | None = None
    department: str | None = None  # ward, clinic or specialty as written
    practitioner: str | None = None
    evidence: Evidence | None = None


class Extraction(msgspec.Struct, frozen=True, kw_only=True):
    document_type: DocumentType = "unknown"
    encounter: Encounter | None = None
    document_date: TextFact | None = None  # ISO 8601 date the document is about (letter, report date)
    author: TextFact | None = None  # the clinician who wrote or signed it
    facility: TextFact | None = None  # the organisation it comes from
    patient: PatientFacts = msgspec.field(default_factory=PatientFacts)
    diagnoses: tuple[Diagnosis, ...] = ()
    medications: tuple[Medication, ...] = ()
    vitals: tuple[Vital, ...] = ()
    labs: tuple[LabResult, ...] = ()
    allergies: tuple[Allergy, ...] = ()
    procedures: tuple[Procedure, ...] = ()
    follow_ups: tuple[FollowUp, ...] = ()
    extractor: str = "rules"
    review_reasons: tuple[ReviewReason, ...] = ()

    @property
    def requires_review(self) -> bool:
        return bool(self.review_reasons)
