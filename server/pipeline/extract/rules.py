"""The embedded rules extractor: sections, patterns and a NegEx-style assertion check.

No model and no network: deterministic, fast, always available, and the fallback when an
LLM extractor is down. It reads the composed page text line by line, knows which section a
line is in ("Medications", "Diagnoses", a results table...), and records for every fact the
character span it was read from, so each fact has boxes on the page.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterator, Sequence
from typing import Final, Literal

import msgspec

from fhir_profiles.extraction import (
    Allergy,
    AllergyCategory,
    Assertion,
    Coding,
    Diagnosis,
    DocumentType,
    Encounter,
    EncounterClass,
    Evidence,
    Extraction,
    FollowUp,
    Identifier,
    LabFlag,
    LabResult,
    Medication,
    PatientFacts,
    Procedure,
    Severity,
    TextFact,
    Timing,
    Vital,
    VitalKind,
)
from server.pipeline.page import OcrPage
from server.pipeline.tables import Cell, find_tables
from terminology import LabTest, find_lab_test, normalize_unit
from terminology.model import LOINC

DateOrder = Literal["DMY", "MDY"]
Section = Literal[
    "diagnoses",
    "medications",
    "stopped-medications",
    "allergies",
    "observations",
    "history",
    "results",
    "plan",
    "assessment-plan",  # a US note's "Assessment and Plan": numbered problems, each with its plan
    "procedures",
    "other",
]


class _Line(msgspec.Struct, frozen=True):
    page: OcrPage
    start: int  # offset of the line in page.text
    text: str
    section: Section | None


# --- sections -----------------------------------------------------------------------------

_SECTION_HEADINGS: Final[dict[str, Section]] = {
    "diagnoses": "diagnoses",
    "diagnosis": "diagnoses",
    "discharge diagnoses": "diagnoses",
    "discharge diagnosis": "diagnoses",
    "problem list": "diagnoses",
    "problems": "diagnoses",
    "active problems": "diagnoses",
    "past medical history": "diagnoses",
    "pmh": "diagnoses",
    "assessment": "diagnoses",
    "impression": "diagnoses",
    "medications": "medications",
    "medication": "medications",
    "current medications": "medications",
    "discharge medications": "medications",
    "medication list": "medications",
    "drugs": "medications",
    "regular medications": "medications",
    "stopped medications": "stopped-medications",
    "medications stopped": "stopped-medications",
    "discontinued medications": "stopped-medications",
    "medications discontinued": "stopped-medications",
    "allergies": "allergies",
    "allergy": "allergies",
    "drug allergies": "allergies",
    "allergies and adverse reactions": "allergies",
    "allergies and intolerances": "allergies",
    "procedures": "procedures",
    "past surgical history": "procedures",
    "surgical history": "procedures",
    "psh": "procedures",
    "operations": "procedures",
    "previous operations": "procedures",
    "procedures performed": "procedures",
    "observations": "observations",
    "vitals": "observations",
    "vital signs": "observations",
    "examination": "observations",
    "history of presenting complaint": "history",
    "history of present illness": "history",
    "hpi": "history",
    "presenting complaint": "history",
    "results": "results",
    "laboratory results": "results",
    "plan": "plan",
    "follow-up": "plan",
    "follow up": "plan",
    "follow-up plan": "plan",
    "actions": "plan",
    # more of what discharge summaries and letters call their sections
    "primary diagnosis": "diagnoses",
    "principal diagnosis": "diagnoses",
    "secondary diagnoses": "diagnoses",
    "working diagnosis": "diagnoses",
    "final diagnosis": "diagnoses",
    "comorbidities": "diagnoses",
    "co-morbidities": "diagnoses",
    "past history": "diagnoses",
    "medical history": "diagnoses",
    "medications on discharge": "medications",
    "discharge medication": "medications",
    "medications on admission": "medications",
    "admission medications": "medications",
    "current medicines": "medications",
    "medicines": "medications",
    "repeat medications": "medications",
    "tto": "medications",
    "ttos": "medications",
    "investigations": "results",
    "relevant investigations": "results",
    "key investigations": "results",
    "blood results": "results",
    "recent bloods": "results",
    "recent blood tests": "results",
    "recent results": "results",
    "recent labs": "results",
    "blood tests": "results",
    "bloods": "results",
    "lab results": "results",
    "labs": "results",
    "pathology": "results",
    "on examination": "observations",
    "o/e": "observations",
    "physical examination": "observations",
    "physical exam": "observations",
    "examination findings": "observations",
    "clinical summary": "history",
    "summary": "history",
    "hospital course": "history",
    "course in hospital": "history",
    "history": "history",
    "social history": "other",
    "family history": "other",
    "recommendations": "plan",
    "management plan": "plan",
    "gp actions": "plan",
    "actions for gp": "plan",
    "operations performed": "procedures",
    "procedures this admission": "procedures",
    "assessment and plan": "assessment-plan",
    "assessment & plan": "assessment-plan",
    "assessment/plan": "assessment-plan",
    "a&p": "assessment-plan",
    "a/p": "assessment-plan",
}
_HEADING_CLEAN = re.compile(r"(?:\s*\([^)]*\))?[:\s]*$")  # "Current medications (name, dose, how often):"


def _heading(text: str) -> Section | None:
    key = _HEADING_CLEAN.sub("", text.strip()).lower()
    return _SECTION_HEADINGS.get(key)


# A line that reads as a heading paperchart does not know ("Social care needs:"): it ends the
# section before it, so what follows is not read as more of that section (more diagnoses, say).
# sections that list one kind of fact: no vital sign or lab result is read in them
_LIST_SECTIONS: Final[tuple[Section, ...]] = (
    "medications",
    "stopped-medications",
    "diagnoses",
    "allergies",
    "procedures",
    "plan",
    "assessment-plan",
)
_OTHER_HEADING = re.compile(r"^\s*[A-Z][A-Za-z&/'\- ]{2,40}:\s*$")
# A known heading with its list on the same line: "Past medical history: Type 2 diabetes; COPD".
_INLINE_HEADING = re.compile(r"^\s*(?P<heading>[A-Za-z][A-Za-z&/'\- ]{1,40}?)\s*:\s+(?P<body>\S.*)$")
_INLINE_LISTS: Final[frozenset[Section]] = frozenset({"diagnoses", "procedures", "results"})


def _list_items(body: str, section: Section) -> Iterator[tuple[int, str]]:
    """(offset, item) of a list written on one line: parted by semicolons, and by commas where
    there are three items or more of four words at most ("Hypertension, type 2 diabetes, COPD";
    not "Type 2 diabetes, diet controlled"); results by every comma ("Hb 112 g/L, CRP 5 mg/L")."""
    body = body.rstrip().rstrip(".")
    parts = body.split(";")
    if section == "results":
        parts = re.split(r"[;,]", body)
    elif len(parts) == 1:
        commas = body.split(",")
        if len(commas) >= 3 and all(0 < len(p.split()) <= 4 for p in commas):
            parts = commas
    offset = 0
    for part in parts:
        if part.strip():
            yield offset + len(part) - len(part.lstrip()), part.strip()
        offset += len(part) + 1


def _lines(pages: Sequence[OcrPage]) -> Iterator[_Line]:
    section: Section | None = None
    for page in pages:
        offset = 0
        for raw in page.text.split("\n"):
            heading = _heading(raw)
            inline = _INLINE_HEADING.match(raw) if heading is None else None
            listed = _heading(inline.group("heading")) if inline else None
            if heading is not None:
                section = heading
            elif _OTHER_HEADING.match(raw):
                section = "other"
            elif inline is not None and listed in _INLINE_LISTS:
                for start, item in _list_items(inline.group("body"), listed):
                    yield _Line(page, offset + inline.start("body") + start, item, listed)
                section = "other"  # the list was the whole section
            else:
                yield _Line(page, offset, raw, section)
            offset += len(raw) + 1


# --- document type ------------------------------------------------------------------------

_DOCUMENT_TYPES: Final[tuple[tuple[re.Pattern[str], DocumentType], ...]] = (
    (re.compile(r"discharge\s+summary", re.I), "discharge-summary"),
    (re.compile(r"(laboratory|lab|pathology)\s+report", re.I), "lab-report"),
    (re.compile(r"medication\s+list", re.I), "medication-list"),
    (re.compile(r"referral", re.I), "referral"),
    (re.compile(r"prescription", re.I), "prescription"),
    (re.compile(r"clinic\s+(letter|note)|outpatient", re.I), "clinic-letter"),
)


def _document_type(pages: Sequence[OcrPage]) -> DocumentType:
    head = pages[0].text[:600] if pages else ""
    for pattern, document_type in _DOCUMENT_TYPES:
        if pattern.search(head):
            return document_type
    return "unknown"


# --- dates --------------------------------------------------------------------------------

_MONTHS: Final = {
    m: i
    for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)
}
# A month name may come back from OCR with a space inside it ("26 J ul 2025"); parse_date
# closes such gaps and then checks the month is a month.
_MONTH_WORD: Final = r"[A-Za-z](?: ?[A-Za-z]){2,8}"
DATE_PATTERN: Final = (
    r"(?:\d{4}-\d{1,2}-\d{1,2}"
    r"|\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}"
    r"|\d{1,2}(?:st|nd|rd|th)?[\s\-]+" + _MONTH_WORD + r"\.?[\s\-,]+\d{4}"
    r"|" + _MONTH_WORD + r"\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4})"
)


def parse_date(text: str, order: DateOrder = "DMY", *, today: dt.date | None = None) -> dt.date | None:
    """Parse a written date; numeric day/month order follows ``order`` when ambiguous."""
    text = re.sub(r"(?<=[A-Za-z]) (?=[a-z])", "", text.strip().rstrip(".,"))  # "J ul" -> "Jul"
    try:
        if re.fullmatch(r"\d{4}-\d{1,2}-\d{1,2}", text):
            year, month, day = (int(p) for p in text.split("-"))
            return dt.date(year, month, day)
        numeric = re.fullmatch(r"(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2,4})", text)
        if numeric:
            first, second, year = (int(p) for p in numeric.groups())
            if year < 100:  # two-digit year: the most recent century that is not in the future
                this_year = (today or dt.date.today()).year
                year += 2000 if 2000 + year <= this_year else 1900
            day, month = (first, second) if order == "DMY" else (second, first)
            if month > 12 >= day:  # the other order is the only valid reading
                day, month = month, day
            return dt.date(year, month, day)
        words = re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)?[\s\-]+([A-Za-z]{3,9})\.?[\s\-,]+(\d{4})", text)
        if words:
            named_month = _MONTHS.get(words.group(2)[:3].lower())
            return dt.date(int(words.group(3)), named_month, int(words.group(1))) if named_month else None
        words = re.fullmatch(r"([A-Za-z]{3,9})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", text)
        if words:
            named_month = _MONTHS.get(words.group(1)[:3].lower())
            return dt.date(int(words.group(3)), named_month, int(words.group(2))) if named_month else None
    except ValueError:
        return None
    return None


# --- patient ------------------------------------------------------------------------------

_LABELS: Final = r"(?:DOB|D\.O\.B\.?|Date\s+of\s+Birth|Sex|Gender|MRN|NHS|Age|Address|Hospital\s+No)"
_NAME = re.compile(
    r"(?:Patient(?:'s)?\s*Name|Patient|Name)\s*[:\-]\s*"
    # words one space apart; two spaces or more end the name ("Mrs Margaret Ellis  DOB: ...")
    r"(?P<value>(?:(?!" + _LABELS + r"\b)[A-Za-z][A-Za-z'\-.]*,?(?:[ ](?!\s)|(?=\s{2})|$)){1,5})",
    re.IGNORECASE,
)
# a letter's subject line: "Re: Mr David Brown, DOB 22/07/1959" (a name only where a date of
# birth or an identifier follows it, so "Re: referral for chest pain" is no name)
_LETTER_SUBJECT = re.compile(
    r"\b(?i:re)\s*:\s*(?P<value>(?:(?:Mr|Mrs|Ms|Miss|Mx|Master|Dr)\.?\s+)?[A-Z][A-Za-z'\-]*(?:\s+[A-Z][A-Za-z'\-]*){1,3})"
    r"(?=\s*[,(]?\s*(?:DOB|D\.O\.B|born|NHS|MRN|Hospital\s+No|\d{1,2}[/.\-]\d))"
)
_TITLES: Final = {"mr", "mrs", "ms", "miss", "dr", "mx", "prof"}
_DOB = re.compile(
    r"(?:DOB|D\.O\.B\.?|Date\s+of\s+Birth|Born)\s*[:\-]?\s*(?P<value>" + DATE_PATTERN + r")(?!\d)", re.IGNORECASE
)
_SEX = re.compile(r"(?:Sex|Gender)\s*[:\-]?\s*(?P<value>male|female|man|woman|other|unknown|M|F|U)\b", re.IGNORECASE)
_SEX_CODES: Final = {
    "m": "male",
    "male": "male",
    "man": "male",
    "f": "female",
    "female": "female",
    "woman": "female",
    "other": "other",
    "u": "unknown",
    "unknown": "unknown",
}
_MRN = re.compile(
    r"\b(?:MRN|Medical\s+Record\s+(?:No\.?|Number)|Hospital\s+No\.?)\s*[:#]?\s*(?P<value>[A-Z0-9][A-Z0-9\-]{3,19})\b",
    re.IGNORECASE,
)
_NHS = re.compile(
    r"\bNHS\s*(?:No\.?|Number|#)?\s*[:\-]?\s*(?P<value>\d{3}[\s\-]?\d{3}[\s\-]?\d{4})(?!\d)", re.IGNORECASE
)


_ADDRESS = re.compile(
    r"\bAddress\s*[:\-]\s*(?P<value>\S.*?)"
    r"(?=\s{2,}|\s+(?:Tel|Telephone|Phone|Mobile|Mob|E-?mail|NHS|MRN|DOB|Sex)\b|$)",
    re.IGNORECASE,
)
_POSTAL_CODE = re.compile(r"\b([A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}|\d{5}(?:-\d{4})?)\s*$")
_PHONE = re.compile(
    r"\b(?:Tel(?:ephone)?|Phone|Mobile|Mob)\.?(?:\s*No\.?)?\s*[:\-]?\s*(?P<value>\+?\(?\d[\d ()\-]{6,18}\d)",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"(?P<value>[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,})")


def nhs_number_is_valid(digits: str) -> bool:
    """NHS number Modulus 11 check (NHS Data Dictionary, "NHS Number")."""
    if not re.fullmatch(r"\d{10}", digits):
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def postal_code_of(address: str) -> str | None:
    """The UK postcode or US ZIP code that ends a one-line address."""
    postal = _POSTAL_CODE.search(address.upper())
    return " ".join(postal.group(1).split()) if postal else None


def _split_name(name: str) -> tuple[tuple[str, ...], str | None]:
    if "," in name:  # "SMITH, John"
        family, _, given = name.partition(",")
        return tuple(p for p in given.split() if p.lower().rstrip(".") not in _TITLES), family.strip()
    parts = [p for p in name.split() if p.lower().rstrip(".") not in _TITLES]
    if not parts:
        return (), None
    return tuple(parts[:-1]), parts[-1]


def _patient(lines: Sequence[_Line], order: DateOrder) -> PatientFacts:
    name = birth_date = sex = address = phone = email = None
    given: tuple[str, ...] = ()
    family = None
    identifiers: list[Identifier] = []
    for line in lines:
        if name is None and (match := _NAME.search(line.text) or _LETTER_SUBJECT.search(line.text)):
            value = " ".join(match.group("value").split()).strip(" ,")
            if len(value) >= 3:
                name = TextFact(value=value, evidence=_evidence(line, match, "value"))
                given, family = _split_name(value)
        if birth_date is None and (match := _DOB.search(line.text)):
            parsed = parse_date(match.group("value"), order)
            if parsed is not None:
                birth_date = TextFact(value=parsed.isoformat(), evidence=_evidence(line, match, "value"))
        if sex is None and (match := _SEX.search(line.text)):
            sex = TextFact(value=_SEX_CODES[match.group("value").lower()], evidence=_evidence(line, match, "value"))
        if address is None and (match := _ADDRESS.search(line.text)):
            address = TextFact(value=match.group("value").strip(" ,"), evidence=_evidence(line, match, "value"))
        if phone is None and (match := _PHONE.search(line.text)):
            phone = TextFact(value=" ".join(match.group("value").split()), evidence=_evidence(line, match, "value"))
        if email is None and (match := _EMAIL.search(line.text)):
            email = TextFact(value=match.group("value"), evidence=_evidence(line, match, "value"))
        for match in _MRN.finditer(line.text):
            if not any(i.kind == "mrn" for i in identifiers):
                identifiers.append(
                    Identifier(kind="mrn", value=match.group("value"), evidence=_evidence(line, match, "value"))
                )
        for match in _NHS.finditer(line.text):
            digits = re.sub(r"\D", "", match.group("value"))
            if not any(i.kind == "nhs" for i in identifiers):
                identifiers.append(
                    Identifier(
                        kind="nhs",
                        value=digits,
                        valid=nhs_number_is_valid(digits),
                        evidence=_evidence(line, match, "value"),
                    )
                )
    return PatientFacts(
        name=name,
        given=given,
        family=family,
        birth_date=birth_date,
        sex=sex,
        identifiers=tuple(identifiers),
        address=address,
        postal_code=postal_code_of(address.value) if address is not None else None,
        phone=phone,
        email=email,
    )


# --- the document: its date, author and organisation ----------------------------------------

_DOCUMENT_DATE = re.compile(
    r"\b(?:Date(?:\s+of\s+(?:letter|report|discharge|clinic|visit|admission|service|encounter))?|Letter\s+date|"
    r"Report\s+date|Discharge\s+date|Clinic\s+date|Date\s+seen|Reported|Service\s+date|Visit\s+date|"
    r"Encounter\s+date|DOS)\s*[:\-]\s*(?P<value>" + DATE_PATTERN + r")(?!\d)",
    re.IGNORECASE,
)
_AUTHOR = re.compile(
    r"\b(?:Clinician|Author|Consultant|Signed(?:\s+by)?|Dictated\s+by|Reporting\s+clinician|Doctor)\s*[:\-]\s*"
    r"(?P<value>(?:Dr|Prof|Mr|Mrs|Ms|Miss|Mx)\.?\s+[A-Z][A-Za-z.'\-]*(?:\s+[A-Z][A-Za-z.'\-]*){0,3})"
)
_ORGANISATION = re.compile(
    r"\b(Hospital|Clinic|Centre|Center|Surgery|Practice|Infirmary|Health|Medical|Laboratory|Laboratories|Trust)\b",
    re.IGNORECASE,
)


_SPECIMEN_DATE = re.compile(
    r"\b(?:Collected|Collection\s+date|Specimen\s+(?:date|collected|taken)|Sample\s+(?:date|taken)|Date\s+collected)"
    r"\s*(?:on)?\s*[:\-]?\s*(?P<value>" + DATE_PATTERN + r")(?!\d)",
    re.IGNORECASE,
)
_ADMITTED = re.compile(
    r"\b(?:Admitted|Admission(?:\s+date)?|Date\s+of\s+admission)\s*(?:on)?\s*[:\-]?\s*"
    r"(?P<value>" + DATE_PATTERN + r")(?!\d)",
    re.IGNORECASE,
)
_DISCHARGED = re.compile(
    r"\b(?:Discharged|Discharge\s+date|Date\s+of\s+discharge)\s*(?:on)?\s*[:\-]?\s*"
    r"(?P<value>" + DATE_PATTERN + r")(?!\d)",
    re.IGNORECASE,
)
_DEPARTMENT = re.compile(
    r"\b(?:Ward|Department|Dept\.?|Specialty|Speciality|Clinic)\s*[:\-]\s*"
    r"(?P<value>[A-Za-z0-9][A-Za-z0-9&/'\- ]{1,40}?)"
    r"(?=\s{2,}|\s+(?:Admitted|Discharged|Consultant|Clinician|Date)\b|[.,;]|$)",
    re.IGNORECASE,
)


def _first_text(lines: Sequence[_Line], pattern: re.Pattern[str]) -> TextFact | None:
    """The first labelled value the pattern finds (its ``value`` group), whitespace tidied."""
    for line in lines:
        if match := pattern.search(line.text):
            return TextFact(value=" ".join(match.group("value").split()), evidence=_evidence(line, match, "value"))
    return None


def _first_date(lines: Sequence[_Line], pattern: re.Pattern[str], order: DateOrder) -> TextFact | None:
    """The first labelled date the pattern finds that parses, as ISO 8601."""
    for line in lines:
        match = pattern.search(line.text)
        if match and (parsed := parse_date(match.group("value"), order)) is not None:
            return TextFact(value=parsed.isoformat(), evidence=_evidence(line, match, "value"))
    return None


def _with_specimen_date(labs: list[LabResult], lines: Sequence[_Line], order: DateOrder) -> list[LabResult]:
    """The report's specimen collection date on each of its results (one date per report)."""
    collected = _first_date(lines, _SPECIMEN_DATE, order)
    if collected is None:
        return labs
    return [msgspec.structs.replace(lab, specimen_date=collected.value) for lab in labs]


