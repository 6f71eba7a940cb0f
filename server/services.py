"""The services one paperchart process builds once (in the app lifespan) and injects everywhere."""

from __future__ import annotations

from dataclasses import dataclass

from server.config import Settings
from server.jobs import JobRunner
from server.pipeline import Pipeline, create_extractor, create_ocr_engine
from server.store import SqliteStore, Store


@dataclass(frozen=True, kw_only=True)
class Services:
    settings: Settings
    store: Store
    pipeline: Pipeline
    jobs: JobRunner


def build_pipeline(settings: Settings) -> Pipeline:
    return Pipeline(settings, create_ocr_engine(settings), create_extractor(settings))


def build_store(settings: Settings) -> Store:
    return SqliteStore(settings.database_path)
