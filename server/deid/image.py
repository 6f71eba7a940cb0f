"""Page images with identifiers blacked out: every word whose characters fall in a PHI span.

The spans come from the same scrubber as free text (known values and Safe Harbor patterns) run
over the page's text, so a phone number split over three OCR words is covered as a whole.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from PIL import Image, ImageDraw

from server.deid.text import phi_spans
from server.pipeline.page import OcrPage

_PADDING = 2  # pixels around each box: anti-aliased glyph edges must not survive


def redact_page(image: Image.Image, page: OcrPage, known: Iterable[str]) -> Image.Image:
    spans = phi_spans(page.text, known)
    redacted = image.convert("RGB")
    draw = ImageDraw.Draw(redacted)
    for word, (start, end) in zip(page.words, page.spans, strict=True):
        if any(start < span_end and span_start < end for span_start, span_end in spans):
            x0, y0, x1, y1 = word.bbox
            draw.rectangle((x0 - _PADDING, y0 - _PADDING, x1 + _PADDING, y1 + _PADDING), fill="black")
    return redacted


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
