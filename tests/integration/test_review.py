"""The review page over HTTP (no browser): sign-in, queue, edits, rejections, additions, release,
conflicts, return, CSRF and scope refusals. The browser test (tests/e2e) drives the same in Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from litestar.testing import TestClient

from server.app import create_app
from tests.conftest import document_reference, rendered
from tests.smart import bearer, fetch_token, register_backend

PASSWORD = "correct horse battery staple"


class Site:
    def __init__(self, client: TestClient[Any]) -> None:
        self.client = client
        self.app = client.app
        self.admin = bearer(fetch_token(client, register_backend(self.app)))
        registry = self.app.state.services.auth.registry
        registry.add_user("reviewer", PASSWORD, scopes=["user/*.cruds", "openid", "fhirUser", "offline_access"])
        registry.add_user("reader", PASSWORD, scopes=["user/*.rs", "openid", "offline_access"])
        document = rendered("clinic_note", seed=71)
        created = client.post(
            "/fhir/DocumentReference", json=document_reference(document.pdf, "application/pdf"), headers=self.admin
        ).json()
        self.document_id = created["id"]
        self.bundle = client.post(
            f"/fhir/DocumentReference/{created['id']}/$extract", headers={**self.admin, "Prefer": "respond-sync"}
        ).json()
        self.truth = document.truth


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from server.config import load_settings

    settings = load_settings({}, data_dir=tmp_path_factory.mktemp("review"), mllp_enabled=False, semantic_search=False)
    with TestClient(app=create_app(settings)) as client:
        yield Site(client)


@pytest.fixture(scope="module")
def coded_site(tmp_path_factory: pytest.TempPathFactory, terminology_index: Any) -> Iterator[Site]:
    """The same, with a terminology index: codes are offered as the reviewer types."""
    from server.config import load_settings

    settings = load_settings(
        {},
        data_dir=tmp_path_factory.mktemp("coded-review"),
        mllp_enabled=False,
        terminology_path=terminology_index,
    )
    with TestClient(app=create_app(settings)) as client:
        yield Site(client)


def sign_in(site: Site, username: str) -> TestClient[Any]:
    """A fresh browser-like client signed in through the SMART login and consent pages."""
    client = TestClient(app=site.app)  # not entered: the app already runs; this is just another cookie jar
    login = client.get("/review/login", follow_redirects=False)
    query = {k: v[0] for k, v in parse_qs(urlparse(login.headers["location"]).query).items()}
    consent = client.post("/auth/authorize", data={**query, "username": username, "password": PASSWORD})
    ticket = re.search(r"name='login_ticket' value='([^']+)'", consent.text)
    assert ticket is not None, consent.text[:300]
    back = client.post(
        "/auth/authorize", data={**query, "login_ticket": ticket.group(1), "decision": "allow"}, follow_redirects=False
    )
    callback = urlparse(back.headers["location"])
    assert client.get(f"{callback.path}?{callback.query}", follow_redirects=False).status_code == 303
    return client


def form_of(page: str) -> dict[str, str]:
    return {
        "csrf": re.search(r'name="csrf" value="([^"]+)"', page).group(1),  # type: ignore[union-attr]
        "version": re.search(r'name="version" value="(\d+)"', page).group(1),  # type: ignore[union-attr]
    }


def entry(bundle: dict[str, Any], kind: str, index: int = 0) -> dict[str, Any]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind][index]


def test_pages_need_a_session(site: Site) -> None:
    anonymous = TestClient(app=site.app)
    response = anonymous.get("/review", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/review/login"
    assert anonymous.get(f"/review/documents/{site.document_id}", follow_redirects=False).status_code == 303
    assert anonymous.post(f"/review/documents/{site.document_id}/release", data={}).status_code == 401


def test_queue_and_document_view(site: Site) -> None:
    reviewer = sign_in(site, "reviewer")
    queue = reviewer.get("/review?show=all")
    assert queue.status_code == 200 and site.document_id in queue.text
    assert site.truth.patient.family not in queue.text  # initials only
    assert "script-src 'self'" in queue.headers["content-security-policy"]
    assert queue.headers["x-frame-options"] == "DENY"
    page = reviewer.get(f"/review/documents/{site.document_id}")
    statement = entry(site.bundle, "MedicationStatement")
    assert f"edit:MedicationStatement/{statement['id']}:dose" in page.text
    assert 'class="box' in page.text and "data-x0=" in page.text
    image = reviewer.get(f"/review/documents/{site.document_id}/pages/1")
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    again = reviewer.get(f"/review/documents/{site.document_id}/pages/1")  # from the encrypted cache
    assert again.content == image.content


def test_the_reviewer_sees_every_resource_the_release_marks_reviewed(site: Site) -> None:
    """Release tags each resource "Reviewed by a person": each must be on the page to be checked
    (the DiagnosticReport only groups the results shown)."""
    reviewer = sign_in(site, "reviewer")
    page = reviewer.get(f"/review/documents/{site.document_id}").text
    kinds = {e["resource"]["resourceType"] for e in site.bundle["entry"]}
    assert "Encounter" in kinds  # the clinic the letter comes from
    for e in site.bundle["entry"]:
        resource = e["resource"]
        if resource["resourceType"] not in ("Provenance", "DiagnosticReport"):
            assert f'data-ref="{resource["resourceType"]}/{resource["id"]}"' in page, resource["resourceType"]


def test_validation_as_you_type(site: Site) -> None:
    reviewer = sign_in(site, "reviewer")
    csrf = reviewer.cookies.get("pc_review_csrf")
    statement = entry(site.bundle, "MedicationStatement")

    def check(field: str, value: str, kind: str = "MedicationStatement", ref: str | None = None) -> str:
        name = f"edit:{kind}/{ref or statement['id']}:{field}"
        response = reviewer.post("/review/validate", data={name: value}, headers={"X-CSRF-Token": csrf or ""})
        assert response.status_code == 200
        return response.text

    assert "number" in check("dose", "ten")
    assert check("dose", "10") == ""
    assert "recognises" in check("unit", "furlongs")
    assert "check digit" in check("nhsNumber", "9434765918", "Patient", "p")
    assert check("nhsNumber", "943 476 5919", "Patient", "p") == ""
    assert "future" in check("birthDate", "2999-01-01", "Patient", "p")
    assert "YYYY" in check("start", "last Tuesday", "Encounter", "e")
    assert check("start", "2026-11", "Encounter", "e") == ""
    no_csrf = reviewer.post("/review/validate", data={"edit:Patient/p:gender": "x"})
    assert no_csrf.status_code == 400

    def check_added(kind: str, field: str, value: str) -> str:
        form = {"add_kind": kind, f"add_{field}": value}
        response = reviewer.post("/review/validate", data=form, headers={"X-CSRF-Token": csrf or ""})
        assert response.status_code == 200
        return response.text

    assert "number" in check_added("Observation", "value", "high")
    assert "plausible" in check_added("MedicationStatement", "value", "-5")  # a dose is checked as a dose
    assert check_added("Observation", "value", "-5") == ""  # a base excess may be negative
    assert "recognises" in check_added("Observation", "unit", "furlongs")
    assert check_added("Condition", "value", "") == ""  # a condition has none
    assert check_added("VitalSign", "value", "120/80") == ""
    assert "number" in check_added("VitalSign", "value", "120/high")


def test_release_edits_rejects_and_adds_then_conflicts(site: Site) -> None:
    reviewer, second = sign_in(site, "reviewer"), sign_in(site, "reviewer")
    page = reviewer.get(f"/review/documents/{site.document_id}").text
    stale_page = second.get(f"/review/documents/{site.document_id}").text
    statement = entry(site.bundle, "MedicationStatement")
    condition = entry(site.bundle, "Condition")
    rejected = entry(site.bundle, "Condition", 1)
    form = {
        **form_of(page),
        f"edit:MedicationStatement/{statement['id']}:dose": "123",
        f"edit:Condition/{condition['id']}:assertion": "refuted",
        "reject": f"Condition/{rejected['id']}",
        "add_kind": "Condition",
        "add_text": "Gout",
        "add_assertion": "confirmed",
        "add_page": "1",
        "add_box": "0.1,0.2,0.3,0.25",
    }
    released = reviewer.post(f"/review/documents/{site.document_id}/release", data=form, follow_redirects=False)
    assert released.status_code == 303 and "released=" in released.headers["location"]

    bundle = site.client.get(f"/fhir/Bundle/{site.bundle['id']}", headers=site.admin).json()
    assert bundle["meta"]["versionId"] == "2"
    assert {t["code"] for t in bundle["meta"]["tag"]} == {"human-reviewed"}
    dose = site.client.get(f"/fhir/MedicationStatement/{statement['id']}", headers=site.admin).json()
    assert dose["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 123
    refuted = site.client.get(f"/fhir/Condition/{condition['id']}", headers=site.admin).json()
    assert refuted["verificationStatus"]["coding"][0]["code"] == "refuted"
    withdrawn = site.client.get(f"/fhir/Condition/{rejected['id']}", headers=site.admin).json()
    assert withdrawn["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    added = [e["resource"] for e in bundle["entry"] if e["resource"].get("code", {}).get("text") == "Gout"]
    assert len(added) == 1 and added[0]["subject"] == condition["subject"]
    created = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Provenance"
        and e["resource"]["target"] == [{"reference": f"Condition/{added[0]['id']}"}]
    ]
    assert created[0]["activity"]["coding"][0]["code"] == "CREATE"
    assert created[0]["entity"][0]["role"] == "source" and "box" in str(created[0]["entity"][0]["extension"])

    conflict = second.post(
        f"/review/documents/{site.document_id}/release",
        data={**form_of(stale_page), f"edit:MedicationStatement/{statement['id']}:dose": "1"},
    )
    assert conflict.status_code == 409 and "Someone else got there first" in conflict.text
    still = site.client.get(f"/fhir/MedicationStatement/{statement['id']}", headers=site.admin).json()
    assert still["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 123


def test_return_with_a_comment_and_refusals(site: Site) -> None:
    reviewer = sign_in(site, "reviewer")
    page = reviewer.get(f"/review/documents/{site.document_id}").text
    empty = reviewer.post(f"/review/documents/{site.document_id}/return", data={**form_of(page), "comment": " "})
    assert empty.status_code == 400
    returned = reviewer.post(
        f"/review/documents/{site.document_id}/return",
        data={**form_of(page), "comment": "page 2 missing"},
        follow_redirects=False,
    )
    assert returned.status_code == 303
    assert "page 2 missing" in reviewer.get(f"/review/documents/{site.document_id}").text
    forged = reviewer.post(f"/review/documents/{site.document_id}/release", data={**form_of(page), "csrf": "forged"})
    assert forged.status_code == 400

    reader = sign_in(site, "reader")  # may read, may not release
    view = reader.get(f"/review/documents/{site.document_id}")
    assert view.status_code == 200
    refused = reader.post(f"/review/documents/{site.document_id}/release", data=form_of(view.text))
    assert refused.status_code == 403


def test_allergies_and_procedures_are_reviewed_like_the_rest(site: Site) -> None:
    reviewer = sign_in(site, "reviewer")
    page = reviewer.get(f"/review/documents/{site.document_id}").text
    bundle = site.client.get(f"/fhir/Bundle/{site.bundle['id']}", headers=site.admin).json()
    allergy = entry(bundle, "AllergyIntolerance")
    procedure, other = entry(bundle, "Procedure"), entry(bundle, "Procedure", 1)
    assert f"edit:AllergyIntolerance/{allergy['id']}:substance" in page
    assert f"edit:Procedure/{procedure['id']}:date" in page
    bad_date = reviewer.post(
        f"/review/documents/{site.document_id}/release",
        data={**form_of(page), f"edit:Procedure/{procedure['id']}:date": "last spring"},
    )
    assert bad_date.status_code == 400 and "YYYY" in bad_date.text
    form = {
        **form_of(page),
        f"edit:Procedure/{procedure['id']}:date": "2016-05",
        "reject": f"Procedure/{other['id']}",
    }
    if not allergy["code"].get("coding", [{}])[0].get("code", "").startswith(("409137002", "716186003")):
        form[f"edit:AllergyIntolerance/{allergy['id']}:severity"] = "severe"
    released = reviewer.post(f"/review/documents/{site.document_id}/release", data=form, follow_redirects=False)
    assert released.status_code == 303, released.text[:400]
    edited = site.client.get(f"/fhir/Procedure/{procedure['id']}", headers=site.admin).json()
    assert edited["performedDateTime"] == "2016-05"
    withdrawn = site.client.get(f"/fhir/Procedure/{other['id']}", headers=site.admin).json()
    assert withdrawn["status"] == "entered-in-error"
    if f"edit:AllergyIntolerance/{allergy['id']}:severity" in form:
        severity = site.client.get(f"/fhir/AllergyIntolerance/{allergy['id']}", headers=site.admin).json()
        assert severity["reaction"][0]["severity"] == "severe"


def test_a_missed_lab_result_and_allergy_are_added_and_the_results_are_final(site: Site) -> None:
    reviewer = sign_in(site, "reviewer")
    page = reviewer.get(f"/review/documents/{site.document_id}").text
    assert '<option value="Observation">Lab result</option>' in page
    assert '<option value="AllergyIntolerance">Allergy</option>' in page
    unitless = reviewer.post(
        f"/review/documents/{site.document_id}/release",
        data={**form_of(page), "add_kind": "Observation", "add_text": "Potassium"},
    )
    assert unitless.status_code == 400 and "needs its value" in unitless.text
    unknown = reviewer.post(
        f"/review/documents/{site.document_id}/release",
        data={**form_of(page), "add_kind": "Encounter", "add_text": "Clinic visit"},
    )
    assert unknown.status_code == 400 and "lab result" in unknown.text
    released = reviewer.post(
        f"/review/documents/{site.document_id}/release",
        data={
            **form_of(page),
            "add_kind": "Observation",
            "add_text": "Potassium",
            "add_value": "5.9",
            "add_unit": "mmol/l",
        },
        follow_redirects=False,
    )
    assert released.status_code == 303, released.text[:400]
    bundle = site.client.get(f"/fhir/Bundle/{site.bundle['id']}", headers=site.admin).json()
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    potassium = next(o for o in observations if o["code"].get("text") == "Potassium")
    assert potassium["code"]["coding"][0]["code"] == "2823-3"
    assert potassium["valueQuantity"] == {
        "value": 5.9,
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    }
    # released: nothing is preliminary any more
    assert {o["status"] for o in observations} <= {"final", "amended", "entered-in-error"}
    stored = site.client.get(f"/fhir/Observation/{potassium['id']}", headers=site.admin).json()
    assert stored["status"] == "final"

    page = reviewer.get(f"/review/documents/{site.document_id}").text
    vital = reviewer.post(
        f"/review/documents/{site.document_id}/release",
        data={**form_of(page), "add_kind": "VitalSign", "add_text": "Blood pressure", "add_value": "131/86"},
        follow_redirects=False,
    )
    assert vital.status_code == 303, vital.text[:400]
    bundle = site.client.get(f"/fhir/Bundle/{site.bundle['id']}", headers=site.admin).json()
    pressures = [
        [c["valueQuantity"]["value"] for c in e["resource"].get("component", [])]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    ]
    assert [131, 86] in pressures

    page = reviewer.get(f"/review/documents/{site.document_id}").text
    allergy = reviewer.post(
        f"/review/documents/{site.document_id}/release",
        data={**form_of(page), "add_kind": "AllergyIntolerance", "add_text": "Latex"},
        follow_redirects=False,
    )
    assert allergy.status_code == 303
    bundle = site.client.get(f"/fhir/Bundle/{site.bundle['id']}", headers=site.admin).json()
    latex = [e["resource"] for e in bundle["entry"] if e["resource"].get("code", {}).get("text") == "Latex"]
    assert len(latex) == 1 and latex[0]["resourceType"] == "AllergyIntolerance"


def test_codes_are_offered_in_the_system_of_what_is_coded(coded_site: Site) -> None:
    reviewer = sign_in(coded_site, "reviewer")

    def offered(**params: str) -> list[str]:
        options = reviewer.get("/review/codes", params=params).text
        return re.findall(r'<option value="([^"|]+)\|([^"|]+)\|', options)

    assert ("http://loinc.org", "2823-3") in offered(**{"edit:Observation/o:code": "potassium"})
    assert ("http://loinc.org", "2823-3") in offered(add_kind="Observation", add_code="potassium")
    conditions = offered(**{"edit:Condition/c:code": "atrial fibrillation"})
    assert conditions and {system for system, _ in conditions} == {"http://hl7.org/fhir/sid/icd-10-cm"}
    allergies = offered(add_kind="AllergyIntolerance", add_code="amoxicillin")
    assert allergies and {system for system, _ in allergies} == {"http://snomed.info/sct"}
    medications = offered(add_kind="MedicationStatement", add_code="metformin")  # SNOMED CT until RxNorm is imported
    assert ("http://snomed.info/sct", "109081006") in medications
