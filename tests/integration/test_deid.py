"""De-identification on generated documents whose PHI is known: nothing leaks, pseudonyms and
date shifts are stable, clinical content survives, and the de-identified scope sees only that."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from server.app import create_app
from tests.conftest import document_reference, rendered
from tests.fixtures.generate import PatientTruth
from tests.smart import bearer, fetch_token, register_backend

DEID_SCOPE = "system/*.rs?_security=PSEUDED"
DOCUMENTS = [("clinic_note", 41), ("lab_report", 42), ("discharge_summary", 43)]


def phi_strings(patient: PatientTruth) -> list[str]:
    born = dt.date.fromisoformat(patient.birth_date)
    return [
        patient.given,
        patient.family,
        patient.name,
        patient.mrn,
        patient.mrn.removeprefix("MRN"),
        patient.nhs_number,
        f"{patient.nhs_number[:3]} {patient.nhs_number[3:6]} {patient.nhs_number[6:]}",
        patient.birth_date,
        born.strftime("%d/%m/%Y"),
        born.strftime("%d %B %Y"),
    ]


class Corpus:
    def __init__(self, client: TestClient[Any], app: Any) -> None:
        self.client = client
        self.admin = bearer(fetch_token(client, register_backend(app)))
        deid_client = register_backend(app, DEID_SCOPE)
        self.deid = bearer(fetch_token(client, deid_client, DEID_SCOPE))
        self.items: list[tuple[PatientTruth, dict[str, Any], str]] = []
        for kind, seed in [*DOCUMENTS, DOCUMENTS[0]]:  # the first document twice: same patient, two records
            document = rendered(kind, seed=seed)
            created = client.post(
                "/fhir/DocumentReference", json=document_reference(document.pdf, "application/pdf"), headers=self.admin
            ).json()
            bundle = client.post(
                f"/fhir/DocumentReference/{created['id']}/$extract", headers={**self.admin, "Prefer": "respond-sync"}
            ).json()
            self.items.append((document.truth.patient, bundle, created["id"]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    from server.config import load_settings

    settings = load_settings({}, data_dir=tmp_path_factory.mktemp("deid"), mllp_enabled=False, semantic_search=False)
    app = create_app(settings)
    with TestClient(app=app) as client:
        yield Corpus(client, app)


def deidentified(corpus: Corpus, bundle_id: str) -> dict[str, Any]:
    response = corpus.client.get(f"/fhir/Bundle/{bundle_id}/$deidentify", headers=corpus.deid)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_no_identifier_from_the_ground_truth_survives(corpus: Corpus) -> None:
    for patient, bundle, document_id in corpus.items:
        outputs = [json.dumps(deidentified(corpus, bundle["id"]))]
        summary = corpus.client.get(f"/fhir/DocumentReference/{document_id}/$deidentified-summary", headers=corpus.deid)
        assert summary.status_code == 200, summary.text
        outputs.append(json.dumps(summary.json()))
        for output in outputs:
            for secret in phi_strings(patient):
                assert secret.lower() not in output.lower(), "identifier leaked into de-identified output"
            assert "DocumentReference/" + document_id not in output  # record ids are pseudonymized too


def test_pseudonyms_and_date_shifts_are_stable_and_keep_intervals(corpus: Corpus) -> None:
    first, again = corpus.items[0], corpus.items[-1]  # the same patient's document, stored twice
    a, b = deidentified(corpus, first[1]["id"]), deidentified(corpus, again[1]["id"])
    assert a == deidentified(corpus, first[1]["id"])  # the same call twice: the same output

    def patient(bundle: dict[str, Any]) -> dict[str, Any]:
        return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")

    assert patient(a)["identifier"] == patient(b)["identifier"], (patient(first[1]), patient(again[1]))
    assert patient(a)["birthDate"] == patient(b)["birthDate"]
    assert "name" not in patient(a) and "telecom" not in patient(a)

    raw_birth = dt.date.fromisoformat(patient(first[1])["birthDate"])
    shift = dt.date.fromisoformat(patient(a)["birthDate"]) - raw_birth
    assert shift.days != 0 and abs(shift.days) <= 365
    # the Bundle's own meta.lastUpdated is server bookkeeping, dropped from de-identified output
    raw_dates = re.findall(r'"(\d{4}-\d{2}-\d{2})', json.dumps({**first[1], "meta": {}}))
    deid_dates = re.findall(r'"(\d{4}-\d{2}-\d{2})', json.dumps({**a, "meta": {}}))
    assert len(raw_dates) == len(deid_dates) > 1
    for raw, shifted in zip(raw_dates, deid_dates, strict=True):
        assert dt.date.fromisoformat(shifted) - dt.date.fromisoformat(raw) == shift  # intervals preserved

    other = deidentified(corpus, corpus.items[1][1]["id"])
    assert patient(other)["identifier"] != patient(a)["identifier"]


def test_clinical_content_survives(corpus: Corpus) -> None:
    for _, bundle, _ in corpus.items:
        deid = json.dumps(deidentified(corpus, bundle["id"]))
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Condition":
                assert resource["code"]["text"] in deid
            if resource["resourceType"] == "MedicationStatement":
                assert resource["medicationCodeableConcept"]["text"] in deid
            if resource["resourceType"] == "Observation" and "valueQuantity" in resource:
                assert json.dumps(resource["valueQuantity"]) in deid


def test_the_deidentified_scope_reaches_only_deidentified_output(corpus: Corpus) -> None:
    patient, bundle, document_id = corpus.items[1]
    patient_id = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    for path in (
        f"/fhir/Bundle/{bundle['id']}",
        f"/fhir/Patient/{patient_id}",
        f"/fhir/DocumentReference/{document_id}",
        f"/fhir/Binary/{document_id}",
    ):
        assert corpus.client.get(path, headers=corpus.deid).status_code == 403, path
    for path in ("/fhir/Bundle", "/fhir/Patient", "/fhir/Condition"):  # searches find nothing it may see
        response = corpus.client.get(path, headers=corpus.deid)
        assert response.status_code == 200 and response.json().get("entry", []) == [], path
    summary = corpus.client.get(f"/fhir/Patient/{patient_id}/$deidentified-summary", headers=corpus.deid)
    assert summary.status_code == 200
    parameters = summary.json()
    text = next(p["valueString"] for p in parameters["parameter"] if p["name"] == "summary")
    assert "Patient:" in text and patient.family not in text
    labels = {
        s["code"] for p in parameters["parameter"] if p["name"] == "bundle" for s in p["resource"]["meta"]["security"]
    }
    assert labels == {"PSEUDED"}
    # a PHI reader may also ask for the de-identified form; a token without Bundle read may not
    assert corpus.client.get(f"/fhir/Bundle/{bundle['id']}/$deidentify", headers=corpus.admin).status_code == 200
    other = bearer(
        fetch_token(corpus.client, register_backend(corpus.client.app, "system/Patient.rs"), "system/Patient.rs")
    )
    assert corpus.client.get(f"/fhir/Bundle/{bundle['id']}/$deidentify", headers=other).status_code == 403


def test_reidentification_needs_its_own_scope_and_is_audited(corpus: Corpus) -> None:
    patient, bundle, _ = corpus.items[0]
    raw_patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    deid = deidentified(corpus, bundle["id"])
    pseudonymous = next(e["resource"] for e in deid["entry"] if e["resource"]["resourceType"] == "Patient")

    def ask(pseudonym: str, scopes: str) -> Any:
        token = bearer(fetch_token(corpus.client, register_backend(corpus.client.app, scopes), scopes))
        body = {"resourceType": "Parameters", "parameter": [{"name": "pseudonym", "valueString": pseudonym}]}
        return corpus.client.post("/fhir/$reidentify", json=body, headers=token)

    allowed = "system/Patient.r paperchart.reidentify"
    answer = ask(f"Patient/{pseudonymous['id']}", allowed)
    assert answer.status_code == 200, answer.text
    assert answer.json()["parameter"][0]["valueString"] == f"Patient/{raw_patient['id']}"
    identifiers = {i["value"] for i in pseudonymous["identifier"]}
    originals = {ask(value, allowed).json()["parameter"][0]["valueString"] for value in identifiers}
    assert f"https://fhir.nhs.uk/Id/nhs-number|{patient.nhs_number}" in originals
    assert ask(f"Patient/{pseudonymous['id']}", "system/Patient.r").status_code == 403  # no reidentify scope
    assert (
        ask(f"Patient/{pseudonymous['id']}", "system/*.rs?_security=PSEUDED paperchart.reidentify").status_code == 403
    )
    assert ask("Patient/0000", allowed).status_code == 404

    entries, _ = corpus.client.app.state.services.audit.search(count=1000)
    calls = [e.record for e in entries if e.record.interaction == "operation:$reidentify"]
    assert len(calls) >= 4 and {c.outcome for c in calls} == {0, 4}
    assert all(patient.nhs_number not in str(c) for c in calls)
