"""De-identifying free text: the identifiers we know, plus patterns for the ones we do not.

Known values (the patient's names, identifiers, birth date, phone numbers from the record) are
removed wherever they occur, in any case and across line breaks of the OCR text. Patterns catch
HIPAA Safe Harbor identifiers the extraction may not have recognised: dates, telephone and fax
numbers, e-mail and web addresses, NHS/SSN/MRN-style numbers, postcodes and ZIP codes, and
names after a title (Mr, Mrs, Dr...). Clinical words are left alone: a pattern that needs a
capitalised word after a title does not touch "Type 2 diabetes".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

_MONTHS: Final = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
# (pattern, replacement); order matters: the more specific first
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "[EMAIL]"),
    (re.compile(r"\bhttps?://\S+|\bwww\.\S+", re.IGNORECASE), "[URL]"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "[IP]"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:T[\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?\b"), "[DATE]"),
    (re.compile(r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b"), "[DATE]"),
    (re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{2,4}}\b", re.IGNORECASE), "[DATE]"),
    (re.compile(rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b", re.IGNORECASE), "[DATE]"),
    (re.compile(r"\b\d{3}[ -]?\d{3}[ -]?\d{4}\b"), "[ID]"),  # NHS number (3-3-4) and US phone numbers
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[ID]"),  # SSN
    (re.compile(r"\(?\+?\d{1,3}\)?[ .-]?\(?\d{2,5}\)?[ .-]\d{3,4}[ .-]?\d{3,4}\b"), "[PHONE]"),
    (
        re.compile(
            r"\b(?:MRN|NHS|SSN|Hosp(?:ital)?\s*No|Patient\s*ID)\s*(?:no\.?|number|#)?\s*[:#]?\s*[A-Z0-9-]{4,}\b",
            re.IGNORECASE,
        ),
        "[ID]",
    ),
    (re.compile(r"\b[A-Z]{2,4}\d{5,}\b"), "[ID]"),  # MRN-style: letters then digits
    (re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b"), "[POSTCODE]"),  # UK postcode
    (re.compile(r"\b\d{5}(?:-\d{4})?\b"), "[ZIP]"),
    (re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+(?:(?:[A-Z]\.|[A-Z][a-zA-Z'-]+)\s?){1,3}"), "[NAME] "),
    # a labelled name field on a form: "Patient Name: Amelia Murphy", "Name: O'Neil, Sean"
    (re.compile(r"(?<=\bName:)[ \t]*(?:[A-Z][a-zA-Z'-]+,?[ \t]?){1,4}"), " [NAME] "),
)


def _known_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for every known PHI value; whitespace in a value matches any whitespace."""
    parts = []
    for value in sorted({v.strip() for v in values if v and len(v.strip()) >= 2}, key=len, reverse=True):
        words = [re.escape(word) for word in value.split()]
        parts.append(r"\s+".join(words))
    if not parts:
        return None
    return re.compile(r"(?<![\w])(?:" + "|".join(parts) + r")(?![\w])", re.IGNORECASE)


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    """The text with known PHI values and PHI-shaped patterns replaced by bracketed labels."""
    pattern = _known_pattern(known)
    if pattern is not None:
        text = pattern.sub("[REDACTED]", text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return text


def leaked(text: str, known: Iterable[str]) -> list[str]:
    """The known PHI values still present in ``text`` (the check after every de-identification)."""
    pattern = _known_pattern(known)
    if pattern is None:
        return []
    return sorted({m.group(0) for m in pattern.finditer(text)})


def phi_spans(text: str, known: Iterable[str] = ()) -> list[tuple[int, int]]:
    """Character ranges of ``text`` that ``scrub_text`` would replace (for redacting page images)."""
    spans: list[tuple[int, int]] = []
    pattern = _known_pattern(known)
    for regex in [*([pattern] if pattern is not None else []), *(r for r, _ in _PATTERNS)]:
        spans.extend(m.span() for m in regex.finditer(text))
    return sorted(spans)
