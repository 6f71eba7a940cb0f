"""A scanned page read: turned upright, cleaned, OCR'd, its checkboxes found.

Orientation comes from the ink (server/pipeline/preprocess.py). Where that measure is close —
a filled-in form's answer lines and block capitals can even it out — the reading settles it: a
page read upside down gets a far lower mean word confidence (on generated pages, upright
0.98 against 0.65 to 0.77 turned over), so a page read with less than ``CONFIDENT_PAGE`` is read
turned 180° too, and the better reading is kept. Typed pages are almost always sure and are read
once.
"""

from __future__ import annotations

from typing import Final

from PIL import Image

from server.pipeline.base import OcrEngine
from server.pipeline.checkboxes import with_checkboxes
from server.pipeline.page import OcrPage
from server.pipeline.preprocess import denoise, detect_orientation, flatten_lighting

CONFIDENT_PAGE: Final = 0.9  # mean word confidence of a page that was surely read the right way up


def upright_scan(image: Image.Image) -> tuple[Image.Image, bool]:
    """The page with its lighting evened out and turned upright by its ink, and whether the ink was sure
    which way up it is."""
    image = flatten_lighting(image)  # first: a shadow's dark paper would count as ink for orientation
    orientation = detect_orientation(image)
    if orientation.angle:
        image = image.rotate(orientation.angle, expand=True, fillcolor="white")
    return image, orientation.sure


def read_scanned_page(engine: OcrEngine, image: Image.Image, number: int) -> tuple[Image.Image, OcrPage]:
    """The page image as read (upright, cleaned) and what was read on it, word boxes in its pixels."""
    image, sure = upright_scan(image)
    return read_upright_page(engine, image, number, sure=sure)


def read_upright_page(engine: OcrEngine, image: Image.Image, number: int, *, sure: bool) -> tuple[Image.Image, OcrPage]:
    """A page already turned by ``upright_scan``, cleaned and read; when the turn was not ``sure`` and
    the reading is doubtful, read turned over too, keeping the better reading."""
    image = denoise(image)
    page = engine.read(image, number)
    if not sure and page.mean_confidence < CONFIDENT_PAGE:
        turned = image.rotate(180)
        other = engine.read(turned, number)
        if other.mean_confidence > page.mean_confidence:
            image, page = turned, other
    return image, with_checkboxes(image, page)