def _encounter(
    lines: Sequence[_Line], document_type: DocumentType, author: TextFact | None, order: DateOrder
) -> Encounter | None:
    """The admission a discharge summary is about, or the visit a clinic letter reports."""
    start = _first_date(lines, _ADMITTED, order)
    end = _first_date(lines, _DISCHARGED, order)
    return encounter_of(start, end, _first_text(lines, _DEPARTMENT), document_type, author)


def encounter_of(
    start: TextFact | None,
    end: TextFact | None,
    department: TextFact | None,
    document_type: DocumentType,
    author: TextFact | None,
) -> Encounter | None:
    """The encounter those facts describe (an admission when it has dates or the document is a
    discharge summary, else a visit), or None when there are none."""
    first = start or end or department
    if first is None:
        return None
    kind: EncounterClass = "inpatient" if start or end or document_type == "discharge-summary" else "outpatient"
    return Encounter(
        kind=kind,
        start=start.value if start else None,
        end=end.value if end else None,
        department=department.value if department else None,
        practitioner=author.value if author is not None else None,
        evidence=first.evidence,
    )


def _document_facts(
    lines: Sequence[_Line], pages: Sequence[OcrPage], order: DateOrder
) -> tuple[TextFact | None, TextFact | None, TextFact | None]:
    """(date, author, facility): a labelled date, a labelled clinician, and the letterhead."""
    facility = None
    if pages:
        first = pages[0].text.split("\n", 1)[0].strip()
        if first and _ORGANISATION.search(first) and not re.search(r"\d|:", first):
            facility = TextFact(value=first, evidence=pages[0].evidence(0, len(first)))
    return _first_date(lines, _DOCUMENT_DATE, order), _first_text(lines, _AUTHOR), facility


