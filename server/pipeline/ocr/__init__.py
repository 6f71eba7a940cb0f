"""OCR engines behind the ``OcrEngine`` protocol; ``create_ocr_engine`` picks one from Settings."""

from __future__ import annotations

from server.config import Settings
from server.errors import ConfigurationError
from server.pipeline.base import OcrEngine
from server.pipeline.ocr.rapid import RapidOcrEngine

__all__ = ["RapidOcrEngine", "create_ocr_engine"]


def create_ocr_engine(settings: Settings) -> OcrEngine:
    if settings.ocr_engine == "rapidocr":
        return RapidOcrEngine(
            threads=settings.ocr_threads, det_max_side=settings.ocr_det_max_side, word_score=settings.ocr_word_score
        )
    if settings.ocr_engine == "paddleocr":
        from server.pipeline.ocr.paddle import PaddleOcrEngine  # imports paddle only when chosen

        return PaddleOcrEngine(
            device=settings.paddle_device,
            det_model_dir=settings.paddle_det_model_dir,
            rec_model_dir=settings.paddle_rec_model_dir,
        )
    raise ConfigurationError(f"unknown OCR engine {settings.ocr_engine!r}")
