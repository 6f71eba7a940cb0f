"""A page that fails or runs over its time limit is reported; the document's other pages are still read.

The engine is the real PP-OCR engine; for the page that must fail, a wrapper makes it fail or
stall on that page (a real engine does not fail on demand).
"""

from __future__ import annotations

import threading
import time

import msgspec
from PIL import Image

from server.config import Settings
from server.errors import ProcessingFailed
from server.pipeline import Pipeline
from server.pipeline.extract import RulesExtractor
from server.pipeline.ocr.rapid import RapidOcrEngine
from server.pipeline.page import OcrPage
from tests.conftest import rendered
from tests.fixtures.generate import ScanEffects
from tests.integration.test_llm_extractor import CONTEXT


class OnePageGoesWrong:
    """The real engine, except on ``page``: it raises, or stalls until released."""

    name = "rapidocr-ppocr"

    def __init__(self, engine: RapidOcrEngine, page: int, stall: bool) -> None:
        self.engine, self.page, self.stall = engine, page, stall
        self.released = threading.Event()

    def ready(self) -> bool:
        return self.engine.ready()

    def read(self, image: Image.Image, page_number: int) -> OcrPage:
        if page_number == self.page:
            if not self.stall:
                raise ProcessingFailed(f"OCR failed on page {page_number}")
            self.released.wait(30)
        return self.engine.read(image, page_number)


def _discharge_summary() -> bytes:
    return rendered("discharge_summary", seed=5, effects=ScanEffects(dpi=150)).scanned_pdf


def test_a_page_that_fails_is_reported_and_the_rest_is_read(settings: Settings, ocr_engine: RapidOcrEngine) -> None:
    engine = OnePageGoesWrong(ocr_engine, page=2, stall=False)
    result = Pipeline(settings, engine, RulesExtractor()).run(_discharge_summary(), "application/pdf", CONTEXT)
    assert [p.unread for p in result.pages] == [None, "ocr-failed"]
    assert result.extraction.patient.name is not None  # page 1 was read
    reasons = {r.code: r.message for r in result.extraction.review_reasons}
    assert "Page(s) 2 could not be read" in reasons["page-unread"]


def test_a_page_that_runs_over_its_limit_is_left_and_a_fresh_engine_reads_on(
    settings: Settings, ocr_engine: RapidOcrEngine
) -> None:
    stalling = OnePageGoesWrong(ocr_engine, page=1, stall=True)
    pipeline = Pipeline(msgspec.structs.replace(settings, ocr_page_timeout_seconds=8.0), stalling, RulesExtractor())
    started = time.monotonic()
    try:
        result = pipeline.run(_discharge_summary(), "application/pdf", CONTEXT)
    finally:
        stalling.released.set()
    assert time.monotonic() - started < 25  # the stalled page was not waited for
    assert [p.unread for p in result.pages] == ["timeout", None]
    assert pipeline.ocr_engine is not stalling and result.pages[1].words  # page 2 read by a new engine
    assert "page-unread" in [r.code for r in result.extraction.review_reasons]
