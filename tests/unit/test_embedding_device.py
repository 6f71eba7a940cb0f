"""Where the embedding model runs (``PAPERCHART_EMBEDDING_DEVICE``): the CPU by default, a CUDA GPU
when asked for one that torch sees, and a clear refusal otherwise.

The ``gpu``-marked test embeds on a real GPU and checks that the vectors are the CPU's: an index
built on a GPU machine must serve lookups on a CPU one. It needs no conftest fixture, so on a GPU
machine without the project's server dependencies it runs as
``PAPERCHART_DATA_DIR=... python -m pytest --noconftest -m gpu tests/unit/test_embedding_device.py``
(the built-in model is read from, or unpacked into, that data dir's ``models`` folder).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from server.config import load_settings
from server.errors import ConfigurationError
from terminology.embed import EmbeddingDeviceError, MiniLmEmbedder, resolve_device


def _torch_sees_a_gpu() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def test_the_cpu_is_the_default_and_needs_no_torch_import() -> None:
    assert load_settings({}).embedding_device == "cpu"
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("setting", ["gpu", "cuda:", "cuda:x", "CUDA", "mps"])
def test_a_device_name_that_is_not_one_is_a_configuration_error(setting: str) -> None:
    with pytest.raises(ConfigurationError, match="PAPERCHART_EMBEDDING_DEVICE"):
        load_settings({"PAPERCHART_EMBEDDING_DEVICE": setting})
    with pytest.raises(EmbeddingDeviceError, match="is not cpu, cuda, cuda:N or auto"):
        resolve_device(setting)


def test_a_gpu_torch_does_not_see_is_refused_and_auto_falls_back_to_the_cpu() -> None:
    with pytest.raises(EmbeddingDeviceError, match=r"embedding device cuda:99: torch sees \d+ CUDA GPU"):
        resolve_device("cuda:99")
    assert resolve_device("auto") == ("cuda" if _torch_sees_a_gpu() else "cpu")


@pytest.mark.gpu
@pytest.mark.slow
def test_an_index_embedded_on_the_gpu_serves_lookups_on_the_cpu(tmp_path: Path) -> None:
    if not _torch_sees_a_gpu():
        pytest.skip("torch sees no CUDA GPU")
    from terminology import TerminologyService
    from terminology.importers.icd10cm import Icd10cmBuiltinImporter
    from terminology.index import build_index
    from terminology.model import ICD10CM

    cache = load_settings(None).model_cache_dir
    gpu, cpu = MiniLmEmbedder(cache, device="cuda"), MiniLmEmbedder(cache, device="cpu")
    texts = ["Essential (primary) hypertension", "Congestive heart failure", "SOB on exertion", "T2DM", ""]
    on_gpu, on_cpu = gpu.embed(texts), cpu.embed(texts)
    assert on_gpu.shape == on_cpu.shape == (len(texts), 384)
    assert float(np.min(np.sum(on_gpu * on_cpu, axis=1))) > 0.9999  # the same vectors, to float rounding

    index = tmp_path / "terminology.db"
    build_index(index, gpu, [Icd10cmBuiltinImporter(prefixes=("I10", "I50"))])
    service = TerminologyService(index, cpu)
    try:
        assert service.lookup("congestive heart failure", systems=[ICD10CM])[0].code == "I50.9"
        assert service.lookup("high blood pressure", systems=[ICD10CM], mode="semantic")[0].code == "I10"
    finally:
        service.close()