def _evidence(line: _Line, match: re.Match[str], group: str | int = 0) -> Evidence:
    start, end = match.span(group)
    return line.page.evidence(line.start + start, line.start + end)


# --- assertion (NegEx / ConText style) ----------------------------------------------------

# Chapman et al., "A simple algorithm for identifying negated findings" (2001); ConText (2009).
_PRE_NEGATION = re.compile(
    r"\b(no|not|denies|denied|denying|without|negative\s+for|free\s+of|no\s+evidence\s+of|absence\s+of|"
    r"no\s+signs?\s+of|no\s+history\s+of)\b",
    re.IGNORECASE,
)
_POST_NEGATION = re.compile(r"\b(ruled\s+out|excluded|was\s+negative|is\s+negative|not\s+seen)\b", re.IGNORECASE)
_UNCERTAIN = re.compile(r"\b(possible|possibly|probable|probably|suspected|query|likely|\?)\s*", re.IGNORECASE)
_HYPOTHETICAL = re.compile(
    r"\b(if|should\s+(?:he|she|they|the\s+patient)\s+develop|in\s+case\s+of|return\s+if)\b", re.IGNORECASE
)
_HISTORICAL = re.compile(r"\b(history\s+of|h/o|previous|prior|past)\b", re.IGNORECASE)
_FAMILY = re.compile(
    r"\b(family\s+history|mother|father|sister|brother|grandmother|grandfather|aunt|uncle|FH)\b", re.IGNORECASE
)
_SCOPE_END = re.compile(r"[.;:]|\bbut\b|\bhowever\b|\bexcept\b", re.IGNORECASE)


def relative_of(context: str) -> str:
    """Who in the family a family-history finding is about ("family" when the text does not say)."""
    words = [m.group(1).lower() for m in _FAMILY.finditer(context)]
    specific = [w for w in words if w not in ("family history", "fh")]
    return specific[0] if specific else "family"


