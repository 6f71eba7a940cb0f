"""Field-level precision, recall and F1 of the rules extractor against generated ground truth.

    .venv/bin/python bench/extract.py [--documents 24] [--no-ocr] [--llm-url URL --llm-model M]

Per field family (demographics with address and phone; the document's date, author and
organisation; the encounter's dates and ward or clinic; diagnoses with assertion; medications
with dose, route and frequency; labs with value, flag and specimen date; vitals; allergies; procedures;
follow-up actions), on born-digital PDFs (text layer: extraction alone) and on the same
documents scanned with noise, blur and rotation (OCR + extraction), so OCR's share of the error
is visible. Also a negation suite: generated sentences whose findings are present or negated,
scored on the assertion alone. The peer, measured in the same run, is a keyword check for
negation ("no", "not", "denies"... anywhere in the sentence). With ``--llm-url`` (any
OpenAI-compatible server: vLLM, or llama.cpp's with ``--llm-dialect json_object``) the LLM
extractor is scored on the born-digital corpus too, beside the rules.
Caveat: the generator and the rules share one template vocabulary, so these figures show the
pipeline is consistent, not how it does on real clinical writing.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_profiles.extraction import Extraction
from server.config import load_settings
from server.pipeline.base import Extractor
from server.pipeline.extract.llm import ChatClient, LlmExtractor
from server.pipeline.extract.rules import RulesExtractor, assertion_of
from server.pipeline.inspect import Limits
from server.pipeline.ocr import create_ocr_engine
from server.pipeline.page import OcrPage
from server.pipeline.rasterize import PageImage, iter_pages
from server.pipeline.scan import read_scanned_page
from tests.fixtures.generate import (
    KINDS,
    NEGATABLE,
    US_KINDS,
    DocumentTruth,
    RenderedDocument,
    ScanEffects,
    render_document,
)

SCAN = ScanEffects(dpi=200, noise=0.004, blur=0.5, rotation=1.0)
FREQUENCY = {
    "daily": (1, "d", ()),
    "twice daily": (2, "d", ()),
    "three times daily": (3, "d", ()),
    "four times daily": (4, "d", ()),
    "at bedtime": (1, "d", ("HS",)),
}
VITAL_UNITS = {"mmHg": "mm[Hg]", "/min": "/min", "Cel": "Cel", "%": "%", "kg": "kg"}


def facts(truth: DocumentTruth) -> dict[str, set[tuple[object, ...]]]:
    p = truth.patient
    return {
        "demographics": {
            ("name", p.name),
            ("birth_date", p.birth_date),
            ("sex", p.sex),
            ("mrn", p.mrn),
            ("nhs", p.nhs_number),
            ("address", p.address),
            ("phone", p.phone),
        },
        "document": {("date", truth.document_date), ("author", truth.author), ("facility", truth.facility)},
        "encounter": {
            (key, value)
            for key, value in (
                ("start", truth.encounter_start),
                ("end", truth.encounter_end),
                ("department", truth.department),
            )
            if value
        },
        "diagnoses": {(d.text.lower(), d.assertion) for d in truth.diagnoses},
        "medications": {
            (
                m.name.lower(),
                m.dose,
                {"mcg": "ug"}.get(m.unit, m.unit),
                m.route,
                "as needed" if m.frequency == "as needed" else FREQUENCY[m.frequency],
            )
            for m in truth.medications
        },
        "labs": {(lab.test.lower(), lab.value, lab.flag, truth.specimen_date or None) for lab in truth.labs},
        "vitals": {(v.kind, v.value, v.diastolic, VITAL_UNITS.get(v.unit, v.unit)) for v in truth.vitals},
        "allergies": {
            ("none known",) if a.none_known else (a.substance.lower(), a.reaction, a.severity, a.category)
            for a in truth.allergies
        },
        "procedures": {(pr.text.lower(), pr.year) for pr in truth.procedures},
        "follow-ups": {f.lower().rstrip(".") for f in truth.follow_ups},
    }


def found(extraction: Extraction) -> dict[str, set[tuple[object, ...]]]:
    p = extraction.patient
    demographics = set()
    for key, fact in (("name", p.name), ("birth_date", p.birth_date), ("sex", p.sex)):
        if fact is not None:
            demographics.add((key, " ".join(fact.value.split()[-2:]) if key == "name" else fact.value))
    for identifier in p.identifiers:
        demographics.add(("mrn" if identifier.kind == "mrn" else "nhs", identifier.value))
    for key, fact in (("address", p.address), ("phone", p.phone)):
        if fact is not None:
            demographics.add((key, fact.value))
    document = {
        (key, fact.value)
        for key, fact in (
            ("date", extraction.document_date),
            ("author", extraction.author),
            ("facility", extraction.facility),
        )
        if fact is not None
    }
    medications = set()
    for m in extraction.medications:
        timing = m.timing
        frequency: object = None
        if timing is not None:
            frequency = (
                "as needed"
                if timing.as_needed and timing.frequency is None
                else (timing.frequency, timing.period_unit, timing.when)
            )
        medications.add((m.name.lower(), m.dose_value, m.dose_unit, m.route, frequency))
    visit = extraction.encounter
    encounter = (
        {(k, v) for k, v in (("start", visit.start), ("end", visit.end), ("department", visit.department)) if v}
        if visit is not None
        else set()
    )
    return {
        "demographics": demographics,
        "document": document,
        "encounter": encounter,
        "diagnoses": {(d.text.lower(), d.assertion) for d in extraction.diagnoses},
        "medications": medications,
        "labs": {(lab.test.lower(), lab.value, lab.flag or "N", lab.specimen_date) for lab in extraction.labs},
        "vitals": {(v.kind, v.value, v.diastolic, v.unit) for v in extraction.vitals},
        "allergies": {
            ("none known",) if a.none_known else (a.substance.lower(), a.reaction, a.severity, a.category)
            for a in extraction.allergies
        },
        "procedures": {(pr.text.lower(), pr.date) for pr in extraction.procedures},
        "follow-ups": {f.text.lower() for f in extraction.follow_ups},
    }


def score(counts: Counter[str], family: str) -> tuple[float, float, float]:
    tp, fp, fn = counts[f"{family}:tp"], counts[f"{family}:fp"], counts[f"{family}:fn"]
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def read(content: bytes, ocr: object) -> list[OcrPage]:
    limits = Limits(max_bytes=1 << 30, max_pages=100, max_page_pixels=60_000_000, dpi=200)
    pages = []
    for raster in iter_pages(content, "application/pdf", limits):
        pages.append(
            read_scanned_page(ocr, raster.image, raster.number)[1]  # type: ignore[arg-type]
            if isinstance(raster, PageImage)
            else raster
        )
    return pages


def negation_suite(rng: random.Random, count: int) -> tuple[float, float, float, float]:
    """(rules precision, recall, F1, baseline F1) of 'negated' on generated sentences."""
    templates_negated = [
        "No {}.",
        "Denies {}.",
        "{} ruled out.",
        "Negative for {}.",
        "No evidence of {}.",
        "Patient denies any {}.",
        "{} was excluded.",
        "Without {}.",
    ]
    templates_present = [
        "Complains of {}.",
        "Reports {} since Monday.",
        "{} noted on examination.",
        "Ongoing {}.",
        "Presents with {}.",
        "No fever but {} for 3 days.",
    ]
    tp = fp = fn = 0
    naive = Counter[str]()
    for _ in range(count):
        finding = rng.choice([f for f in NEGATABLE if f != "fever"])
        negated = rng.random() < 0.5
        sentence = rng.choice(templates_negated if negated else templates_present).format(finding)
        sentence = sentence[0].upper() + sentence[1:]
        predicted = assertion_of(finding, sentence) == "negated"
        tp += predicted and negated
        fp += predicted and not negated
        fn += negated and not predicted
        # the peer: a keyword check ("no", "not", "denies", "negative") anywhere in the sentence
        keyword = any(w in sentence.lower().split() for w in ("no", "not", "denies", "negative", "without"))
        naive["tp"] += keyword and negated
        naive["fp"] += keyword and not negated
        naive["fn"] += negated and not keyword
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    _, _, baseline = score(Counter({f"n:{k}": v for k, v in naive.items()}), "n")
    return precision, recall, 2 * precision * recall / (precision + recall), baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--no-ocr", action="store_true", help="skip the scanned corpus")
    parser.add_argument("--us-documents", type=int, default=8, help="US progress notes, scored apart (0: none)")
    parser.add_argument("--llm-url", help="also score the LLM extractor on this OpenAI-compatible server")
    parser.add_argument("--llm-model", default="default")
    parser.add_argument("--llm-dialect", choices=("json_schema", "json_object"), default="json_schema")
    args = parser.parse_args()
    documents = [render_document(KINDS[i % len(KINDS)], 500 + i, SCAN) for i in range(args.documents)]
    us_notes = [render_document(US_KINDS[i % len(US_KINDS)], 700 + i, SCAN) for i in range(args.us_documents)]
    extractor = RulesExtractor()
    ocr = create_ocr_engine(load_settings({}))
    families = [
        "demographics",
        "document",
        "encounter",
        "diagnoses",
        "medications",
        "labs",
        "vitals",
        "allergies",
        "procedures",
        "follow-ups",
    ]
    results: dict[str, Counter[str]] = {}
    seconds: dict[str, float] = {}
    corpora: list[tuple[str, bool, Extractor, list[RenderedDocument]]] = [
        ("born-digital (extraction only)", False, extractor, documents)
    ]
    if not args.no_ocr:
        corpora.append(("scanned (OCR + extraction)", True, extractor, documents))
    if args.llm_url:
        client = ChatClient(args.llm_url, model=args.llm_model, dialect=args.llm_dialect, timeout_seconds=300)
        corpora.append((f"born-digital, llm:{args.llm_model}"[:32], False, LlmExtractor(client), documents))
    if us_notes:
        corpora.append(("US notes, born-digital", False, extractor, us_notes))
        if not args.no_ocr:
            corpora.append(("US notes, scanned", True, extractor, us_notes))
    sizes: dict[str, int] = {}
    for name, scanned, reader, corpus in corpora:
        counts: Counter[str] = Counter()
        started = time.perf_counter()
        sizes[name] = len(corpus)
        for document in corpus:
            pages = read(document.scanned_pdf if scanned else document.pdf, ocr)
            got, want = found(reader.extract(pages)), facts(document.truth)
            for family in families:
                counts[f"{family}:tp"] += len(got[family] & want[family])
                counts[f"{family}:fp"] += len(got[family] - want[family])
                counts[f"{family}:fn"] += len(want[family] - got[family])
        seconds[name] = time.perf_counter() - started
        results[name] = counts

    pages = sum(d.truth.pages for d in documents)
    print(f"{len(documents)} generated documents ({pages} pages), and {len(us_notes)} US progress notes")
    print(f"{'corpus':<32} {'field family':<14} {'precision':>9} {'recall':>7} {'F1':>6}")
    for name, counts in results.items():
        for family in families:
            p, r, f = score(counts, family)
            print(f"{name:<32} {family:<14} {p:>9.3f} {r:>7.3f} {f:>6.3f}")
        total = Counter({"all:" + k.split(":")[1]: v for k, v in counts.items()})
        for key in ("tp", "fp", "fn"):
            total[f"all:{key}"] = sum(counts[f"{f}:{key}"] for f in families)
        p, r, f = score(total, "all")
        rate = sizes[name] / seconds[name] * 60
        print(f"{name:<32} {'ALL':<14} {p:>9.3f} {r:>7.3f} {f:>6.3f}   ({rate:.0f} documents/min)")
    # ablation: lab tables read line by line, as before the page model had tables
    lines_only = RulesExtractor(read_tables=False)
    counts = Counter()
    for document in documents:
        got, want = found(lines_only.extract(read(document.pdf, ocr))), facts(document.truth)
        counts["labs:tp"] += len(got["labs"] & want["labs"])
        counts["labs:fp"] += len(got["labs"] - want["labs"])
        counts["labs:fn"] += len(want["labs"] - got["labs"])
    p, r, f = score(counts, "labs")
    print(f"{'born-digital, lab rows as lines':<32} {'labs':<14} {p:>9.3f} {r:>7.3f} {f:>6.3f}   (no table reading)")
    p, r, f, baseline = negation_suite(random.Random(3), 400)
    print(
        f"\nnegation suite (400 generated sentences): precision {p:.3f} recall {r:.3f} F1 {f:.3f}; "
        f"peer (negation keyword anywhere in the sentence) F1 {baseline:.3f}"
    )


if __name__ == "__main__":
    main()
