"""Terminology through the app: FHIR $lookup/$expand/$validate-code, the CLI, and codes in Bundles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from server.app import create_app
from server.config import Settings
from terminology.embed import (
    EmbeddingModelError,
    MiniLmEmbedder,
    SentenceTransformerEmbedder,
    model_identity,
    unpack_model,
)
from terminology.importers.icd10cm import Icd10cmBuiltinImporter
from terminology.index import build_index
from tests.conftest import document_reference, paperchart, rendered
from tests.smart import authorized_client

pytestmark = pytest.mark.slow


@pytest.fixture
def coded_settings(settings: Settings, terminology_index: Path) -> Settings:
    fields = {f: getattr(settings, f) for f in settings.__struct_fields__}
    return type(settings)(**{**fields, "terminology_path": terminology_index})


@pytest.fixture
def client(coded_settings: Settings) -> Iterator[TestClient[Any]]:
    with authorized_client(create_app(coded_settings)) as test_client:
        yield test_client


def parameters(resource: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in resource["parameter"]}


def test_lookup(client: TestClient[Any]) -> None:
    response = client.get("/fhir/CodeSystem/$lookup", params={"system": "http://loinc.org", "code": "718-7"})
    assert response.status_code == 200
    found = parameters(response.json())
    assert found["display"]["valueString"] == "Hemoglobin [Mass/volume] in Blood"
    assert found["name"]["valueString"].startswith("LOINC")
    missing = client.get("/fhir/CodeSystem/$lookup", params={"system": "http://loinc.org", "code": "0-0"})
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/CodeSystem/$lookup", params={"code": "718-7"}).status_code == 400


def test_expand_is_a_type_ahead(client: TestClient[Any]) -> None:
    response = client.get(
        "/fhir/ValueSet/$expand",
        params={"url": "http://hl7.org/fhir/sid/icd-10-cm?fhir_vs", "filter": "type 2 diab", "count": 5},
    )
    assert response.status_code == 200
    expansion = response.json()["expansion"]
    assert expansion["total"] > 5 and len(expansion["contains"]) == 5
    assert all(c["code"].startswith("E11") for c in expansion["contains"])
    unknown = client.get("/fhir/ValueSet/$expand", params={"url": "http://example.org/nothing"})
    assert unknown.status_code == 404


def test_validate_code(client: TestClient[Any]) -> None:
    ok = client.get(
        "/fhir/CodeSystem/$validate-code", params={"url": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}
    ).json()
    assert parameters(ok)["result"]["valueBoolean"] is True
    wrong_display = client.get(
        "/fhir/CodeSystem/$validate-code",
        params={"url": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10", "display": "Asthma"},
    ).json()
    assert parameters(wrong_display)["result"]["valueBoolean"] is False
    unknown = client.get("/fhir/CodeSystem/$validate-code", params={"url": "icd10cm", "code": "ZZZ"}).json()
    assert parameters(unknown)["result"]["valueBoolean"] is False


def test_extracted_diagnoses_carry_codes(client: TestClient[Any]) -> None:
    document = rendered("clinic_note", seed=11)
    stored = client.post("/fhir/DocumentReference", json=document_reference(document.pdf, "application/pdf")).json()
    bundle = client.post(f"/fhir/DocumentReference/{stored['id']}/$extract", headers={"Prefer": "respond-sync"}).json()
    conditions = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"]
    coded = [c for c in conditions if c["code"].get("coding")]
    assert coded, "no diagnosis was coded"
    for condition in coded:
        systems = {coding["system"] for coding in condition["code"]["coding"]}
        assert systems & {"http://hl7.org/fhir/sid/icd-10-cm", "http://snomed.info/sct"}
    negated = next(c for c in conditions if c["verificationStatus"]["coding"][0]["code"] == "refuted")
    assert negated["code"]["text"]


def test_terminology_without_an_index_is_a_clear_503(settings: Settings) -> None:
    with authorized_client(create_app(settings)) as client:
        response = client.get("/fhir/ValueSet/$expand", params={"filter": "asthma"})
    assert response.status_code == 503
    assert "terminology build" in response.json()["issue"][0]["details"]["text"]


def test_an_index_built_after_start_is_attached(settings: Settings, terminology_index: Path) -> None:
    import time

    with authorized_client(create_app(settings)) as client:
        assert client.get("/fhir/ValueSet/$expand", params={"filter": "asthma"}).status_code == 503
        shutil.copyfile(terminology_index, settings.terminology_index_path.with_suffix(".tmp"))
        settings.terminology_index_path.with_suffix(".tmp").rename(settings.terminology_index_path)  # atomic
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.get("/fhir/ValueSet/$expand", params={"filter": "asthma"}).status_code == 200:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the new index was not attached")


def test_cli_lookup_and_info(tmp_path: Path, terminology_index: Path) -> None:
    env = {"PAPERCHART_DATA_DIR": str(tmp_path), "PAPERCHART_TERMINOLOGY_PATH": str(terminology_index)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return paperchart("terminology", *args, **env)

    lookup = cli("lookup", "high blood pressure", "--system", "icd10cm", "--json")
    assert lookup.returncode == 0, lookup.stderr
    assert "I10" in [c["code"] for c in json.loads(lookup.stdout)]
    info = cli("info")
    assert info.returncode == 0 and "CC BY 4.0" in info.stdout and "ICD-10-CM" in info.stdout
    # the test index carries no built-in content mark, as one built by an older paperchart
    assert "`paperchart terminology build` adds what they have gained" in info.stdout
    bad = tmp_path / "RXNCONSO.RRF"
    bad.write_text("not|an|rrf|row\n")
    failed = cli("import", "--format", "rxnorm-rrf", str(bad))
    assert failed.returncode == 1 and "line 1" in failed.stderr and "unchanged" in failed.stderr


def test_a_configured_embedding_model_needs_its_own_index(
    tmp_path: Path, terminology_index: Path, embedder: MiniLmEmbedder
) -> None:
    """PAPERCHART_EMBEDDING_MODEL: a real sentence-transformers folder (a renamed copy of the built-in
    model), an index built with it, and an index built with another model refused, not misread."""
    model = tmp_path / "clinical-minilm"
    shutil.copytree(unpack_model(embedder.cache_dir), model)
    own_index = tmp_path / "own.db"
    build_index(own_index, SentenceTransformerEmbedder(model), [Icd10cmBuiltinImporter(prefixes=("I10", "I50"))])

    def cli(index: Path, model_setting: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PAPERCHART_DATA_DIR": str(tmp_path),
            "PAPERCHART_TERMINOLOGY_PATH": str(index),
            "PAPERCHART_EMBEDDING_MODEL": model_setting,
        }
        return paperchart("terminology", *args, **env)

    lookup = cli(own_index, str(model), "lookup", "essential hypertension", "--system", "icd10cm", "--json")
    assert lookup.returncode == 0, lookup.stderr
    assert json.loads(lookup.stdout)[0]["code"] == "I10"
    info = cli(own_index, str(model), "info")
    assert info.returncode == 0 and re.search(r"embedding model: clinical-minilm@[0-9a-f]{12}\n", info.stdout)

    other = cli(terminology_index, str(model), "lookup", "asthma")
    assert other.returncode == 1
    assert "embedded by all-MiniLM-L6-v2, not clinical-minilm@" in other.stderr and "rebuild" in other.stderr
    assert "Traceback" not in other.stderr
    serve = subprocess.run(  # the server refuses to start rather than code with the wrong vectors
        [sys.executable, "-m", "server.cli", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PAPERCHART_DATA_DIR": str(tmp_path),
            "PAPERCHART_TERMINOLOGY_PATH": str(terminology_index),
            "PAPERCHART_EMBEDDING_MODEL": str(model),
            "PAPERCHART_MLLP_ENABLED": "false",
        },
        timeout=120,
        check=False,
    )
    assert serve.returncode == 1 and "rebuild" in serve.stderr and "Traceback" not in serve.stderr
    missing = cli(own_index, str(tmp_path / "nowhere"), "lookup", "asthma")
    assert missing.returncode == 1 and "PAPERCHART_EMBEDDING_MODEL" in missing.stderr
    assert "does not exist" in missing.stderr


def test_an_embedding_device_torch_does_not_see_is_refused_before_any_work(
    tmp_path: Path, terminology_index: Path
) -> None:
    env = {"PAPERCHART_DATA_DIR": str(tmp_path), "PAPERCHART_TERMINOLOGY_PATH": str(terminology_index)}
    missing = paperchart("terminology", "lookup", "asthma", **env, PAPERCHART_EMBEDDING_DEVICE="cuda:99")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "PAPERCHART_EMBEDDING_DEVICE: embedding device cuda:99: torch sees" in missing.stderr
    misnamed = paperchart("terminology", "lookup", "asthma", **env, PAPERCHART_EMBEDDING_DEVICE="gpu")
    assert misnamed.returncode == 1 and "invalid setting PAPERCHART_EMBEDDING_DEVICE" in misnamed.stderr


def test_an_embedding_models_identity_is_its_weights(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(EmbeddingModelError, match="not a sentence-transformers model folder"):
        model_identity(folder)
    (folder / "modules.json").write_text("[]")
    (folder / "model.safetensors").write_bytes(b"weights one")
    first = model_identity(folder)
    (folder / "model.safetensors").write_bytes(b"weights two")  # retrained under the same name
    assert first.startswith("model@") and model_identity(folder) != first
