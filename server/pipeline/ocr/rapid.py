"""CPU OCR with the PP-OCR models that ship inside the ``rapidocr`` wheel (ONNX Runtime).

The models load once, on first use, and are reused for every page. Word boxes come from
RapidOCR's per-word output; each word keeps the slope of its text line so page composition
can group words into lines on a slightly rotated scan.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from server.errors import ProcessingFailed
from server.pipeline.base import models_load
from server.pipeline.page import OcrPage, Word, compose_page

logger = logging.getLogger(__name__)
# Text detection at 1280 px on the longest side (a 200 dpi A4 page is 2339): on generated scans the
# detector took 0.5 s a page instead of 1.6 s, with the same character error rate (bench/ocr.py).
DET_MAX_SIDE = 1280
WordScore = Literal["mean", "min"]


class RapidOcrEngine:
    name = "rapidocr-ppocr"

    def __init__(self, *, threads: int = 0, det_max_side: int = DET_MAX_SIDE, word_score: WordScore = "mean") -> None:
        self._threads = threads if threads > 0 else -1
        self._word_score = word_score
        self._det_max_side = det_max_side
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is None:
            from rapidocr import RapidOCR

            self._engine = RapidOCR(
                params={
                    "Global.log_level": "warning",
                    # the per-line 180° classifier: pages are turned upright before OCR
                    # (server.pipeline.preprocess), so it only costs time (a third of it, measured
                    # on generated scans, with no change in character error rate)
                    "Global.use_cls": False,
                    "EngineConfig.onnxruntime.intra_op_num_threads": self._threads,
                    # text is found on the page shrunk to this longest side (0: RapidOCR's default, the
                    # page at full size); words are still read from the full-size page
                    **(
                        {"Det.limit_type": "max", "Det.limit_side_len": self._det_max_side}
                        if self._det_max_side
                        else {}
                    ),
                }
            )
            _score_words_by_their_characters(self._engine, self._word_score)
        return self._engine

    def ready(self) -> bool:
        return models_load(self._load, self._lock, "RapidOCR")

    def read(self, image: Image.Image, page_number: int) -> OcrPage:
        pixels = np.asarray(image.convert("RGB"))
        with self._lock:  # one inference at a time per engine; ONNX Runtime uses all threads itself
            try:
                result = self._load()(pixels, return_word_box=True)
            except Exception:
                logger.exception("RapidOCR failed on page %d", page_number)
                raise ProcessingFailed(f"OCR failed on page {page_number}") from None
        words = list(_words_from_result(result))
        return compose_page(page_number, float(image.width), float(image.height), "ocr", words)


def word_confidences(
    line: str, words: Sequence[str], char_confidences: Sequence[float], score: WordScore = "mean"
) -> list[float]:
    """Each word's confidence from its own characters': their mean (as PP-OCR scores a line), or the
    least of them (flags more misreadings of handwriting, and more sound typed words with them)."""
    combine = np.mean if score == "mean" else np.min
    scores = []
    position = 0
    for word in words:
        start = line.find(word, position)
        if start < 0 or len(char_confidences) != len(line):
            scores.append(float(np.mean(char_confidences)) if len(char_confidences) else 0.0)
            continue
        position = start + len(word)
        scores.append(float(combine(char_confidences[start:position])))
    return scores


def _score_words_by_their_characters(engine: Any, score: WordScore) -> None:
    """RapidOCR 3.10 pairs the i-th word of a line with the i-th *character's* confidence (its word
    boxes zip words with per-character scores), so "Omeprazole WOmy daily" scored "WOmy" by the "m"
    of "Omeprazole". Its word splitter is wrapped to give each word its own characters' mean."""
    splitter = engine.cal_rec_boxes
    original = splitter.cal_ocr_word_box

    def per_word(rec_txt: str, bbox: Any, word_info: Any, *args: Any) -> tuple[Any, Any, list[float]]:
        contents, boxes, confidences = original(rec_txt, bbox, word_info, *args)
        return contents, boxes, word_confidences(rec_txt, contents, confidences, score)

    splitter.cal_ocr_word_box = per_word


def _words_from_result(result: Any) -> list[Word]:
    if result is None or not result.txts:
        return []
    words = []
    for line_box, line_words in zip(result.boxes, result.word_results, strict=False):
        (x0, y0), (x1, y1) = line_box[0], line_box[1]
        slope = float((y1 - y0) / (x1 - x0)) if x1 != x0 else 0.0
        for text, score, box in line_words:
            if not text or box is None:
                continue
            xs = [p[0] for p in box]
            ys = [p[1] for p in box]
            words.append(
                Word(
                    text=str(text),
                    bbox=(float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))),
                    confidence=round(float(score), 4),
                    slope=slope,
                )
            )
    return words
