"""``paperchart extract FILE`` prints a FHIR Bundle, and fails clearly on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terminology.model import ICD10CM
from tests.conftest import paperchart as run
from tests.conftest import rendered


def test_extract_born_digital_pdf(tmp_path: Path) -> None:
    document = rendered("medication_list", seed=4)
    path = tmp_path / "meds.pdf"
    path.write_bytes(document.pdf)
    result = run("extract", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert bundle["resourceType"] == "Bundle"
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    assert patient["name"][0]["text"] == document.truth.patient.name
    names = {r["medicationCodeableConcept"]["text"] for r in resources if r["resourceType"] == "MedicationStatement"}
    assert names == {m.name for m in document.truth.medications}
    # no progress bar when stderr is not a terminal; without an index, one line says why nothing is coded
    assert result.stderr.splitlines() == [
        f"paperchart: no terminology index at {tmp_path / 'data' / 'terminology.db'}: the Bundle's resources are"
        " not coded (build one: paperchart terminology build)"
    ]


def test_extract_codes_with_the_terminology_index(tmp_path: Path, terminology_index: Path) -> None:
    document = rendered("discharge_summary", seed=3)
    path = tmp_path / "summary.pdf"
    path.write_bytes(document.pdf)
    result = run("extract", str(path), cwd=tmp_path, PAPERCHART_TERMINOLOGY_PATH=str(terminology_index))
    assert result.returncode == 0, result.stderr
    conditions = [
        e["resource"] for e in json.loads(result.stdout)["entry"] if e["resource"]["resourceType"] == "Condition"
    ]
    present = {d.text for d in document.truth.diagnoses if d.assertion == "present"}
    coded = {c["code"]["text"] for c in conditions if any(x["system"] == ICD10CM for x in c["code"].get("coding", []))}
    # a code is kept when the match is trustworthy (exact, or close in meaning); the rest go to review
    assert present & coded, (present, coded)


def test_extract_a_us_note_in_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_text(
        "Progress Note\nPatient: John Public   DOB: 04/12/1961\nDate of service: 11/20/2026\n"
        "Vitals: T 101.2 F, Ht 70 in\nAssessment and Plan:\n1. Essential hypertension - continue lisinopril\n"
    )
    result = run("extract", str(path), cwd=tmp_path, PAPERCHART_DATE_ORDER="MDY")
    assert result.returncode == 0, result.stderr
    resources = [e["resource"] for e in json.loads(result.stdout)["entry"]]
    assert next(r for r in resources if r["resourceType"] == "Patient")["birthDate"] == "1961-04-12"
    assert [r["code"]["text"] for r in resources if r["resourceType"] == "Condition"] == ["Essential hypertension"]
    temperature = next(r for r in resources if r.get("code", {}).get("text") == "Body temperature")
    assert temperature["valueQuantity"]["value"] == 101.2 and temperature["effectiveDateTime"] == "2026-11-20"


@pytest.mark.slow
def test_extract_scanned_image(tmp_path: Path) -> None:
    document = rendered("clinic_note", seed=8)
    path = tmp_path / "note.png"
    path.write_bytes(document.png_pages[0])
    result = run("extract", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resources = [e["resource"] for e in json.loads(result.stdout)["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    assert patient["birthDate"] == document.truth.patient.birth_date
    provenance = next(r for r in resources if r["resourceType"] == "Provenance")
    assert "rapidocr" in provenance["agent"][0]["who"]["display"]


def test_bad_files_fail_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.pdf"
    corrupt.write_bytes(b"%PDF-1.4 this is not really a pdf")
    result = run("extract", str(corrupt), cwd=tmp_path)
    assert result.returncode == 1
    assert "corrupt" in result.stderr and "Traceback" not in result.stderr
    missing = run("extract", str(tmp_path / "missing.pdf"), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    unknown = tmp_path / "notes.xyz"
    unknown.write_bytes(b"hello")
    result = run("extract", str(unknown), cwd=tmp_path)
    assert result.returncode == 2 and "--content-type" in result.stderr


def test_extract_pages_shows_what_was_read(tmp_path: Path) -> None:
    document = rendered("lab_report", seed=4)
    path = tmp_path / "labs.pdf"
    path.write_bytes(document.pdf)
    result = run("extract", "--pages", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (page,) = json.loads(result.stdout)
    assert page["source"] == "text-layer" and document.truth.patient.name in page["text"]
    (table,) = page["tables"]
    assert table["header"][0] == "Test" and len(table["rows"]) == len(document.truth.labs)
    fields = {f["label"]: f["value"] for f in page["fields"]}
    assert fields["Patient Name"] == document.truth.patient.name and fields["MRN"] == document.truth.patient.mrn
