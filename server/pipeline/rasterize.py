"""Turn document bytes into pages: text-layer pages straight from a PDF, images for OCR.

Born-digital PDF pages keep their text layer (words with boxes, confidence 1.0) and skip OCR;
pages without usable text are rendered by pdf2image (poppler) at the configured DPI. PNG,
JPEG and (multi-page, e.g. fax) TIFF images are read directly. Pages are produced one at a
time so a long document never holds every page image in memory.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from typing import Final

import msgspec
import pdfplumber
from pdf2image import convert_from_bytes
from PIL import Image, ImageOps

from server.errors import ProcessingFailed, UnprocessableDocument
from server.pipeline.inspect import PDF, TEXT, Limits
from server.pipeline.page import OcrPage, Word, compose_page

# A page whose text layer has fewer characters than this is treated as scanned.
MIN_TEXT_LAYER_CHARS: Final = 20


class PageImage(msgspec.Struct, frozen=True, kw_only=True):
    """A page that needs OCR."""

    number: int
    image: Image.Image


RasterPage = OcrPage | PageImage


def iter_pages(content: bytes, content_type: str, limits: Limits) -> Iterator[RasterPage]:
    """Yield each page of the document, in order, as a text-layer OcrPage or a PageImage."""
    if content_type == PDF:
        yield from _iter_pdf(content, limits)
    elif content_type == TEXT:
        yield from _iter_text(content)
    else:
        yield from _iter_image(content, limits)


def _iter_pdf(content: bytes, limits: Limits) -> Iterator[RasterPage]:
    try:
        pdf = pdfplumber.open(io.BytesIO(content))
    except Exception:
        raise UnprocessableDocument("PDF is corrupt or truncated and cannot be read") from None
    with pdf:
        for index, page in enumerate(pdf.pages):
            number = index + 1
            text_page = _text_layer_page(page, number)
            if text_page is not None:
                yield text_page
                continue
            yield PageImage(number=number, image=render_pdf_page(content, number, limits.dpi))


def _text_layer_page(page: pdfplumber.page.Page, number: int) -> OcrPage | None:
    try:
        raw_words = page.extract_words(keep_blank_chars=False, use_text_flow=False)
    except Exception:
        return None  # unreadable text layer: fall back to OCR of the rendered page
    if sum(len(w["text"]) for w in raw_words) < MIN_TEXT_LAYER_CHARS:
        return None
    words = [
        Word(text=w["text"], bbox=(float(w["x0"]), float(w["top"]), float(w["x1"]), float(w["bottom"])))
        for w in raw_words
    ]
    return compose_page(number, float(page.width), float(page.height), "text-layer", words)


def render_pdf_page(content: bytes, number: int, dpi: int) -> Image.Image:
    try:
        images = convert_from_bytes(content, dpi=dpi, first_page=number, last_page=number, grayscale=True)
    except FileNotFoundError:
        raise ProcessingFailed("poppler-utils is not installed; run scripts/bootstrap-debian.sh") from None
    except Exception:
        raise UnprocessableDocument(f"page {number} of the PDF cannot be rendered") from None
    if not images:
        raise UnprocessableDocument(f"page {number} of the PDF cannot be rendered")
    return images[0].convert("RGB")


# Transcribed text has no page image: words get boxes on a virtual page of fixed-pitch lines,
# so evidence still carries line and column (normalized) like every other page.
_TEXT_PAGE_WIDTH: Final = 1000.0
_CHAR_WIDTH: Final = 8.0
_LINE_HEIGHT: Final = 16.0


def _iter_text(content: bytes) -> Iterator[RasterPage]:
    for index, page_text in enumerate(content.decode("utf-8").split("\f")):
        words: list[Word] = []
        lines = page_text.splitlines()
        for row, line in enumerate(lines):
            for match in re.finditer(r"\S+", line):
                x0 = match.start() * _CHAR_WIDTH
                words.append(
                    Word(
                        text=match.group(),
                        bbox=(
                            x0,
                            row * _LINE_HEIGHT,
                            x0 + len(match.group()) * _CHAR_WIDTH,
                            row * _LINE_HEIGHT + _LINE_HEIGHT * 0.8,
                        ),
                    )
                )
        width = max(_TEXT_PAGE_WIDTH, max((len(line) for line in lines), default=0) * _CHAR_WIDTH)
        yield compose_page(index + 1, width, max(len(lines), 1) * _LINE_HEIGHT, "text-layer", words)


def _iter_image(content: bytes, limits: Limits) -> Iterator[RasterPage]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(content))
        frames = getattr(image, "n_frames", 1)
        for frame in range(frames):
            image.seek(frame)
            if image.width * image.height > limits.max_page_pixels:
                raise UnprocessableDocument(f"page {frame + 1} has more pixels than allowed")
            try:
                page = ImageOps.exif_transpose(image.copy()) if frame == 0 else image.copy()
                page = page.convert("RGB")
            except Exception:
                raise UnprocessableDocument(f"page {frame + 1} of the image cannot be decoded") from None
            yield PageImage(number=frame + 1, image=page)
