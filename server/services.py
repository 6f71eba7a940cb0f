"""The services one paperchart process builds once (in the app lifespan) and injects everywhere."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from server.config import Settings
from server.jobs import JobRunner
from server.pipeline import Pipeline, create_extractor, create_ocr_engine
from server.store import SqliteStore, Store
from terminology import TerminologyService
from terminology.embed import Embedder, MiniLmEmbedder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Services:
    settings: Settings
    store: Store
    pipeline: Pipeline
    jobs: JobRunner
    terminology: TerminologyService | None


def build_embedder(settings: Settings) -> Embedder | None:
    return MiniLmEmbedder(settings.model_cache_dir) if settings.semantic_search else None


def build_terminology(settings: Settings) -> TerminologyService | None:
    """The terminology service, or None (with a warning) when no index has been built yet."""
    path = settings.terminology_index_path
    if not path.exists():
        logger.warning(
            "no terminology index at %s: codes will not be assigned (run: paperchart terminology build)", path
        )
        return None
    return TerminologyService(path, build_embedder(settings))


def build_pipeline(settings: Settings, terminology: TerminologyService | None = None) -> Pipeline:
    return Pipeline(settings, create_ocr_engine(settings), create_extractor(settings), terminology)


def build_store(settings: Settings) -> Store:
    return SqliteStore(settings.database_path)
