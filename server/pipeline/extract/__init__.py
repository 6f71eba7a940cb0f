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
    if settings.extractor == "llm":
        if not settings.llm_base_url:
            raise ConfigurationError("PAPERCHART_EXTRACTOR=llm needs PAPERCHART_LLM_BASE_URL")
        from server.pipeline.extract.llm import ChatClient, LlmExtractor

        client = ChatClient(
            settings.llm_base_url,
            model=settings.llm_model,
            dialect=settings.llm_dialect,
            timeout_seconds=settings.llm_timeout_seconds,
            api_key=settings.llm_api_key,
        )
        return LlmExtractor(client, date_order=settings.date_order)
    raise ConfigurationError(f"unknown extractor {settings.extractor!r}")