def assertion_of(phrase: str, context: str) -> Assertion:
    """The assertion of ``phrase`` within ``context`` (the sentence or line it appears in)."""
    index = context.lower().find(phrase.lower())
    before = context[:index] if index >= 0 else context
    after = context[index + len(phrase) :] if index >= 0 else ""
    # only triggers in the same clause count: cut the window at the last scope terminator
    clause_start = max((m.end() for m in _SCOPE_END.finditer(before)), default=0)
    before = before[clause_start:]
    clause_end = _SCOPE_END.search(after)
    after = after[: clause_end.start()] if clause_end else after
    if _FAMILY.search(before):
        return "family"
    if _PRE_NEGATION.search(before) or _POST_NEGATION.search(after):
        return "negated"
    if _HYPOTHETICAL.search(before):
        return "hypothetical"
    if _UNCERTAIN.search(before) or _UNCERTAIN.match(after.strip()):
        return "uncertain"
    if _HISTORICAL.search(before):
        return "historical"
    return "present"


# Negated findings named in free text: "No chest pain.", "Denies SOB.", "PE ruled out."
_NEGATED_FINDING_PRE = re.compile(
    r"\b(?:no|denies|denied|negative\s+for|no\s+evidence\s+of|no\s+signs?\s+of)\s+"
    r"(?P<finding>[A-Za-z][A-Za-z\-]*(?:\s+[A-Za-z][A-Za-z\-]*){0,4}?)\s*(?=[.;,]|$|\s+(?:and|or|but)\b)",
    re.IGNORECASE,
)
_NEGATED_FINDING_POST = re.compile(
    r"(?:^|(?<=[.;]\s)|(?<=[.;]))\s*(?P<finding>[A-Za-z][A-Za-z\-]*(?:\s+[A-Za-z][A-Za-z\-]*){0,4}?)\s+"
    r"(?:was\s+|has\s+been\s+)?(?:ruled\s+out|excluded)\b",
    re.IGNORECASE,
)
_NOT_FINDINGS: Final = {
    "known",
    "further",
    "longer",
    "change",
    "new",
    "other",
    "significant",
    "acute",
    "fixed",
    "abode",
    "concerns",
    "complaints",
    "problems",
    "issues",
}


def _negated_findings(line: _Line) -> Iterator[Diagnosis]:
    for pattern in (_NEGATED_FINDING_PRE, _NEGATED_FINDING_POST):
        for match in pattern.finditer(line.text):
            finding = match.group("finding").strip()
            if not finding or finding.split()[0].lower() in _NOT_FINDINGS or len(finding) < 3:
                continue
            yield Diagnosis(
                text=finding, assertion="negated", evidence=_evidence(line, match, "finding"), confidence=0.9
            )


_ASSERTION_CUES_BEFORE = re.compile(
    r"^(?:(?:possible|probable|suspected|query|\?|history\s+of|h/o|previous|no|family\s+history\s+of)\s+)+",
    re.IGNORECASE,
)
_ASSERTION_CUES_AFTER = re.compile(r"\s+(?:(?:was\s+)?ruled\s+out|excluded|\?)$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-•*·▪◦]|\d{1,2}[.)]|[a-z][.)])\s*")


# where a numbered problem of an assessment and plan ends and its plan begins
_PLAN_PART = re.compile(
    r"\s+[-\u2013\u2014]\s+|:\s+|;\s*|\.\s+|,\s+(?=(?:continue|start|stop|increase|decrease)\b)", re.I
)
# a numbered item that is a plan, not a problem ("3. Return in 3 months", "Continue current medications")
_PLAN_ITEM = re.compile(
    r"^(?:continue|start|stop|increase|decrease|hold|discontinue|titrate|counsel(?:led)?|educat\w*|discuss\w*|"
    r"labs?|f/u|rtc)\b",
    re.I,
)


def _problem_of(line: _Line) -> Diagnosis | None:
    """The problem a numbered (or bulleted) item of an assessment and plan names, before its plan
    ("2. Essential hypertension - continue lisinopril"); an unnumbered line is plan prose."""
    bullet = _BULLET.match(line.text)
    if bullet is None:
        return None
    text = line.text[bullet.end() :]
    head = _PLAN_PART.split(text, maxsplit=1)[0].strip().rstrip(".;,")
    if len(head) < 3 or not re.search(r"[A-Za-z]{3}", head) or _ACTION.match(head) or _PLAN_ITEM.match(head):
        return None
    return _diagnosis_at(line, bullet.end() + text.find(head), head)


# a listed condition that is over: "Acute kidney injury, resolved", "Pneumonia (resolved)"
_RESOLVED_AFTER = re.compile(r"\s*[,(\-\u2013]?\s*(?:now\s+|since\s+)?(?:resolved|healed)\)?$", re.IGNORECASE)


def _diagnosis_at(line: _Line, start: int, text: str) -> Diagnosis:
    """The condition ``text`` (at ``start`` in the line) names; assertion cues decide its
    assertion and are dropped from its name ("possible sleep apnea": uncertain, "sleep apnea";
    "pneumonia, resolved": historical, "pneumonia")."""
    resolved = _RESOLVED_AFTER.search(text)
    listed = text[: resolved.start()] if resolved else text
    name = _ASSERTION_CUES_AFTER.sub("", _ASSERTION_CUES_BEFORE.sub("", listed))
    assertion = assertion_of(name, listed)
    if resolved and assertion == "present":
        assertion = "historical"
    name_start = line.start + start + text.find(name)
    return Diagnosis(
        text=name,
        assertion=assertion,
        relative=relative_of(text) if assertion == "family" else None,
        evidence=line.page.evidence(name_start, name_start + len(name)),
    )


def _diagnoses(lines: Sequence[_Line], pages: Sequence[OcrPage]) -> list[Diagnosis]:
    found: list[Diagnosis] = []
    for line in lines:
        if line.section == "diagnoses":
            bullet = _BULLET.match(line.text)
            start = bullet.end() if bullet else len(line.text) - len(line.text.lstrip())
            text = line.text[start:].strip().rstrip(".;,")
            if len(text) < 3 or not re.search(r"[A-Za-z]{3}", text):
                continue
            if _names_an_operation(text):
                continue  # an operation in a past-history list: a procedure (see _procedures)
            found.append(_diagnosis_at(line, start, text))
        elif line.section == "assessment-plan" and (problem := _problem_of(line)) is not None:
            found.append(problem)
        elif line.section in (None, "history", "observations", "other", "plan", "assessment-plan"):
            found.extend(_negated_findings(line))
    found.extend(_ticked_conditions(pages))
    unique: dict[tuple[str, str], Diagnosis] = {}
    for diagnosis in found:
        unique.setdefault((diagnosis.text.lower(), diagnosis.assertion), diagnosis)
    return list(unique.values())


# Conditions ticked on a form: "Have you ever been told you have any of these conditions?" [x] Asthma
_CONDITION_QUESTION = re.compile(
    r"\b(conditions?|diagnosed|medical\s+history|illness(?:es)?|health\s+problems?|diseases?)\b", re.I
)
_NOT_CONDITION_QUESTION = re.compile(r"allerg|medic|drug|tablet|smok|alcohol", re.I)


def _ticked_conditions(pages: Sequence[OcrPage]) -> Iterator[Diagnosis]:
    """Ticked boxes under a question about conditions; an empty box says nothing (not asked is not denied)."""
    for page in pages:
        labels = {c.label for c in page.checkboxes if c.label}
        for box in page.checkboxes:
            if not box.checked or box.label is None or box.start is None or box.end is None:
                continue
            line_start = page.text.rfind("\n", 0, box.start) + 1
            above = page.text[max(0, line_start - 600) : line_start].split("\n")
            # the nearest line above that is not itself a row of boxes
            question = next((ln for ln in reversed(above) if ln.strip() and not any(lb in ln for lb in labels)), "")
            if not _CONDITION_QUESTION.search(question) or _NOT_CONDITION_QUESTION.search(question):
                continue
            evidence = page.evidence(box.start, box.end)
            yield Diagnosis(
                text=box.label,
                evidence=msgspec.structs.replace(
                    evidence,
                    boxes=(page.box(box.bbox), *evidence.boxes),
                    ocr_confidence=round(min(evidence.ocr_confidence, box.confidence), 4),
                ),
                confidence=box.confidence,
            )


# --- medications --------------------------------------------------------------------------

