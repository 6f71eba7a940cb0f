"""Extractors behind the ``Extractor`` protocol; ``create_extractor`` picks one from Settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.config import Settings
from server.errors import ConfigurationError
from server.pipeline.base import Extractor
from server.pipeline.code import CodeChooser
from server.pipeline.extract.rules import RulesExtractor

if TYPE_CHECKING:
    from server.pipeline.extract.llm import ChatClient

__all__ = ["RulesExtractor", "create_code_chooser", "create_extractor"]


def _chat_client(settings: Settings, purpose: str) -> ChatClient:
    if not settings.llm_base_url:
        raise ConfigurationError(f"{purpose} needs PAPERCHART_LLM_BASE_URL")
    from server.pipeline.extract.llm import ChatClient

    return ChatClient(
        settings.llm_base_url,
        model=settings.llm_model,
        dialect=settings.llm_dialect,
        timeout_seconds=settings.llm_timeout_seconds,
        api_key=settings.llm_api_key,
    )


def create_extractor(settings: Settings) -> Extractor:
    if settings.extractor == "rules":
        return RulesExtractor(date_order=settings.date_order)
    if settings.extractor == "llm":
        from server.pipeline.extract.llm import LlmExtractor

        return LlmExtractor(
            _chat_client(settings, "PAPERCHART_EXTRACTOR=llm"),
            date_order=settings.date_order,
            max_prompt_chars=settings.llm_max_prompt_chars,
            concurrency=settings.llm_concurrency,
        )
    raise ConfigurationError(f"unknown extractor {settings.extractor!r}")


def create_code_chooser(settings: Settings) -> CodeChooser | None:
    """The LLM that picks codes among the index's candidates, or None: a similarity threshold decides."""
    chooser = settings.code_chooser
    if chooser == "similarity" or (chooser == "auto" and settings.extractor != "llm"):
        return None
    from server.pipeline.extract.llm import LlmCodeChooser

    return LlmCodeChooser(_chat_client(settings, "PAPERCHART_CODE_CHOOSER=llm"))
