"""The review page in a real Chromium (Playwright, Debian's ``chromium``), against a real server.

A reviewer signs in through the built-in SMART server, finds a document in the queue, corrects a
wrong dose beside the page image, releases; the FHIR API then serves the corrected value with
the reviewer's Provenance. A finding the extractor missed is added with its box drawn on the
page and its code picked from the type-ahead. A second reviewer releasing a stale copy gets a
conflict; a user without review scopes sees nothing. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import document_reference, rendered
from tests.live import LiveServer, live_server

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PASSWORD = "correct horse battery staple"
REVIEWER_SCOPES = ["user/*.cruds", "openid", "fhirUser", "offline_access"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, terminology_index: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("review"), terminology_index) as live:
        registry = live.app.state.services.auth.registry
        registry.add_user("reviewer", PASSWORD, scopes=REVIEWER_SCOPES, fhir_user="Practitioner/rev-1")
        registry.add_user("second", PASSWORD, scopes=REVIEWER_SCOPES, fhir_user="Practitioner/rev-2")
        registry.add_user("clerk", PASSWORD, scopes=["user/DocumentReference.c", "openid"])
        yield live


@pytest.fixture(scope="module")
def extracted(server: LiveServer) -> dict[str, Any]:
    """A medication list whose extraction we treat as having read one dose wrong."""
    token = server.token("system/*.cruds")
    headers = {"Authorization": f"Bearer {token}"}
    document = rendered("medication_list", seed=4)
    created = httpx.post(
        f"{server.base}/fhir/DocumentReference",
        json=document_reference(document.pdf, "application/pdf"),
        headers=headers,
        timeout=60,
    ).json()
    bundle = httpx.post(
        f"{server.base}/fhir/DocumentReference/{created['id']}/$extract",
        headers={**headers, "Prefer": "respond-sync"},
        timeout=120,
    ).json()
    statement = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationStatement")
    return {"document_id": created["id"], "bundle_id": bundle["id"], "statement": statement, "headers": headers}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def sign_in(browser: Any, server: LiveServer, username: str) -> Any:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.errors = errors  # Content-Security-Policy violations show up here
    page.goto(f"{server.base}/review")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.click("button[value=allow]")
    page.wait_for_url(f"{server.base}/review**")
    return page


def test_review_correct_a_dose_and_release(browser: Any, server: LiveServer, extracted: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    statement = extracted["statement"]
    reference = f"MedicationStatement/{statement['id']}"
    wrong = statement["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"]
    corrected = wrong * 2

    page = sign_in(browser, server, "reviewer")
    stale = sign_in(browser, server, "second")  # opens the same document before the first release

    page.goto(f"{server.base}/review?show=all")
    assert page.locator(f"tr[data-document='{extracted['document_id']}']").count() == 1
    page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)
    page.click(f"tr[data-document='{extracted['document_id']}'] a.open")
    page.wait_for_selector(".page img")
    page.wait_for_function("document.querySelector('.page img').naturalWidth > 0")
    stale.goto(page.url)

    # boxes sit on the page image; clicking a field's box selects the field
    box = page.locator(f".box[data-ref='{reference}']").first
    assert box.is_visible()
    box.click()
    assert "selected" in (page.locator(f".item[data-ref='{reference}']").get_attribute("class") or "")

    dose = page.locator(f"input[name='edit:{reference}:dose']")
    dose.fill("lots")
    message = page.locator(f".item[data-ref='{reference}'] .field:has(input[name='edit:{reference}:dose']) output")
    message.wait_for(state="attached")
    page.wait_for_function(
        "el => el.textContent.includes('Enter a number')", arg=message.element_handle(), timeout=10_000
    )
    dose.fill(str(corrected))
    page.wait_for_function("el => el.textContent.trim() === ''", arg=message.element_handle(), timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "review-document.png"), full_page=False)

    dose.press("Escape")
    page.keyboard.press("Shift+Enter")  # release without the mouse
    page.wait_for_url(f"{server.base}/review?released=**")
    assert not [e for e in page.errors if "Content Security Policy" in e]

    # the corrected value and the reviewer's Provenance, through the FHIR API
    headers = extracted["headers"]
    stored = httpx.get(f"{server.base}/fhir/{reference}", headers=headers).json()
    assert stored["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] == corrected
    assert stored["meta"]["versionId"] == "2"
    bundle = httpx.get(f"{server.base}/fhir/Bundle/{extracted['bundle_id']}", headers=headers).json()
    provenances = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Provenance"
        and e["resource"]["target"] == [{"reference": reference}]
        and e["resource"]["agent"][0]["type"]["coding"][0]["code"] == "verifier"
    ]
    assert len(provenances) == 1
    review = provenances[0]
    assert review["agent"][0]["who"] == {"display": "reviewer", "reference": "Practitioner/rev-1"}
    revision = review["entity"][0]
    assert revision["what"]["reference"] == f"{reference}/_history/1"
    change = {part["url"]: part.get("valueString") for part in revision["extension"][0]["extension"]}
    assert change == {"field": "dose", "was": f"{wrong:g}", "now": f"{corrected:g}"}

    # the second reviewer's copy is now stale: a clear conflict, not a silent overwrite
    stale.fill(f"input[name='edit:{reference}:dose']", "1")
    stale.click("#release-button")
    stale.wait_for_selector("h1")
    assert "Someone else got there first" in stale.inner_text("h1")
    again = httpx.get(f"{server.base}/fhir/{reference}", headers=headers).json()
    assert again["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] == corrected

    # the audit trail shows who did what
    audit = httpx.get(
        f"{server.base}/fhir/AuditEvent",
        params={"_count": 500},
        headers={"Authorization": f"Bearer {server.token('system/AuditEvent.rs')}"},
    ).json()
    released = [
        e["resource"]
        for e in audit["entry"]
        if e["resource"]["agent"][0].get("altId") == "reviewer"
        and e["resource"]["action"] == "C"
        and any(
            x["what"]["reference"] == f"DocumentReference/{extracted['document_id']}"
            for x in e["resource"].get("entity", [])
        )
    ]
    assert released and released[-1]["outcome"] == "0"


def test_add_a_missed_condition_with_its_box_and_a_code_from_the_type_ahead(
    browser: Any, server: LiveServer, extracted: dict[str, Any]
) -> None:
    page = sign_in(browser, server, "reviewer")
    page.goto(f"{server.base}/review/documents/{extracted['document_id']}")
    page.wait_for_function("document.querySelector('.page img').naturalWidth > 0")

    page.select_option("#add_kind", "MedicationStatement")
    page.fill("#add_value", "-5")  # checked as it is typed, as a dose
    message = page.locator("#add_value + output")
    page.wait_for_function("el => el.textContent.includes('plausible')", arg=message.element_handle(), timeout=10_000)
    page.fill("#add_value", "")
    page.wait_for_function("el => el.textContent.trim() === ''", arg=message.element_handle(), timeout=10_000)

    page.select_option("#add_kind", "Condition")
    page.fill("#add_text", "Atrial fibrillation")
    page.locator("#add_code").press_sequentially("atrial fib", delay=20)  # typed, so htmx hears each key
    options = page.locator("#add-codes option")
    options.first.wait_for(state="attached", timeout=20_000)
    values = [options.nth(i).get_attribute("value") for i in range(options.count())]
    picked = next(v for v in values if v and "|I48.91|" in v)
    page.fill("#add_code", picked)  # what choosing the option does

    page.click("#draw")
    image = page.locator(".page").first.bounding_box()
    assert image is not None
    page.mouse.move(image["x"] + image["width"] * 0.2, image["y"] + image["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(image["x"] + image["width"] * 0.5, image["y"] + image["height"] * 0.33, steps=5)
    page.mouse.up()
    assert "Box drawn on page 1" in page.inner_text("#drawn")
    page.click("#release-button")
    page.wait_for_url(f"{server.base}/review?released=**")
    assert not [e for e in page.errors if "Content Security Policy" in e]

    headers = extracted["headers"]
    bundle = httpx.get(f"{server.base}/fhir/Bundle/{extracted['bundle_id']}", headers=headers).json()
    added = next(
        e["resource"] for e in bundle["entry"] if e["resource"].get("code", {}).get("text") == "Atrial fibrillation"
    )
    system, code, display = picked.split("|")
    assert added["code"]["coding"] == [{"system": system, "code": code, "display": display}]
    assert added["clinicalStatus"]["coding"][0]["code"] == "active"
    created = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Provenance"
        and e["resource"]["target"] == [{"reference": f"Condition/{added['id']}"}]
    )
    evidence = {p["url"]: p for p in created["entity"][0]["extension"][0]["extension"]}
    x0, y0, x1, y1 = (float(v) for v in evidence["box"]["valueString"].split(","))
    assert evidence["page"]["valueInteger"] == 1
    assert x0 == pytest.approx(0.2, abs=0.02) and y1 == pytest.approx(0.33, abs=0.02) and x1 > x0 and y1 > y0


def test_a_user_without_review_scopes_sees_nothing(browser: Any, server: LiveServer, extracted: dict[str, Any]) -> None:
    page = browser.new_context().new_page()
    page.goto(f"{server.base}/review")
    page.fill("#username", "clerk")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.click("button[value=allow]")  # the session only gets what the clerk may do: upload documents
    page.wait_for_url(f"{server.base}/review**")
    assert "Not allowed" in page.inner_text("body")
    assert extracted["document_id"] not in page.content()
    page.goto(f"{server.base}/review/documents/{extracted['document_id']}")
    assert "Not allowed" in page.inner_text("body")
    assert extracted["statement"]["medicationCodeableConcept"]["text"] not in page.content()