_MEDICATION = re.compile(
    r"^(?P<name>[A-Za-z][A-Za-z\-]*(?:\s+[A-Za-z][A-Za-z\-]*){0,3}?)\s+"
    r"(?P<dose>\d+(?:[.,]\d+)?)\s*(?P<unit>mg|mgs|mcg|µg|ug|micrograms?|g|ml|mL|units?|iu|IU)\b"
    r"(?P<rest>.*)$",
    re.IGNORECASE,
)
_ROUTES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"\b(?:p\.?o\.?|oral(?:ly)?|by\s+mouth)(?=\W|$)", re.I), "oral"),
    (re.compile(r"\b(?:s\.?c\.?|subcut(?:aneous(?:ly)?)?|sq)(?=\W|$)", re.I), "subcutaneous"),
    (re.compile(r"\b(?:i\.?v\.?|intravenous(?:ly)?)(?=\W|$)", re.I), "intravenous"),
    (re.compile(r"\b(?:i\.?m\.?|intramuscular(?:ly)?)(?=\W|$)", re.I), "intramuscular"),
    (re.compile(r"\b(?:inh|inhaled|inhaler|neb(?:ulised|ulized)?|puffs?)(?=\W|$)", re.I), "inhaled"),
    (re.compile(r"\b(?:s\.?l\.?|sublingual(?:ly)?)(?=\W|$)", re.I), "sublingual"),
    (re.compile(r"\b(?:p\.?r\.?|rectal(?:ly)?)(?=\W|$)", re.I), "rectal"),
    (re.compile(r"\b(?:top(?:ical(?:ly)?)?)(?=\W|$)", re.I), "topical"),
)
# Order matters: longer, more specific phrases first.
_FREQUENCIES: Final[tuple[tuple[re.Pattern[str], Timing], ...]] = (
    (
        re.compile(r"\b(?:(?:four|4)\s*(?:times|x)\s+(?:a\s+|per\s+)?da(?:il)?y|q\.?i\.?d\.?|qds)\b", re.I),
        Timing(frequency=4, period=1, period_unit="d", code="QID"),
    ),
    (
        re.compile(r"\b(?:(?:three|3)\s*(?:times|x)\s+(?:a\s+|per\s+)?da(?:il)?y|t\.?i\.?d\.?|tds)\b", re.I),
        Timing(frequency=3, period=1, period_unit="d", code="TID"),
    ),
    (
        re.compile(r"\b(?:(?:twice|2\s*(?:times|x))\s+(?:a\s+|per\s+)?da(?:il)?y|b\.?i\.?d\.?|bd)\b", re.I),
        Timing(frequency=2, period=1, period_unit="d", code="BID"),
    ),
    (
        re.compile(r"\b(?:at\s+night|at\s+bedtime|nocte|q\.?h\.?s\.?)\b", re.I),
        Timing(frequency=1, period=1, period_unit="d", when=("HS",), code="QHS"),
    ),
    (
        # "OM" (omni mane, UK): each morning
        re.compile(r"\b(?:in\s+the\s+morning|each\s+morning|every\s+morning|o\.?m\.?|mane)\b", re.I),
        Timing(frequency=1, period=1, period_unit="d", when=("MORN",), code="AM"),
    ),
    (
        re.compile(r"\b(?:once\s+(?:a\s+)?da(?:il)?y|daily|o\.?d\.?|q\.?d\.?|every\s+day)\b", re.I),
        Timing(frequency=1, period=1, period_unit="d", code="QD"),
    ),
    (
        re.compile(r"\b(?:once\s+(?:a\s+)?week(?:ly)?|weekly)\b", re.I),
        Timing(frequency=1, period=1, period_unit="wk", code="WK"),
    ),
)
_EVERY_HOURS = re.compile(r"\b(?:q\.?\s*(\d{1,2})\s*h(?:rs?|ourly)?|every\s+(\d{1,2})\s+hours?)\b", re.I)
_AS_NEEDED = re.compile(r"\b(?:p\.?r\.?n\.?|as\s+(?:needed|required)|when\s+required)\b", re.I)


def parse_timing(text: str) -> Timing | None:
    """Timing from a SIG fragment ("BID", "at night", "q6h PRN")."""
    as_needed = bool(_AS_NEEDED.search(text))
    for pattern, timing in _FREQUENCIES:
        if pattern.search(text):
            return msgspec.structs.replace(timing, as_needed=as_needed)
    hours = _EVERY_HOURS.search(text)
    if hours:
        every = int(hours.group(1) or hours.group(2))
        return Timing(frequency=1, period=every, period_unit="h", as_needed=as_needed, code=f"Q{every}H")
    if as_needed:
        return Timing(as_needed=True, code="PRN")
    return None


def _parse_route(text: str) -> str | None:
    for pattern, route in _ROUTES:
        if pattern.search(text):
            return route
    return None


_UNITS_TAKEN = re.compile(
    r"^\s*(?:[,\-]\s*)?(?:(?:inhaler|mdi|evohaler|accuhaler|tablets?|tabs?|capsules?|caps?)\s+)?(?:take\s+)?"
    r"(\d)\s*(?:x\s*)?(?:tabs?|tablets?|caps?|capsules?|puffs?|sprays?|actuations?)\b",
    re.I,
)


def parse_medication(body: str) -> Medication | None:
    """A medication line as written ("Metformin 500 mg po BID") parsed, without evidence; None if it is not one."""
    match = _MEDICATION.match(body.strip())
    if not match:
        return None
    rest = match.group("rest")
    dose = float(match.group("dose").replace(",", "."))
    # "Metformin 500 mg 2 tablets BID", "Albuterol 90 mcg 2 puffs": the strength of one, taken N at a time
    if units := _UNITS_TAKEN.match(rest):
        dose *= int(units.group(1))
    return Medication(
        name=match.group("name").strip(),
        text=body.strip(),
        dose_value=dose,
        dose_unit=normalize_unit(match.group("unit")),
        route=_parse_route(rest),
        timing=parse_timing(rest),
    )


_STOPPED = re.compile(r"\b(stopped|stop|discontinued|ceased|withheld|suspended)\b", re.IGNORECASE)
_CHANGED = re.compile(
    r"\b(increased|reduced|decreased|changed|switched|titrated|(?:dose|dosage)\s+(?:changed|adjusted))\b",
    re.IGNORECASE,
)


def _medications(lines: Sequence[_Line]) -> list[Medication]:
    found: list[Medication] = []
    for line in lines:
        bullet = _BULLET.match(line.text)
        offset = bullet.end() if bullet else 0
        body = line.text[offset:].strip()
        medication = parse_medication(body)
        if medication is None:
            continue
        # outside a medication section, only a full SIG (dose, route or frequency) counts
        in_section = line.section in ("medications", "stopped-medications")
        if not in_section and medication.route is None and medication.timing is None:
            continue
        sig = body[len(medication.name) :]  # what is said about the drug, not its name
        if line.section == "stopped-medications" or _STOPPED.search(sig):
            medication = msgspec.structs.replace(medication, status="stopped")
        elif _CHANGED.search(sig):
            medication = msgspec.structs.replace(medication, changed=True)
        start = line.start + line.text.find(body)
        found.append(msgspec.structs.replace(medication, evidence=line.page.evidence(start, start + len(body))))
    return found


# --- vitals -------------------------------------------------------------------------------

# between a vital sign's name and its value: "BP: 120/80", "BP 120/80", "BP was 158/92", "pulse of 84"
_IS: Final = r"\s*(?:[:\-]|\s(?:was|is|of)\b)?\s*"
_VITALS: Final[tuple[tuple[re.Pattern[str], VitalKind], ...]] = (
    (
        re.compile(
            r"\b(?:BP|Blood\s+pressure)" + _IS + r"(?P<value>\d{2,3})\s*/\s*(?P<diastolic>\d{2,3})(?:\s*mm\s*Hg)?", re.I
        ),
        "blood_pressure",
    ),
    (
        re.compile(r"\b(?:HR|Pulse|Heart\s+rate)" + _IS + r"(?P<value>\d{2,3})(?:\s*(?:bpm|/min|beats))?", re.I),
        "heart_rate",
    ),
    (
        re.compile(
            r"\b(?:RR|Resp(?:iratory)?\s+rate|Resp)" + _IS + r"(?P<value>\d{1,2})(?:\s*/\s*min|\s*breaths)?", re.I
        ),
        "respiratory_rate",
    ),
    (
        # two digits in Celsius, three for a fever in Fahrenheit ("Temp 101.3 F")
        re.compile(r"\b(?:Temp(?:erature)?|T)" + _IS + r"(?P<value>\d{2,3}(?:\.\d\d?)?)\s*°?\s*(?P<unit>C|F)?\b", re.I),
        "body_temperature",
    ),
    (
        re.compile(r"\b(?:Sp\s?O2|O2\s+sat(?:uration)?s?|Sats?)" + _IS + r"(?P<value>\d{2,3})\s*%", re.I),
        "oxygen_saturation",
    ),
    # "Ib": OCR's reading of "lb"
    (
        re.compile(r"\b(?:Weight|Wt)" + _IS + r"(?P<value>\d{1,3}(?:\.\d+)?)\s*(?P<unit>kg|[lI]bs?)\b", re.I),
        "body_weight",
    ),
    (
        re.compile(r"\b(?:Height|Ht)" + _IS + r"(?P<value>\d{1,3}(?:\.\d+)?)\s*(?P<unit>cm|m|in(?:ches)?)\b", re.I),
        "body_height",
    ),
    (re.compile(r"\bBMI" + _IS + r"(?P<value>\d{2}(?:\.\d+)?)", re.I), "bmi"),
)
VITAL_UNITS: Final = {
    "blood_pressure": "mm[Hg]",
    "heart_rate": "/min",
    "respiratory_rate": "/min",
    "body_temperature": "Cel",
    "oxygen_saturation": "%",
    "body_weight": "kg",
    "body_height": "cm",
    "bmi": "kg/m2",
}


