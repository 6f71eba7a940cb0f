"""Shared fixtures: settings on a temporary data dir, generated documents, one OCR engine."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.config import Settings, load_settings
from server.pipeline.ocr.rapid import RapidOcrEngine
from terminology.embed import MiniLmEmbedder
from tests.fixtures.generate import DocumentKind, RenderedDocument, ScanEffects, render_document


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_browser = pytest.mark.skip(reason="Chromium is not installed (PAPERCHART_WITH_BROWSER=1 make bootstrap)")
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    has_gpu = shutil.which("nvidia-smi") is not None
    for item in items:
        if item.get_closest_marker("browser") and shutil.which("chromium") is None:
            item.add_marker(skip_browser)
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        {}, data_dir=tmp_path / "data", job_poll_seconds=0.05, sync_wait_seconds=60, mllp_enabled=False
    )


_rendered: dict[tuple[str, int, ScanEffects], RenderedDocument] = {}


def paperchart(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``paperchart ARGS`` in a process of its own, run in ``cwd`` with ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
        env={**os.environ, **env},
    )


def rendered(kind: DocumentKind, seed: int = 1, effects: ScanEffects | None = None) -> RenderedDocument:
    """A generated document, rendered once per test session."""
    key = (kind, seed, effects or ScanEffects())
    if key not in _rendered:
        _rendered[key] = render_document(kind, seed, effects)
    return _rendered[key]


@pytest.fixture(scope="session")
def ocr_engine() -> RapidOcrEngine:
    """One engine for the session: loading the PP-OCR models takes about a second."""
    return RapidOcrEngine()


def document_reference(content: bytes, content_type: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"contentType": content_type, "data": base64.b64encode(content).decode()}}],
        **extra,
    }


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> MiniLmEmbedder:
    return MiniLmEmbedder(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def terminology_index(tmp_path_factory: pytest.TempPathFactory, embedder: MiniLmEmbedder) -> Path:
    """A real index (ICD-10-CM, SNOMED CT, LOINC, UCUM slices), built once per session."""
    from tests.terminology_fixtures import build_test_index

    return build_test_index(tmp_path_factory.mktemp("terminology") / "terminology.db", embedder)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(__import__("os").environ):
        if key.startswith("PAPERCHART_"):
            monkeypatch.delenv(key)
    yield
