"""The document pipeline: inspect, rasterize, OCR, extract, validate, map to FHIR."""

from server.pipeline.base import Extractor, OcrEngine
from server.pipeline.extract import create_code_chooser, create_extractor
from server.pipeline.ocr import create_ocr_engine
from server.pipeline.page import OcrPage, Word
from server.pipeline.runner import Pipeline, PipelineResult, software_name

__all__ = [
    "Extractor",
    "OcrEngine",
    "OcrPage",
    "Pipeline",
    "PipelineResult",
    "Word",
    "create_code_chooser",
    "create_extractor",
    "create_ocr_engine",
    "software_name",
]