def _vital(kind: VitalKind, match: re.Match[str]) -> Vital:
    groups = match.groupdict()
    unit = VITAL_UNITS[kind]
    written_unit = (groups.get("unit") or "").lower()
    if kind == "body_temperature" and written_unit == "f":
        unit = "[degF]"
    elif kind == "body_weight" and written_unit.startswith(("lb", "ib")):
        unit = "[lb_av]"
    elif kind == "body_height" and written_unit in ("m", "in", "inches"):
        unit = "m" if written_unit == "m" else "[in_i]"
    diastolic = float(groups["diastolic"]) if groups.get("diastolic") else None
    return Vital(kind=kind, value=float(groups["value"]), unit=unit, diastolic=diastolic)


def read_vital(text: str) -> Vital | None:
    """The vital sign one line states ("Pulse 88", "BP 120/80 mmHg", "Temp 38.2 C"), read as a
    document's are, or None."""
    for pattern, kind in _VITALS:
        if match := pattern.search(text):
            return _vital(kind, match)
    return None


def _vitals(lines: Sequence[_Line]) -> list[Vital]:
    found: dict[str, Vital] = {}
    for line in lines:
        if line.section in _LIST_SECTIONS or line.section == "results":
            continue
        for pattern, kind in _VITALS:
            if kind not in found and (match := pattern.search(line.text)):
                found[kind] = msgspec.structs.replace(_vital(kind, match), evidence=_evidence(line, match))
    return list(found.values())


# --- lab results --------------------------------------------------------------------------

_LAB_VALUE = re.compile(
    r"^\s*[:\-]?\s*(?P<cmp><=|>=|<|>)?\s*(?P<value>\d+(?:\.\d+)?)(?!\d)"
    # the unit: anything in the unit column that is not the range; an OCR-garbled unit is kept
    # (and later flagged as unrecognised) rather than losing the value
    r"(?:\s*(?P<unit>(?:x|\u00d7)\s*10\s*\S*|[A-Za-zµμ%/][^\s]*|(?!\(?\s*(?:<|\d+(?:\.\d+)?\s*[-\u2013]))\S+))?"
    # the reference range, perhaps in brackets: "(115-165)", "(<5)"
    r"(?:\s+\(?\s*(?:(?P<low>\d+(?:\.\d+)?)\s*[-\u2013]\s*(?P<high>\d+(?:\.\d+)?)|<\s*(?P<upper>\d+(?:\.\d+)?))\s*\)?)?"
    r"(?:\s+(?P<flag>HH|LL|H|L|High|Low|\*{1,2}))?\s*$",
    re.IGNORECASE,
)


def _lab_flag(value: float, low: float | None, high: float | None) -> LabFlag | None:
    if high is not None and value > high:
        return "H"
    if low is not None and value < low:
        return "L"
    if low is None and high is None:
        return None
    return "N"


# what a lab table's header cells say each column holds
_COLUMN_ROLES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"^(test|tests|analyte|investigation|component|name|test name)$", re.I), "test"),
    (re.compile(r"^(result|results|value|your result)$", re.I), "value"),
    (re.compile(r"^(units?|uom)$", re.I), "unit"),
    (re.compile(r"^(ref(erence)?\.?(\s+(range|interval|values?))?|normal(\s+range)?|range)$", re.I), "range"),
    (re.compile(r"^(flags?|abn(ormal)?|status)$", re.I), "flag"),
)
_NUMBER = re.compile(r"^(?P<cmp><=|>=|<|>)?\s*(?P<value>\d+(?:\.\d+)?)$")
_RANGE = re.compile(
    r"^(?:(?P<low>\d+(?:\.\d+)?)\s*[-\u2013]\s*(?P<high>\d+(?:\.\d+)?)|[<\u2264]\s*(?P<upper>\d+(?:\.\d+)?))$"
)
_FLAGS: Final[dict[str, LabFlag]] = {"H": "H", "HIGH": "H", "L": "L", "LOW": "L", "HH": "HH", "LL": "LL"}


def _table_labs(page: OcrPage) -> dict[int, LabResult]:
    """Lab results read cell by cell from the page's tables, keyed by the row's offset in the page text.

    The header says which column is which, so the order of the columns does not matter (a line
    read left to right would take a reference range printed before the result for the result).
    """
    found: dict[int, LabResult] = {}
    line_starts = [0]
    for line in page.text.split("\n")[:-1]:
        line_starts.append(line_starts[-1] + len(line) + 1)
    for table in find_tables(page):
        roles: dict[str, int] = {}
        for column, heading in enumerate(table.header):
            role = next((r for pattern, r in _COLUMN_ROLES if pattern.match(heading.strip())), None)
            if role is not None and role not in roles:
                roles[role] = column
        if "test" not in roles or "value" not in roles:
            continue
        for row, line_number in zip(table.rows, table.lines, strict=True):
            lab = _lab_from_cells(page, row, roles)
            if lab is not None:
                found[line_starts[line_number]] = lab
    return found


def lab_codings(test: LabTest | None) -> tuple[Coding, ...]:
    """The LOINC coding of a known test; none for a result whose test the table does not know,
    which is kept (and sent to review, see ``server.pipeline.validate``) rather than lost."""
    return (Coding(system=LOINC, code=test.code, display=test.display),) if test is not None else ()


def _unit_of(test: LabTest | None, unit_text: str | None, written: str | None) -> str | None:
    """The UCUM unit as written (``written``, normalised from ``unit_text``); a ratio printed
    without one (INR) is its test's unitless unit."""
    if unit_text:
        return written
    if test is not None and test.units[0].startswith("{"):
        return test.units[0]
    return None


# A result line whose test is not in the table, in a results section: a name (words, perhaps with
# digits, brackets or a slash: "Vitamin D (25-OH)", "Albumin/creatinine ratio") before the value.
_UNKNOWN_TEST = re.compile(r"^\s*(?P<name>[A-Za-z][A-Za-z0-9()'/,.+\- ]{0,60}?[A-Za-z)])\s*[:\-]?\s+(?=[<>]|\d)")


def _lab_from_cells(page: OcrPage, row: tuple[Cell | None, ...], roles: dict[str, int]) -> LabResult | None:
    def cell(role: str) -> Cell | None:
        return row[roles[role]] if role in roles else None

    name, result = cell("test"), cell("value")
    number = _NUMBER.match(result.text.strip()) if result is not None else None
    if name is None or result is None or number is None:
        return None
    unit_cell = cell("unit")
    unit_text = unit_cell.text.strip() if unit_cell is not None else None
    written = normalize_unit(unit_text) if unit_text else None
    hit = find_lab_test(name.text.strip(), written)
    if hit is None and not re.search(r"[A-Za-z]", name.text):
        return None
    test = hit[0] if hit is not None else None
    unit = _unit_of(test, unit_text, written)
    value = float(number.group("value"))
    low = high = None
    range_cell = cell("range")
    bounds = _RANGE.match(range_cell.text.strip()) if range_cell is not None else None
    if bounds is not None:
        if bounds.group("upper"):
            low, high = 0.0, float(bounds.group("upper"))
        else:
            low, high = float(bounds.group("low")), float(bounds.group("high"))
    flag_cell = cell("flag")
    flag = _FLAGS.get(flag_cell.text.strip().upper()) if flag_cell is not None else None
    cmp_ = number.group("cmp")
    cells = [c for c in row if c is not None]
    return LabResult(
        test=name.text.strip(),
        value=value,
        unit=unit,
        unit_text=unit_text,
        low=low,
        high=high,
        flag=flag or _lab_flag(value, low, high),
        comparator=cmp_ if cmp_ in ("<", "<=", ">=", ">") else None,  # type: ignore[arg-type]
        codings=lab_codings(test),
        evidence=page.evidence(min(c.start for c in cells), max(c.end for c in cells)),
    )


