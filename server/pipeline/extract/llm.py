"""Extraction by an LLM behind any OpenAI-compatible server (vLLM in production), grounded in the page.

The model is asked for JSON constrained by a schema (``response_format``: OpenAI/vLLM
``json_schema``, or llama.cpp's ``json_object`` with a ``schema``) and told to copy values exactly
as written. Nothing it says is taken on trust: every value must be found in the page text, where
it gets its evidence (page, characters, boxes); a value that is not on the page is dropped and the
document is flagged for review ("nothing invented"). Medication lines it finds are parsed by the
same SIG parser as the rules extractor, so doses, routes and timings come out identically.

When the server is unreachable or its answer is not the JSON asked for, the rules extractor does
the work and the document is flagged, so a document is never lost to a model outage.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Literal, TypeVar, get_args

import httpx
import msgspec

from fhir_profiles.extraction import (
    Allergy,
    Assertion,
    Diagnosis,
    DocumentType,
    Encounter,
    Evidence,
    Extraction,
    FollowUp,
    Identifier,
    LabFlag,
    LabResult,
    Medication,
    PatientFacts,
    Procedure,
    ReviewReason,
    TextFact,
    Vital,
    VitalKind,
)
from server.pipeline.code import ChooserUnavailable, CodeQuestion
from server.pipeline.extract.rules import (
    VITAL_UNITS,
    DateOrder,
    RulesExtractor,
    encounter_of,
    nhs_number_is_valid,
    parse_allergy,
    parse_date,
    parse_medication,
    postal_code_of,
    relative_of,
)
from server.pipeline.page import OcrPage
from terminology.model import ICD10CM, RXNORM, SNOMED
from terminology.units import normalize_unit

logger = logging.getLogger(__name__)
Dialect = Literal["json_schema", "json_object"]
_ASSERTIONS: Final = frozenset(get_args(Assertion))


# --- what the model is asked to return -----------------------------------------------------------


class LlmPatient(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    birth_date: str | None = None
    sex: Literal["male", "female", "other", "unknown"] | None = None
    mrn: str | None = None
    nhs_number: str | None = None
    address: str | None = None  # one line, as written
    phone: str | None = None
    email: str | None = None


class LlmDiagnosis(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    text: str
    assertion: Assertion = "present"
    line: int | None = None  # the prompt's line number, where the model cites one


class LlmMedication(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    line: str  # the medication line exactly as written


class LlmVital(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: VitalKind
    value: float
    diastolic: float | None = None


class LlmLab(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    test: str
    value: float
    unit: str | None = None
    low: float | None = None
    high: float | None = None
    line: int | None = None


class LlmAllergy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    line: str  # the allergy as written, e.g. "Penicillin - rash (moderate)" or "NKDA"


class LlmProcedure(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    text: str
    date: str | None = None  # as written
    line: int | None = None


class LlmEncounter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    admitted: str | None = None  # dates as written
    discharged: str | None = None
    department: str | None = None  # ward, clinic or specialty as written


class LlmDocument(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    document_type: DocumentType = "unknown"
    document_date: str | None = None  # as written
    author: str | None = None  # the clinician who wrote or signed it
    facility: str | None = None  # the letterhead's organisation
    encounter: LlmEncounter | None = None
    specimen_date: str | None = None  # a lab report's collection date, as written
    patient: LlmPatient = msgspec.field(default_factory=LlmPatient)
    diagnoses: list[LlmDiagnosis] = msgspec.field(default_factory=list)
    medications: list[LlmMedication] = msgspec.field(default_factory=list)
    vitals: list[LlmVital] = msgspec.field(default_factory=list)
    labs: list[LlmLab] = msgspec.field(default_factory=list)
    allergies: list[LlmAllergy] = msgspec.field(default_factory=list)
    procedures: list[LlmProcedure] = msgspec.field(default_factory=list)
    follow_ups: list[str] = msgspec.field(default_factory=list)  # actions as written


def _root_schema() -> dict[str, Any]:
    """The JSON schema with the document as its root (llama.cpp's grammar builder ignores a root $ref)."""
    schema = msgspec.json.schema(LlmDocument)
    definitions = schema.pop("$defs")
    root: dict[str, Any] = dict(definitions.pop("LlmDocument"))
    if definitions:
        root["$defs"] = definitions
    return root


# an answer with keys outside this schema means the server did not apply it: treated as unusable
SCHEMA: Final = _root_schema()
SYSTEM_PROMPT: Final = (
    "You extract facts from one clinical document for a FHIR record. Answer with JSON only, following the "
    "schema. Copy names, identifiers, addresses, diagnoses, medication lines and test names exactly as they "
    "are written in the document: the document's date, author and letterhead organisation; the admission or "
    "clinic visit; a lab report's specimen collection date. Put a diagnosis the document denies or rules "
    "out with assertion 'negated', a relative's condition with 'family', a possible one with 'uncertain', a "
    "past one with 'historical'. Copy each allergy line (or 'NKDA') as written, past operations and "
    "procedures with their dates, and follow-up actions from the plan. Give dates as written. Each line of "
    "the document starts with its number in brackets: give the line a diagnosis, lab result or procedure is "
    "on. Leave out anything the document does not say; never guess."
)


_TRANSIENT: Final = frozenset({408, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER: Final = 30  # seconds; a longer wait falls back to the rules extractor instead


class LlmUnavailable(ChooserUnavailable):
    """The LLM server could not be reached or did not answer with the JSON asked for."""


class ChatClient:
    """An OpenAI-compatible ``/v1/chat/completions`` client asking for schema-constrained JSON."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        dialect: Dialect = "json_schema",
        timeout_seconds: float = 120.0,
        api_key: str | None = None,
        max_tokens: int = 2048,
        transport: httpx.BaseTransport | None = None,
        retries: int = 2,
        backoff_seconds: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dialect = dialect
        self.max_tokens = max_tokens
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_seconds, headers=headers, transport=transport)

    def response_format(self, schema: dict[str, Any] = SCHEMA, name: str = "extraction") -> dict[str, Any]:
        if self.dialect == "json_schema":  # OpenAI and vLLM structured outputs
            return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        return {"type": "json_object", "schema": schema}  # llama.cpp server

    def reachable(self) -> bool:
        """Whether the server answers its model list (for /health)."""
        base = self.base_url if self.base_url.endswith("/v1") else f"{self.base_url}/v1"
        try:
            return self._http.get(f"{base}/models", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        """POST to chat/completions; a dropped connection, a timeout, 429 or a 5xx is retried with
        exponential backoff (honouring a short Retry-After), then ``LlmUnavailable``."""
        base = self.base_url if self.base_url.endswith("/v1") else f"{self.base_url}/v1"
        for attempt in range(self.retries + 1):
            delay = self.backoff_seconds * 2**attempt
            try:
                response = self._http.post(f"{base}/chat/completions", json=body)
            except httpx.HTTPError:
                problem = "the LLM server cannot be reached"
            else:
                if response.status_code not in _TRANSIENT:
                    return response
                problem = f"the LLM server answered HTTP {response.status_code}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit() and int(retry_after) <= _MAX_RETRY_AFTER:
                    delay = max(delay, float(retry_after))
            if attempt < self.retries:
                logger.warning("%s; retrying in %.1f s", problem, delay)
                time.sleep(delay)
        raise LlmUnavailable(problem)

    def complete_text(self, system: str, user: str) -> str:
        """Free text (e.g. a summary); ``LlmUnavailable`` when there is no usable answer."""
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        response = self._post(body)
        try:
            content = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else None
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str) or not content.strip():
            raise LlmUnavailable("the LLM gave no summary")
        return content.strip()

    def complete_json(self, system: str, user: str, schema: dict[str, Any] = SCHEMA, name: str = "extraction") -> Any:
        """JSON constrained by ``schema``; ``LlmUnavailable`` when there is no usable answer."""
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "response_format": self.response_format(schema, name),
        }
        response = self._post(body)
        if response.status_code != 200:
            raise LlmUnavailable(f"the LLM server answered HTTP {response.status_code}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
            return json.loads(content)
        except (ValueError, KeyError, IndexError, TypeError):
            raise LlmUnavailable("the LLM's answer is not the JSON asked for") from None


# --- grounding: every value must be on the page ------------------------------------------------------


class NumberedText:
    """The pages' text with each line numbered, as the model sees it, and where each line is."""

    def __init__(self, pages: Sequence[OcrPage]) -> None:
        self.lines: list[tuple[OcrPage, int, int]] = []
        self.blocks: list[str] = []  # one per page
        blocks = self.blocks
        for page in pages:
            rows = [f"--- page {page.number} ---"]
            start = 0
            for text in page.text.split("\n"):
                self.lines.append((page, start, start + len(text)))
                rows.append(f"[{len(self.lines)}] {text}")
                start += len(text) + 1
            blocks.append("\n".join(rows))
        self.prompt = "\n\n".join(blocks)

    def chunks(self, max_chars: int) -> list[str]:
        """The prompt cut between pages into parts of at most ``max_chars`` (a longer page is a part alone)."""
        parts: list[list[str]] = []
        size = 0
        for block in self.blocks:
            if not parts or size + len(block) > max_chars:
                parts.append([])
                size = 0
            parts[-1].append(block)
            size += len(block) + 2
        return ["\n\n".join(part) for part in parts]

    def line(self, number: int | None) -> tuple[OcrPage, int, int] | None:
        return self.lines[number - 1] if number is not None and 1 <= number <= len(self.lines) else None


def _locate(pages: Sequence[OcrPage], needle: str, cited: tuple[OcrPage, int, int] | None = None) -> Evidence | None:
    """Evidence for ``needle`` where it occurs in the pages' text (case and spacing may differ): on the
    line the model cited when it is there, else its first occurrence."""
    words = needle.split()
    if not words:
        return None
    pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
    if cited is not None:
        page, start, end = cited
        match = pattern.search(page.text, start, end)
        if match:
            return page.evidence(match.start(), match.end())
    for page in pages:
        match = pattern.search(page.text)
        if match:
            return page.evidence(match.start(), match.end())
    return None


def _number_texts(value: float) -> list[str]:
    text = f"{value:g}"
    return [text, f"{value:.1f}"] if "." not in text else [text]


def _locate_number_near(pages: Sequence[OcrPage], value: float, near: Evidence | None) -> Evidence | None:
    for page in pages:
        if near is not None and page.number != near.page:
            continue
        for text in _number_texts(value):
            for match in re.finditer(rf"(?<![\d.]){re.escape(text)}(?![\d])", page.text):
                if near is None or abs(match.start() - near.end) < 120:
                    return page.evidence(match.start(), match.end())
    return None


def merge_answers(answers: Sequence[LlmDocument]) -> LlmDocument:
    """The answers for a document's parts as one: the first value of each single fact, every list item once."""
    merged = LlmDocument()
    for answer in answers:
        if merged.document_type == "unknown":
            merged.document_type = answer.document_type
        for field in ("document_date", "author", "facility", "encounter", "specimen_date"):
            if getattr(merged, field) is None:
                setattr(merged, field, getattr(answer, field))
        for field in LlmPatient.__struct_fields__:
            if getattr(merged.patient, field) is None:
                setattr(merged.patient, field, getattr(answer.patient, field))
        for field in ("diagnoses", "medications", "vitals", "labs", "allergies", "procedures", "follow_ups"):
            items = getattr(merged, field)
            seen = {msgspec.json.encode(item) for item in items}
            for item in getattr(answer, field):
                if (key := msgspec.json.encode(item)) not in seen:
                    seen.add(key)
                    items.append(item)
    return merged


class _Grounding:
    """Finds what the model wrote on the pages, and counts what it could not find (one document's worth)."""

    def __init__(self, pages: Sequence[OcrPage], order: DateOrder) -> None:
        self.pages = pages
        self.order = order
        self.dropped = 0

    def text(self, written: str | None) -> TextFact | None:
        if not written or not written.strip():
            return None
        evidence = _locate(self.pages, written.strip().rstrip(".,;"))
        if evidence is None:
            self.dropped += 1
            return None
        return TextFact(value=" ".join(evidence.text.split()), evidence=evidence)

    def date(self, written: str | None) -> TextFact | None:
        """A date found on the page and readable, as ISO 8601."""
        fact = self.text(written)
        parsed = parse_date(fact.value, self.order) if fact is not None else None
        if fact is None or parsed is None:
            self.dropped += fact is not None  # on the page, but not a date
            return None
        return TextFact(value=parsed.isoformat(), evidence=fact.evidence)

    def encounter(
        self, proposed: LlmEncounter | None, document_type: DocumentType, author: TextFact | None
    ) -> Encounter | None:
        if proposed is None:
            return None
        start, end = self.date(proposed.admitted), self.date(proposed.discharged)
        return encounter_of(start, end, self.text(proposed.department), document_type, author)


class LlmExtractor:
    """Facts proposed by an LLM, kept only where the page says them. Thread-safe (httpx.Client is)."""

    def __init__(
        self,
        client: ChatClient,
        *,
        date_order: DateOrder = "DMY",
        max_prompt_chars: int = 24_000,
        concurrency: int = 4,
    ) -> None:
        self.client = client
        self.date_order = date_order
        self.max_prompt_chars = max_prompt_chars  # a longer document is sent in parts, cut between pages
        self.concurrency = concurrency  # parts of one document in flight at once
        self.fallback = RulesExtractor(date_order=date_order)
        self.name = f"llm:{client.model}"

    def _ask(self, prompt: str) -> LlmDocument:
        return msgspec.convert(self.client.complete_json(SYSTEM_PROMPT, prompt), LlmDocument, strict=False)

    def extract(self, pages: Sequence[OcrPage]) -> Extraction:
        numbered = NumberedText(pages)
        parts = numbered.chunks(self.max_prompt_chars)
        try:
            if len(parts) == 1:
                proposed = self._ask(parts[0])
            else:
                with ThreadPoolExecutor(max_workers=min(self.concurrency, len(parts))) as pool:
                    proposed = merge_answers(list(pool.map(self._ask, parts)))
        except (LlmUnavailable, msgspec.ValidationError) as exc:
            logger.warning("LLM extraction unavailable (%s); using the rules extractor", type(exc).__name__)
            reason = ReviewReason(
                code="llm-unavailable",
                message="The LLM extractor did not answer usefully; the rules extractor was used instead.",
            )
            extraction = self.fallback.extract(pages)
            return msgspec.structs.replace(extraction, review_reasons=(*extraction.review_reasons, reason))
        return self._ground(proposed, pages, numbered)

    def _ground(self, proposed: LlmDocument, pages: Sequence[OcrPage], numbered: NumberedText) -> Extraction:
        grounding = _Grounding(pages, self.date_order)
        author = grounding.text(proposed.author)
        patient = self._patient(proposed.patient, grounding)
        dropped = 0
        diagnoses = []
        for item in proposed.diagnoses:
            evidence = _locate(pages, item.text, numbered.line(item.line))
            if evidence is None:
                dropped += 1
                continue
            assertion: Assertion = item.assertion if item.assertion in _ASSERTIONS else "present"
            line = _line_of(pages, evidence)
            diagnoses.append(
                Diagnosis(
                    text=evidence.text,
                    assertion=assertion,
                    relative=relative_of(line) if assertion == "family" else None,
                    evidence=evidence,
                    confidence=0.8,
                )
            )
        # lines the model copied are parsed by the rules extractor's own parsers, where they are
        medications, lost = _parse_located(pages, [m.line for m in proposed.medications], parse_medication)
        medications = [msgspec.structs.replace(m, confidence=0.8) for m in medications]
        dropped += lost
        vitals = []
        for vital in proposed.vitals:
            evidence = _locate_number_near(pages, vital.value, None)
            if evidence is None or (
                vital.diastolic is not None and _locate_number_near(pages, vital.diastolic, evidence) is None
            ):
                dropped += 1
                continue
            vitals.append(
                Vital(
                    kind=vital.kind,
                    value=vital.value,
                    unit=VITAL_UNITS[vital.kind],
                    diastolic=vital.diastolic,
                    evidence=evidence,
                )
            )
        labs = []
        for lab in proposed.labs:
            name = _locate(pages, lab.test, numbered.line(lab.line))
            value = _locate_number_near(pages, lab.value, name) if name is not None else None
            if name is None or value is None:
                dropped += 1
                continue
            flag: LabFlag | None = None
            if lab.low is not None and lab.value < lab.low:
                flag = "L"
            elif lab.high is not None and lab.value > lab.high:
                flag = "H"
            elif lab.low is not None or lab.high is not None:
                flag = "N"
            labs.append(
                LabResult(
                    test=name.text,
                    value=lab.value,
                    unit=normalize_unit(lab.unit),
                    unit_text=lab.unit,
                    low=lab.low,
                    high=lab.high,
                    flag=flag,
                    evidence=value,
                )
            )
        allergies, lost = _parse_located(pages, [a.line for a in proposed.allergies], parse_allergy)
        dropped += lost
        procedures = []
        for procedure in proposed.procedures:
            cited = numbered.line(procedure.line)
            evidence = _locate(pages, procedure.text, cited)
            when = _locate(pages, procedure.date, cited) if procedure.date else None
            if evidence is None or (procedure.date and when is None):
                dropped += 1
                continue
            date = None
            if when is not None:
                year = re.fullmatch(r"(?:19|20)\d\d", when.text.strip())
                parsed_date = None if year else parse_date(when.text, self.date_order)
                date = when.text.strip() if year else (parsed_date.isoformat() if parsed_date else None)
            procedures.append(Procedure(text=evidence.text, date=date, evidence=evidence))
        follow_ups = []
        for action in proposed.follow_ups:
            evidence = _locate(pages, action.rstrip("."))
            if evidence is None:
                dropped += 1
                continue
            follow_ups.append(FollowUp(text=evidence.text, evidence=evidence))
        specimen_date = grounding.date(proposed.specimen_date)
        if specimen_date is not None:
            labs = [msgspec.structs.replace(lab, specimen_date=specimen_date.value) for lab in labs]
        document_date = grounding.date(proposed.document_date)
        facility = grounding.text(proposed.facility)
        encounter = grounding.encounter(proposed.encounter, proposed.document_type, author)
        dropped += grounding.dropped
        reasons: tuple[ReviewReason, ...] = ()
        if dropped:
            reasons = (
                ReviewReason(
                    code="llm-ungrounded",
                    message=f"{dropped} value(s) the LLM proposed are not on the page and were left out.",
                ),
            )
        return Extraction(
            document_type=proposed.document_type,
            encounter=encounter,
            document_date=document_date,
            author=author,
            facility=facility,
            patient=patient,
            diagnoses=tuple(diagnoses),
            medications=tuple(medications),
            vitals=tuple(vitals),
            labs=tuple(labs),
            allergies=tuple(allergies),
            procedures=tuple(procedures),
            follow_ups=tuple(follow_ups),
            extractor=self.name,
            review_reasons=reasons,
        )

    def _patient(self, proposed: LlmPatient, grounding: _Grounding) -> PatientFacts:
        """The patient's facts found on the pages; what is not there counts in ``grounding.dropped``."""
        pages = grounding.pages
        name = None
        given: tuple[str, ...] = ()
        family = None
        if proposed.name:
            evidence = _locate(pages, proposed.name)
            if evidence is None:
                grounding.dropped += 1
            else:
                name = TextFact(value=evidence.text, evidence=evidence)
                parts = evidence.text.replace(",", " ").split()
                given, family = (
                    (tuple(parts[:-1]), parts[-1]) if "," not in evidence.text else (tuple(parts[1:]), parts[0])
                )
        birth_date = None
        if proposed.birth_date:
            evidence = _locate(pages, proposed.birth_date)
            parsed = parse_date(evidence.text, self.date_order) if evidence is not None else None
            if evidence is None or parsed is None or parsed > dt.date.today():
                grounding.dropped += 1
            else:
                birth_date = TextFact(value=parsed.isoformat(), evidence=evidence)
        identifiers = []
        for kind, value in (("mrn", proposed.mrn), ("nhs", proposed.nhs_number)):
            if not value:
                continue
            evidence = _locate(pages, value) or _locate(pages, " ".join(_nhs_groups(value)) if kind == "nhs" else value)
            if evidence is None:
                grounding.dropped += 1
                continue
            digits = re.sub(r"\D", "", evidence.text)
            identifiers.append(
                Identifier(
                    kind=kind,  # type: ignore[arg-type]  # the two literals above
                    value=digits if kind == "nhs" else evidence.text,
                    valid=nhs_number_is_valid(digits) if kind == "nhs" else True,
                    evidence=evidence,
                )
            )
        sex = TextFact(value=proposed.sex) if proposed.sex and _locate(pages, proposed.sex[:1]) is not None else None
        address = grounding.text(proposed.address)
        return PatientFacts(
            name=name,
            given=given,
            family=family,
            birth_date=birth_date,
            sex=sex,
            identifiers=tuple(identifiers),
            address=address,
            postal_code=postal_code_of(address.value) if address else None,
            phone=grounding.text(proposed.phone),
            email=grounding.text(proposed.email),
        )


_Parsed = TypeVar("_Parsed", Medication, Allergy)


def _parse_located(
    pages: Sequence[OcrPage], written: Sequence[str], parse: Callable[[str], _Parsed | None]
) -> tuple[list[_Parsed], int]:
    """Each line found on the page and parsed there, with its evidence; and how many were not."""
    found: list[_Parsed] = []
    dropped = 0
    for text in written:
        evidence = _locate(pages, text)
        parsed = parse(evidence.text) if evidence is not None else None
        if evidence is None or parsed is None:
            dropped += 1
            continue
        found.append(msgspec.structs.replace(parsed, evidence=evidence))
    return found, dropped


def _nhs_groups(value: str) -> list[str]:
    digits = re.sub(r"\D", "", value)
    return [digits[:3], digits[3:6], digits[6:]] if len(digits) == 10 else [value]


def _line_of(pages: Sequence[OcrPage], evidence: Evidence) -> str:
    page = next(p for p in pages if p.number == evidence.page)
    start = page.text.rfind("\n", 0, evidence.start) + 1
    end = page.text.find("\n", evidence.end)
    return page.text[start : end if end >= 0 else len(page.text)]


# --- coding: the model picks among the index's candidates -----------------------------------------

CODING_PROMPT: Final = (
    "You assign codes to mentions from a clinical document. For each mention you are given candidate "
    "codes from a terminology index. Answer with JSON only: for each mention key, the candidate code whose "
    "meaning is the mention's meaning, or 'none' when no candidate means the same thing. Prefer the most "
    "specific candidate that the mention fully supports; never pick a code that adds facts the mention "
    "does not state."
)
_SYSTEM_NAMES: Final = {ICD10CM: "ICD-10-CM", SNOMED: "SNOMED CT", RXNORM: "RxNorm"}


def coding_schema(questions: Sequence[CodeQuestion]) -> dict[str, Any]:
    """One key per mention, each constrained to its own candidates' codes or "none"."""
    properties = {
        f"m{n}": {"type": "string", "enum": [*dict.fromkeys(c.code for c in q.candidates), "none"]}
        for n, q in enumerate(questions, 1)
    }
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def coding_prompt(questions: Sequence[CodeQuestion]) -> str:
    blocks = []
    for n, question in enumerate(questions, 1):
        system = _SYSTEM_NAMES.get(question.system, question.system)
        lines = [f'm{n}: {question.kind} "{question.mention}" ({system} candidates)']
        lines += [f"  {c.code}: {c.display}" for c in question.candidates]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


class LlmCodeChooser:
    """Retrieval-augmented coding: one request per document, each mention constrained to its candidates."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.name = f"llm:{client.model}"

    def choose(self, questions: Sequence[CodeQuestion]) -> list[str | None]:
        if not questions:
            return []
        answer = self.client.complete_json(
            CODING_PROMPT, coding_prompt(questions), schema=coding_schema(questions), name="coding"
        )
        if not isinstance(answer, dict):
            raise LlmUnavailable("the LLM's coding answer is not the JSON object asked for")
        chosen: list[str | None] = []
        for n, question in enumerate(questions, 1):
            code = answer.get(f"m{n}")
            offered = {c.code for c in question.candidates}
            chosen.append(code if isinstance(code, str) and code in offered else None)
        return chosen
