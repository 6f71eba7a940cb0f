"""The pluggable parts of the pipeline, as Protocols: OCR engines and extractors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from fhir_profiles.extraction import Extraction
from server.pipeline.page import OcrPage


@runtime_checkable
class OcrEngine(Protocol):
    """Reads one page image into words with boxes and confidences."""

    name: str

    def read(self, image: Image.Image, page_number: int) -> OcrPage: ...

    def ready(self) -> bool:
        """True when the engine's models are loaded (or can be loaded) and it can read pages."""
        ...


@runtime_checkable
class Extractor(Protocol):
    """Turns the pages of one document into clinical facts with evidence."""

    name: str

    def extract(self, pages: Sequence[OcrPage]) -> Extraction: ...


def models_load(load: Callable[[], object], lock: threading.Lock, engine: str) -> bool:
    """Whether an engine's models load (for ``ready``); the failure is logged, never raised."""
    try:
        with lock:
            load()
    except Exception:
        logging.getLogger(__name__).exception("%s failed to load its models", engine)
        return False
    return True