def _labs(lines: Sequence[_Line], read_tables: bool = True) -> list[LabResult]:
    found: list[LabResult] = []
    tables: dict[int, dict[int, LabResult]] = {}
    for line in lines:
        if line.section in _LIST_SECTIONS:
            continue
        if line.page.number not in tables:
            tables[line.page.number] = _table_labs(line.page) if read_tables else {}
        from_table = tables[line.page.number].get(line.start)
        if from_table is not None:
            found.append(from_table)
            continue
        hit = find_lab_test(line.text)
        test: LabTest | None
        if hit is not None:
            _, matched_name = hit
            name_end = line.text.lower().find(matched_name.lower()) + len(matched_name)
            match = _LAB_VALUE.match(line.text[name_end:])
            if not match:
                continue
            written = normalize_unit(match.group("unit"))
            test, _ = find_lab_test(line.text, written) or hit
        elif line.section == "results" and (unknown := _UNKNOWN_TEST.match(line.text)):
            name_end = unknown.end("name")
            match = _LAB_VALUE.match(line.text[name_end:])
            # a unit or a range says it is a result ("Page 1", "Ward 7" have neither)
            if not match or not (match.group("unit") or match.group("high") or match.group("upper")):
                continue
            test, written = None, normalize_unit(match.group("unit"))
        else:
            continue
        unit_text = match.group("unit")
        unit = _unit_of(test, unit_text, written)
        value = float(match.group("value"))
        low = float(match.group("low")) if match.group("low") else None
        high = (
            float(match.group("high") or match.group("upper"))
            if (match.group("high") or match.group("upper"))
            else None
        )
        if match.group("upper") and low is None:
            low = 0.0
        flag = _FLAGS.get((match.group("flag") or "").upper()) or _lab_flag(value, low, high)
        cmp_ = match.group("cmp")
        found.append(
            LabResult(
                test=line.text[:name_end].strip(),
                value=value,
                unit=unit,
                unit_text=unit_text,
                low=low,
                high=high,
                flag=flag,
                comparator=cmp_ if cmp_ in ("<", "<=", ">=", ">") else None,  # type: ignore[arg-type]
                codings=lab_codings(test),
                evidence=line.page.evidence(line.start, line.start + len(line.text.rstrip())),
            )
        )
    return found


# --- allergies ----------------------------------------------------------------------------

_NONE_KNOWN = re.compile(
    r"^(?:NKDA|NKA|nil\s+known(?:\s+drug)?(?:\s+allergies)?|no\s+known\s+(?:drug\s+)?allergies)\b", re.I
)
_ALLERGIES_INLINE = re.compile(r"^\s*(?:drug\s+)?allerg(?:y|ies)\s*[:\-]\s*(?P<body>\S.*)$", re.I)
_CAUSES = re.compile(r"\s+(?:causes|caused|gives|gave|->|\u2192)\s+", re.I)
_SEVERITY = re.compile(r"\b(mild|moderate|severe|life[-\s]threatening)\b", re.I)
_ALLERGY = re.compile(r"^(?P<substance>[A-Za-z][A-Za-z'\-]*(?:\s+[A-Za-z][A-Za-z'\-]*){0,3})\s*(?P<rest>.*)$")
_FOOD: Final = re.compile(
    r"\b(peanuts?|nuts?|tree\s+nuts?|shellfish|fish|eggs?|milk|dairy|wheat|gluten|soya?|sesame|strawberr\w*)\b", re.I
)
_ENVIRONMENT: Final = re.compile(
    r"\b(latex|pollen|dust\s+mites?|house\s+dust|cats?|dogs?|bee|wasp|grass|mou?ld|nickel|elastoplast|plasters?)\b",
    re.I,
)


def _allergy_category(substance: str) -> AllergyCategory:
    if _FOOD.search(substance):
        return "food"
    if _ENVIRONMENT.search(substance):
        return "environment"
    return "medication"  # what allergy lists in clinical documents are mostly about


def parse_allergy(body: str) -> Allergy | None:
    """One allergy as written: "Penicillin - rash (moderate)", "Codeine: vomiting, mild", "NKDA"."""
    body = body.strip().rstrip(".;,")
    if not body:
        return None
    if _NONE_KNOWN.match(body):
        return Allergy(substance=body, none_known=True)
    match = _ALLERGY.match(_CAUSES.sub(" - ", body, count=1))
    if match is None:
        return None
    substance = match.group("substance").strip()
    rest = match.group("rest")
    severity_match = _SEVERITY.search(rest)
    severity: Severity | None = None
    if severity_match:
        word = severity_match.group(1).lower()
        severity = "severe" if word.startswith("life") else word  # type: ignore[assignment]
        rest = rest[: severity_match.start()] + rest[severity_match.end() :]
    reaction = re.sub(r"^[\s\-\u2013:(,]+|[\s)\-,.;]+$", "", re.sub(r"\(\s*\)|\s{2,}", " ", rest)).strip()
    return Allergy(
        substance=substance,
        reaction=reaction or None,
        severity=severity,
        category=_allergy_category(substance),
    )


def _depth_zero_commas(text: str) -> list[int]:
    depth, commas = 0, []
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            commas.append(i)
    return commas


def _allergy_parts(text: str) -> Iterator[tuple[int, str]]:
    """(offset, text) of each allergy a list states. A semicolon always parts two; a comma outside
    brackets parts them where each before it has its reaction in brackets ("Penicillin (hives),
    sulfa drugs (rash)") or where none has a reaction at all ("penicillin, latex, peanuts"); else
    the comma belongs to one ("Codeine: vomiting, mild"; "Penicillin - rash, swelling")."""
    offset = 0
    for part in text.split(";"):
        cuts = [0, *(c + 1 for c in _depth_zero_commas(part)), len(part) + 1]
        chunks = [part[a : b - 1] for a, b in itertools.pairwise(cuts)]
        bracketed = all("(" in chunk for chunk in chunks[:-1]) and not any(
            _SEVERITY.fullmatch(chunk.strip())
            for chunk in chunks[1:]  # "Penicillin (rash), mild"
        )
        bare = all(
            not re.search(r"[(:\-\u2013]|\s(?:causes|caused|gives|gave)\s", chunk) and not _SEVERITY.search(chunk)
            for chunk in chunks
        )
        if len(chunks) > 1 and (bracketed or bare):
            for start, chunk in zip(cuts, chunks, strict=False):
                yield offset + start, chunk
        else:
            yield offset, part
        offset += len(part) + 1


# an allergy told in prose: "He is allergic to penicillin, which causes a rash."
_SUBSTANCE = r"[A-Za-z][A-Za-z\-]*(?:\s+[A-Za-z][A-Za-z\-]*){0,2}?"
_ALLERGIC_TO = re.compile(
    r"\b(?:allergic|allergy|allergies)\s+to\s+"
    # one substance, or two ("peanuts and latex"; not "penicillin and has asthma")
    r"(?P<substance>"
    + _SUBSTANCE
    + r"(?:\s+and\s+(?!(?:has|have|had|is|was|are|were|takes?|also|gets?)\b)"
    + _SUBSTANCE
    + r")?)"
    r"(?:\s*,?\s*(?:which\s+|that\s+)?(?:causes?|caused|causing|gives?|gave|giving)\s+(?:him\s+|her\s+|them\s+)?"
    r"(?:a\s+|an\s+)?(?P<reaction>[a-z][a-z ]{1,30}?))?"
    r"(?=\s*[.;,)]|\s+(?:but|since|for)\b|\s+and\s+(?:has|have|had|is|was|are|were|takes?|also|gets?)\b|\s*$)",
    re.I,
)
_NOT_BEFORE = re.compile(r"\b(?:not|never|no|denies|deny|isn't|wasn't|n't)\s+(?:\w+\s+)?$", re.I)


def _told_allergies(line: _Line) -> Iterator[Allergy]:
    for match in _ALLERGIC_TO.finditer(line.text):
        if _NOT_BEFORE.search(line.text[: match.start()]):
            continue  # "not allergic to penicillin"
        for substance in re.split(r"\s+and\s+", match.group("substance"), flags=re.I):
            yield Allergy(
                substance=substance,
                reaction=match.group("reaction"),
                category=_allergy_category(substance),
                evidence=_evidence(line, match),
            )


