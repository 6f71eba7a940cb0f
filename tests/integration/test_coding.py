"""Which mentions the pipeline codes without a chooser: an exact designation match, or a top
candidate at least ``PAPERCHART_CODE_ACCEPT_SIMILARITY`` close in meaning; the rest go to review."""

from __future__ import annotations

from pathlib import Path

import msgspec

from fhir_profiles.extraction import Diagnosis, Extraction
from server.config import Settings
from server.pipeline import Pipeline
from server.pipeline.code import ACCEPT_SIMILARITY, code_extraction
from server.pipeline.extract import RulesExtractor
from server.pipeline.ocr.rapid import RapidOcrEngine
from terminology import TerminologyService
from terminology.embed import MiniLmEmbedder
from terminology.model import ICD10CM
from tests.conftest import rendered
from tests.integration.test_llm_extractor import CONTEXT

CKD = "Chronic kidney disease stage 3"  # the index names N18.30 "... stage 3 unspecified": close, not equal


def _icd(extraction: Extraction) -> dict[str, list[str]]:
    return {d.text: [c.code for c in d.codings if c.system == ICD10CM] for d in extraction.diagnoses}


def test_the_threshold_decides_what_is_coded_and_an_exact_match_is_always_coded(
    terminology_index: Path, embedder: MiniLmEmbedder
) -> None:
    terminology = TerminologyService(terminology_index, embedder)
    top = terminology.lookup(CKD, systems=[ICD10CM], limit=1)[0]
    assert not top.exact and top.similarity is not None and ACCEPT_SIMILARITY <= top.similarity < 1.0
    exact = "Congestive heart failure"
    assert terminology.lookup(exact, systems=[ICD10CM], limit=1)[0].exact
    extraction = Extraction(diagnoses=(Diagnosis(text=CKD), Diagnosis(text=exact)))

    coded = code_extraction(extraction, terminology)  # the default threshold
    assert _icd(coded) == {CKD: [top.code], exact: ["I50.9"]}
    assert "code-unresolved" not in [r.code for r in coded.review_reasons]

    stricter = code_extraction(extraction, terminology, threshold=top.similarity + 0.001)
    assert _icd(stricter) == {CKD: [], exact: ["I50.9"]}
    assert "code-unresolved" in [r.code for r in stricter.review_reasons]


def test_the_pipeline_codes_by_the_configured_threshold(
    settings: Settings, ocr_engine: RapidOcrEngine, terminology_index: Path, embedder: MiniLmEmbedder
) -> None:
    terminology = TerminologyService(terminology_index, embedder)
    document = rendered("discharge_summary", seed=1).pdf  # born digital; its diagnoses include CKD

    def coded(threshold: float) -> Extraction:
        configured = msgspec.structs.replace(settings, code_accept_similarity=threshold)
        pipeline = Pipeline(configured, ocr_engine, RulesExtractor(), terminology)
        return pipeline.run(document, "application/pdf", CONTEXT).extraction

    default, strict = coded(settings.code_accept_similarity), coded(0.99)
    assert _icd(default)[CKD] == ["N18.30"] and _icd(strict)[CKD] == []
    assert "code-unresolved" in [r.code for r in strict.review_reasons]
    assert all(_icd(strict)[text] == codes for text, codes in _icd(default).items() if text != CKD)
