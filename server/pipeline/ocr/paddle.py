"""GPU OCR with PaddleOCR 3 (PP-OCR on paddlepaddle-gpu): the same page model as the CPU engine.

Selected with ``PAPERCHART_OCR_ENGINE=paddleocr`` on a machine with ``pip install '.[gpu]'``.
The engine is created once and reused; pages are turned upright and cleaned by the pipeline
before they get here, so PaddleOCR's own document-orientation, unwarping and text-line
orientation stages are off (as the CPU engine's classifier is). PaddleOCR fetches its models on
first use; a machine without internet access gives it exported inference models instead
(``PAPERCHART_PADDLE_DET_MODEL_DIR`` / ``_REC_MODEL_DIR``).

Words: PaddleOCR's ``return_word_box`` gives each recognised line's tokens and their polygons
(``text_word`` / ``text_word_region``); tokens are joined into words at spaces. Without them, a
line's box is shared out among its words by character count.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from server.errors import ConfigurationError, ProcessingFailed
from server.pipeline.base import models_load
from server.pipeline.page import OcrPage, Word, compose_page

logger = logging.getLogger(__name__)


class PaddleOcrEngine:
    name = "paddleocr-ppocr"

    def __init__(
        self,
        *,
        device: str = "gpu:0",
        det_model_dir: Path | None = None,
        rec_model_dir: Path | None = None,
        det_model_name: str = "PP-OCRv5_server_det",
        rec_model_name: str = "en_PP-OCRv5_mobile_rec",
    ) -> None:
        self.device = device
        self._options: dict[str, Any] = {
            "device": device,
            "use_doc_orientation_classify": False,
            "use_doc_unwarping": False,
            "use_textline_orientation": False,
            "text_detection_model_name": det_model_name,
            "text_recognition_model_name": rec_model_name,
        }
        if det_model_dir is not None:
            self._options["text_detection_model_dir"] = str(det_model_dir)
        if rec_model_dir is not None:
            self._options["text_recognition_model_dir"] = str(rec_model_dir)
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is None:
            try:
                from paddleocr import PaddleOCR
            except ImportError:
                raise ConfigurationError(
                    "PAPERCHART_OCR_ENGINE=paddleocr needs PaddleOCR: pip install '.[gpu]' on a CUDA machine"
                ) from None
            self._engine = PaddleOCR(**self._options)
        return self._engine

    def ready(self) -> bool:
        return models_load(self._load, self._lock, "PaddleOCR")

    def read(self, image: Image.Image, page_number: int) -> OcrPage:
        pixels = np.asarray(image.convert("RGB"))[:, :, ::-1]  # PaddleOCR takes BGR arrays, as OpenCV reads them
        with self._lock:  # one page at a time on the GPU per engine
            engine = self._load()
            try:
                results = engine.predict(np.ascontiguousarray(pixels), return_word_box=True)
            except Exception:
                logger.exception("PaddleOCR failed on page %d", page_number)
                raise ProcessingFailed(f"OCR failed on page {page_number}") from None
        words = list(words_from_result(results[0])) if results else []
        return compose_page(page_number, float(image.width), float(image.height), "ocr", words)


def _box(points: Any) -> tuple[float, float, float, float]:
    array = np.asarray(points, dtype=float).reshape(-1, 2)
    return float(array[:, 0].min()), float(array[:, 1].min()), float(array[:, 0].max()), float(array[:, 1].max())


def _slope(polygon: Any) -> float:
    array = np.asarray(polygon, dtype=float).reshape(-1, 2)
    (x0, y0), (x1, y1) = array[0], array[1]
    return float((y1 - y0) / (x1 - x0)) if x1 != x0 else 0.0


def _token_words(tokens: Sequence[Any], regions: Sequence[Any]) -> Iterator[tuple[str, tuple[float, ...]]]:
    """Words from a line's tokens: a token that is a word (a list of characters, or a string of
    several) is one; single characters are joined up to a space."""
    text, box = "", (0.0, 0.0, 0.0, 0.0)
    for token, region in zip(tokens, regions, strict=False):
        piece = "".join(token) if isinstance(token, list | tuple) else str(token)
        whole_word = isinstance(token, list | tuple) or len(piece) > 1
        if text and (whole_word or not piece.strip()):
            yield text, box
            text = ""
        if not piece.strip():
            continue
        x0, y0, x1, y1 = _box(region)
        if whole_word:
            yield piece.strip(), (x0, y0, x1, y1)
            continue
        box = (x0, y0, x1, y1) if not text else (min(box[0], x0), min(box[1], y0), max(box[2], x1), max(box[3], y1))
        text += piece
    if text:
        yield text, box


def _shared_out(text: str, box: tuple[float, float, float, float]) -> Iterator[tuple[str, tuple[float, ...]]]:
    """A line's box shared among its words by character count (no word boxes from the engine)."""
    x0, y0, x1, y1 = box
    per_char = (x1 - x0) / max(len(text), 1)
    position = 0
    for part in text.split(" "):
        if part:
            yield part, (x0 + position * per_char, y0, x0 + (position + len(part)) * per_char, y1)
        position += len(part) + 1


def words_from_result(result: Any) -> Iterator[Word]:
    """Words with boxes from one PaddleOCR 3 page result (a dict-like ``OCRResult``)."""
    texts = list(result.get("rec_texts") or [])
    scores = list(result.get("rec_scores") or [])
    polygons = result.get("rec_polys")
    if polygons is None:
        polygons = result.get("dt_polys")
    polygons = list(polygons) if polygons is not None else []
    tokens = result.get("text_word")
    regions = result.get("text_word_region")
    for index, text in enumerate(texts):
        if not str(text).strip() or index >= len(polygons):
            continue
        score = round(float(scores[index]), 4) if index < len(scores) else 0.0
        slope = _slope(polygons[index])
        if tokens is not None and regions is not None and index < len(tokens) and len(tokens[index]):
            pieces = list(_token_words(tokens[index], regions[index]))
        else:
            pieces = list(_shared_out(str(text), _box(polygons[index])))
        for word, (x0, y0, x1, y1) in pieces:
            yield Word(text=word, bbox=(x0, y0, x1, y1), confidence=score, slope=slope)
