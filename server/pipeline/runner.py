"""One document through every stage: rasterize → OCR → extract → validate → map to FHIR.

Synchronous and CPU-bound by design: callers on the event loop run it with
``anyio.to_thread.run_sync``. Each stage is timed so benchmarks and job progress can report it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import msgspec
from PIL import Image

from fhir_profiles import BundleContext, FhirValidationError, build_bundle
from fhir_profiles.extraction import Extraction, ReviewReason
from server import __version__
from server.config import Settings
from server.errors import InvalidFhirOutput, NotFound, ProcessingFailed, UnprocessableDocument
from server.pipeline.base import Extractor, OcrEngine
from server.pipeline.code import CodeChooser, code_extraction
from server.pipeline.inspect import TEXT, DocumentInfo, Limits, inspect_document
from server.pipeline.ocr import create_ocr_engine
from server.pipeline.page import OcrPage, unread_page
from server.pipeline.rasterize import PageImage, RasterPage, iter_pages, render_pdf_page
from server.pipeline.scan import read_scanned_page, read_upright_page, upright_scan
from server.pipeline.validate import with_review
from terminology import TerminologyService

logger = logging.getLogger(__name__)

# progress(stage, done, total): called after each page and each stage
ProgressCallback = Callable[[str, int, int], None]
STAGES = ("rasterize", "ocr", "extract", "code", "map")


class PipelineResult(msgspec.Struct, frozen=True, kw_only=True):
    pages: tuple[OcrPage, ...]
    extraction: Extraction
    bundle: dict[str, Any]
    seconds: dict[str, float]  # per stage


class Pipeline:
    """The configured stages; built once per process and shared by every job."""

    def __init__(
        self,
        settings: Settings,
        ocr_engine: OcrEngine,
        extractor: Extractor,
        terminology: TerminologyService | None = None,
        *,
        code_chooser: CodeChooser | None = None,
    ) -> None:
        self.settings = settings
        self.ocr_engine = ocr_engine
        self.extractor = extractor
        self.terminology = terminology
        self.code_chooser = code_chooser
        self.limits = Limits(
            max_bytes=settings.max_upload_bytes,
            max_pages=settings.max_pages,
            max_page_pixels=settings.max_page_pixels,
            dpi=settings.rasterize_dpi,
        )

    def inspect(self, content: bytes, content_type: str) -> DocumentInfo:
        return inspect_document(content, content_type, self.limits)

    def read_pages(
        self, content: bytes, content_type: str, seconds: dict[str, float], progress: ProgressCallback | None = None
    ) -> list[OcrPage]:
        info = self.inspect(content, content_type)
        pages: list[OcrPage] = []
        started = time.perf_counter()
        for raster in iter_pages(content, info.content_type, self.limits):
            rasterized = time.perf_counter()
            seconds["rasterize"] += rasterized - started
            page = self._read_scan(raster) if isinstance(raster, PageImage) else raster
            started = time.perf_counter()
            seconds["ocr"] += started - rasterized
            pages.append(page)
            if progress:
                progress("ocr", len(pages), info.pages)
        return pages

    def _read_scan(self, raster: PageImage) -> OcrPage:
        """One scanned page read within the page time limit; a page that fails or runs over is
        reported as unread and the document's other pages are still read."""
        limit = self.settings.ocr_page_timeout_seconds
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ocr-page-{raster.number}")
        future = worker.submit(read_scanned_page, self.ocr_engine, raster.image, raster.number)
        worker.shutdown(wait=False)  # a page that runs over is left to finish on its own
        width, height = float(raster.image.width), float(raster.image.height)
        try:
            return future.result(timeout=limit)[1]
        except FutureTimeout:
            logger.error("OCR of page %d ran over %.0f s; the page is left unread", raster.number, limit)
            # the engine is still busy with that page: the next page gets a fresh one
            self.ocr_engine = create_ocr_engine(self.settings)
            return unread_page(raster.number, width, height, "timeout")
        except ProcessingFailed:
            return unread_page(raster.number, width, height, "ocr-failed")

    def _raster(self, content: bytes, content_type: str, number: int) -> RasterPage:
        """Page ``number`` as rasterizing yields it: a scan's image, or a text layer's words."""
        info = self.inspect(content, content_type)
        if info.content_type == TEXT:
            raise UnprocessableDocument("a transcribed text document has no page images")
        if not 1 <= number <= info.pages:
            raise NotFound(f"the document has no page {number}")
        for raster in iter_pages(content, info.content_type, self.limits):
            if raster.number == number:
                return raster
        raise NotFound(f"the document has no page {number}")  # pragma: no cover - pages counted above

    def render_page(self, content: bytes, content_type: str, number: int) -> Image.Image:
        """One page as an image (for viewing): a scan shown the way it was read, turned upright; without
        OCR unless the ink leaves upright or upside down in doubt (then it was settled by reading)."""
        raster = self._raster(content, content_type, number)
        if isinstance(raster, PageImage):
            image, sure = upright_scan(raster.image)
            return image if sure else read_upright_page(self.ocr_engine, image, number, sure=False)[0]
        return render_pdf_page(content, number, self.limits.dpi)  # text layer: as printed

    def page_with_words(self, content: bytes, content_type: str, number: int) -> tuple[Image.Image, OcrPage]:
        """One page as an image and its words in that image's pixel coordinates (for viewing, redaction)."""
        raster = self._raster(content, content_type, number)
        if isinstance(raster, PageImage):
            return read_scanned_page(self.ocr_engine, raster.image, number)
        image = render_pdf_page(content, number, self.limits.dpi)
        scale = image.width / raster.width  # text layer in points, image in pixels
        words = [
            msgspec.structs.replace(
                w, bbox=(w.bbox[0] * scale, w.bbox[1] * scale, w.bbox[2] * scale, w.bbox[3] * scale)
            )
            for w in raster.words
        ]
        return image, msgspec.structs.replace(raster, width=image.width, height=image.height, words=tuple(words))

    def run(
        self, content: bytes, content_type: str, context: BundleContext, progress: ProgressCallback | None = None
    ) -> PipelineResult:
        seconds = dict.fromkeys(STAGES, 0.0)
        pages = self.read_pages(content, content_type, seconds, progress)

        started = time.perf_counter()
        extraction = self.extractor.extract(pages)
        extraction = with_review(extraction, confidence_threshold=self.settings.ocr_confidence_threshold)
        unread = [page.number for page in pages if page.unread]
        if unread:
            reason = ReviewReason(
                code="page-unread",
                message=f"Page(s) {', '.join(map(str, unread))} could not be read (OCR failed or ran over its time "
                "limit); nothing was extracted from them.",
            )
            extraction = msgspec.structs.replace(extraction, review_reasons=(*extraction.review_reasons, reason))
        seconds["extract"] = time.perf_counter() - started
        if progress:
            progress("extract", 1, 1)

        started = time.perf_counter()
        if self.terminology is not None:
            extraction = code_extraction(
                extraction, self.terminology, self.code_chooser, self.settings.code_accept_similarity
            )
        seconds["code"] = time.perf_counter() - started

        started = time.perf_counter()
        ocr_used = any(page.source == "ocr" for page in pages)
        context = msgspec.structs.replace(context, ocr_engine=self.ocr_engine.name if ocr_used else None)
        try:
            bundle = build_bundle(extraction, context)
        except FhirValidationError as exc:
            raise InvalidFhirOutput(
                "the extracted data could not be mapped to valid FHIR", diagnostics="; ".join(exc.problems)
            ) from None
        seconds["map"] = time.perf_counter() - started
        if progress:
            progress("map", 1, 1)
        return PipelineResult(pages=tuple(pages), extraction=extraction, bundle=bundle, seconds=seconds)


def software_name() -> str:
    return f"paperchart {__version__}"