def _allergies(lines: Sequence[_Line]) -> list[Allergy]:
    found: list[Allergy] = []
    for line in lines:
        if line.section in _PROSE_SECTIONS:
            found.extend(_told_allergies(line))
        inline = _ALLERGIES_INLINE.match(line.text)
        if inline:
            body_start = inline.start("body")
        elif line.section == "allergies":
            bullet = _BULLET.match(line.text)
            body_start = bullet.end() if bullet else len(line.text) - len(line.text.lstrip())
        else:
            continue
        # "Allergies: penicillin (rash); latex" lists several; a comma may belong to one ("rash, mild")
        for offset, part in _allergy_parts(line.text[body_start:]):
            allergy = parse_allergy(part)
            start = line.start + body_start + offset + (len(part) - len(part.lstrip()))
            if allergy is not None:
                end = start + len(part.strip().rstrip(".;,"))
                found.append(msgspec.structs.replace(allergy, evidence=line.page.evidence(start, end)))
    unique: dict[str, Allergy] = {}
    for allergy in found:
        unique.setdefault(allergy.substance.lower(), allergy)
    return list(unique.values())


# --- procedures ---------------------------------------------------------------------------

_PROCEDURE_DATE = re.compile(
    rf"(?:\s*[,\-\u2013]\s*|\s+(?:in|on)\s+|\s*\(\s*|\s+)(?P<date>{DATE_PATTERN}|(?:19|20)\d\d)\s*\)?\s*$"
)
# what names an operation or procedure: its head word ("...ectomy", "replacement", "CABG")
_PROCEDURE_HEAD = (
    r"(?:[A-Za-z\-]*(?:ectomy|ectomies|ostomy|otomy|plasty|pexy|rrhaphy|scopy)|replacement|"
    r"bypass(?:\s+graft(?:ing)?)?|graft(?:ing)?|transplant(?:ation)?|repair|extraction|(?:caesarean|cesarean)\s+"
    r"section|stent(?:ing)?|ablation|fusion|amputation|biopsy|excision|resection|CABG|PCI|TURP|ERCP|TAVI)"
)
# up to three modifiers before it ("laparoscopic", "total knee", "coronary artery"), none a connective
_PROCEDURE_PHRASE = (
    r"(?:(?!(?:and|or|with|for|of|in|on|at|to|the|a|an|was|is|her|his|their|no|not)\b)[A-Za-z\-]+\s+){0,3}?"
    + _PROCEDURE_HEAD
)
_PROCEDURE_LINE = re.compile(rf"^{_PROCEDURE_PHRASE}$", re.IGNORECASE)
# "She underwent a laparoscopic cholecystectomy in 2019", "s/p CABG (2018)", "had a TKR on 3/4/2015"
_PROCEDURE_NARRATIVE = re.compile(
    r"\b(?:underwent|had|has\s+had|s/p|status\s+post|post|following|after)\s+(?:an?\s+|the\s+)?"
    rf"(?P<text>{_PROCEDURE_PHRASE})\b"
    rf"(?:\s*,?\s*(?:(?:in|on)\s+|\(\s*)(?P<date>{DATE_PATTERN}|(?:19|20)\d\d)\b\)?)?",
    re.IGNORECASE,
)
_PROSE_SECTIONS: Final = (None, "history", "observations", "other")


def _names_an_operation(item: str) -> bool:
    """Whether a list item, its date aside, names an operation ("Appendicectomy 2015"): in a past-history
    list it is then a procedure, not a condition (one test, so such an item is always one or the other)."""
    return bool(_PROCEDURE_LINE.match(_PROCEDURE_DATE.sub("", item).strip()))


def _procedure_date(written: str | None, order: DateOrder) -> str | None:
    """A year as written, or a full date as ISO 8601; None when unreadable."""
    if written is None:
        return None
    if re.fullmatch(r"(?:19|20)\d\d", written):
        return written
    parsed = parse_date(written, order)
    return parsed.isoformat() if parsed else None


def _listed_procedure(line: _Line, order: DateOrder) -> Procedure | None:
    """A list item of a surgical-history section (anything), or of a past-history list (an operation)."""
    bullet = _BULLET.match(line.text)
    start = bullet.end() if bullet else len(line.text) - len(line.text.lstrip())
    body = line.text[start:].rstrip().rstrip(".;,")
    if not re.search(r"[A-Za-z]{3}", body):
        return None
    dated = _PROCEDURE_DATE.search(body)
    date = _procedure_date(dated.group("date"), order) if dated else None
    text = body[: dated.start()].strip() if dated and date is not None else body
    if len(text) < 3 or (line.section == "diagnoses" and not _names_an_operation(body)):
        return None
    begin = line.start + start
    return Procedure(text=text, date=date, evidence=line.page.evidence(begin, begin + len(body)))


def _narrated_procedures(line: _Line, order: DateOrder) -> Iterator[Procedure]:
    """Past operations told in prose; a denied or hypothetical one ("never had a colonoscopy") is not."""
    for match in _PROCEDURE_NARRATIVE.finditer(line.text):
        text = match.group("text")
        clause = line.text[: match.end()]
        if re.search(r"\bnever\b", clause[max(0, match.start() - 20) : match.start()], re.I) or assertion_of(
            text, clause
        ) in ("negated", "hypothetical"):
            continue
        end = match.end() if match.group("date") else match.end("text")
        yield Procedure(
            text=text,
            date=_procedure_date(match.group("date"), order),
            evidence=line.page.evidence(line.start + match.start("text"), line.start + end),
        )


def _procedures(lines: Sequence[_Line], order: DateOrder) -> list[Procedure]:
    found: list[Procedure] = []
    for line in lines:
        if line.section in ("procedures", "diagnoses"):
            listed = _listed_procedure(line, order)
            found.extend([listed] if listed else [])
        elif line.section in _PROSE_SECTIONS:
            found.extend(_narrated_procedures(line, order))
    unique: dict[str, Procedure] = {}
    for procedure in found:
        unique.setdefault(procedure.text.lower(), procedure)
    return list(unique.values())


# --- follow-up actions --------------------------------------------------------------------

_ACTION = re.compile(
    r"^(?:review|repeat|re-?check|follow[\s\-]?up|refer|arrange|book|schedule|see|return|reassess|monitor|check|"
    r"(?:gp|patient|we|i|team)\s+(?:to|will|should)|to\s+be\s+seen)\b",
    re.I,
)


def _follow_ups(lines: Sequence[_Line]) -> list[FollowUp]:
    found: dict[str, FollowUp] = {}
    for line in lines:
        if line.section not in ("plan", "assessment-plan"):
            continue
        bullet = _BULLET.match(line.text)
        start = bullet.end() if bullet else len(line.text) - len(line.text.lstrip())
        text = line.text[start:].rstrip().rstrip(".")
        if not _ACTION.match(text) or text.lower() in found:
            continue
        begin = line.start + start
        found[text.lower()] = FollowUp(text=text, evidence=line.page.evidence(begin, begin + len(text)))
    return list(found.values())


# --- the extractor ------------------------------------------------------------------------


class RulesExtractor:
    """Section-aware pattern extractor with NegEx-style assertions. Thread-safe and stateless."""

    name = "rules"

    def __init__(self, *, date_order: DateOrder = "DMY", read_tables: bool = True) -> None:
        self.date_order = date_order
        self.read_tables = read_tables  # False: lab rows read as lines only (the benchmark's ablation)

    def extract(self, pages: Sequence[OcrPage]) -> Extraction:
        lines = list(_lines(pages))
        date, author, facility = _document_facts(lines, pages, self.date_order)
        document_type = _document_type(pages)
        return Extraction(
            document_type=document_type,
            encounter=_encounter(lines, document_type, author, self.date_order),
            document_date=date,
            author=author,
            facility=facility,
            patient=_patient(lines, self.date_order),
            diagnoses=tuple(_diagnoses(lines, pages)),
            medications=tuple(_medications(lines)),
            vitals=tuple(_vitals(lines)),
            labs=tuple(_with_specimen_date(_labs(lines, self.read_tables), lines, self.date_order)),
            allergies=tuple(_allergies(lines)),
            procedures=tuple(_procedures(lines, self.date_order)),
            follow_ups=tuple(_follow_ups(lines)),
            extractor=self.name,
        )
