"""The real app (Litestar test client, real SQLite, real OCR): documents in, FHIR out."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

import msgspec
import pypdfium2 as pdfium
import pytest
from litestar.testing import TestClient

from server.app import create_app
from server.config import Settings
from terminology.sqlite_driver import connect
from tests.conftest import document_reference, rendered
from tests.fixtures.generate import DocumentTruth, ScanEffects
from tests.smart import authorized_client
from tests.unit.test_inspect import make_pdf, png_bomb

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with authorized_client(create_app(settings)) as test_client:
        yield test_client


def upload(client: TestClient[Any], content: bytes, content_type: str) -> dict[str, Any]:
    response = client.post(
        "/fhir/DocumentReference", content=json.dumps(document_reference(content, content_type)), headers=FHIR_JSON
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def entries(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def poll(client: TestClient[Any], url: str, limit: float = 120) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        response = client.get(url)
        if response.status_code != 202:
            return response
        assert response.headers["X-Progress"]
        time.sleep(0.2)
    raise AssertionError("job did not finish")


def _plain(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def assert_matches_truth(bundle: dict[str, Any], truth: DocumentTruth) -> None:
    patient = entries(bundle, "Patient")[0]
    assert patient["name"][0]["text"] == truth.patient.name
    assert patient["birthDate"] == truth.patient.birth_date
    assert patient["gender"] == truth.patient.sex
    assert {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": truth.patient.nhs_number} in patient["identifier"]
    statements = {m["medicationCodeableConcept"]["text"]: m for m in entries(bundle, "MedicationStatement")}
    for medication in truth.medications:
        dose = statements[medication.name]["dosage"][0]["doseAndRate"][0]["doseQuantity"]
        assert dose["value"] == medication.dose
    observations = entries(bundle, "Observation")
    for lab in truth.labs:
        # code.text is the name as read: OCR may have put an accent on it ("Sodíum"); the coding is exact
        observation = next(o for o in observations if _plain(o["code"]["text"]) == lab.test)
        assert observation["valueQuantity"]["value"] == lab.value
        assert observation["interpretation"][0]["coding"][0]["code"] == lab.flag


def test_born_digital_pdf_sync_extract_returns_the_right_facts(client: TestClient[Any]) -> None:
    document = rendered("clinic_note", seed=11)
    stored = upload(client, document.pdf, "application/pdf")
    assert stored["meta"]["versionId"] == "1" and stored["id"]
    assert stored["content"][0]["attachment"]["size"] == len(document.pdf)
    assert "data" not in stored["content"][0]["attachment"]

    response = client.post(f"/fhir/DocumentReference/{stored['id']}/$extract", headers={"Prefer": "respond-sync"})
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert_matches_truth(bundle, document.truth)
    vitals = {o["code"]["coding"][0]["code"]: o for o in entries(bundle, "Observation")}
    truth_vitals = {v.kind: v for v in document.truth.vitals}
    bp = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in vitals["85354-9"]["component"]}
    assert bp["8480-6"]["value"] == truth_vitals["blood_pressure"].value
    assert bp["8462-4"] == {
        "value": truth_vitals["blood_pressure"].diastolic,
        "unit": "mm[Hg]",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]",
    }
    assert vitals["8867-4"]["valueQuantity"]["value"] == truth_vitals["heart_rate"].value
    conditions = {c["code"]["text"].lower(): c for c in entries(bundle, "Condition")}
    for diagnosis in document.truth.diagnoses:
        status = conditions[diagnosis.text.lower()]["verificationStatus"]["coding"][0]["code"]
        assert status == ("refuted" if diagnosis.assertion == "negated" else "confirmed")


@pytest.mark.slow
def test_scanned_lab_report_async_extract_and_reads(client: TestClient[Any]) -> None:
    document = rendered("lab_report", seed=3, effects=ScanEffects(noise=0.01, blur=0.6, rotation=1.5))
    stored = upload(client, document.png_pages[0], "image/png")
    response = client.post(f"/fhir/DocumentReference/{stored['id']}/$extract")
    assert response.status_code == 202
    status_url = response.headers["Content-Location"]
    assert status_url.startswith("http://127.0.0.1:8080/fhir/_jobs/")
    result = poll(client, status_url.removeprefix("http://127.0.0.1:8080"))
    assert result.status_code == 200, result.text
    bundle = result.json()
    assert_matches_truth(bundle, document.truth)

    # every resource can be read back, and searched by patient
    patient_id = entries(bundle, "Patient")[0]["id"]
    assert client.get(f"/fhir/Bundle/{bundle['id']}").json()["id"] == bundle["id"]
    assert client.get(f"/fhir/Patient/{patient_id}").json()["name"][0]["text"] == document.truth.patient.name
    search = client.get("/fhir/Observation", params={"patient": patient_id}).json()
    assert search["type"] == "searchset" and search["total"] == len(document.truth.labs)
    assert all(e["search"]["mode"] == "match" for e in search["entry"])
    # provenance points at the uploaded document, page 1, with boxes
    provenance = entries(bundle, "Provenance")[1]
    assert provenance["entity"][0]["what"]["reference"] == f"DocumentReference/{stored['id']}"
    assert "rapidocr" in provenance["agent"][0]["who"]["display"]
    # the stored bytes come back as the Binary
    binary = client.get(stored["content"][0]["attachment"]["url"].join(["/fhir/", ""]))
    assert binary.content == document.png_pages[0] and binary.headers["content-type"] == "image/png"


def test_searches_by_patient_across_types(client: TestClient[Any]) -> None:
    document = rendered("discharge_summary", seed=5)
    stored = upload(client, document.pdf, "application/pdf")
    bundle = client.post(f"/fhir/DocumentReference/{stored['id']}/$extract", headers={"Prefer": "respond-sync"}).json()
    patient_id = entries(bundle, "Patient")[0]["id"]
    for resource_type in ("Condition", "MedicationStatement", "Observation"):
        search = client.get(f"/fhir/{resource_type}", params={"patient": f"Patient/{patient_id}"}).json()
        assert search["total"] == len(entries(bundle, resource_type)) > 0
    paged = client.get("/fhir/MedicationStatement", params={"patient": patient_id, "_count": 1}).json()
    assert len(paged["entry"]) == 1 and any(link["relation"] == "next" for link in paged["link"])
    assert client.get("/fhir/Condition", params={"patient": "someone-else"}).json()["total"] == 0


def test_capability_statement_and_health(client: TestClient[Any]) -> None:
    statement = client.get("/fhir/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1" and "json" in statement["format"]
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {i["code"] for i in resources["DocumentReference"]["interaction"]} == {"create", "read"}
    assert resources["DocumentReference"]["operation"][0]["name"] == "extract"
    assert {"Patient", "Observation", "Condition", "MedicationStatement", "Bundle"} <= set(resources)
    health = client.get("/health")
    assert health.status_code == 200 and health.headers["content-type"].startswith("application/health+json")
    checks = health.json()["checks"]
    assert {name: c[0]["status"] for name, c in checks.items()} == {"store": "pass", "ocr": "pass", "extractor": "pass"}


def _empty_pdf() -> bytes:
    buffer = io.BytesIO()
    pdfium.PdfDocument.new().save(buffer)
    return buffer.getvalue()


PHI_NAME = "Zebedee Quartermaine"


def _reference(content_type: str, data: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "description": f"Letter for {PHI_NAME}",
        "content": [{"attachment": {"contentType": content_type, "data": data}}],
    }


def _b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


BAD_UPLOADS: list[tuple[str, bytes | dict[str, Any], int, str]] = [
    ("not json", b"{not json", 400, "not valid JSON"),
    ("json array", b"[1, 2]", 400, "JSON object"),
    ("wrong resourceType", {"resourceType": "Patient", "name": [{"text": PHI_NAME}]}, 400, "DocumentReference"),
    ("no attachment", {"resourceType": "DocumentReference", "status": "current", "content": []}, 422, "attachment"),
    (
        "no contentType",
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "content": [{"attachment": {"data": _b64(b"%PDF-")}}],
        },
        422,
        "contentType",
    ),
    ("bad base64", _reference("application/pdf", "%%%not-base64%%%"), 400, "base64"),
    ("type lies", _reference("application/pdf", _b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)), 422, "image/png"),
    ("empty data", _reference("application/pdf", ""), 422, "empty"),
    ("pdf without pages", _reference("application/pdf", _b64(_empty_pdf())), 422, "PDF"),
    ("encrypted pdf", _reference("application/pdf", _b64(make_pdf(password="pw"))), 422, "encrypted"),
    ("corrupt pdf", _reference("application/pdf", _b64(make_pdf()[:300])), 422, "corrupt"),
    ("too many pages", _reference("application/pdf", _b64(make_pdf(4))), 413, "limit is 3"),
    ("decompression bomb", _reference("image/png", _b64(png_bomb(60_000, 60_000))), 413, "decompression bomb"),
    ("unsupported type", _reference("text/html", _b64(b"<html>")), 415, "not supported"),
    ("invalid FHIR", {**_reference("application/pdf", _b64(make_pdf())), "status": "sometimes"}, 400, "valid FHIR"),
]


@pytest.mark.parametrize(("case", "body", "status", "words"), BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_uploads_get_a_clear_outcome_and_store_nothing(
    tmp_path: Any, settings: Settings, case: str, body: bytes | dict[str, Any], status: int, words: str
) -> None:
    limited = type(settings)(**{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "max_pages": 3})
    with authorized_client(create_app(limited)) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post("/fhir/DocumentReference", content=content, headers=FHIR_JSON)
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert words in outcome["issue"][0]["details"]["text"]
    assert "Traceback" not in response.text and PHI_NAME not in response.text
    db = connect(limited.database_path)
    assert db.execute("SELECT COUNT(*) FROM documents").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM document_content").fetchone()[0] == 0


def test_oversized_upload_is_413(settings: Settings) -> None:
    small = type(settings)(
        **{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "max_upload_bytes": 10_000}
    )
    with authorized_client(create_app(small)) as client:
        big = document_reference(b"%PDF-1.4" + b"0" * 200_000, "application/pdf")
        response = client.post("/fhir/DocumentReference", content=json.dumps(big), headers=FHIR_JSON)
    assert response.status_code == 413
    assert response.json()["issue"][0]["code"] == "too-costly"


def test_unknown_things_are_404_outcomes(client: TestClient[Any]) -> None:
    for url in ("/fhir/_jobs/nope", "/fhir/Patient/nope", "/fhir/DocumentReference/nope", "/fhir/Nonsense/1"):
        response = client.get(url)
        assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"
    response = client.post("/fhir/DocumentReference/nope/$extract")
    assert response.status_code == 404
    assert client.get("/fhir/Observation", params={"code": "x"}).status_code == 400


def test_validate_operation(client: TestClient[Any]) -> None:
    valid = client.post("/fhir/Patient/$validate", json={"resourceType": "Patient", "gender": "female"}).json()
    assert valid["issue"][0]["severity"] == "information"
    invalid = client.post(
        "/fhir/Observation/$validate", json={"resourceType": "Observation", "status": "done", "birthDate": "x"}
    )
    assert invalid.status_code == 200
    problems = {issue["expression"][0] for issue in invalid.json()["issue"]}
    assert {"Observation.code", "Observation.birthDate"} <= problems
    wrapped = client.post(
        "/fhir/Patient/$validate",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "resource", "resource": {"resourceType": "Patient", "gender": "sometimes"}}],
        },
    ).json()
    assert wrapped["issue"][0]["severity"] == "error" and "gender" in wrapped["issue"][0]["details"]["text"]
    assert client.post("/fhir/Patient/$validate", json={"resourceType": "Observation"}).status_code == 400


def test_bundle_as_a_transaction(client: TestClient[Any]) -> None:
    document = rendered("clinic_note", seed=12)
    stored = upload(client, document.pdf, "application/pdf")
    bundle = client.post(f"/fhir/DocumentReference/{stored['id']}/$extract", headers={"Prefer": "respond-sync"}).json()
    transaction = client.get(f"/fhir/Bundle/{bundle['id']}/$transaction").json()
    assert transaction["type"] == "transaction"
    full_urls = {e["fullUrl"] for e in transaction["entry"]}
    assert all(url.startswith("urn:uuid:") for url in full_urls)
    assert len(transaction["entry"]) == len(bundle["entry"]) + 1  # plus the source DocumentReference

    def references(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [v for k, v in value.items() if k == "reference"] + [
                r for v in value.values() for r in references(v)
            ]
        if isinstance(value, list):
            return [r for v in value for r in references(v)]
        return []

    assert set(references(transaction)) <= full_urls  # every reference resolves inside the transaction
    patient = next(e for e in transaction["entry"] if e["resource"]["resourceType"] == "Patient")
    assert patient["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": f"identifier=https://fhir.nhs.uk/Id/nhs-number|{document.truth.patient.nhs_number}",
    }
    assert all("id" not in e["resource"] for e in transaction["entry"])
    source = next(e for e in transaction["entry"] if e["resource"]["resourceType"] == "DocumentReference")
    assert source["resource"]["content"][0]["attachment"]["url"].endswith(f"/fhir/Binary/{stored['id']}")


def test_every_searchable_type_answers_read_and_search(client: TestClient[Any]) -> None:
    """Routes with static segments (e.g. Bundle/{id}/$transaction) must not hide the generic ones."""
    from server.http.capability import SEARCHABLE_TYPES

    for resource_type in (*SEARCHABLE_TYPES, "DocumentReference"):
        search = client.get(f"/fhir/{resource_type}")
        assert search.status_code == 200 and search.json()["type"] == "searchset", resource_type
        assert client.get(f"/fhir/{resource_type}/missing").status_code == 404, resource_type


def test_bundle_as_a_fhir_document(client: TestClient[Any]) -> None:
    document = rendered("lab_report", seed=5)
    stored = upload(client, document.pdf, "application/pdf")
    bundle = client.post(f"/fhir/DocumentReference/{stored['id']}/$extract", headers={"Prefer": "respond-sync"}).json()
    response = client.get(f"/fhir/Bundle/{bundle['id']}/$document")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["type"] == "document" and doc["identifier"]["value"].startswith("urn:uuid:") and doc["timestamp"]
    composition = doc["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition"
    assert composition["type"]["coding"][0]["code"] == "11502-2"  # a lab report
    # FHIR documents are self-contained: every reference resolves to an entry of the Bundle
    present = {e["fullUrl"].split("/fhir/", 1)[1] for e in doc["entry"]}
    references = re.findall(r'"reference": "([^"]+)"', json.dumps(doc))
    assert references and set(references) <= present
    results = next(s for s in composition["section"] if s["code"]["coding"][0]["code"] == "30954-2")
    assert len(results["entry"]) == len(document.truth.labs) + 1  # each result and the DiagnosticReport
    assert all(
        s["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">') for s in composition["section"]
    )


def test_a_us_core_deployment_emits_bundles_that_pass_us_core(settings: Settings) -> None:
    """MedicationRequest mode with an MRN namespace and a dated document: every resource passes
    its US Core profile's checks, through $validate as a client would ask."""
    from fhir_profiles.us_core import profile_for, us_core_problems

    us_core = msgspec.structs.replace(
        settings, medication_resource="MedicationRequest", mrn_system="urn:oid:2.16.840.1.113883.3.999.1"
    )
    document = rendered("clinic_note", seed=11)
    with authorized_client(create_app(us_core)) as client:
        reference = document_reference(
            document.pdf, "application/pdf", context={"period": {"start": "2026-11-02T09:30:00Z"}}
        )
        stored = client.post("/fhir/DocumentReference", content=json.dumps(reference), headers=FHIR_JSON).json()
        response = client.post(f"/fhir/DocumentReference/{stored['id']}/$extract", headers={"Prefer": "respond-sync"})
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert entries(bundle, "MedicationStatement") == []
        requests = entries(bundle, "MedicationRequest")
        names = {r["medicationCodeableConcept"]["text"] for r in requests}
        assert names == {m.name for m in document.truth.medications}
        allergies = entries(bundle, "AllergyIntolerance")
        assert len(allergies) == len(document.truth.allergies)
        assert {p["code"]["text"] for p in entries(bundle, "Procedure")} == {p.text for p in document.truth.procedures}
        plans = {p["description"] for p in entries(bundle, "CarePlan")}
        assert plans == {f.rstrip(".") for f in document.truth.follow_ups}
        checked = 0
        for resource in (e["resource"] for e in bundle["entry"]):
            profile = profile_for(resource)
            if profile is None:
                continue
            assert us_core_problems(resource) == [], resource["resourceType"]
            outcome = client.post(f"/fhir/{resource['resourceType']}/$validate?profile={profile}", json=resource)
            assert outcome.json()["issue"][0]["severity"] == "information", outcome.text
            checked += 1
        assert checked >= 10
        # a page-read MRN without a namespace is what US Core refuses
        patient = dict(entries(bundle, "Patient")[0])
        patient["identifier"] = [{k: v for k, v in i.items() if k != "system"} for i in patient["identifier"]]
        patient_profile = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
        refused = client.post(f"/fhir/Patient/$validate?profile={patient_profile}", json=patient).json()
        assert any("identifier[" in i["details"]["text"] for i in refused["issue"])
        unknown = client.post("/fhir/Patient/$validate?profile=http://example.org/mine", json=patient)
        assert unknown.status_code == 400
