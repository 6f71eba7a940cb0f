"""Extractors behind the ``Extractor`` protocol; ``create_extractor`` picks one from Settings."""

from __future__ import annotations

from server.config import Settings
from server.errors import ConfigurationError
from server.pipeline.base import Extractor
from server.pipeline.extract.rules import RulesExtractor

__all__ = ["RulesExtractor", "create_extractor"]


def create_extractor(settings: Settings) -> Extractor:
    if settings.extractor == "rules":
        return RulesExtractor(date_order=settings.date_order)
    raise ConfigurationError(f"unknown extractor {settings.extractor!r}")
