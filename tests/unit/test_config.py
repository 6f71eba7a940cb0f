"""Settings come from PAPERCHART_* variables, typed, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_settings
from server.errors import ConfigurationError


def test_defaults_are_the_embedded_setup() -> None:
    settings = load_settings({})
    assert settings.data_dir == Path("data")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.fhir_base_url == "http://127.0.0.1:8080/fhir"
    assert settings.ocr_engine == "rapidocr" and settings.extractor == "rules"
    assert settings.max_upload_bytes == 50 * 1024 * 1024


def test_environment_is_typed() -> None:
    settings = load_settings(
        {"PAPERCHART_DATA_DIR": "/srv/pc", "PAPERCHART_PORT": "9000", "PAPERCHART_OCR_CONFIDENCE_THRESHOLD": "0.8"}
    )
    assert settings.data_dir == Path("/srv/pc")
    assert settings.port == 9000 and settings.fhir_base_url == "http://127.0.0.1:9000/fhir"
    assert settings.ocr_confidence_threshold == 0.8


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="PAPERCHART_PORT"):
        load_settings({"PAPERCHART_PORT": "eighty"})
    with pytest.raises(ConfigurationError, match="PAPERCHART_EXTRACTOR"):
        load_settings({"PAPERCHART_EXTRACTOR": "magic"})
    with pytest.raises(ConfigurationError, match="PAPERCHART_MLLP_IDLE_TIMEOUT_SECONDS"):
        load_settings({"PAPERCHART_MLLP_IDLE_TIMEOUT_SECONDS": "0"})  # would close every connection at once


def test_the_code_chooser_follows_the_extractor_unless_told() -> None:
    from server.pipeline.extract import create_code_chooser
    from server.pipeline.extract.llm import LlmCodeChooser

    assert create_code_chooser(load_settings({})) is None  # rules: a similarity threshold decides
    llm = {"PAPERCHART_EXTRACTOR": "llm", "PAPERCHART_LLM_BASE_URL": "http://127.0.0.1:9/v1"}
    assert isinstance(create_code_chooser(load_settings(llm)), LlmCodeChooser)
    assert create_code_chooser(load_settings({**llm, "PAPERCHART_CODE_CHOOSER": "similarity"})) is None
    with pytest.raises(ConfigurationError, match="PAPERCHART_LLM_BASE_URL"):
        create_code_chooser(load_settings({"PAPERCHART_CODE_CHOOSER": "llm"}))


def test_the_code_acceptance_threshold_is_a_similarity() -> None:
    assert load_settings({}).code_accept_similarity == 0.8
    assert load_settings({"PAPERCHART_CODE_ACCEPT_SIMILARITY": "0.9"}).code_accept_similarity == 0.9
    with pytest.raises(ConfigurationError, match="PAPERCHART_CODE_ACCEPT_SIMILARITY"):
        load_settings({"PAPERCHART_CODE_ACCEPT_SIMILARITY": "1.5"})
